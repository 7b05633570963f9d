"""A plugin module (VLSM_PLUGINS=kill_worker, tests/ on the path) that SIGKILLs the worker
process of one cell's trial as it starts a given epoch, every time it gets there: what the
OOM killer or a lost node does to a trial, with no hook in the package.

    VLSM_KILL_CELL=cris-synthetic-frozen-p1 VLSM_KILL_EPOCH=2 VLSM_PLUGINS=kill_worker ...

A retried trial resumes from its last checkpoint (before that epoch) and is killed again,
so it dies once per try: `run.max_failures + 1` times, then Ray gives it up.
"""

from __future__ import annotations

import os
import signal

import vlsm.train

KILL_CELL, KILL_EPOCH = "VLSM_KILL_CELL", "VLSM_KILL_EPOCH"
_run_epoch = vlsm.train._run_epoch


def _run_epoch_or_die(trial, files, epoch: int) -> None:
    if trial.cfg.cell_id == os.environ.get(KILL_CELL) and epoch == int(os.environ.get(KILL_EPOCH, "2")):
        os.kill(os.getpid(), signal.SIGKILL)
    _run_epoch(trial, files, epoch)


vlsm.train._run_epoch = _run_epoch_or_die
