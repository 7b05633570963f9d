"""Soft Dice + BCE against hand-computed values, empty masks included."""

from __future__ import annotations

import math

import pytest
import torch

from vlsm.losses import DiceBCELoss, soft_dice_loss


def test_soft_dice_hand_computed():
    # logits 0 -> p = 0.5 on 4 pixels; one target pixel:
    # sum(p t) = 0.5, sum(p) = 2, sum(t) = 1 -> 1 - (2 * 0.5 + 1) / (3 + 1) = 0.5
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert soft_dice_loss(logits, target, smooth=1.0).item() == pytest.approx(0.5)
    # without smoothing: 1 - 1 / 3
    assert soft_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(2 / 3)


def test_soft_dice_is_per_sample():
    logits = torch.full((2, 1, 2, 2), -50.0)
    logits[0] = 50.0  # sample 0 predicts everything, sample 1 nothing
    target = torch.ones(2, 1, 2, 2)
    target[1] = 0.0  # sample 1: empty target
    loss = soft_dice_loss(logits, target, smooth=1.0)
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)  # perfect
    assert loss[1].item() == pytest.approx(0.0, abs=1e-6)  # empty vs empty: smooth / smooth


def test_soft_dice_empty_target_full_prediction():
    # empty target, p = 1 on 4 pixels: 1 - 1 / (4 + 1) = 0.8
    loss = soft_dice_loss(torch.full((1, 1, 2, 2), 50.0), torch.zeros(1, 1, 2, 2), smooth=1.0)
    assert loss.item() == pytest.approx(0.8, abs=1e-6)


def test_dice_bce_combination():
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # BCE with logits 0 is ln 2 on every pixel
    assert DiceBCELoss(1.0, 0.2)(logits, target).item() == pytest.approx(0.5 + 0.2 * math.log(2))
    assert DiceBCELoss(1.0, 0.0)(logits, target).item() == pytest.approx(0.5)  # authors' effective loss
    assert DiceBCELoss(0.0, 1.0)(logits, target).item() == pytest.approx(math.log(2))


def test_loss_has_gradients_and_checks_inputs():
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    DiceBCELoss()(logits, torch.ones(2, 1, 4, 4)).backward()
    assert logits.grad is not None and (logits.grad < 0).all()  # pushes towards the target
    with pytest.raises(ValueError, match="dice_weight=0"):
        DiceBCELoss(0.0, 0.0)
    with pytest.raises(ValueError, match="logits"):
        soft_dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
