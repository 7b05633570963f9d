"""Turn grid cells into Ray Tune trial configs (TrainConfig dicts) and resources.

Everything a trial needs is in its config: model, prompt, encoder mode, the cache
folders of its data (passed by path, so Ray ships no arrays), the training settings of
the sweep and the model, and `tags` naming its grid cell. `init_from` is filled in by
the chain searcher when the upstream checkpoint exists.
"""

from __future__ import annotations

import copy
from typing import Any

from sweeps.cell import Cell
from sweeps.spec import SweepSpec
from vlsm.model_registry import model_key


def model_config(spec: SweepSpec, model: str) -> dict | None:
    """The model's config dict: None (pretrained/default), a dict, or "tiny" resolved
    (load_spec has checked it is one of these)."""
    raw = spec.models[model].config
    if raw == "tiny":
        from vlsm.models import tiny_config

        return tiny_config(model_key(model))
    return copy.deepcopy(raw)


def trial_config(
    spec: SweepSpec,
    cell: Cell,
    caches: dict[str, dict[str, dict[str, str]]],
    *,
    lr: dict[tuple[str, str], float] | None = None,
) -> dict[str, Any]:
    """The TrainConfig dict of one cell.

    caches: dataset ("camus" | "sdm") -> model -> split -> cache folder. Synthetic cells
    train and validate on SDM and are tested on real CAMUS, as in the paper.
    """
    model_spec = spec.models[cell.model]
    train_data = caches[cell.train_data][cell.model]
    test_data = caches["camus"][cell.model]
    config: dict[str, Any] = {
        **copy.deepcopy(spec.train),
        **copy.deepcopy(model_spec.train),
        "model": model_key(cell.model),
        "model_config": model_config(spec, cell.model),
        "pretrained": model_spec.pretrained,
        "checkpoint": model_spec.checkpoint,
        "tokenizer": model_spec.tokenizer,
        "freeze_encoder": cell.encoder == "frozen",
        "prompt": cell.prompt,
        "train_cache": train_data["train"],
        "val_cache": train_data["val"],
        "test_cache": test_data["test"],
        "init_from": None,
        "tags": cell.tags(),
    }
    if lr and (cell.model, cell.encoder) in lr:
        config["lr"] = lr[(cell.model, cell.encoder)]
    return config


def trial_resources(spec: SweepSpec, model: str, encoder: str, *, use_gpu: bool) -> dict[str, float]:
    """{"cpu": n, "gpu": share} of one trial; gpu 0 where there is none."""
    resources = dict(spec.models[model].resources.get(encoder, {"cpu": 1, "gpu": 0}))
    resources.setdefault("cpu", 1)
    resources["gpu"] = float(resources.get("gpu", 0)) if use_gpu else 0.0
    return resources
