"""Run the planned grid as one Ray Tune experiment (and resume it).

One experiment (`sweeps.tuner.build_tuner`) with the chain searcher, per-trial resources
from the sweep YAML, the driver's callbacks (chain state, MLflow, progress), one storage
path, and `reuse_actors` (0.3 s instead of 4.6 s per trial slot on a 2-core machine,
docs/design.md). Running again with the same output folder restores the experiment:
finished trials are not rerun, interrupted ones continue from their last checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import tune

from sweeps.cell import Cell
from sweeps.chain import ChainCallback, ChainSearcher, ChainState
from sweeps.outcome import NOT_RUN
from sweeps.progress import ProgressCallback
from sweeps.spec import SweepSpec
from sweeps.tracking import MLflowTrialCallback, SweepTracker
from sweeps.trials import trial_resources
from sweeps.tuner import GRID_EXPERIMENT, build_tuner, fit, trial_dirname
from vlsm import axes

logger = logging.getLogger(__name__)


def _trainable(spec: SweepSpec, use_gpu: bool):
    from vlsm.trainable import train_vlsm

    def resources(config: dict[str, Any]) -> dict[str, float]:
        cell = Cell.of_config(config)
        return trial_resources(spec, cell.model, cell.encoder, use_gpu=use_gpu)

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
    # On a resume Ray restores its own pickled searcher and callbacks (sharing one restored
    # ChainState); the ones built here then serve a new experiment only.
    state = ChainState(path=str(state_path))
    tuner = build_tuner(
        _trainable(spec, use_gpu),
        name=GRID_EXPERIMENT,
        storage=storage,
        tune_config=tune.TuneConfig(
            search_alg=ChainSearcher(cells, configs, state, metric=axes.BEST_VAL_DICE, mode="max"),
            num_samples=len(cells),
            max_concurrent_trials=spec.run.max_concurrent or None,
            reuse_actors=spec.run.reuse_actors,
            trial_dirname_creator=trial_dirname,
        ),
        max_failures=spec.run.max_failures,
        callbacks=[ChainCallback(state), MLflowTrialCallback(tracker), ProgressCallback(len(cells))],
    )
    fit(tuner)
    return ChainState.load(state_path)


def record_not_run(state: ChainState, tracker: SweepTracker, configs: dict[str, dict[str, Any]]) -> None:
    """Give every cell that never ran (its upstream failed) an MLflow run saying why."""
    for cell_id, entry in state.cells.items():
        if entry.status == NOT_RUN:
            tracker.trial_run(cell_id, configs.get(cell_id))
            tracker.finish_trial(cell_id, NOT_RUN, reason=entry.reason)
