"""The sweep folder (`--output`): every file a sweep writes there, named once (docs/design.md,
"The sweep folder"); `sweep.json`, the sweep's own facts; the resume check.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.schema import EXPORTS_DIR
from sweeps.record import CellRecords
from vlsm.atomic import write_json_atomic

__all__ = ["FolderError", "SweepFolder", "recorded_experiments", "resume_mismatch"]

OLD_STATE = "chain_state.json"  # the cells' state of a sweep an older version wrote


class FolderError(RuntimeError):
    """The sweep folder cannot be used as it is."""


class _Entry:
    """A path in the sweep folder: `SweepFolder(root).cells` is `root / "cells"`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder: SweepFolder, owner: type) -> Path:
        return folder.root / self.name


@dataclass(frozen=True)
class SweepFolder:
    """The paths of one sweep folder (absolute)."""

    root: Path
    record = _Entry("sweep.json")  # the sweep's record
    cells = _Entry("cells")  # one record per cell
    lr_search = _Entry("lr_search.json")  # the learning rates found
    mlflow_db = _Entry("mlflow.db")  # the default MLflow store
    mlartifacts = _Entry("mlartifacts")  # its artifacts
    ray = _Entry("ray")  # Ray Tune's experiments, without shared storage
    cache = _Entry("cache")  # preprocessed data (default --cache-dir)
    exports = _Entry(EXPORTS_DIR)  # the Parquet exports
    lock_file = _Entry(".driver.lock")  # held by the one driver running this sweep

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for this process (a second driver would train every trial twice):
        an flock on `.driver.lock`, which dies with its process; FolderError names the holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise FolderError(f"{self.root} is held by a running driver ({holder}); wait for it to "
                                 f"end, or stop it, before running this sweep again") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()  # the lock itself goes with the file handle

    def holds_sweep(self) -> bool:
        """Whether a sweep ran here before; FolderError for one an older version wrote."""
        if not self.cells.is_dir() and (self.root / OLD_STATE).exists():
            raise FolderError(f"{self.root} holds a sweep written by an older version of this project "
                              f"({OLD_STATE}, no {self.cells.name}/): finish it with that version, or give "
                              f"a new --output")
        return self.cells.is_dir()

    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    def storage(self, shared: str | None) -> str:
        """Where the sweep's Ray experiments live: <output>/ray, or under shared storage a
        folder named after this one and a hash of its path (sweeps may share a bucket)."""
        if not shared:
            return str(self.ray)
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:8]
        return f"{shared.rstrip('/')}/{self.root.name}-{digest}"

    def write_record(self, **info: Any) -> None:
        write_json_atomic(self.record, info, sort_keys=False, default=str)

    def read_record(self) -> dict[str, Any]:
        if not self.record.exists():
            raise FileNotFoundError(f"{self.record}: not a sweep folder (no {self.record.name}); expected the "
                                    f"--output of sweeps/paper_grid.py")
        return json.loads(self.record.read_text())


def resume_mismatch(folder: SweepFolder, configs: dict[str, dict[str, Any]], storage: str) -> str | None:
    """Why the sweep in `folder` cannot be resumed with `configs` (Ray would silently keep
    the configs it started with), or None; added cells are no mismatch, cells left out are."""
    if not folder.holds_sweep():
        return None
    recorded = folder.read_record().get("storage")
    if recorded != storage:
        return f"storage was {recorded!r}, now {storage!r} (give the same --storage)"
    before = {cell_id: record.config for cell_id, record in CellRecords(folder.cells).cells.items()}
    now = json.loads(json.dumps(configs))
    removed = sorted(set(before) - set(now))
    if removed:
        return (f"grid cells left out {removed[:3]}{' ...' if len(removed) > 3 else ''} (a sweep can gain "
                f"cells, not lose them)")
    defaults = _train_defaults()
    for cell_id, config in now.items():
        if cell_id not in before:
            continue  # added: it runs in an experiment of its own
        for key in sorted(set(config) | set(before[cell_id])):
            # a setting a newer version adds, at its default, is the same as not set
            was, is_now = before[cell_id].get(key, defaults.get(key)), config.get(key, defaults.get(key))
            if key != "init_from" and is_now != was:
                return f"{cell_id}: {key} was {was!r}, now {is_now!r}"
    return None


def recorded_experiments(folder: SweepFolder) -> dict[str, list[str]]:
    """The sweep's Ray experiments, in the order they were added: name -> its cell ids."""
    return folder.read_record()["experiments"] if folder.record.exists() else {}


def _train_defaults() -> dict[str, Any]:
    import dataclasses

    from vlsm.config import TrainConfig

    return json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(TrainConfig)
                                  if f.default is not dataclasses.MISSING}))
