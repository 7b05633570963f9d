"""The paper's full-size architectures with random weights, for benchmarks on any machine.

    model = build_full_size("clipseg", frozen=False)   # CLIPSeg rd64-refined shape, 352 px

Bytes and FLOPs need the real shapes, not the weights (no download): each model's
`ModelEntry.full_size_config`.
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
