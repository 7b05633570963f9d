"""Delete superseded trial checkpoints only when no saved experiment state can name them
(Ray's `num_to_keep` deletes too early for a killed driver to resume; docs/design.md,
"The sweep folder")."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray import tune
from ray.tune import Callback

logger = logging.getLogger(__name__)

SNAPSHOTS_BEFORE_DELETE = 2
GRACE_S = 60.0


def checkpoint_config() -> tune.CheckpointConfig:
    """Ray keeps every checkpoint (CheckpointRetention deletes); the variable keeps Ray's
    per-checkpoint bookkeeping in every snapshot to the path, so snapshots stay small."""
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    return tune.CheckpointConfig(num_to_keep=None)


@dataclass
class _Superseded:
    """A checkpoint that a newer one of the same trial replaced."""

    checkpoint: tune.Checkpoint
    since: float  # clock time it was superseded
    snapshots: int = 0  # experiment snapshots written since


class CheckpointRetention(Callback):
    """Keep each trial's latest checkpoint; delete older ones once resuming cannot need them."""

    def __init__(self, grace_s: float = GRACE_S, clock: Callable[[], float] = time.monotonic):
        self.grace_s = grace_s
        self.clock = clock
        self._latest: dict[str, tune.Checkpoint] = {}  # trial id -> its newest checkpoint
        self._superseded: list[_Superseded] = []
        self._snapshot_since_step = False  # a snapshot was written after the last step ended

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint: tune.Checkpoint, **info) -> None:
        previous = self._latest.get(trial.trial_id)
        self._latest[trial.trial_id] = checkpoint
        if previous is not None and previous.path != checkpoint.path:
            self._superseded.append(_Superseded(previous, since=self.clock()))

    def get_state(self) -> dict:
        """Called by Ray while it writes an experiment snapshot: count it, return our state."""
        for entry in self._superseded:
            entry.snapshots += 1
        self._snapshot_since_step = True
        return {"latest": dict(self._latest), "superseded": list(self._superseded)}

    def set_state(self, state: dict) -> None:
        self._latest = dict(state.get("latest", {}))
        # a restored superseded entry starts counting again: the snapshots that counted it
        # may be newer than the one this sweep resumed from
        self._superseded = [_Superseded(e.checkpoint, since=self.clock()) for e in state.get("superseded", [])]

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._snapshot_since_step = False
        now = self.clock()
        self._delete(lambda e: e.snapshots >= SNAPSHOTS_BEFORE_DELETE and now - e.since >= self.grace_s, trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        if self._snapshot_since_step:  # Ray's final snapshot, awaited, names only the latest
            self._delete(lambda e: e.snapshots >= 1, trials)
        elif self._superseded:
            logger.info("the sweep stopped without a final snapshot: keeping %d superseded "
                        "checkpoints a resume may need", len(self._superseded))

    def _delete(self, ready: Callable[[_Superseded], bool], trials: list) -> None:
        if not self._superseded:  # the usual case: this runs after every controller step
            return
        keep: list[_Superseded] = []
        # Ray's own view too: after a resume from a torn snapshot, our restored state and
        # Ray's trial states may disagree on which checkpoint is a trial's latest
        latest = {c.path for c in self._latest.values()}
        latest |= {t.checkpoint.path for t in trials if getattr(t, "checkpoint", None) is not None}
        for entry in self._superseded:
            if not ready(entry):
                keep.append(entry)
            elif entry.checkpoint.path not in latest:
                _delete_checkpoint(entry.checkpoint)
        self._superseded = keep


def _delete_checkpoint(checkpoint: tune.Checkpoint) -> None:
    """Remove one checkpoint folder from its (local or remote) filesystem; never raise."""
    try:
        checkpoint.filesystem.delete_dir(checkpoint.path)
    except FileNotFoundError:
        pass
    except OSError as error:  # pyarrow raises OSError for remote failures
        logger.warning("could not delete superseded checkpoint %s: %s", checkpoint.path, error)
