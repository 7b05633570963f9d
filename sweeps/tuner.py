"""One way to start or resume a Ray Tune experiment at `<storage>/<name>`, for the grid and
the LR search: restored when it exists (finished trials not rerun, interrupted ones from
their last checkpoint, errored ones left errored), else created. A trial whose node is lost
goes on from its last checkpoint on another node without it counting toward
`run.max_failures` (`NodeLossRetry`; docs/faults.md, "A lost node").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from sweeps.cell import CELL_ID
from sweeps.retention import CheckpointRetention, checkpoint_config

if TYPE_CHECKING:
    from sweeps.spec import RunSpec

logger = logging.getLogger(__name__)

__all__ = ["GRID_EXPERIMENT", "MAX_NODE_LOSSES", "NodeLossRetry", "build_tuner", "experiment_path", "fit"]

GRID_EXPERIMENT = "grid"  # the grid's experiment folder under the storage path
# A trial's node losses that do not count toward run.max_failures; later ones count like any
# failure, so a trial that takes its node down every time (the host out of memory) still ends.
MAX_NODE_LOSSES = 5
# How Ray 2.60 says an actor (a trial's worker) died with its node: ActorDiedError's text,
# whether the node was preempted, terminated or stopped answering its health checks.
NODE_DIED = "The actor died because its node has died"


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
            # Ray keeps every checkpoint (CheckpointRetention deletes them) and counts a lost node as a failure
            callbacks=[*callbacks, CheckpointRetention(), NodeLossRetry()],
            checkpoint_config=checkpoint_config(),
            failure_config=tune.FailureConfig(max_failures=run.max_failures),
            verbose=0,  # the grid logs one line per trial instead (sweeps.chain.RecordCallback)
        ))


def lost_its_node(trial: Any) -> bool:
    """Whether the trial's latest failure (the error Ray just pickled) was its node going
    away: Ray says its node died, or that its worker became unreachable, which happens when
    the worker's connection closed before Ray noticed the node's death (a worker that dies
    on a live node is reported as such by its node)."""
    import cloudpickle
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    path = trial.pickled_error_file
    if not path or not Path(path).is_file():
        return False
    try:
        error = cloudpickle.loads(Path(path).read_bytes())
    except Exception:  # noqa: BLE001 - an error Ray could not unpickle is not a node's death
        return False
    if isinstance(error, RayTaskError):
        error = error.as_instanceof_cause()
    return isinstance(error, ActorUnavailableError) or (isinstance(error, RayActorError) and NODE_DIED in str(error))


class NodeLossRetry(tune.Callback):
    """Takes a lost node off a retried trial's failure count: Ray counts every death of a
    trial's worker toward FailureConfig.max_failures, but a preempted spot worker or a dead
    host says nothing about the trial (Ray itself exempts only nodes drained with a
    preemption notice). Up to MAX_NODE_LOSSES per trial; the trial resumes from its last
    checkpoint on another node either way. A lost node at run.max_failures 0 is not retried:
    Ray decides before callbacks run."""

    def __init__(self) -> None:
        self.losses: dict[str, int] = {}  # trial id -> node losses not counted

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info) -> None:
        if not lost_its_node(trial):
            return
        lost = self.losses.get(trial.trial_id, 0) + 1
        self.losses[trial.trial_id] = lost
        counted = lost > MAX_NODE_LOSSES
        if not counted:
            trial.run_metadata.num_failures -= 1
            trial.run_metadata.invalidate_cache()
        logger.warning("%s lost its node (loss %d%s); it goes on from its last checkpoint on another node",
                       trial.config.get(CELL_ID, trial.trial_id), lost,
                       f", more than {MAX_NODE_LOSSES}: counted as a failure" if counted else
                       ", not counted toward run.max_failures")

    def get_state(self) -> dict:
        return {"losses": dict(self.losses)}

    def set_state(self, state: dict) -> None:
        self.losses = dict(state.get("losses", {}))


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
