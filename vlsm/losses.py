"""The training loss: soft Dice plus binary cross-entropy on one-channel logits (the
authors' loss had no working BCE term: docs/design.md, "Pitfalls").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceBCELoss", "soft_dice_loss"]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-sample soft Dice loss (B,) of logits (B, [1,] H, W) against a {0, 1} target:
    1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth); smooth keeps an empty target defined."""
    if logits.shape != target.shape:
        raise ValueError(f"soft_dice_loss: logits {tuple(logits.shape)} != target {tuple(target.shape)}")
    probs = torch.sigmoid(logits.float()).flatten(1)  # (B, HW)
    target = target.float().flatten(1)  # (B, HW)
    intersection = (probs * target).sum(1)
    denominator = probs.sum(1) + target.sum(1)
    return 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)


class DiceBCELoss(nn.Module):
    """dice_weight * mean soft Dice (per sample) + bce_weight * mean BCE-with-logits (per
    pixel), in float32 even under autocast."""

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 0.2, smooth: float = 1.0):
        super().__init__()
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ValueError(f"DiceBCELoss: dice_weight={dice_weight}, bce_weight={bce_weight}; "
                             "expected non-negative weights, at least one > 0")
        self.dice_weight, self.bce_weight, self.smooth = dice_weight, bce_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, 1, H, W), target (B, 1, H, W) in {0, 1} -> scalar loss."""
        logits, target = logits.float(), target.float()
        loss = logits.new_zeros(())
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.smooth).mean()
        if self.bce_weight:
            loss = loss + self.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
        return loss
