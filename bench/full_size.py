"""The paper's full-size architectures with random weights, for benchmarks on any machine.

    from bench.full_size import build_full_size
    model = build_full_size("clipseg", frozen=False)   # CLIPSeg rd64-refined shape, 352 px

Why: measuring bytes and FLOPs needs the real shapes, not the real weights (no download).
Each model's full-size config is its registry entry's (`ModelEntry.full_size_config`).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn


def full_size_config(model: str) -> dict[str, Any] | None:
    """The model config of the full-size architecture (None: the builder's defaults)."""
    from vlsm.model_registry import model_entry

    config = model_entry(model).full_size_config
    return None if config is None else copy.deepcopy(dict(config))


def build_full_size(model: str, *, frozen: bool) -> nn.Module:
    """The full-size model with random weights (seeded, as every `build_model`)."""
    from vlsm.models import build_model

    return build_model(model, config=full_size_config(model), freeze_encoder=frozen)
