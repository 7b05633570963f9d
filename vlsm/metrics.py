"""Evaluation metrics: Dice, IoU and Hausdorff distance of binary masks at 512 x 512.

Why one module: validation (every epoch), the test of the best checkpoint and the
analysis must agree on one definition, including the empty-mask cases that a
formula alone leaves undefined (docs/design.md, "Training"). The conventions:

===================  =====  =====  =============================================
prediction / truth   dice   iou    hausdorff (pixels at 512 x 512)
===================  =====  =====  =============================================
both empty           1      1      0
exactly one empty    0      0      `EMPTY_HAUSDORFF` = the image diagonal (724.08)
===================  =====  =====  =============================================

A missed or hallucinated structure thus gets the worst possible distance instead of
NaN, so means over a test set stay defined and penalise it. Hausdorff is the
symmetric distance between the masks' boundary pixels (boundary = mask minus its
3 x 3 erosion, image border counting as outside), in pixels, as MONAI and medpy
compute it; the authors' published values are in the same unit (x100).

A prediction is ``sigmoid(logits) > threshold`` at the model's input size, resized
to 512 x 512 with nearest neighbour (`predict_masks`), compared with the ground
truth resized to 512 x 512 with nearest neighbour (the cache's ``eval_labels``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vlsm.axes import EVAL_SIZE

__all__ = [
    "EMPTY_HAUSDORFF",
    "dice_iou",
    "hausdorff_distance",
    "predict_masks",
]

# Worst case for exactly one empty mask: the diagonal of the 512 x 512 evaluation grid.
EMPTY_HAUSDORFF: float = math.hypot(EVAL_SIZE, EVAL_SIZE)


def predict_masks(logits: torch.Tensor, threshold: float = 0.5, size: int = EVAL_SIZE) -> torch.Tensor:
    """logits (B, 1, H, W) -> bool masks (B, size, size): threshold, then nearest resize.

    The threshold is applied at input resolution (sigmoid(x) > t, i.e. x > logit(t)),
    and the binary mask is resized, as the authors did. "nearest-exact" is the same
    pixel-centre rule as PIL's NEAREST, which made the cached ground truth: torch's plain
    "nearest" shifts the mask by up to half a pixel (about 1 Dice point on a myocardium).
    """
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"predict_masks: logits shape {tuple(logits.shape)}, expected (B, 1, H, W)")
    masks = torch.sigmoid(logits.float()) > threshold  # (B, 1, H, W)
    if masks.shape[-2:] != (size, size):
        masks = F.interpolate(masks.to(torch.uint8), size=(size, size), mode="nearest-exact").bool()
    return masks[:, 0]  # (B, size, size)


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Dice and IoU (fractions in [0, 1]) of bool masks (B, H, W) -> ((B,), (B,)).

    Both empty -> 1 and 1; exactly one empty -> 0 and 0 (the formulas give that).
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"dice_iou: pred {tuple(pred.shape)} and target {tuple(target.shape)}, "
            "expected equal shapes (B, H, W)"
        )
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
    """Symmetric Hausdorff distance (pixels) between the boundaries of two bool (H, W) masks.

    Both empty -> 0.0; exactly one empty -> `EMPTY_HAUSDORFF` (see module docstring).
    """
    from scipy import ndimage

    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(
            f"hausdorff_distance: pred {pred.shape} and target {target.shape}, "
            "expected equal 2-D shapes (H, W)"
        )
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
