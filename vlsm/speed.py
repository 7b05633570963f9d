"""The GPU path: `TrainConfig` switches that change how fast a trial trains, never what it
computes (docs/design.md, "The GPU path").

    model = prepare_model(model, cfg, device)     # attention, stop-early, channels_last, compile
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import nn

from vlsm.config import TrainConfig

__all__ = ["CONTRACT_METHODS", "build_adamw", "kernel_choices", "prepare_model", "set_kernel_flags",
           "uses_fused_adamw"]

CONTRACT_METHODS = ("encode_image", "encode_text", "decode")  # what `compile` compiles (vlsm.models)


def uses_fused_adamw(cfg: TrainConfig, device: torch.device) -> bool:
    """cfg.fused_adamw, with None meaning: on CUDA only (the CPU kernel is not faster there)."""
    return device.type == "cuda" if cfg.fused_adamw is None else cfg.fused_adamw


def build_adamw(params: Iterable[nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """The trial's AdamW (paper: weight decay 1e-3), fused when `uses_fused_adamw`."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             fused=uses_fused_adamw(cfg, device))


def set_kernel_flags(cfg: TrainConfig) -> None:
    """The process-wide kernel choices of a trial: cuDNN's autotuner unless deterministic, else
    deterministic algorithms (cuBLAS reads its workspace setting at its first matmul)."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic


def prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Apply the model switches of cfg to model (already on device); returns the same object."""
    if hasattr(model, "vision_stop_early"):  # CLIPSeg
        model.vision_stop_early = cfg.vision_stop_early
    if hasattr(model, "set_attn_implementation"):  # a Hugging Face model: CLIPSeg
        model.set_attn_implementation(cfg.attention)
        _set_layer_attention(model, cfg.attention)
    if cfg.channels_last:
        _to_channels_last(model)
    if cfg.compile:
        for name in CONTRACT_METHODS:
            setattr(model, name, torch.compile(getattr(model, name)))
    return model


def _set_layer_attention(model: nn.Module, attention: str) -> None:
    """The attention kernel on every layer's own config: `set_attn_implementation` misses
    CLIPSeg's decoder layers (they hold a deep copy of the vision config)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(config, "_attn_implementation_internal"):
            config._attn_implementation = attention


def kernel_choices(model: nn.Module) -> dict[str, object]:
    """The switches that change how model's ops round: its layers' attention kernels and
    channels_last (the feature store keys on them)."""
    attention = {module.config._attn_implementation for module in model.modules()
                 if hasattr(getattr(module, "config", None), "_attn_implementation_internal")}
    channels_last = any(p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                        for p in model.parameters())
    return {"attention": sorted(a for a in attention if a), "channels_last": channels_last}


def _to_channels_last(model: nn.Module) -> None:
    """4-D weights and the visual backbone's input in channels_last (NHWC in memory)."""
    model.to(memory_format=torch.channels_last)
    # the first convolution of CRIS's ResNet, where both its forward and `trunk` start
    first = getattr(getattr(getattr(model, "backbone", None), "visual", None), "conv1", None)
    if first is not None:
        first.register_forward_pre_hook(_input_channels_last)


def _input_channels_last(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the (B, 3, H, W) image in channels_last; values unchanged."""
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
