"""Dice, IoU, Hausdorff and prediction against hand-computed values, empty masks included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlsm.metrics import EMPTY_HAUSDORFF, dice_iou, hausdorff_distance, predict_masks


def _mask(shape, *boxes):
    m = np.zeros(shape, bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


def test_dice_iou_hand_computed():
    pred = torch.from_numpy(_mask((4, 4), (0, 2, 0, 2)))  # 4 pixels
    target = torch.from_numpy(_mask((4, 4), (0, 2, 1, 3)))  # 4 pixels, 2 shared
    dice, iou = dice_iou(pred[None], target[None])
    assert dice.item() == pytest.approx(2 * 2 / 8)  # 0.5
    assert iou.item() == pytest.approx(2 / 6)


def test_dice_iou_empty_conventions():
    empty = torch.zeros(1, 3, 3, dtype=torch.bool)
    full = torch.ones(1, 3, 3, dtype=torch.bool)
    assert [t.item() for t in dice_iou(empty, empty)] == [1.0, 1.0]
    assert [t.item() for t in dice_iou(full, empty)] == [0.0, 0.0]
    assert [t.item() for t in dice_iou(empty, full)] == [0.0, 0.0]
    batch = torch.cat([empty, full])
    dice, _ = dice_iou(batch, torch.cat([empty, full]))
    assert dice.tolist() == [1.0, 1.0]


def test_hausdorff_hand_computed():
    a = _mask((10, 10), (0, 1, 0, 1))
    b = _mask((10, 10), (3, 4, 4, 5))
    assert hausdorff_distance(a, b) == pytest.approx(5.0)  # 3-4-5 triangle
    # a 3 x 3 square and the same square shifted two columns: boundary distance 2
    sq = _mask((10, 10), (2, 5, 2, 5))
    shifted = _mask((10, 10), (2, 5, 4, 7))
    assert hausdorff_distance(sq, shifted) == pytest.approx(2.0)
    assert hausdorff_distance(sq, sq) == 0.0
    # symmetric: a small square inside a large one -> distance between the boundaries
    big = _mask((20, 20), (0, 11, 0, 11))
    small = _mask((20, 20), (5, 6, 5, 6))
    assert hausdorff_distance(big, small) == hausdorff_distance(small, big) == pytest.approx(5 * math.sqrt(2))


def test_hausdorff_empty_conventions():
    empty = np.zeros((8, 8), bool)
    some = _mask((8, 8), (1, 3, 1, 3))
    assert hausdorff_distance(empty, empty) == 0.0
    assert hausdorff_distance(empty, some) == EMPTY_HAUSDORFF == pytest.approx(512 * math.sqrt(2))
    assert hausdorff_distance(some, empty) == EMPTY_HAUSDORFF
    with pytest.raises(ValueError, match="hausdorff_distance"):
        hausdorff_distance(empty, np.zeros((8, 9), bool))


def test_predict_masks_threshold_then_nearest():
    logits = torch.tensor([[[[2.0, -2.0], [-2.0, 0.1]]]])  # sigmoid: .88 .12 .12 .52
    masks = predict_masks(logits, threshold=0.5)
    assert masks.shape == (1, 512, 512) and masks.dtype == torch.bool
    assert masks[0, :256, :256].all() and not masks[0, :256, 256:].any()
    assert masks[0, 256:, 256:].all()  # 0.52 > 0.5
    assert not predict_masks(logits, threshold=0.6)[0, 256:, 256:].any()  # 0.52 < 0.6
    with pytest.raises(ValueError, match="predict_masks"):
        predict_masks(torch.zeros(1, 2, 4, 4))


@pytest.mark.parametrize("size", [352, 416, 64])
def test_prediction_resize_matches_the_ground_truth_resize(size):
    # The 512 ground truth is resized with PIL's NEAREST (pixel centres); a perfect
    # prediction at input size must land on exactly the same pixels.
    from PIL import Image

    mask = (np.random.default_rng(size).random((size, size)) > 0.5).astype(np.uint8)
    truth = np.asarray(Image.fromarray(mask).resize((512, 512), Image.Resampling.NEAREST)).astype(bool)
    logits = torch.tensor(mask, dtype=torch.float32)[None, None] * 20 - 10  # (1, 1, S, S)
    assert (predict_masks(logits)[0].numpy() == truth).all()
