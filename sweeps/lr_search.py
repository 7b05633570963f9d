"""Learning-rate search before the grid (`--lr-search N`): Optuna TPE with ASHA.

For each (model, encoder) of the grid, N trials on one cell (search_spaces/lr_search.yaml,
default real P1) sample a log-uniform learning rate; ASHA stops the poor ones early.
Each search is its own Ray Tune experiment under the sweep's storage, so an interrupted
search resumes; the results are kept in <output>/lr_search.json, and the grid uses the
best learning rate found per (model, encoder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sweeps.grid import Cell
from sweeps.retention import CheckpointRetention, checkpoint_config
from sweeps.spec import REPO_ROOT, SpecError, SweepSpec, load_yaml
from sweeps.trials import trial_config, trial_resources
from vlsm import axes

logger = logging.getLogger(__name__)


def load_search_space(spec: SweepSpec) -> dict[str, Any]:
    path = Path(spec.lr_search.space)
    path = path if path.is_absolute() else REPO_ROOT / path
    raw = load_yaml(path)
    for key in ("cell", "models", "asha"):
        if key not in raw:
            raise SpecError(f"{path}: missing {key!r}")
    for model in spec.grid.models:
        bounds = raw["models"].get(model)
        if not bounds or not 0 < bounds.get("lr_min", 0) < bounds.get("lr_max", 0):
            raise SpecError(f"{path}: models.{model} needs 0 < lr_min < lr_max, got {bounds!r}")
    return raw


def run_lr_search(
    spec: SweepSpec,
    caches: dict[str, dict[str, dict[str, str]]],
    *,
    output: Path,
    storage: str,
    use_gpu: bool,
) -> dict[tuple[str, str], float]:
    """Best learning rate per (model, encoder); cached in <output>/lr_search.json."""
    from vlsm.trainable import train_vlsm

    space = load_search_space(spec)
    results_file = output / "lr_search.json"
    results: dict[str, dict[str, Any]] = json.loads(results_file.read_text()) if results_file.exists() else {}
    metric, mode = space.get("metric", axes.VAL_DICE), space.get("mode", "max")
    asha = space["asha"]
    for model in spec.grid.models:
        for encoder in spec.grid.encoders:
            key = f"{model}/{encoder}"
            if key in results and results[key].get("trials") == spec.lr_search.trials:
                continue
            cell = Cell(model, space["cell"]["strategy"], encoder, space["cell"]["prompt"])
            base = trial_config(spec, cell, caches)
            base["tags"] = {**base["tags"], "lr_search": True}
            bounds = space["models"][model]
            param_space = {**base, "lr": tune.loguniform(float(bounds["lr_min"]), float(bounds["lr_max"]))}
            # N in the name: a search asked for with another N is a new search, not a resume
            name = f"lr-search-{model.lower()}-{encoder}-n{spec.lr_search.trials}"
            path = f"{storage.rstrip('/')}/{name}"
            resources = trial_resources(spec, model, encoder, use_gpu=use_gpu)
            trainable = tune.with_resources(train_vlsm, resources=resources)
            if tune.Tuner.can_restore(path):
                tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True)
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=param_space,
                    tune_config=tune.TuneConfig(
                        search_alg=OptunaSearch(seed=int(spec.train.get("seed", 42))),
                        scheduler=ASHAScheduler(
                            time_attr="training_iteration",
                            grace_period=int(asha.get("grace_period", 5)),
                            reduction_factor=float(asha.get("reduction_factor", 3)),
                            max_t=int(asha.get("max_t", 100)),
                        ),
                        metric=metric,
                        mode=mode,
                        num_samples=spec.lr_search.trials,
                        reuse_actors=spec.run.reuse_actors,
                    ),
                    run_config=tune.RunConfig(
                        name=name, storage_path=storage, verbose=0,
                        # every trial keeps only its latest checkpoint, deleted safely (see
                        # sweeps/retention.py); Ray's default would keep them all
                        callbacks=[CheckpointRetention()],
                        checkpoint_config=checkpoint_config(),
                    ),
                )
            grid = tuner.fit()
            try:
                best = grid.get_best_result(metric=metric, mode=mode, scope="all")
            except RuntimeError as err:  # every search trial failed
                raise ValueError(f"lr search {key}: no trial reported {metric} ({err}); see {path}") from err
            results[key] = {
                "lr": float(best.config["lr"]),
                "best": float(best.metrics_dataframe[metric].max()) if mode == "max" else float(best.metrics_dataframe[metric].min()),
                "trials": spec.lr_search.trials,
                "tried": sorted(float(r.config["lr"]) for r in grid if r.config),
            }
            tmp = results_file.with_suffix(".tmp")  # never a half-written file to resume from
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(results_file)
            logger.info("lr search %s: best lr %.3g (%s %.4f)", key, results[key]["lr"], metric, results[key]["best"])
    return {
        (model, encoder): results[f"{model}/{encoder}"]["lr"]
        for model in spec.grid.models
        for encoder in spec.grid.encoders
    }
