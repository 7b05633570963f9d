"""Learning-rate search before the grid (`--lr-search N`): per (model, encoder), N Optuna
TPE trials of a log-uniform rate on one cell (`lr_search.space`), ASHA stopping the poor
ones; each search its own resumable Ray experiment, the results in <output>/lr_search.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sweeps.cell import Cell
from sweeps.spec import LRSearchSpace, SweepSpec, grid_sources
from sweeps.trials import trial_config, trial_resources
from sweeps.tuner import build_tuner, experiment_path, fit
from vlsm.atomic import write_json_atomic
from vlsm.strategies import uses_synthetic

logger = logging.getLogger(__name__)


def run_lr_search(spec: SweepSpec, space: LRSearchSpace, caches: dict[str, dict[str, dict[str, str]]], *,
                  results_file: Path, storage: str, use_gpu: bool) -> dict[tuple[str, str], float]:
    """Best learning rate per (model, encoder); cached in `results_file` (lr_search.json)."""
    results: dict[str, dict[str, Any]] = json.loads(results_file.read_text()) if results_file.exists() else {}
    for model in spec.grid.models:
        for encoder in spec.grid.encoders:
            key = f"{model}/{encoder}"
            if key in results and results[key].get("trials") == spec.lr_search.trials:
                continue
            results[key] = _search(spec, space, caches, model, encoder, storage=storage, use_gpu=use_gpu)
            write_json_atomic(results_file, results, sort_keys=False)  # never half a file to resume from
            logger.info("lr search %s: best lr %.3g (%s %.4f)", key, results[key]["lr"], space.metric,
                        results[key]["best"])
    return {(m, e): results[f"{m}/{e}"]["lr"] for m in spec.grid.models for e in spec.grid.encoders}


def _search(spec: SweepSpec, space: LRSearchSpace, caches: dict[str, dict[str, dict[str, str]]], model: str,
            encoder: str, *, storage: str, use_gpu: bool) -> dict[str, Any]:
    """One (model, encoder) search: its best rate and score, and every rate tried."""
    from vlsm.trainable import train_vlsm

    synthetic = uses_synthetic(space.cell.strategy)  # on the grid's first source and seed
    cell = Cell(model, space.cell.strategy, encoder, space.cell.prompt, seed=spec.grid.seeds[0],
                synthetic_source=grid_sources(spec)[0] if synthetic else "")
    base = trial_config(spec, cell, caches)
    bounds = space.models[model]
    # N in the name: a search asked for with another N is a new search, not a resume
    name = f"lr-search-{model.lower()}-{encoder}-n{spec.lr_search.trials}"
    resources = trial_resources(spec, model, encoder, use_gpu=use_gpu)
    grid = fit(build_tuner(
        tune.with_resources(train_vlsm, resources=resources), name=name, storage=storage, run=spec.run,
        param_space={**base, "lr": tune.loguniform(bounds.lr_min, bounds.lr_max)},
        search_alg=OptunaSearch(seed=spec.grid.seeds[0]),
        scheduler=ASHAScheduler(time_attr="training_iteration", grace_period=space.asha.grace_period,
                                reduction_factor=space.asha.reduction_factor, max_t=space.asha.max_t),
        metric=space.metric, mode=space.mode, num_samples=spec.lr_search.trials))
    try:
        best = grid.get_best_result(metric=space.metric, mode=space.mode, scope="all")
    except RuntimeError as err:  # every search trial failed
        raise ValueError(f"lr search {model}/{encoder}: no trial reported {space.metric} ({err}); "
                         f"see {experiment_path(storage, name)}") from err
    scores = best.metrics_dataframe[space.metric]
    return {
        "lr": float(best.config["lr"]),
        "best": float(scores.max() if space.mode == "max" else scores.min()),
        "trials": spec.lr_search.trials,
        "tried": sorted(float(r.config["lr"]) for r in grid if r.config),
    }
