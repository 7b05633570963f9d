"""Export a sweep to Parquet (trials, epochs, per-image test metrics) from the cells'
records and each done cell's `per_image.parquet`; columns from `analysis.schema`.

    python -m sweeps export <output>
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import schema
from sweeps.folder import SweepFolder
from sweeps.record import DONE, EPOCH_KEYS, CellRecord, CellRecords
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


def _trial_row(record: CellRecord) -> dict[str, Any]:
    """The trials.parquet row of one cell: the best epoch and Dice are the trial's own."""
    lr, wall_s = record.config.get(axes.LR), record.wall_s
    return {
        schema.TRIAL_ID: record.cell_id,
        **record.axes,
        axes.SEED: record.seed,
        axes.LR: float(lr) if lr is not None else None,
        "status": record.status,
        "upstream_trial_id": record.upstream,
        "mlflow_run_id": record.run_id,
        "best_epoch": record.best_epoch,
        "epochs": max((e[axes.EPOCH] for e in record.epochs), default=0),
        axes.BEST_VAL_DICE: record.best_val_dice,
        axes.TEST_DICE_MEAN: record.test.get(axes.TEST_DICE_MEAN),
        axes.TEST_DICE_STD: record.test.get(axes.TEST_DICE_STD),
        "wall_s": wall_s,
        "gpu_s": wall_s * record.gpu_share if wall_s is not None else None,
        "checkpoint": record.checkpoint,
        "reason": record.reason,
    }


def _per_image(record: CellRecord) -> pd.DataFrame | None:
    """A done cell's per-image test rows, from its final checkpoint."""
    if record.status != DONE or not record.checkpoint:
        return None
    frame = _read_parquet(f"{record.checkpoint.rstrip('/')}/{PER_IMAGE_FILE}")
    return None if frame is None else frame.assign(trial_id=record.cell_id)[list(schema.PER_IMAGE_EXPORT_COLUMNS)]


def export_sweep(output: Path) -> Path:
    """Write <output>/exports/{trials,epochs,per_image}.parquet; returns the folder."""
    folder = SweepFolder(Path(output))
    if not folder.holds_sweep():
        raise FileNotFoundError(f"{folder.root}: not a sweep folder (no {folder.cells.name}/); expected the "
                                f"--output of sweeps/paper_grid.py")
    records = list(CellRecords(folder.cells).cells.values())
    trials = pd.DataFrame([_trial_row(r) for r in records], columns=[*schema.TRIALS_COLUMNS, "reason"])
    epoch_rows = [{schema.TRIAL_ID: r.cell_id, **{key: e.get(key) for key in EPOCH_KEYS}}
                  for r in records for e in r.epochs]
    epochs = pd.DataFrame(epoch_rows, columns=list(schema.EPOCHS_COLUMNS))
    if not epochs.empty:
        epochs[axes.EPOCH] = epochs[axes.EPOCH].astype(int)
    image_frames = [frame for frame in map(_per_image, records) if frame is not None]
    per_image = (pd.concat(image_frames, ignore_index=True) if image_frames
                 else pd.DataFrame(columns=list(schema.PER_IMAGE_EXPORT_COLUMNS)))
    for name, table in ((schema.TRIALS_FILE, trials), (schema.EPOCHS_FILE, epochs),
                        (schema.PER_IMAGE_FILE, per_image)):
        with atomic_path(folder.exports / name) as tmp:
            table.to_parquet(tmp, index=False)
    logger.info("exported %d trials, %d epochs, %d per-image rows to %s",
                len(trials), len(epochs), len(per_image), folder.exports)
    return folder.exports
