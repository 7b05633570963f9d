"""Evaluation of a trial's model: validation every epoch and the test of the best weights,
scored alike (first phrasing, cache order, masks at 512 x 512; docs/design.md, "Training").

    val_loss, rows = evaluate(model, val_data, EvalSetup(prompts, loss_fn, cfg, precision, device))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vlsm import checkpoint as ckpt
from vlsm.atomic import atomic_path
from vlsm.axes import DICE, HAUSDORFF, IOU, STRUCTURES, TEST_DICE_MEAN, TEST_DICE_STD
from vlsm.config import TrainConfig
from vlsm.metrics import dice_iou, hausdorff_distance, predict_masks
from vlsm.speed import prepare_model
from vlsm.trial_data import ModelInputs, PromptTable, SplitTensors

if TYPE_CHECKING:
    from vlsm.data.cache import PreparedSplit
    from vlsm.feature_store import FeatureStore

__all__ = ["EvalSetup", "evaluate", "evaluate_best", "read_test_summary", "summarize_test"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSetup:
    """What every evaluation of a trial shares (cfg: threshold, batch size, where pixels live)."""

    prompts: PromptTable
    loss_fn: nn.Module
    cfg: TrainConfig
    precision: str
    device: torch.device
    features: FeatureStore | None = None  # the image features read from a store

    def inputs_for(self, model: nn.Module) -> ModelInputs:
        """The model's inputs (its pixel normalisation, the trial's prompts and precision)."""
        return ModelInputs(model, self.prompts, self.device, self.precision)


@torch.no_grad()
def evaluate(model: nn.Module, data: SplitTensors, setup: EvalSetup, *,
             with_hausdorff: bool = False) -> tuple[float, list[dict[str, Any]]]:
    """Mean loss and one row per item (image, structure, prompt, dice, iou[, hausdorff]), in
    cache order; image features from the store, else (shared_image_eval) once per image."""
    model.eval()
    inputs = setup.inputs_for(model)
    stored = None if setup.features is None else setup.features.split(model, data.split)
    rows_all = setup.prompts.choose(data.split.items, None)  # (N,)
    loss_sum, out = 0.0, []
    batches = data.batches(torch.arange(len(data)), setup.cfg.eval_batch_size)
    for idx, images, labels, eval_labels in batches:
        structure = data.structure[idx].to(labels.device).view(-1, 1, 1)  # (B, 1, 1)
        logits = inputs(model, images, rows_all[idx], data.image_index[idx], stored=stored,
                        shared=setup.cfg.shared_image_eval)  # (B, 1, S, S)
        loss_sum += float(setup.loss_fn(logits, (labels == structure).unsqueeze(1))) * len(idx)
        pred = predict_masks(logits, setup.cfg.threshold)  # (B, 512, 512) bool
        truth = eval_labels == structure  # (B, 512, 512) bool
        out += _rows(data, setup.prompts, idx, rows_all, pred, truth, with_hausdorff)
    return loss_sum / max(len(data), 1), out


def _rows(data: SplitTensors, prompts: PromptTable, idx: torch.Tensor, rows_all: torch.Tensor,
          pred: torch.Tensor, truth: torch.Tensor, with_hausdorff: bool) -> list[dict[str, Any]]:
    """One result row per item of a batch; pred, truth (B, 512, 512) bool."""
    dice, iou = dice_iou(pred, truth)  # (B,), (B,)
    if with_hausdorff:
        pred_np, truth_np = pred.cpu().numpy(), truth.cpu().numpy()  # (B, 512, 512)
    out = []
    dices, ious = dice.tolist(), iou.tolist()  # one device read each per batch, not one per item
    for b, i in enumerate(idx.tolist()):
        item = data.split.items[i]
        row = {"image": data.split.names[item.image_index], "structure": STRUCTURES[item.structure],
               "prompt": prompts.texts[int(rows_all[i])], DICE: dices[b], IOU: ious[b]}
        if with_hausdorff:
            row[HAUSDORFF] = hausdorff_distance(pred_np[b], truth_np[b])
        out.append(row)
    return out


def evaluate_best(best_dir: Path, split: PreparedSplit, setup: EvalSetup,
                  out_dir: Path) -> tuple[dict[str, float], list[dict[str, Any]] | None]:
    """Test metrics of the best weights and their per-image rows, written to
    out_dir/per_image.parquet (None without best weights)."""
    import pandas as pd

    if not best_dir.is_dir():  # no finite epoch ever: nothing to test
        log.warning("no best checkpoint (no finite epoch); test metrics are NaN")
        return {TEST_DICE_MEAN: math.nan, TEST_DICE_STD: math.nan}, None
    # the trial's speed switches, as on the model it trained and validated (vlsm.speed)
    model = prepare_model(ckpt.load_model(best_dir, device=setup.device), setup.cfg, setup.device)
    data = SplitTensors(split, setup.cfg, setup.device, with_eval=True)
    _, rows = evaluate(model, data, setup, with_hausdorff=True)
    frame = pd.DataFrame(rows)
    with atomic_path(out_dir / ckpt.PER_IMAGE_FILE) as tmp:
        frame.to_parquet(tmp, index=False)
    del model, data
    return summarize_test(frame[DICE].to_numpy()), rows


def read_test_summary(directory: Path) -> dict[str, float] | None:
    """The test summary of the per_image.parquet in directory (None when there is none)."""
    per_image = Path(directory) / ckpt.PER_IMAGE_FILE
    if not per_image.is_file():
        return None
    import pandas as pd

    return summarize_test(pd.read_parquet(per_image)[DICE].to_numpy())


def summarize_test(dice: np.ndarray) -> dict[str, float]:
    """Mean and sample standard deviation of the per-image test Dice."""
    return {TEST_DICE_MEAN: float(dice.mean()),
            TEST_DICE_STD: float(dice.std(ddof=1)) if len(dice) > 1 else math.nan}
