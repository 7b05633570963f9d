"""The paper's full-size architectures with random weights, for benchmarks on any machine.

    from bench.full_size import build_full_size
    model = build_full_size("clipseg", frozen=False)   # CLIPSeg rd64-refined shape, 352 px

Why: measuring bytes and FLOPs needs the real shapes, not the real weights (no download).
CLIPSeg is `CIDAS/clipseg-rd64-refined`'s architecture (ViT-B/16 towers, reduce_dim 64,
the refined transposed convolution) at 352 px; CRIS is `CRISConfig()`'s defaults (CLIP
RN50 at 416 px).
"""

from __future__ import annotations

from typing import Any

from torch import nn

CLIPSEG_RD64_REFINED: dict[str, Any] = {
    "input_size": 352,
    "vision_config": {"patch_size": 16},  # CLIPSegVisionConfig's default is ViT-B/32
    "use_complex_transposed_convolution": True,
}


def full_size_config(model: str) -> dict[str, Any] | None:
    """The model config of the full-size architecture (None: the builder's defaults)."""
    return dict(CLIPSEG_RD64_REFINED) if model == "clipseg" else None


def build_full_size(model: str, *, frozen: bool) -> nn.Module:
    """The full-size model with random weights (seeded, as every `build_model`)."""
    from vlsm.models import build_model

    return build_model(model, config=full_size_config(model), freeze_encoder=frozen)
