"""Export a sweep to Parquet (trials, epochs, per-image test metrics) from the cells'
records and each done cell's `per_image.parquet`; columns from `analysis.schema`.

    python -m sweeps export <output>
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import schema
from sweeps.folder import FolderError, SweepFolder
from sweeps.record import DONE, EPOCH_KEYS, CellRecord, CellRecords
from vlsm import axes, integrity
from vlsm.atomic import atomic_path
from vlsm.checkpoint import PER_IMAGE_FILE

logger = logging.getLogger(__name__)

__all__ = ["PAGE_CHECKSUMS", "export_sweep"]

# Parquet's page CRCs: with them, 0 of 400 random bit flips in a per_image export read back as
# silently wrong values (229 without); 0.6 % more bytes (docs/faults.md, "Corruption at rest").
PAGE_CHECKSUMS = True


def _read_bytes(path: str) -> bytes | None:
    """A file's bytes from a local path or a storage URI (s3://...), None when it is not there."""
    if "://" in path:
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        if fs.get_file_info(inner).type == pyarrow.fs.FileType.NotFound:
            return None
        with fs.open_input_stream(inner) as f:
            return f.read()
    return Path(path).read_bytes() if Path(path).is_file() else None


def _read_per_image(checkpoint: str, cell_id: str) -> pd.DataFrame | None:
    """A checkpoint's per_image.parquet, checked against its manifest (one written before
    there were manifests: unverified), or None when it has none (or storage cannot be read).
    FolderError, one line naming the file, when it is damaged."""
    path = f"{checkpoint}/{PER_IMAGE_FILE}"
    try:
        data, manifest = _read_bytes(path), _read_bytes(f"{checkpoint}/{integrity.MANIFEST_FILE}")
    except OSError as err:
        logger.warning("cannot read %s: %s", path, err)
        return None
    if data is None:
        return None
    try:
        why = None if manifest is None else integrity.bytes_problem(
            integrity.parse_manifest(manifest, f"{checkpoint}/{integrity.MANIFEST_FILE}"), PER_IMAGE_FILE, data)
        if why is None:
            return pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise FolderError(f"{path}: damaged since it was written ({why}); cell {cell_id}'s per-image test results "
                      f"cannot be exported: restore the file from a copy, or train the cell again")


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
    frame = _read_per_image(record.checkpoint.rstrip("/"), record.cell_id)
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
        with atomic_path(folder.exports / name) as tmp:  # page CRCs: analysis detects a flipped byte
            table.to_parquet(tmp, index=False, write_page_checksum=PAGE_CHECKSUMS)
    logger.info("exported %d trials, %d epochs, %d per-image rows to %s",
                len(trials), len(epochs), len(per_image), folder.exports)
    return folder.exports
