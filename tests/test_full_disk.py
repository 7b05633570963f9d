"""A full disk (ENOSPC) or quota (EDQUOT) at each write point: the temporary is gone, the
target is the old whole file or absent, the error names the target, and the sweep ends
with one line saying what to do (docs/faults.md, "A full disk, a read-only folder").

The fast tests inject `OSError(ENOSPC)` by monkeypatch; the slow one fills a real tmpfs
mid-sweep (root only) and checks that the same command, once space is free, ends with the
exports of a clean run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlsm.atomic import (
    DiskFullError,
    atomic_folder,
    atomic_path,
    build_folder_once,
    disk_full,
    disk_full_line,
    write_json_atomic,
)

REPO = Path(__file__).resolve().parents[1]
# The smallest chained sweep: CRIS P1 frozen, real + synthetic -> finetune, 3 epochs, a checkpoint every epoch.
SMALL = [
    "--models", "CRIS", "--prompts", "P1", "--encoders", "frozen", "--num-cpus", "2",
    "--set", "data.demo_patients=8", "--set", "data.demo_test_patients=2",
    "--set", "data.val_patients=2", "--set", "data.demo_image_size=[64, 56]",
    "--set", "train.max_epochs=3", "--set", "train.min_epochs=1", "--set", "train.checkpoint_interval_s=0",
]
IGNORED = {"trials.parquet": {"mlflow_run_id", "wall_s", "gpu_s", "checkpoint"},  # timings, run ids, paths
           "epochs.parquet": {"images_per_s", "seconds"}, "per_image.parquet": set()}


def _full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- vlsm/atomic.py -----------------------------------------------------------------------

def test_a_file_write_that_runs_out_of_space_leaves_the_old_file_and_names_it(tmp_path: Path) -> None:
    target = tmp_path / "trials.parquet"
    target.write_text("old, whole")
    with pytest.raises(DiskFullError) as caught, atomic_path(target) as tmp:
        tmp.write_text("half of the new")  # the writer got this far ...
        _full()  # ... then the disk was full
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert _names(tmp_path) == ["trials.parquet"] and target.read_text() == "old, whole"


def test_a_rename_that_runs_out_of_space_removes_the_temporary(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "replace", _full)
    with pytest.raises(DiskFullError, match="cells"):
        write_json_atomic(tmp_path / "cells" / "a.json", {"a": 1})
    assert _names(tmp_path / "cells") == []


def test_a_folder_that_runs_out_of_space_in_the_block_or_the_rename_keeps_the_old_one(tmp_path, monkeypatch) -> None:
    target = tmp_path / "cache"
    target.mkdir()
    (target / "old.npy").write_text("old")
    with pytest.raises(DiskFullError) as caught, atomic_folder(target, replace=True) as tmp:
        (tmp / "new.npy").write_text("half")
        _full()
    assert caught.value.filename == str(target)
    assert _names(tmp_path) == ["cache"] and _names(target) == ["old.npy"]

    real_replace = os.replace

    def replace(src, dst):  # setting the old one aside works; renaming ours in does not
        if ".tmp-" in str(src):
            _full()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DiskFullError), atomic_folder(target, replace=True) as tmp:
        (tmp / "new.npy").write_text("new")
    assert _names(tmp_path) == ["cache"] and _names(target) == ["old.npy"]  # put back, ours removed


def test_a_cache_build_that_runs_out_of_space_leaves_no_folder(tmp_path: Path) -> None:
    final = tmp_path / "camus-train-64"

    def build(tmp: Path) -> None:
        (tmp / "image.npy").write_bytes(b"\0" * 100)
        _full()

    with pytest.raises(DiskFullError) as caught:
        build_folder_once(final, build)
    assert caught.value.filename == str(final)
    assert [n for n in _names(tmp_path) if not n.endswith(".lock")] == []  # the lock stays, for the next build
    assert build_folder_once(final, lambda tmp: (tmp / "image.npy").write_bytes(b"1"))  # with space: built


def test_a_checkpoint_that_runs_out_of_space_keeps_the_last_whole_one(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch
    import torch

    from vlsm.checkpoint import TRAIN_STATE_JSON, TRAIN_STATE_TENSORS, save_train_state

    save_train_state(tmp_path, {"w": torch.zeros(3)}, {"epoch": 1})
    before = {name: (tmp_path / name).read_bytes() for name in (TRAIN_STATE_TENSORS, TRAIN_STATE_JSON)}

    def half_then_full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        _full()

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_full)
    with pytest.raises(DiskFullError, match=TRAIN_STATE_TENSORS):
        save_train_state(tmp_path, {"w": torch.ones(3)}, {"epoch": 2})
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert _names(tmp_path) == sorted(before)


# --- the sweep's own files ------------------------------------------------------------------

def _one_cell_sweep(tmp_path: Path):
    from sweeps.cell import Cell
    from sweeps.folder import SweepFolder
    from sweeps.record import CellRecords

    cell = Cell("CRIS", "real", "frozen", "P1")
    folder = SweepFolder(tmp_path)
    folder.write_record(storage=str(folder.ray), mlflow_uri=None, experiments={"grid": [cell.cell_id]})
    records = CellRecords(folder.cells)
    records.plan({"grid": [cell]}, {cell.cell_id: {"lr": 1e-3}}, {cell.cell_id: 0.0})
    return folder, records, cell.cell_id


def test_a_record_or_an_export_that_runs_out_of_space_stays_whole(tmp_path: Path, monkeypatch) -> None:
    from sweeps.export import export_sweep

    folder, records, cell_id = _one_cell_sweep(tmp_path)
    export_sweep(tmp_path)
    before = {p: p.read_bytes() for p in [*folder.cells.iterdir(), *folder.exports.iterdir()]}
    monkeypatch.setattr(os, "replace", _full)
    with pytest.raises(DiskFullError, match=f"{cell_id}.json"):
        records.update(cell_id, status="running")
    with pytest.raises(DiskFullError, match="trials.parquet"):
        export_sweep(tmp_path)
    assert {p: p.read_bytes() for p in [*folder.cells.iterdir(), *folder.exports.iterdir()]} == before


def test_disk_full_is_found_in_the_errors_that_wrap_it() -> None:
    named = DiskFullError(errno.ENOSPC, "No space left on device", "/out/cells/a.json")
    try:
        try:
            raise named
        except DiskFullError:
            import traceback

            raise RuntimeError(traceback.format_exc())  # noqa: B904 - as Ray's TuneError wraps a callback's
    except RuntimeError as wrapped:
        assert disk_full(wrapped) == (errno.ENOSPC, "/out/cells/a.json")
        assert disk_full(RuntimeError(str(wrapped))) == (errno.ENOSPC, "/out/cells/a.json")  # its text alone
    pyarrow = "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"
    assert disk_full(RuntimeError(pyarrow)) == (errno.ENOSPC, None)
    assert disk_full(RuntimeError("(sqlite3.OperationalError) database or disk is full")) == (errno.ENOSPC, None)
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))[0] == errno.EDQUOT
    assert disk_full(RuntimeError("[Errno 122] Disk quota exceeded: '/q/x'")) == (errno.EDQUOT, "/q/x")
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(ValueError("no space in this prompt")) is None


def test_the_line_names_the_file_the_free_space_and_what_to_do(tmp_path: Path) -> None:
    line = disk_full_line(DiskFullError(errno.ENOSPC, "No space", str(tmp_path / "cells" / "a.json")), tmp_path)
    assert line.startswith(f"cannot write {tmp_path / 'cells' / 'a.json'}: the disk is full (ENOSPC), ")
    assert f"free in {tmp_path}" in line and "run the same command again" in line and "\n" not in line
    quota = disk_full_line(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path / "mlflow.db")
    assert f"cannot write {tmp_path / 'mlflow.db'}: over the disk quota (EDQUOT)" in quota
    assert disk_full_line(ValueError("x"), tmp_path) is None


# --- the driver -------------------------------------------------------------------------------

def _failed_trial(tmp_path: Path, cell_id: str, error: str) -> SimpleNamespace:
    error_file = tmp_path / "error.txt"
    error_file.write_text(f"Failure # 1 (occurred at now)\n{error}\n")
    return SimpleNamespace(config={"cell_id": cell_id}, trial_id="t1", error_file=str(error_file),
                           path=str(tmp_path / "ray" / "grid" / f"{cell_id}_t1"), checkpoint=None, last_result={})


def test_a_trial_failing_for_a_full_disk_stops_the_sweep_and_stays_unfinished(tmp_path: Path) -> None:
    from sweeps.chain import RecordCallback
    from sweeps.record import FAILED, RUNNING

    _, records, cell_id = _one_cell_sweep(tmp_path)
    records.update(cell_id, status=RUNNING, trial_id="t1")
    callback = RecordCallback(records, total=1)
    full = _failed_trial(tmp_path, cell_id, "ray.exceptions.RayTaskError(OSError): ...\n  File \"pyarrow/error.pxi\"\n"
                         "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    for hook in (callback.on_trial_recover, callback.on_trial_error):  # a retry left, or none
        with pytest.raises(DiskFullError) as caught:
            hook(0, [], full)
        assert caught.value.filename == full.path  # pyarrow names no file: the trial's folder
        assert records[cell_id].status == RUNNING  # not failed: the next run resumes it
    other = _failed_trial(tmp_path, cell_id, "ValueError: a real bug")
    callback.on_trial_recover(0, [], other)  # retried as before
    callback.on_trial_error(0, [], other)
    assert records[cell_id].status == FAILED and "a real bug" in records[cell_id].reason


def test_mlflow_errors_are_logged_but_a_full_store_stops_the_sweep(caplog) -> None:
    from sweeps.tracking import _guarded

    class Callback:
        def __init__(self, error: Exception):
            self.error = error

        @_guarded
        def on_trial_result(self):
            raise self.error

    assert Callback(RuntimeError("server said 503")).on_trial_result() is None  # logged, the sweep goes on
    with pytest.raises(RuntimeError, match="database or disk is full"):
        Callback(RuntimeError("(sqlite3.OperationalError) database or disk is full")).on_trial_result()


def test_a_full_mlflow_store_does_not_hide_the_error_that_stopped_the_sweep(monkeypatch) -> None:
    import sweeps.tracking
    from sweeps.session import mlflow_sweep

    closed: list[str] = []

    class FullStore:
        def __init__(self, *args, **kwargs):
            pass

        def finish_sweep(self, status: str) -> None:
            closed.append(status)
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(sweeps.tracking, "SweepTracker", FullStore)
    plan = SimpleNamespace(mlflow_uri="sqlite:///x.db", spec=SimpleNamespace(name="s"),
                           folder=SimpleNamespace(root=Path(".")), command="")
    with pytest.raises(DiskFullError, match="a.json"), mlflow_sweep(plan):
        raise DiskFullError(errno.ENOSPC, "No space left on device", "a.json")
    assert closed == ["KILLED"]  # as an interrupted sweep: the same command resumes it


def test_the_driver_ends_with_one_line_and_exit_75(tmp_path: Path, monkeypatch, capsys) -> None:
    import sweeps.paper_grid as paper_grid

    def stopped(plan):
        try:
            raise DiskFullError(errno.ENOSPC, "No space left on device", str(tmp_path / "s" / "cells" / "a.json"))
        except DiskFullError as err:
            raise RuntimeError("Trial errored: ...") from err  # as Tune raises it

    monkeypatch.setattr(paper_grid, "prepare_data", stopped)
    assert paper_grid.main(["--output", str(tmp_path / "s")]) == paper_grid.EXIT_DISK_FULL
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot write {tmp_path / 's' / 'cells' / 'a.json'}: the disk is full (ENOSPC)")
    assert "run the same command again" in err[-1]

    def sqlite_full(plan):
        raise RuntimeError("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(paper_grid, "prepare_data", sqlite_full)
    assert paper_grid.main(["--output", str(tmp_path / "s")]) == paper_grid.EXIT_DISK_FULL
    assert f"cannot write {tmp_path / 's' / 'mlflow.db'}: the disk is full" in capsys.readouterr().err


# --- a read-only folder, refused before any work -------------------------------------------
# As root (CI), chmod does not stop writes; os.access is what `vlsm.atomic.not_writable`
# asks, so these tests make it say "not writable" for one folder (a read-only mount would
# do the same, but needs root and `mount`).

@pytest.fixture
def deny_writes(monkeypatch):
    """deny_writes(folder): os.access says `folder` is not writable by this user."""
    denied: list[Path] = []
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path) in denied:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)

    def deny(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        denied.append(folder)
        return folder

    return deny


def test_a_read_only_storage_or_mlflow_folder_is_refused_before_anything_runs(tmp_path, deny_writes, monkeypatch,
                                                                             capsys) -> None:
    import sweeps.paper_grid as paper_grid

    def ran(plan):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(paper_grid, "prepare_data", ran)
    read_only = deny_writes(tmp_path / "read-only")
    storage = f"file://{read_only}/shared"
    assert paper_grid.main(["--output", str(tmp_path / "s"), "--storage", storage]) == paper_grid.EXIT_USAGE
    assert f"--storage {storage}/s-" in (err := capsys.readouterr().err) and f"{read_only} is not writable" in err
    mlruns = f"file://{read_only}/mlruns"
    assert paper_grid.main(["--output", str(tmp_path / "s"), "--mlflow-uri", mlruns]) == paper_grid.EXIT_USAGE
    assert f"--mlflow-uri: {mlruns}: {read_only} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_read_only_exports_folder_is_refused_before_the_export(tmp_path, deny_writes, caplog) -> None:
    from sweeps.__main__ import main

    folder, _, _ = _one_cell_sweep(tmp_path)
    deny_writes(folder.exports)
    assert main(["export", str(tmp_path)]) == 2
    assert f"cannot write the exports to {folder.exports}: {folder.exports} is not writable" in caplog.text
    assert _names(folder.exports) == []


def test_a_read_only_cache_dir_is_refused_before_prepare_reads_anything(tmp_path, deny_writes, caplog) -> None:
    from vlsm.cli import main

    read_only = deny_writes(tmp_path / "read-only")
    assert main(["prepare", "--camus-root", str(tmp_path), "--cache-dir", str(read_only / "cache")]) == 2
    assert f"--cache-dir {read_only / 'cache'}: {read_only} is not writable" in caplog.text


def test_read_only_analysis_outputs_are_refused_before_any_work(tmp_path, deny_writes, caplog) -> None:
    from analysis.__main__ import main

    read_only = deny_writes(tmp_path / "read-only")
    assert main(["example-export", str(read_only / "example")]) == 2
    assert main(["notebooks", "--out", str(read_only / "notebooks")]) == 2
    assert f"output_dir {read_only / 'example'}: {read_only} is not writable" in caplog.text
    assert f"--out {read_only / 'notebooks'}: {read_only} is not writable" in caplog.text
    assert _names(read_only) == []


# --- end to end: a real full filesystem mid-sweep, then space freed ----------------------------

def _sweep(output: Path, log: Path) -> subprocess.Popen:
    """The sweep's command in the background, its output in `log` (.out, .err): a pipe nobody
    reads while it runs would block it."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen([sys.executable, str(REPO / "sweeps" / "paper_grid.py"), "--output", str(output),
                                 *SMALL], cwd=REPO, stdout=out, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _fill(folder: Path) -> Path:
    """Write zeros into folder/filler until its filesystem has no byte left."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    return filler


@pytest.fixture(scope="module")
def small_tmpfs(tmp_path_factory) -> Path:
    """A 64 MiB tmpfs (the sweep needs about 30 MiB): root and a working `mount` only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path_factory.mktemp("small-disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_sweep_on_a_disk_that_fills_stops_and_resumes_to_a_clean_runs_exports(small_tmpfs, tmp_path) -> None:
    import pandas as pd

    clean = _sweep(tmp_path / "clean", tmp_path / "clean-log")
    assert clean.wait(timeout=600) == 0, (tmp_path / "clean-log.err").read_text()[-3000:]
    output = small_tmpfs / "sweep"
    full = _sweep(output, tmp_path / "full-log")
    filler = None
    while full.poll() is None and filler is None:  # fill the disk once the first cell is done
        records = [json.loads(p.read_text()) for p in (output / "cells").glob("*.json")]
        if any(r["status"] == "done" for r in records):
            filler = _fill(small_tmpfs)
        time.sleep(0.05)
    full.wait(timeout=600)
    stderr = (tmp_path / "full-log.err").read_text()
    assert filler is not None and full.returncode == 75, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {output}") and "the disk is full (ENOSPC)" in last, last
    assert "free in" in last and "run the same command again" in last
    # nothing half-written where a whole file belongs: every record parses, no temporaries
    records = {p.stem: json.loads(p.read_text()) for p in (output / "cells").glob("*.json")}
    assert len(records) == 3 and all(r["status"] in ("done", "running", "pending") for r in records.values())
    temporaries = [p for p in output.rglob(".*") if ".tmp" in p.name]
    assert temporaries == []

    filler.unlink()
    resumed = _sweep(output, tmp_path / "resumed-log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed-log.err").read_text()[-3000:]
    for name, ignored in IGNORED.items():
        ours, theirs = (pd.read_parquet(folder / "exports" / name) for folder in (output, tmp_path / "clean"))
        columns = [c for c in theirs.columns if c not in ignored]
        assert list(ours.columns) == list(theirs.columns)
        pd.testing.assert_frame_equal(ours[columns], theirs[columns], check_exact=True)
