"""Export a sweep to Parquet: trials, epochs and per-image test metrics.

    python -m sweeps export <output>

Reads what the sweep left: the chain state (every cell, including those not run, with
the outcome `sweeps.outcome` decided), the sweep's record (each trial's config, hence
its cell), the Ray Tune experiment (each trial's per-epoch results and final
checkpoint, which holds `per_image.parquet`) and the MLflow runs (their ids). Column
names come from `analysis.schema`, which the analysis package reads with; the export
belongs to the sweep side, and analysis never imports it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import schema
from sweeps.cell import Cell
from sweeps.chain import CellState, ChainState
from sweeps.folder import SweepFolder
from sweeps.tuner import GRID_EXPERIMENT, experiment_path
from vlsm import axes
from vlsm.atomic import atomic_path
from vlsm.checkpoint import PER_IMAGE_FILE

logger = logging.getLogger(__name__)

__all__ = ["export_sweep"]


def _read_parquet(path: str) -> pd.DataFrame | None:
    """A Parquet file from a local path or a storage URI (s3://...), or None."""
    try:
        if "://" in path:
            import pyarrow.fs

            fs, inner = pyarrow.fs.FileSystem.from_uri(path)
            with fs.open_input_file(inner) as f:
                return pd.read_parquet(f)
        return pd.read_parquet(path) if Path(path).exists() else None
    except (OSError, ValueError) as err:
        logger.warning("cannot read %s: %s", path, err)
        return None


def _mlflow_runs(tracking_uri: str | None, folder: SweepFolder) -> dict[str, str]:
    """cell_id -> MLflow run id of this sweep's trial runs."""
    if not tracking_uri:
        return {}
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import PARENT_TAG, TAG_CELL, TAG_ROLE, TAG_SWEEP_KEY, sweep_key

    client = MlflowClient(tracking_uri=tracking_uri)
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP_KEY}` = '{sweep_key(folder.root)}'",
    )
    runs: dict[str, str] = {}
    for parent in parents:
        for run in client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
        ):
            runs[run.data.tags.get(TAG_CELL, "")] = run.info.run_id
    return runs


def _trial_frames(experiment: str) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Ray trial id -> per-report DataFrame, and -> Trial (for checkpoints and timing)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(experiment)
    except ValueError as err:
        logger.warning("no Ray Tune experiment at %s: %s", experiment, err)
        return {}, {}
    return analysis.trial_dataframes, {t.trial_id: t for t in analysis.trials}


def _epochs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch of a trial's reports (a resumed epoch counts once, its last report)."""
    if frame.empty or axes.EPOCH not in frame:
        return pd.DataFrame()
    epochs = frame[frame[axes.EPOCH].notna() & frame.get(axes.VAL_DICE, pd.Series(dtype=float)).notna()]
    return epochs.drop_duplicates(subset=axes.EPOCH, keep="last").sort_values(axes.EPOCH)


def _trial_row(cell_id: str, entry: CellState, config: dict[str, Any], frame: pd.DataFrame,
               has_trial: bool, gpu_share: float, run_id: str | None) -> dict[str, Any]:
    """The trials.parquet row of one cell."""
    cell = Cell.of_config(config)
    epochs = _epochs(frame)
    last = frame.iloc[-1].to_dict() if not frame.empty else {}
    wall_s = float(epochs[axes.SECONDS].sum()) if not epochs.empty and axes.SECONDS in epochs else None
    if has_trial and last.get("time_total_s") is not None:
        wall_s = float(last["time_total_s"])
    lr = last.get(f"config/{axes.LR}", config.get("lr"))
    return {
        schema.TRIAL_ID: cell_id,
        **(cell.axes() if cell else dict.fromkeys((*axes.CELL_AXES, *axes.VARIANT_AXES))),
        axes.SEED: cell.seed if cell else None,
        axes.LR: float(lr) if lr is not None else None,
        "status": entry.status,
        "upstream_trial_id": cell.upstream if cell else None,
        "mlflow_run_id": run_id,
        "best_epoch": int(epochs.loc[epochs[axes.VAL_DICE].idxmax(), axes.EPOCH]) if not epochs.empty else None,
        "epochs": int(epochs[axes.EPOCH].max()) if not epochs.empty else 0,
        axes.BEST_VAL_DICE: float(epochs[axes.VAL_DICE].max()) if not epochs.empty else None,
        axes.TEST_DICE_MEAN: last.get(axes.TEST_DICE_MEAN),
        axes.TEST_DICE_STD: last.get(axes.TEST_DICE_STD),
        "wall_s": wall_s,
        "gpu_s": wall_s * gpu_share if wall_s is not None else None,
        "checkpoint": entry.checkpoint,
        "reason": entry.reason,
    }


def export_sweep(output: Path, storage: str | None = None) -> Path:
    """Write <output>/exports/{trials,epochs,per_image}.parquet; returns the folder.

    Ray's experiment state holds pickles, so it is read only from a place the user named:
    `storage`, or the folder's own `ray/`. A record naming other storage (a cluster sweep)
    is refused with the option to give.
    """
    folder = SweepFolder(Path(output))
    record = folder.read_record()
    if storage is None:
        storage = folder.storage(None)
        if record.get("storage") != storage:
            raise ValueError(f"{folder.record}: the sweep's Ray state is at {record.get('storage')}; give "
                             f"--storage {record.get('storage')} to read it from there (it holds pickles: "
                             f"only name storage you trust)")
    state = ChainState.load(folder.chain_state)
    frames, trials = {}, {}
    for name in record.get("experiments") or [GRID_EXPERIMENT]:  # a sweep's cells added later ran in their own
        more_frames, more_trials = _trial_frames(experiment_path(storage, name))
        frames.update(more_frames)
        trials.update(more_trials)
    run_ids = _mlflow_runs(record.get("mlflow_uri"), folder)
    configs: dict[str, dict] = record.get("configs", {})
    gpu_share: dict[str, float] = record.get("gpu_share", {})

    trial_rows, epoch_rows, image_frames = [], [], []
    for cell_id, entry in state.cells.items():
        frame = frames.get(entry.trial_id or "", pd.DataFrame())
        trial_rows.append(_trial_row(cell_id, entry, configs.get(cell_id, {}), frame,
                                     (entry.trial_id or "") in trials, gpu_share.get(cell_id, 0.0),
                                     run_ids.get(cell_id)))
        for _, row in _epochs(frame).iterrows():
            epoch_rows.append({schema.TRIAL_ID: cell_id,
                               **{c: row.get(c) for c in schema.EPOCHS_COLUMNS if c != schema.TRIAL_ID}})
        if entry.checkpoint:
            per_image = _read_parquet(f"{entry.checkpoint.rstrip('/')}/{PER_IMAGE_FILE}")
            if per_image is not None:
                image_frames.append(per_image.assign(trial_id=cell_id)[list(schema.PER_IMAGE_EXPORT_COLUMNS)])

    trials_df = pd.DataFrame(trial_rows, columns=[*schema.TRIALS_COLUMNS, "reason"])
    epochs_df = pd.DataFrame(epoch_rows, columns=list(schema.EPOCHS_COLUMNS))
    if not epochs_df.empty:
        epochs_df[axes.EPOCH] = epochs_df[axes.EPOCH].astype(int)
    per_image_df = (pd.concat(image_frames, ignore_index=True) if image_frames
                    else pd.DataFrame(columns=list(schema.PER_IMAGE_EXPORT_COLUMNS)))
    for name, table in ((schema.TRIALS_FILE, trials_df), (schema.EPOCHS_FILE, epochs_df),
                        (schema.PER_IMAGE_FILE, per_image_df)):
        with atomic_path(folder.exports / name) as tmp:
            table.to_parquet(tmp, index=False)
    logger.info("exported %d trials, %d epochs, %d per-image rows to %s",
                len(trials_df), len(epochs_df), len(per_image_df), folder.exports)
    return folder.exports
