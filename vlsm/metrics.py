"""Evaluation metrics of binary masks at 512 x 512: Dice, IoU and the Hausdorff distance,
one definition for validation, test and analysis, empty masks included (docs/design.md,
"Training").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vlsm.axes import EVAL_SIZE

__all__ = ["EMPTY_HAUSDORFF", "dice_iou", "hausdorff_distance", "predict_masks"]

# Worst case for exactly one empty mask: the diagonal of the 512 x 512 evaluation grid.
EMPTY_HAUSDORFF: float = math.hypot(EVAL_SIZE, EVAL_SIZE)


def predict_masks(logits: torch.Tensor, threshold: float = 0.5, size: int = EVAL_SIZE) -> torch.Tensor:
    """logits (B, 1, H, W) -> bool masks (B, size, size): thresholded at input size, then
    resized, as the authors did. "nearest-exact" is PIL's NEAREST, which made the cached
    ground truth; plain "nearest" shifts by half a pixel (about 1 Dice point on a myocardium)."""
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"predict_masks: logits shape {tuple(logits.shape)}, expected (B, 1, H, W)")
    masks = torch.sigmoid(logits.float()) > threshold  # (B, 1, H, W)
    if masks.shape[-2:] != (size, size):
        masks = F.interpolate(masks.to(torch.uint8), size=(size, size), mode="nearest-exact").bool()
    return masks[:, 0]  # (B, size, size)


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Dice and IoU (fractions) of bool masks (B, H, W) -> ((B,), (B,)); both empty
    -> 1 and 1."""
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"dice_iou: pred {tuple(pred.shape)} and target {tuple(target.shape)}, "
                         "expected equal shapes (B, H, W)")
    pred = pred.bool().flatten(1)  # (B, HW)
    target = target.bool().flatten(1)
    inter = (pred & target).sum(1).double()
    sizes = pred.sum(1).double() + target.sum(1).double()
    union = sizes - inter
    both_empty = sizes == 0
    dice = torch.where(both_empty, torch.ones_like(inter), 2 * inter / sizes.clamp_min(1))
    iou = torch.where(both_empty, torch.ones_like(inter), inter / union.clamp_min(1))
    return dice, iou


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of mask with a 4- or 8-neighbour outside it (image border = outside)."""
    from scipy import ndimage

    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)
    return mask & ~eroded


def hausdorff_distance(pred: np.ndarray, target: np.ndarray) -> float:
    """Symmetric Hausdorff distance (pixels) between the boundaries of two bool (H, W) masks;
    both empty -> 0.0, exactly one -> `EMPTY_HAUSDORFF`."""
    from scipy import ndimage

    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"hausdorff_distance: pred {pred.shape} and target {target.shape}, "
                         "expected equal 2-D shapes (H, W)")
    has_pred, has_target = pred.any(), target.any()
    if not has_pred and not has_target:
        return 0.0
    if not has_pred or not has_target:
        return EMPTY_HAUSDORFF
    edge_pred, edge_target = _boundary(pred), _boundary(target)
    # distance of every pixel to the nearest boundary pixel of the other mask
    to_target = ndimage.distance_transform_edt(~edge_target)  # (H, W)
    to_pred = ndimage.distance_transform_edt(~edge_pred)  # (H, W)
    return float(max(to_target[edge_pred].max(), to_pred[edge_target].max()))
