"""Grid cells as Ray Tune trial configs (TrainConfig dicts: everything a trial needs, its
data as cache folders by path, its cell's id) and resources."""

from __future__ import annotations

import copy
from typing import Any

from sweeps.cell import CELL_ID, REAL_DATA, Cell
from sweeps.spec import Resources, SweepSpec
from vlsm.axes import PROVENANCE_PROMPT
from vlsm.model_registry import model_key
from vlsm.strategies import REAL_AND_SYNTHETIC, STRATEGY_REGISTRY


def model_config(spec: SweepSpec, model: str) -> dict | None:
    """The model's config: None (pretrained or default), a dict, or "tiny" resolved."""
    raw = spec.models[model].config
    if raw == "tiny":
        from vlsm.models import tiny_config

        return tiny_config(model_key(model))
    return copy.deepcopy(raw)


def trial_config(spec: SweepSpec, cell: Cell, caches: dict[str, dict[str, dict[str, str]]], *,
                 lr: dict[tuple[str, str], float] | None = None) -> dict[str, Any]:
    """The TrainConfig dict of one cell (`init_from` is set when it starts). caches: dataset
    -> model -> split -> cache folder (`sweeps.data_setup`); every cell is tested on real
    CAMUS; lr: the LR search's rate per (model, encoder)."""
    model_spec = spec.models[cell.model]
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
        "train_cache": caches[cell.train_data][cell.model]["train"],
        "val_cache": caches[cell.val_data][cell.model]["val"],
        "test_cache": caches[REAL_DATA][cell.model]["test"],
        "init_from": None,
        "seed": cell.seed,
        "provenance_phrases": dict(spec.grid.provenance_phrases) if cell.provenance == PROVENANCE_PROMPT else None,
        CELL_ID: cell.cell_id,
    }
    if STRATEGY_REGISTRY[cell.strategy].train != REAL_AND_SYNTHETIC:  # a share needs both in one training set
        config["synthetic_share"] = None
    if lr and (cell.model, cell.encoder) in lr:
        config["lr"] = lr[(cell.model, cell.encoder)]
    return config


def trial_resources(spec: SweepSpec, model: str, encoder: str, *, use_gpu: bool) -> dict[str, float]:
    """{"cpu": n, "gpu": share} of one trial; gpu 0 where there is none."""
    resources = spec.models[model].resources.get(encoder, Resources())
    return {"cpu": resources.cpu, "gpu": resources.gpu if use_gpu else 0.0}
