"""Run the planned grid as one Ray Tune experiment (and resume it).

One `tune.Tuner` with the chain searcher, per-trial resources from the sweep YAML,
MLflow logging from the driver, one storage path, and `reuse_actors` (0.3 s instead of
4.6 s per trial slot on a 2-core machine, DESIGN.md). Running again with the same
output folder restores the experiment: finished trials are not rerun, interrupted ones
continue from their last checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import tune

from sweeps.chain import NOT_RUN, ChainCallback, ChainSearcher, ChainState
from sweeps.grid import Cell
from sweeps.progress import ProgressCallback
from sweeps.retention import CheckpointRetention, checkpoint_config
from sweeps.spec import SweepSpec
from sweeps.trials import trial_resources
from vlsm import axes
from vlsm.tracking import MLflowTrialCallback, SweepTracker

logger = logging.getLogger(__name__)

EXPERIMENT_NAME = "grid"


def experiment_path(storage: str, name: str = EXPERIMENT_NAME) -> str:
    return f"{storage.rstrip('/')}/{name}"


def _trainable(spec: SweepSpec, use_gpu: bool):
    from vlsm.trainable import train_vlsm

    def resources(config: dict[str, Any]) -> dict[str, float]:
        cell = config["tags"]
        return trial_resources(spec, cell["model"], cell["encoder"], use_gpu=use_gpu)

    return tune.with_resources(train_vlsm, resources=resources)


def run_grid(
    spec: SweepSpec,
    cells: list[Cell],
    configs: dict[str, dict[str, Any]],
    *,
    storage: str,
    state_path: Path,
    tracker: SweepTracker,
    use_gpu: bool,
) -> ChainState:
    """Run (or resume) the grid; returns the final state of every cell.

    The chain state is saved with the searcher (Ray restores it) and mirrored to
    `state_path` after every change, which is what the driver and the export read.
    """
    path = experiment_path(storage)
    trainable = _trainable(spec, use_gpu)
    if tune.Tuner.can_restore(path):
        logger.info("resuming the sweep in %s", path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        state = ChainState(path=str(state_path))
        searcher = ChainSearcher(cells, configs, state, metric=axes.BEST_VAL_DICE, mode="max")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=len(cells),
                max_concurrent_trials=spec.run.max_concurrent or None,
                reuse_actors=spec.run.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT_NAME,
                storage_path=storage,
                callbacks=[ChainCallback(state), MLflowTrialCallback(tracker), ProgressCallback(len(cells)),
                           CheckpointRetention()],
                failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
                # Ray keeps every checkpoint; CheckpointRetention deletes the superseded ones
                # once no saved experiment state can name them (Ray's num_to_keep deletes too
                # early for a killed driver to resume, see sweeps/retention.py)
                checkpoint_config=checkpoint_config(),
                verbose=0,  # ProgressCallback logs one line per trial instead
            ),
        )
    tuner.fit()
    return ChainState.load(state_path)


def record_not_run(state: ChainState, tracker: SweepTracker, configs: dict[str, dict[str, Any]]) -> None:
    """Give every cell that never ran (its upstream failed) an MLflow run saying why."""
    for cell_id, entry in state.cells.items():
        if entry.status == NOT_RUN:
            tracker.trial_run(cell_id, configs.get(cell_id))
            tracker.finish_trial(cell_id, NOT_RUN, reason=entry.reason)
