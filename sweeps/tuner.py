"""One way to start or resume a Ray Tune experiment at `<storage>/<name>`, for the grid and
the LR search: restored when it exists (finished trials not rerun, interrupted ones from
their last checkpoint, errored ones left errored), else created.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ray import tune

from sweeps.cell import CELL_ID
from sweeps.retention import CheckpointRetention, checkpoint_config

if TYPE_CHECKING:
    from sweeps.spec import RunSpec

logger = logging.getLogger(__name__)

__all__ = ["GRID_EXPERIMENT", "build_tuner", "experiment_path", "fit"]

GRID_EXPERIMENT = "grid"  # the grid's experiment folder under the storage path


def experiment_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def trial_dirname(trial: Any) -> str:
    """A trial's folder: `cris-real-frozen-p3_1a2b3c4d` (cell id, Ray's trial id)."""
    return f"{trial.config[CELL_ID]}_{trial.trial_id}"


def build_tuner(trainable: Callable, *, name: str, storage: str, run: RunSpec, callbacks: Sequence[tune.Callback] = (),
                param_space: dict[str, Any] | None = None, **tune_options: Any) -> tune.Tuner:
    """The experiment `name` under `storage`, restored with the settings it started with (Ray
    pickles them: `sweeps.folder.resume_mismatch` refuses changed configs), else created with
    the sweep's run settings and `tune_options` (tune.TuneConfig's)."""
    path = experiment_path(storage, name)
    if tune.Tuner.can_restore(path):
        logger.info("resuming the experiment in %s", path)
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(reuse_actors=run.reuse_actors, trial_dirname_creator=trial_dirname, **tune_options),
        run_config=tune.RunConfig(
            name=name, storage_path=storage,
            callbacks=[*callbacks, CheckpointRetention()],  # Ray keeps every checkpoint; this deletes them
            checkpoint_config=checkpoint_config(),
            failure_config=tune.FailureConfig(max_failures=run.max_failures),
            verbose=0,  # the grid logs one line per trial instead (sweeps.chain.RecordCallback)
        ))


class _NoRestoreHint(logging.Filter):
    """Drops Ray's "Resume experiment with: Tuner.restore(...)" line: a sweep resumes by
    running the same command again, as the driver says last."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Tuner.restore(" in message:
            record.msg, record.args = "\n".join(line for line in message.splitlines() if "Tuner.restore(" not in line), ()
        return True


def fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """`tuner.fit()`, without Ray's advice to resume through Tuner.restore."""
    ray_tune_logger = logging.getLogger("ray.tune.tune")
    hint = _NoRestoreHint()
    ray_tune_logger.addFilter(hint)
    try:
        return tuner.fit()
    finally:
        ray_tune_logger.removeFilter(hint)
