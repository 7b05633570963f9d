"""How a trial ended, decided in one place.

A trial is `done` when it ended normally with a checkpoint holding best weights (at least
one epoch with a finite loss): only then can a finetune start from it. Otherwise it is
`failed`, with the reason: Ray gave up after its retries, it left no checkpoint, or no
epoch had a finite loss (a diverging learning rate). The chain state, the MLflow runs,
the progress lines and, through the chain state, the exports all take their status from
`trial_outcome`, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsm.axes import BEST_EPOCH, STOP_REASON

__all__ = [
    "DONE",
    "FAILED",
    "FINISHED_STATUSES",
    "MLFLOW_STATUS",
    "NOT_RUN",
    "PENDING",
    "RUNNING",
    "Outcome",
    "checkpoint_uri",
    "trial_outcome",
]

PENDING, RUNNING, DONE, FAILED, NOT_RUN = "pending", "running", "done", "failed", "not_run"
FINISHED_STATUSES = (DONE, FAILED, NOT_RUN)  # a cell in one of these never runs again
MLFLOW_STATUS = {DONE: "FINISHED", FAILED: "FAILED", NOT_RUN: "KILLED"}  # a trial run's end
RETRIES_EXHAUSTED = "trial failed after all retries (see its error.txt)"


@dataclass(frozen=True)
class Outcome:
    """The end of one trial: its status, why it failed, and its final checkpoint."""

    status: str  # DONE or FAILED
    reason: str | None = None
    checkpoint: str | None = None  # path or storage URI of the final checkpoint (holds best/)


def trial_outcome(trial: Any, *, error: bool = False) -> Outcome:
    """The outcome of a Ray trial that Ray reports complete (`error`: failed for good)."""
    checkpoint = checkpoint_uri(trial.checkpoint) if trial.checkpoint is not None else None
    if error:
        return Outcome(FAILED, _error_line(trial), checkpoint)
    result = trial.last_result or {}
    if not result.get(BEST_EPOCH):  # no best/ weights for a finetune to start from
        why = result.get(STOP_REASON) or "no best epoch"
        return Outcome(FAILED, f"no epoch with a finite loss ({why})", checkpoint)
    if checkpoint is None:
        return Outcome(FAILED, "trial finished without a checkpoint")
    return Outcome(DONE, None, checkpoint)


def _error_line(trial: Any) -> str:
    """Why a trial failed for good: the last line of its error (the exception), and where
    the whole traceback is."""
    where = getattr(trial, "error_file", None) or getattr(trial, "path", None)
    try:  # the driver's own copy first (Ray uploads it to storage later), else storage's
        local = Path(where) if where else None
        text = local.read_text() if local is not None and local.is_file() else (trial.get_error() or "")
    except (AttributeError, OSError):  # no error file (yet), or its storage unreachable
        text = ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return f"{RETRIES_EXHAUSTED}" if where is None else f"trial failed after all retries (see {where})"
    return f"{lines[-1][:2000]} (after all retries; traceback in {where})"


def checkpoint_uri(checkpoint: Any) -> str:
    """A Ray checkpoint's location as a path or URI (pyarrow drops the s3:// scheme)."""
    path = str(checkpoint.path)
    filesystem = getattr(checkpoint, "filesystem", None)
    if "://" in path or filesystem is None or filesystem.type_name in ("local", "mock"):
        return path
    return f"{filesystem.type_name}://{path}"
