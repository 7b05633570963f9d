"""The driver's side of one Ray Tune experiment: `ChainSearcher` says which cell runs next
(a finetune once its upstream is done), `RecordCallback` writes what each did into its
record and logs a line (docs/design.md, "One record per cell").
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher

from sweeps.cell import CELL_ID
from sweeps.record import (
    DONE,
    FINISHED_STATUSES,
    PENDING,
    RUNNING,
    TEST_KEYS,
    CellRecord,
    CellRecords,
    last_failure,
    trial_disk_full,
    trial_outcome,
)
from vlsm.checkpoint import BEST_DIR

logger = logging.getLogger(__name__)
progress = logging.getLogger("sweep")

__all__ = ["ChainSearcher", "RecordCallback"]

_SAVED = ("status", "trial_id", "checkpoint", "reason")  # saved with each experiment snapshot


class ChainSearcher(Searcher):
    """Suggest the experiment's cells in order, each finetune once its upstream is done."""

    def __init__(self, cell_ids: list[str], records: CellRecords, *, metric: str, mode: str = "max"):
        super().__init__(metric=metric, mode=mode)
        self.cell_ids, self.records = cell_ids, records

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for cell_id in self.cell_ids:
            record = self.records[cell_id]
            if record.status != PENDING:
                continue
            init_from = None
            if record.upstream is not None:
                upstream = self.records[record.upstream]
                if upstream.status != DONE or upstream.checkpoint is None:
                    continue  # wait for its own upstream, not the whole stage
                init_from = f"{upstream.checkpoint.rstrip('/')}/{BEST_DIR}"
            config = {**record.config, "init_from": init_from}
            self.records.update(cell_id, status=RUNNING, trial_id=trial_id, config=config)
            logger.info("starting %s%s", cell_id, f" from {record.upstream}" if init_from else "")
            return copy.deepcopy(config)
        finished = all(self.records[c].status in FINISHED_STATUSES for c in self.cell_ids)
        return Searcher.FINISHED if finished else None  # else finetunes wait

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to do: RecordCallback records the outcome."""

    def save(self, checkpoint_path: str) -> None:
        """Written by Ray with each experiment snapshot, so a resume agrees with Ray's trials."""
        saved = {c: {key: getattr(self.records[c], key) for key in _SAVED} for c in self.cell_ids}
        with open(checkpoint_path, "w") as f:  # Ray's own file, written where Ray says
            json.dump(saved, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            for cell_id, fields in json.load(f).items():
                self.records.update(cell_id, **fields)


class RecordCallback(Callback):
    """Each report and each trial's outcome (decided here, once) into the cell's record."""

    def __init__(self, records: CellRecords, total: int):
        self.records, self.total, self.finished, self.started = records, total, 0, time.time()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        record = self.records[trial.config[CELL_ID]]
        record.add_report(result)
        self.records.save(record)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._stop_if_disk_full(trial)
        self._finish(trial, error=True)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """A failed try Ray retries from the trial's last checkpoint: said; the cell runs on."""
        self._stop_if_disk_full(trial)
        progress.warning("%s: try %s failed (%s); Ray retries it from its last checkpoint (run.max_failures=%s)",
                         trial.config[CELL_ID], getattr(trial, "num_failures", "?"), last_failure(trial),
                         getattr(trial, "max_failures", "?"))

    def _stop_if_disk_full(self, trial) -> None:
        """A trial that could not write for lack of space stops the sweep, its record left
        running: every retry would fail alike, and recorded as failed it would never run
        again. Ray's last snapshot still has it running, so the same command resumes it."""
        error = trial_disk_full(trial)
        if error is not None:
            progress.warning("%s: stopped, could not write %s (%s); stopping the sweep",
                             trial.config[CELL_ID], error.filename, error.strerror)
            raise error

    def _finish(self, trial, *, error: bool) -> None:
        cell_id = trial.config[CELL_ID]
        self.records.finish(cell_id, trial.trial_id, trial_outcome(trial, error=error))
        self.finished += 1
        progress.info(self._line(self.records[cell_id]))

    def _line(self, record: CellRecord) -> str:
        """`[12/92] cris-real-frozen-p3: done, val Dice 0.612 (epoch 4), test 0.587 +- 0.110, 9 s`."""
        status = "done" if record.status == DONE else f"FAILED ({record.reason})"
        parts = [f"[{self.finished}/{self.total}] {record.cell_id}: {status}"]
        if record.best_epoch:
            parts.append(f"val Dice {record.best_val_dice:.3f} (epoch {record.best_epoch})")
        if len(record.test) == len(TEST_KEYS):
            parts.append("test {:.3f} +- {:.3f}".format(*(record.test[key] for key in TEST_KEYS)))
        parts.append(f"{record.wall_s or 0:.0f} s (sweep {time.time() - self.started:.0f} s)")
        return ", ".join(parts)
