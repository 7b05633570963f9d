"""Export a sweep to Parquet: trials, epochs and per-image test metrics.

    python -m analysis export <output>

Reads what the sweep left: `<output>/chain_state.json` (every cell, including those not
run), the Ray Tune experiment (each trial's per-epoch results and final checkpoint,
which holds `per_image.parquet`) and the MLflow runs (their ids). Column names come
from `analysis.schema`, which the analysis package reads with.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import schema
from vlsm import axes
from vlsm.checkpoint import PER_IMAGE_FILE

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # written by the driver: storage path, MLflow URI, spec


def write_sweep_file(output: Path, **info: Any) -> None:
    path = output / SWEEP_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1, default=str))
    os.replace(tmp, path)


def read_sweep_file(output: Path) -> dict[str, Any]:
    path = output / SWEEP_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a sweep folder (no {SWEEP_FILE}); expected the --output of paper_grid.py")
    return json.loads(path.read_text())


def resume_mismatch(output: Path, configs: dict[str, dict[str, Any]], storage: str | None = None) -> str | None:
    """Why the sweep already in `output` cannot be resumed with `configs`, or None.

    Ray restores an experiment with the trial configs it started with, so a changed grid
    or setting would be silently ignored; we refuse instead and say what differs.
    """
    if not (output / SWEEP_FILE).exists():
        return None
    recorded = read_sweep_file(output)
    if storage is not None and recorded.get("storage") != storage:
        return f"storage was {recorded.get('storage')!r}, now {storage!r} (give the same --storage)"
    before: dict[str, dict] = json.loads(json.dumps(recorded.get("configs", {})))
    now = json.loads(json.dumps(configs))
    if set(before) != set(now):
        added, removed = sorted(set(now) - set(before)), sorted(set(before) - set(now))
        return f"grid cells added {added[:3]}, removed {removed[:3]}"
    for cell_id, config in now.items():
        for key in sorted(set(config) | set(before[cell_id])):
            if key != "init_from" and config.get(key) != before[cell_id].get(key):
                return f"{cell_id}: {key} was {before[cell_id].get(key)!r}, now {config.get(key)!r}"
    return None


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


def _mlflow_runs(tracking_uri: str | None, output: Path) -> dict[str, str]:
    """cell_id -> MLflow run id of this sweep's trial runs."""
    if not tracking_uri:
        return {}
    from mlflow.tracking import MlflowClient

    from vlsm.tracking import PARENT_TAG, TAG_CELL, TAG_ROLE, TAG_SWEEP_KEY, sweep_key

    client = MlflowClient(tracking_uri=tracking_uri)
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP_KEY}` = '{sweep_key(output)}'",
    )
    runs: dict[str, str] = {}
    for parent in parents:
        for run in client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
        ):
            runs[run.data.tags.get(TAG_CELL, "")] = run.info.run_id
    return runs


def _trial_frames(experiment_path: str) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Ray trial id -> per-report DataFrame, and -> Trial (for checkpoints and timing)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(experiment_path)
    except ValueError as err:
        logger.warning("no Ray Tune experiment at %s: %s", experiment_path, err)
        return {}, {}
    return analysis.trial_dataframes, {t.trial_id: t for t in analysis.trials}


def export_sweep(output: Path, storage: str | None = None) -> Path:
    """Write <output>/exports/{trials,epochs,per_image}.parquet; returns the folder."""
    from sweeps.chain import ChainState
    from sweeps.runner import experiment_path

    output = Path(output).resolve()
    info = read_sweep_file(output)
    storage = storage or info["storage"]
    state = ChainState.load(output / "chain_state.json")
    frames, trials = _trial_frames(experiment_path(storage))
    run_ids = _mlflow_runs(info.get("mlflow_uri"), output)
    configs: dict[str, dict] = info.get("configs", {})
    gpu_share: dict[str, float] = info.get("gpu_share", {})

    trial_rows, epoch_rows, image_frames = [], [], []
    for cell_id, entry in state.cells.items():
        config = configs.get(cell_id, {})
        cell = config.get("tags", {})
        frame = frames.get(entry.trial_id or "", pd.DataFrame())
        epochs = pd.DataFrame()
        if not frame.empty and axes.EPOCH in frame:
            epochs = frame[frame[axes.EPOCH].notna() & frame.get(axes.VAL_DICE, pd.Series(dtype=float)).notna()]
            epochs = epochs.drop_duplicates(subset=axes.EPOCH, keep="last").sort_values(axes.EPOCH)
        last = frame.iloc[-1].to_dict() if not frame.empty else {}
        best_epoch = None
        if not epochs.empty:
            best_epoch = int(epochs.loc[epochs[axes.VAL_DICE].idxmax(), axes.EPOCH])
        trial = trials.get(entry.trial_id or "")
        wall_s = float(epochs[axes.SECONDS].sum()) if not epochs.empty and axes.SECONDS in epochs else None
        if trial is not None and last.get("time_total_s") is not None:
            wall_s = float(last["time_total_s"])
        lr = last.get(f"config/{axes.LR}", config.get("lr"))
        trial_rows.append({
            "trial_id": cell_id,
            "model": cell.get("model"),
            "strategy": cell.get("strategy"),
            "encoder": cell.get("encoder"),
            "prompt": cell.get("prompt"),
            axes.LR: float(lr) if lr is not None else None,
            "status": entry.status,
            "upstream_trial_id": cell.get("upstream_cell_id"),
            "mlflow_run_id": run_ids.get(cell_id),
            "best_epoch": best_epoch,
            "epochs": int(epochs[axes.EPOCH].max()) if not epochs.empty else 0,
            axes.BEST_VAL_DICE: float(epochs[axes.VAL_DICE].max()) if not epochs.empty else None,
            axes.TEST_DICE_MEAN: last.get(axes.TEST_DICE_MEAN),
            axes.TEST_DICE_STD: last.get(axes.TEST_DICE_STD),
            "wall_s": wall_s,
            "gpu_s": wall_s * gpu_share.get(cell_id, 0.0) if wall_s is not None else None,
            "checkpoint": entry.checkpoint,
            "reason": entry.reason,
        })
        for _, row in epochs.iterrows():
            epoch_rows.append({"trial_id": cell_id, **{c: row.get(c) for c in schema.EPOCHS_COLUMNS if c != "trial_id"}})
        if entry.checkpoint:
            per_image = _read_parquet(f"{entry.checkpoint.rstrip('/')}/{PER_IMAGE_FILE}")
            if per_image is not None:
                per_image = per_image.assign(trial_id=cell_id)
                image_frames.append(per_image[list(schema.PER_IMAGE_EXPORT_COLUMNS)])

    folder = output / schema.EXPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    trials_df = pd.DataFrame(trial_rows, columns=[*schema.TRIALS_COLUMNS, "reason"])
    epochs_df = pd.DataFrame(epoch_rows, columns=list(schema.EPOCHS_COLUMNS))
    if not epochs_df.empty:
        epochs_df["epoch"] = epochs_df["epoch"].astype(int)
    per_image_df = (
        pd.concat(image_frames, ignore_index=True)
        if image_frames
        else pd.DataFrame(columns=list(schema.PER_IMAGE_EXPORT_COLUMNS))
    )
    for name, frame in (
        (schema.TRIALS_FILE, trials_df),
        (schema.EPOCHS_FILE, epochs_df),
        (schema.PER_IMAGE_FILE, per_image_df),
    ):
        tmp = folder / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, folder / name)
    logger.info("exported %d trials, %d epochs, %d per-image rows to %s", len(trials_df), len(epochs_df), len(per_image_df), folder)
    return folder
