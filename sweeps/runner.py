"""Run the planned grid as Ray Tune experiments (and resume them).

An experiment (`sweeps.tuner.build_tuner`) has the chain searcher, per-trial resources
from the sweep YAML, the driver's callbacks (chain state, MLflow, progress), one storage
path, and `reuse_actors` (0.3 s instead of 4.6 s per trial slot on a 2-core machine,
docs/design.md). Running again with the same output folder restores it: finished trials
are not rerun, interrupted ones continue from their last checkpoint.

A sweep is one experiment, "grid", until cells are added to it (more seeds, a source, a
strategy): Ray restores an experiment with the searcher it pickled, which knows only its
own cells, so the added cells run as a new experiment ("grid-2", ...) after the earlier
ones, sharing the chain state (a finetune added later starts from its upstream's
checkpoint in an earlier experiment). An experiment whose cells have all finished is not
restored at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import tune

from sweeps.cell import Cell
from sweeps.chain import ChainCallback, ChainSearcher, ChainState
from sweeps.outcome import FINISHED_STATUSES, NOT_RUN
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


def plan_experiments(recorded: dict[str, list[str]], cells: list[Cell]) -> dict[str, list[Cell]]:
    """The sweep's experiments: the recorded ones (name -> cell ids), in order, then one
    of the cells no recorded experiment holds, if any (`grid` for a new sweep)."""
    by_id = {cell.cell_id: cell for cell in cells}
    experiments = {name: [by_id[i] for i in ids if i in by_id] for name, ids in recorded.items()}
    placed = {i for ids in recorded.values() for i in ids}
    added = [cell for cell in cells if cell.cell_id not in placed]
    if added:
        name = GRID_EXPERIMENT if not experiments else f"{GRID_EXPERIMENT}-{len(experiments) + 1}"
        experiments[name] = added
    return experiments


def run_grid(
    spec: SweepSpec,
    experiments: dict[str, list[Cell]],
    configs: dict[str, dict[str, Any]],
    *,
    storage: str,
    state_path: Path,
    tracker: SweepTracker,
    use_gpu: bool,
) -> ChainState:
    """Run (or resume) the grid's experiments in order (`plan_experiments`); returns the
    final state of every cell.

    The chain state is saved with each searcher (Ray restores it) and mirrored to
    `state_path` after every change, which is what the driver and the export read.
    """
    for name, cells in experiments.items():
        state = ChainState.load(state_path) if state_path.exists() else ChainState(path=str(state_path))
        if cells and all(state.cells.get(c.cell_id) and state.cells[c.cell_id].status in FINISHED_STATUSES
                         for c in cells):
            continue  # nothing left to run in it
        # On a resume Ray restores its own pickled searcher and callbacks (sharing one
        # restored ChainState); the ones built here then serve a new experiment only.
        tuner = build_tuner(
            _trainable(spec, use_gpu),
            name=name,
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
        if any(ChainState.load(state_path).cells[c.cell_id].status not in FINISHED_STATUSES for c in cells):
            break  # interrupted: the later experiments wait for the next run
    return ChainState.load(state_path)


def record_not_run(state: ChainState, tracker: SweepTracker, configs: dict[str, dict[str, Any]]) -> None:
    """Give every cell that never ran (its upstream failed) an MLflow run saying why."""
    for cell_id, entry in state.cells.items():
        if entry.status == NOT_RUN:
            tracker.trial_run(cell_id, configs.get(cell_id))
            tracker.finish_trial(cell_id, NOT_RUN, reason=entry.reason)
