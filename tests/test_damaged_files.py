"""Corruption at rest outside checkpoints' weights: a done cell's per_image.parquet, the
Parquet exports and the SQLite MLflow store, each truncated or bit-flipped, are detected and
named in one line with what to do (checkpoints: tests/test_checkpoint.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis import load_sweep
from analysis.schema import PER_IMAGE_FILE, TRIALS_FILE
from sweeps.cell import CELL_ID, Cell
from sweeps.folder import FolderError, SweepFolder
from sweeps.record import DONE, CellRecords
from vlsm import checkpoint as ckpt


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _sweep(root: Path) -> tuple[SweepFolder, Path]:
    """A sweep folder with one done cell whose final checkpoint holds its per_image.parquet;
    returns the folder and the checkpoint."""
    cell = Cell("CRIS", "real", "frozen", "P1")
    checkpoint = root / "ray" / "grid" / "trial" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"patient{i:04d}_2CH_ED" for i in range(40)]
    pd.DataFrame({"image": names, "structure": "LV", "prompt": "Left ventricular cavity of the heart.",
                  "dice": rng.random(40), "iou": rng.random(40), "hausdorff": rng.random(40) * 10}).to_parquet(
        checkpoint / ckpt.PER_IMAGE_FILE, index=False)
    folder = SweepFolder(root)
    records = CellRecords(folder.cells)
    records.plan({"grid": [cell]}, {cell.cell_id: {CELL_ID: cell.cell_id, "lr": 1e-3}}, {cell.cell_id: 0.25})
    records.update(cell.cell_id, status=DONE, checkpoint=str(checkpoint), best_epoch=1, best_val_dice=0.5,
                   epochs=[{"epoch": 1, "val_dice": 0.5}])
    return folder, checkpoint


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_the_export_refuses_a_damaged_per_image_file_of_a_checkpoint(tmp_path, damage):
    from sweeps.export import export_sweep

    folder, checkpoint = _sweep(tmp_path)
    ckpt.seal(checkpoint)  # as the loop seals its final checkpoint
    per_image = checkpoint / ckpt.PER_IMAGE_FILE
    column = pq.ParquetFile(per_image).metadata.row_group(0).column(3)  # dice
    if damage == "truncated":
        _truncate(per_image)
    else:  # a byte of a dice value: the file still parses, with another value
        _flip(per_image, column.data_page_offset + column.total_compressed_size - 3)
    with pytest.raises(FolderError, match=f"^{per_image}: damaged since it was written .*cell cris-real-frozen-p1") as err:
        export_sweep(folder.root)
    assert "\n" not in str(err.value)


def test_a_bit_flipped_or_truncated_export_is_named_with_the_command_that_rewrites_it(tmp_path):
    from sweeps.export import export_sweep

    folder, _ = _sweep(tmp_path)
    exports = export_sweep(folder.root)
    expected = load_sweep(folder.root)
    per_image = exports / PER_IMAGE_FILE
    column = pq.ParquetFile(per_image).metadata.row_group(0).column(3)  # dice
    _flip(per_image, column.data_page_offset + column.total_compressed_size - 3)
    with pytest.raises(ValueError, match=f"^{per_image}: damaged .*python -m sweeps export {folder.root}$") as err:
        load_sweep(folder.root)
    assert "\n" not in str(err.value)
    _truncate(exports / TRIALS_FILE)
    with pytest.raises(ValueError, match=f"^{exports / TRIALS_FILE}: damaged .*python -m sweeps export"):
        load_sweep(folder.root)
    export_sweep(folder.root)  # what the message says: rewritten from the records, the same values
    pd.testing.assert_frame_equal(load_sweep(folder.root), expected)


def _store(path: Path) -> None:
    """An SQLite file of several pages, as MLflow's store is."""
    with sqlite3.connect(path) as db:
        db.execute("create table metrics (key text, value real, step integer)")
        db.executemany("insert into metrics values (?, ?, ?)", [(f"val_dice_{i}", i / 7, i) for i in range(2000)])
    db.close()


@pytest.mark.parametrize("damage", ["truncated", "page header flipped"])
def test_a_damaged_mlflow_db_is_refused_before_the_sweep_runs(tmp_path, damage):
    from sweeps.tracking import tracking_uri_problem

    store = tmp_path / "mlflow.db"
    _store(store)
    assert tracking_uri_problem(f"sqlite:///{store}") is None
    if damage == "truncated":
        _truncate(store)
    else:  # the b-tree page type byte of the table's second page
        _flip(store, 4096)
    problem = tracking_uri_problem(f"sqlite:///{store}")
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"{store}: the MLflow store is damaged")
    assert f"mv {store} {store}.damaged" in problem


def test_page_checksums_leave_the_exported_values_as_they_were(tmp_path, monkeypatch):
    from sweeps import export

    folder, _ = _sweep(tmp_path)
    with_crc = {name: pd.read_parquet(path) for name, path in _exported(export, folder).items()}
    monkeypatch.setattr(export, "PAGE_CHECKSUMS", False)
    without = {name: pd.read_parquet(path) for name, path in _exported(export, folder).items()}
    assert with_crc.keys() == without.keys() == {"trials.parquet", "epochs.parquet", PER_IMAGE_FILE}
    for name, frame in with_crc.items():
        pd.testing.assert_frame_equal(frame, without[name])


def _exported(export, folder: SweepFolder) -> dict[str, Path]:
    return {path.name: path for path in export.export_sweep(folder.root).glob("*.parquet")}
