"""One line per finished trial, so a sweep's console reads like a log, not a table."""

from __future__ import annotations

import logging
import time

from ray.tune import Callback

from sweeps.cell import Cell
from sweeps.outcome import DONE, trial_outcome
from vlsm import axes

logger = logging.getLogger("sweep")


class ProgressCallback(Callback):
    """Logs `[12/92] cris-real-frozen-p3: done, val Dice 0.612 (epoch 4), test 0.587 +- 0.110, 9 s`,
    with the status `trial_outcome` gives (a trial without a finite epoch is FAILED)."""

    def __init__(self, total: int):
        self.total = total
        self.finished = 0
        self.started = time.time()
        self._last: dict[str, dict] = {}

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._last[trial.trial_id] = result

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, error=True)

    def _line(self, trial, *, error: bool) -> None:
        self.finished += 1
        cell = Cell.of_config(trial.config)
        outcome = trial_outcome(trial, error=error)
        status = "done" if outcome.status == DONE else f"FAILED ({outcome.reason})"
        if error:
            status = f"FAILED (see {trial.error_file or trial.path})"
        result = self._last.pop(trial.trial_id, {}) or (trial.last_result or {})
        parts = [f"[{self.finished}/{self.total}] {cell.cell_id if cell else trial.trial_id}: {status}"]
        if axes.BEST_VAL_DICE in result:
            parts.append(f"val Dice {result[axes.BEST_VAL_DICE]:.3f} (epoch {result.get(axes.BEST_EPOCH, '?')})")
        if result.get(axes.TEST_DICE_MEAN) is not None:
            parts.append(f"test {result[axes.TEST_DICE_MEAN]:.3f} +- {result.get(axes.TEST_DICE_STD, float('nan')):.3f}")
        parts.append(f"{result.get('time_total_s', 0):.0f} s (sweep {time.time() - self.started:.0f} s)")
        logger.info(", ".join(parts))
