"""One record per cell, `<output>/cells/<cell_id>.json`: all the sweep knows of that cell,
written by the driver whenever it changes; `trial_outcome` decides how a trial ended, once
(docs/design.md, "One record per cell").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.schema import EPOCHS_COLUMNS, TRIAL_ID
from vlsm.atomic import DiskFullError, disk_full, write_json_atomic
from vlsm.axes import (
    BEST_EPOCH,
    BEST_VAL_DICE,
    EPOCH,
    STOP_REASON,
    TEST_DICE_MEAN,
    TEST_DICE_STD,
    VAL_DICE,
)

if TYPE_CHECKING:
    from sweeps.cell import Cell

logger = logging.getLogger(__name__)

__all__ = ["DONE", "FAILED", "FINISHED_STATUSES", "MLFLOW_STATUS", "NOT_RUN", "PENDING", "RUNNING",
           "CellRecord", "CellRecords", "Outcome", "checkpoint_uri", "last_failure", "trial_disk_full",
           "trial_outcome"]

PENDING, RUNNING, DONE, FAILED, NOT_RUN = "pending", "running", "done", "failed", "not_run"
FINISHED_STATUSES = (DONE, FAILED, NOT_RUN)  # a cell in one of these never runs again
MLFLOW_STATUS = {DONE: "FINISHED", FAILED: "FAILED", NOT_RUN: "KILLED"}  # a trial run's end
EPOCH_KEYS = tuple(c for c in EPOCHS_COLUMNS if c != TRIAL_ID)  # what a record keeps of each epoch
TEST_KEYS = (TEST_DICE_MEAN, TEST_DICE_STD)


@dataclass
class CellRecord:
    """One cell: what it is, the trial config it runs with, and what became of it."""

    cell_id: str
    axes: dict[str, str]  # vlsm.axes.CELL_AXES and VARIANT_AXES -> the cell's values
    seed: int
    upstream: str | None  # the cell a synth-PT:real-FT cell starts from
    experiment: str  # its Ray Tune experiment ("grid", "grid-2", ...)
    config: dict[str, Any]  # the trial's TrainConfig dict (init_from set when it starts)
    gpu_share: float = 0.0
    status: str = PENDING
    reason: str | None = None  # why it failed or was not run
    trial_id: str | None = None  # Ray's
    checkpoint: str | None = None  # the final checkpoint (path or storage URI; holds best/)
    run_id: str | None = None  # MLflow's
    best_epoch: int | None = None  # as the trial reported them (None: no finite epoch)
    best_val_dice: float | None = None
    test: dict[str, float] = field(default_factory=dict)  # test_dice_mean, test_dice_std
    wall_s: float | None = None  # Ray's time_total_s at the last report
    epochs: list[dict[str, Any]] = field(default_factory=list)  # by epoch, its last report

    def add_report(self, result: Mapping[str, Any]) -> None:
        """A trial report, as the trial reported it (a replayed epoch replaces its earlier one)."""
        epoch, val_dice = result.get(EPOCH), result.get(VAL_DICE)
        if epoch is not None and val_dice is not None and not math.isnan(val_dice):
            row = {key: result.get(key) for key in EPOCH_KEYS}
            self.epochs = sorted([e for e in self.epochs if e[EPOCH] != epoch] + [row], key=lambda e: e[EPOCH])
        best = result.get(BEST_EPOCH)  # 0: no epoch with a finite loss yet
        self.best_epoch = int(best) if best else None
        self.best_val_dice = float(result[BEST_VAL_DICE]) if best else None
        self.test = {key: result[key] for key in TEST_KEYS if result.get(key) is not None}
        self.wall_s = result.get("time_total_s")


class CellRecords:
    """The records of a sweep's cells, read from their folder; each change is written at once."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        files = self.folder.glob("*.json") if self.folder.is_dir() else ()
        records = (CellRecord(**json.loads(path.read_text())) for path in files)
        self.cells: dict[str, CellRecord] = {r.cell_id: r for r in sorted(records, key=lambda r: r.cell_id)}

    # Ray pickles the searcher and callbacks with an experiment; restored, they read the files.
    def __getstate__(self) -> dict[str, str]:
        return {"folder": str(self.folder)}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(Path(state["folder"]))

    def __getitem__(self, cell_id: str) -> CellRecord:
        return self.cells[cell_id]

    def save(self, record: CellRecord) -> None:
        self.cells[record.cell_id] = record
        write_json_atomic(self.folder / f"{record.cell_id}.json", dataclasses.asdict(record), sort_keys=False)

    def update(self, cell_id: str, **changes: Any) -> None:
        self.save(dataclasses.replace(self.cells[cell_id], **changes))

    def plan(self, experiments: Mapping[str, Sequence[Cell]], configs: Mapping[str, dict[str, Any]],
             gpu_share: Mapping[str, float]) -> None:
        """A pending record for each planned cell that has none (the others keep theirs)."""
        for name, cells in experiments.items():
            for cell in cells:
                if cell.cell_id not in self.cells:
                    self.save(CellRecord(cell.cell_id, cell.axes(), cell.seed, cell.upstream, name,
                                         configs[cell.cell_id], gpu_share[cell.cell_id]))

    def restart(self, cell_ids: Iterable[str]) -> None:
        """Running cells pending again (a restored experiment's searcher marks its own running)."""
        for cell_id in cell_ids:
            if self.cells[cell_id].status == RUNNING:
                self.update(cell_id, status=PENDING, trial_id=None)

    def finish(self, cell_id: str, trial_id: str, outcome: Outcome) -> None:
        """A trial's outcome; when it is not done, the cells waiting on it will not run."""
        self.update(cell_id, status=outcome.status, reason=outcome.reason, trial_id=trial_id,
                    checkpoint=outcome.checkpoint or self.cells[cell_id].checkpoint)
        if outcome.status == DONE:
            return
        for other in list(self.cells.values()):
            if other.upstream == cell_id and other.status == PENDING:
                reason = f"upstream {cell_id} {outcome.status}: {outcome.reason}"
                self.update(other.cell_id, status=NOT_RUN, reason=reason)
                logger.warning("%s not run: %s", other.cell_id, reason)


@dataclass(frozen=True)
class Outcome:
    """The end of one trial: its status, why it failed, and its final checkpoint."""

    status: str  # DONE or FAILED
    reason: str | None = None
    checkpoint: str | None = None


def trial_outcome(trial: Any, *, error: bool = False) -> Outcome:
    """How a trial Ray reports complete ended (`error`: failed for good): done only with a
    checkpoint and an epoch with a finite loss (best/ weights a finetune can start from)."""
    checkpoint = checkpoint_uri(trial.checkpoint) if trial.checkpoint is not None else None
    if error:
        return Outcome(FAILED, _error_line(trial), checkpoint)
    result = trial.last_result or {}
    if not result.get(BEST_EPOCH):
        why = result.get(STOP_REASON) or "no best epoch"
        return Outcome(FAILED, f"no epoch with a finite loss ({why})", checkpoint)
    if checkpoint is None:
        return Outcome(FAILED, "trial finished without a checkpoint")
    return Outcome(DONE, None, checkpoint)


def trial_disk_full(trial: Any) -> DiskFullError | None:
    """The trial's last failure as a DiskFullError when it was a full disk or quota (a
    worker writing a checkpoint to storage, or to its node's disk), else None; the file is
    the one the error names, else the trial's folder in storage."""
    failures = _failures(_error_text(trial))
    found = disk_full(RuntimeError("\n".join(failures[-1]))) if failures else None
    if found is None:
        return None
    code, name = found
    return DiskFullError(code, os.strerror(code), name or getattr(trial, "path", None) or "its trial folder")


def _error_line(trial: Any) -> str:
    """One line for a trial Ray gave up on, naming the file with Ray's full messages: a worker
    that died on its last try (killed, out of memory, a lost node) said so with how often,
    else the last line of its last error (the exception)."""
    where = _error_location(trial)
    failures = _failures(_error_text(trial))
    if not failures:
        return f"trial failed after all retries (see {where or 'its error.txt'})"
    if _worker_died(failures[-1]):
        return _worker_died_line(failures, getattr(trial, "max_failures", None), where)
    return f"{failures[-1][-1][:2000]} (after all retries; traceback in {where})"


def last_failure(trial: Any) -> str:
    """Why the trial's latest try failed, in one line (for the warning when Ray retries it)."""
    failures = _failures(_error_text(trial))
    if not failures:
        return "an error"
    if _worker_died(failures[-1]):
        return "its worker process died (killed, out of memory or a lost node)"
    return failures[-1][-1][:500]


def _error_text(trial: Any) -> str:
    """Ray's error file of the trial: the driver's own copy first (Ray uploads it to storage
    later), else storage's; "" when there is none (yet) or its storage is unreachable."""
    local = getattr(trial, "error_file", None)
    try:
        if local and Path(local).is_file():
            return Path(local).read_text()
        return str(trial.get_error() or "")
    except (AttributeError, OSError):
        return ""


def _error_location(trial: Any) -> str | None:
    """Where the error file stays: in the trial's folder on storage (the driver's copy is
    in Ray's temporary session folder), else the driver's copy."""
    local = getattr(trial, "error_file", None)
    if not getattr(trial, "path", None):
        return local
    name = Path(local).name if local else "error.txt"
    storage = getattr(trial, "storage", None)
    return _with_scheme(f"{str(trial.path).rstrip('/')}/{name}", getattr(storage, "storage_filesystem", None))


_FAILURE_HEADER = re.compile(r"^Failure # \d+ \(occurred at [^)\n]*\)$", re.MULTILINE)


def _failures(text: str) -> list[list[str]]:
    """Ray's error file as one list of non-empty lines per failure (Ray appends each under
    a "Failure # n (occurred at ...)" line)."""
    blocks = _FAILURE_HEADER.split(text)
    lines = ([line.strip() for line in block.splitlines() if line.strip()] for block in blocks)
    return [block for block in lines if block]


def _worker_died(failure: Sequence[str]) -> bool:
    """Whether a failure is the trial's worker process dying (Ray's message for a dead actor
    or worker: SIGKILL, the OOM killer, a lost node), not an error raised in the trial."""
    from ray.exceptions import ActorDiedError, WorkerCrashedError

    return failure[0].startswith((ActorDiedError.BASE_ERROR_MSG, str(WorkerCrashedError())))


def _worker_died_line(failures: Sequence[Sequence[str]], max_failures: int | None, where: str | None) -> str:
    """`the trial's worker process died (killed, out of memory or a lost node) 2 times; run.max_failures=1 (...)`."""
    died = sum(_worker_died(failure) for failure in failures)
    errors = len(failures) - died
    line = f"the trial's worker process died (killed, out of memory or a lost node) {_times(died)}"
    if errors:
        line += f" and it failed {_times(errors)} with an error"
    if max_failures is not None:
        line += f"; run.max_failures={max_failures}"
    return f"{line} (Ray's messages in {where or 'its error.txt'})"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def checkpoint_uri(checkpoint: Any) -> str:
    """A Ray checkpoint's location as a path or URI (pyarrow drops the s3:// scheme)."""
    return _with_scheme(str(checkpoint.path), getattr(checkpoint, "filesystem", None))


def _with_scheme(path: str, filesystem: Any) -> str:
    """A path on a pyarrow filesystem as a local path or a URI with its scheme."""
    if "://" in path or filesystem is None or filesystem.type_name in ("local", "mock"):
        return path
    return f"{filesystem.type_name}://{path}"
