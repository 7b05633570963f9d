"""A trial's state besides its weights (optimizer, scheduler, grad scaler, early stopping,
best epoch, RNGs), saved and loaded as mirrors, so a resume is exact (docs/design.md, "One trial").

    state.save(folder)        # train_state.safetensors + train_state.json
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from vlsm import checkpoint as ckpt
from vlsm.config import TrainConfig
from vlsm.speed import build_adamw

__all__ = ["EarlyStopping", "TrainState"]


@dataclass
class EarlyStopping:
    """Stop once `patience` epochs in a row did not improve the value (validation Dice) by more
    than min_delta, never before `min_epochs` (Lightning's rules)."""

    patience: int
    min_delta: float
    min_epochs: int
    best: float = -math.inf
    wait: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record epoch's value; True when training should stop after it."""
        if value > self.best + self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        return epoch >= self.min_epochs and self.wait >= self.patience


@dataclass
class TrainState:
    """Everything of a trial that changes epoch to epoch besides the weights; epoch is the last
    finished one (0 before the first), last_metrics its report."""

    optimizer: torch.optim.Optimizer
    scheduler: ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    epoch: int = 0
    best_val_dice: float = -math.inf
    best_epoch: int = 0
    stop_reason: str = ""
    last_metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fresh(cls, params: Iterable[nn.Parameter], cfg: TrainConfig, device: torch.device,
              precision: str) -> TrainState:
        """The state before the first epoch: AdamW, ReduceLROnPlateau on the validation loss."""
        optimizer = build_adamw(params, cfg, device)  # fused on CUDA (cfg.fused_adamw)
        scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        stopper = EarlyStopping(cfg.patience, cfg.min_delta, cfg.min_epochs)
        return cls(optimizer, scheduler, scaler, stopper)

    def save(self, directory: Path) -> None:
        """Write train_state.safetensors + train_state.json, the global RNG states included."""
        tensors, opt_meta = ckpt.optimizer_to_flat(self.optimizer.state_dict())
        rng_tensors, rng_meta = ckpt.capture_rng()
        meta = {"epoch": self.epoch, "optimizer": opt_meta, "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "early_stopping": {"best": self.stopper.best, "wait": self.stopper.wait},
                "best_val_dice": self.best_val_dice, "best_epoch": self.best_epoch, "stop_reason": self.stop_reason,
                "last_metrics": self.last_metrics, "rng": rng_meta}
        ckpt.save_train_state(directory, {**tensors, **rng_tensors}, meta)

    def load(self, directory: Path) -> None:
        """Read what `save` wrote into this state, and restore the global RNGs."""
        tensors, meta = ckpt.load_train_state(directory)
        self.epoch = meta["epoch"]
        self.optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors, meta["optimizer"]))
        self.scheduler.load_state_dict(meta["scheduler"])
        if meta["scaler"]:  # empty when it was off (bf16, fp32): a fresh scaler then
            self.scaler.load_state_dict(meta["scaler"])
        self.stopper.best, self.stopper.wait = meta["early_stopping"]["best"], meta["early_stopping"]["wait"]
        for name in ("best_val_dice", "best_epoch", "stop_reason", "last_metrics"):
            setattr(self, name, meta[name])
        ckpt.restore_rng(tensors, meta["rng"])
