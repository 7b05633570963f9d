"""The training loop of one trial: train, validate, checkpoint, stop early, test the best.

Why it is separate from the Ray trainable (`vlsm.trainable`): the loop only needs a
`report(metrics, checkpoint_dir)` callable, so it runs (and is tested) without Ray.

    from vlsm.config import TrainConfig
    from vlsm.train import run_training
    run_training(TrainConfig.from_dict({...}), report=lambda m, d: print(m))

What a trial does (DESIGN.md, "Training"): soft Dice + 0.2 BCE, AdamW, ReduceLROnPlateau
on the validation loss, early stopping on validation Dice, gradient clipping, mixed
precision on GPUs, the best-validation-Dice weights kept in ``best/``, and at the end
the best weights tested per image and structure at 512 x 512.

Exact resume: the epoch order and the training phrasings are pure functions of
(seed, epoch); everything else that changes (weights, optimizer, scheduler, grad scaler,
early stopping, global RNGs) is in the checkpoint, so a trial stopped after epoch k and
resumed ends with the same weights and metrics as one that never stopped (on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlsm import checkpoint as ckpt
from vlsm.atomic import atomic_path, write_json_atomic
from vlsm.axes import (
    BEST_EPOCH,
    BEST_VAL_DICE,
    DICE,
    EPOCH,
    HAUSDORFF,
    IMAGES_PER_S,
    IOU,
    LR,
    SECONDS,
    STOP_REASON,
    STRUCTURES,
    TEST_DICE_MEAN,
    TEST_DICE_STD,
    TRAIN_LOSS,
    VAL_DICE,
    VAL_LOSS,
)
from vlsm.config import TrainConfig
from vlsm.losses import DiceBCELoss
from vlsm.metrics import dice_iou, hausdorff_distance, predict_masks

__all__ = [
    "BEST_EPOCH",
    "STOP_REASON",
    "EarlyStopping",
    "TrainResult",
    "evaluate",
    "resolve_precision",
    "run_training",
    "seed_everything",
]

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], "Path | None"], None]


# --- small pieces -----------------------------------------------------------------------


@dataclass
class EarlyStopping:
    """Stop when the monitored value (validation Dice, higher is better) stalls.

    An epoch improves when value > best + min_delta; training stops once `patience`
    epochs in a row did not improve, but never before `min_epochs` (Lightning's rules).
    """

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
class TrainResult:
    """What `run_training` returns: the reported history and the end state."""

    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    best_val_dice: float = -math.inf
    best_epoch: int = 0
    test_rows: list[dict[str, Any]] | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on GPUs that support it, "fp16" on other GPUs, "fp32" on CPU."""
    if device.type != "cuda":
        if precision == "fp16":
            raise ValueError("precision: 'fp16' needs a CUDA device; use 'auto', 'bf16' or 'fp32' on CPU")
        return "fp32" if precision == "auto" else precision
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- data -------------------------------------------------------------------------------


class _Prompts:
    """Every prompt string of the trial, tokenised once; rows of the token table on the device."""

    def __init__(self, splits: Sequence[Any], key: str, tokenizer: Callable, device: torch.device,
                 *, synthetic_style: bool = False):
        # A model trained on synthetic data is tested on real images with the prompts it
        # learned: the synthetic style (P6 = shape, no image quality), as the authors did.
        self.synthetic_style = synthetic_style
        strings: dict[str, int] = {}
        for split in splits:
            for item in split.items:
                prompts = self.prompts_of(item)
                value = prompts.get(key)
                if value is None:
                    raise ValueError(
                        f"{split.root}: item {item.name} has no prompt {key!r}; it holds "
                        f"{sorted(prompts)} (synthetic data has no P7)"
                    )
                for text in [value] if isinstance(value, str) else value:
                    strings.setdefault(text, len(strings))
        self.key = key
        self.rows = strings  # text -> row
        self.texts = list(strings)  # row -> text
        tokens = tokenizer(list(strings))
        self.input_ids = torch.as_tensor(tokens["input_ids"]).to(device)  # (P, L)
        self.attention_mask = torch.as_tensor(tokens["attention_mask"]).to(device)  # (P, L)

    def prompts_of(self, item: Any) -> dict:
        """The item's prompts in this trial's style (its own when it has no other)."""
        if self.synthetic_style and item.synthetic_prompts is not None:
            return item.synthetic_prompts
        return item.prompts

    def choose(self, items: Sequence[Any], rng: random.Random | None) -> torch.Tensor:
        """Row per item: a random phrasing (training) or the first one (rng None: evaluation)."""
        from vlsm.data.prompts import choose_phrasing

        return torch.tensor([self.rows[choose_phrasing(self.prompts_of(it), self.key, rng)] for it in items])


class _PairDataset(torch.utils.data.Dataset):
    """(image uint8 (S, S), label map uint8 (S, S)[, eval label map (512, 512)]) per item."""

    def __init__(self, split: Any, with_eval: bool):
        self.split, self.with_eval = split, with_eval

    def __len__(self) -> int:
        return len(self.split.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        image = self.split.items[i].image_index
        out = (torch.from_numpy(np.array(self.split.images[image])),
               torch.from_numpy(np.array(self.split.labels[image])))
        if self.with_eval:
            out += (torch.from_numpy(np.array(self.split.eval_labels[image])),)
        return out


# At most this share of the GPU memory a trial may use (its fractional-GPU share) holds
# one split's uint8 arrays; larger splits stream from pinned host memory instead. Train,
# validation and test splits together then stay under half of it.
DEVICE_DATA_FRACTION = 0.15


def keep_on_device(nbytes: int, allowed_bytes: float | None, wanted: bool) -> bool:
    """Whether a split of nbytes is copied to the device once (True) or streamed.

    allowed_bytes: the device memory this process may use (None on CPU: no limit checked).
    """
    return wanted and (allowed_bytes is None or nbytes <= DEVICE_DATA_FRACTION * allowed_bytes)


def _allowed_device_bytes(device: torch.device) -> float | None:
    """GPU memory this process may use: the card's total times its per-process fraction."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    try:
        fraction = torch.cuda.get_per_process_memory_fraction(index)
    except (AttributeError, RuntimeError):  # not set or not offered by this build: the whole card
        fraction = 1.0
    return total * fraction


class _SplitData:
    """One cache split for the loop: item tensors, and batches of uint8 pixels on the device.

    data_on_device copies the uint8 arrays to the device once and gathers batches there,
    when they fit (`keep_on_device`); otherwise a DataLoader streams them from the
    memory-mapped cache (pinned memory on CUDA).
    """

    def __init__(self, split: Any, cfg: TrainConfig, device: torch.device, with_eval: bool):
        self.split, self.device, self.with_eval = split, device, with_eval
        self.num_workers = cfg.num_workers
        self.image_index = torch.tensor([it.image_index for it in split.items])  # (N,)
        self.structure = torch.tensor([it.structure for it in split.items], dtype=torch.uint8)
        self.arrays: tuple[torch.Tensor, ...] = ()
        names = ("images", "labels", "eval_labels") if with_eval else ("images", "labels")
        nbytes = sum(int(getattr(split, n).nbytes) for n in names)
        allowed = _allowed_device_bytes(device)
        self.on_device = keep_on_device(nbytes, allowed, cfg.data_on_device)
        if cfg.data_on_device and not self.on_device:
            log.info("%s: %.2f GB of uint8 data stream from host memory (more than %.0f%% of the "
                     "%.2f GB this trial may use on the GPU)", split.root, nbytes / 1e9,
                     100 * DEVICE_DATA_FRACTION, (allowed or 0) / 1e9)
        if self.on_device:
            self.arrays = tuple(
                torch.from_numpy(np.array(getattr(split, n))).to(device) for n in names
            )

    def __len__(self) -> int:
        return len(self.image_index)

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield (item indices (B,), images (B, S, S), labels (B, S, S)[, eval labels]) on device."""
        chunks = list(order.split(batch_size))
        if self.on_device:
            for idx in chunks:
                image = self.image_index[idx].to(self.device)
                yield (idx, *(a[image] for a in self.arrays))
            return
        loader = torch.utils.data.DataLoader(
            _PairDataset(self.split, self.with_eval),
            batch_sampler=[c.tolist() for c in chunks],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),  # never touch the global RNG
        )
        for idx, batch in zip(chunks, loader, strict=True):
            yield (idx, *(t.to(self.device, non_blocking=True) for t in batch))


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled item order of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class _Inputs:
    """uint8 pixels and prompt rows -> the model's inputs, built on the device."""

    def __init__(self, model: nn.Module, prompts: _Prompts, device: torch.device):
        self.mean = torch.tensor(model.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(model.image_std, device=device).view(1, 3, 1, 1)
        self.prompts = prompts

    def __call__(self, model: nn.Module, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """images (B, S, S) uint8, rows (B,) -> logits (B, 1, S, S)."""
        x = images.unsqueeze(1).float().div_(255.0)  # (B, 1, S, S) in [0, 1]
        x = (x - self.mean) / self.std  # grey repeated to 3 channels: (B, 3, S, S)
        rows = rows.to(self.mean.device)
        return model(x, self.prompts.input_ids[rows], self.prompts.attention_mask[rows])


# --- evaluation -------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: _SplitData,
    inputs: _Inputs,
    loss_fn: nn.Module,
    cfg: TrainConfig,
    precision: str,
    *,
    with_hausdorff: bool = False,
) -> tuple[float, list[dict[str, Any]]]:
    """Mean loss and one row per item (image, structure, prompt, dice, iou[, hausdorff]).

    Deterministic: items in cache order, first phrasing of each prompt.
    """
    model.eval()
    rows_all = inputs.prompts.choose(data.split.items, None)  # (N,)
    loss_sum, out = 0.0, []
    for idx, images, labels, eval_labels in data.batches(torch.arange(len(data)), cfg.eval_batch_size):
        structure = data.structure[idx].to(labels.device).view(-1, 1, 1)  # (B, 1, 1)
        with _autocast(data.device, precision):
            logits = inputs(model, images, rows_all[idx])  # (B, 1, S, S)
        loss_sum += float(loss_fn(logits, (labels == structure).unsqueeze(1))) * len(idx)
        pred = predict_masks(logits, cfg.threshold)  # (B, 512, 512) bool
        truth = eval_labels == structure  # (B, 512, 512) bool
        dice, iou = dice_iou(pred, truth)
        pred_np, truth_np = (pred.cpu().numpy(), truth.cpu().numpy()) if with_hausdorff else (None, None)
        for b, i in enumerate(idx.tolist()):
            item = data.split.items[i]
            row = {
                "image": data.split.names[item.image_index],
                "structure": STRUCTURES[item.structure],
                "prompt": inputs.prompts.texts[int(rows_all[i])],
                DICE: float(dice[b]),
                IOU: float(iou[b]),
            }
            if with_hausdorff:
                row[HAUSDORFF] = hausdorff_distance(pred_np[b], truth_np[b])
            out.append(row)
    return loss_sum / max(len(data), 1), out


# --- the loop ---------------------------------------------------------------------------


def _open(path: str | None, what: str) -> Any:
    from vlsm.data.cache import open_split
    from vlsm.data.remote_cache import localize

    if path is None:
        raise ValueError(f"{what}: no cache folder given; set it to a folder written by `vlsm prepare`")
    return open_split(localize(path))  # a folder, or a copy of one on shared storage (s3://)


def _model_spec(cfg: TrainConfig) -> dict[str, Any]:
    spec = {"name": cfg.model, "pretrained": cfg.pretrained, "config": cfg.model_config,
            "freeze_encoder": cfg.freeze_encoder, "init_seed": cfg.seed}
    if cfg.checkpoint is not None:
        spec["checkpoint"] = cfg.checkpoint
    return spec


def _train_state(epoch, optimizer, scheduler, scaler, stopper, result, last_metrics):
    tensors, opt_meta = ckpt.optimizer_to_flat(optimizer.state_dict())
    rng_tensors, rng_meta = ckpt.capture_rng()
    meta = {
        "epoch": epoch,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "early_stopping": {"best": stopper.best, "wait": stopper.wait},
        "best_val_dice": result.best_val_dice,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "last_metrics": last_metrics,
        "rng": rng_meta,
    }
    return {**tensors, **rng_tensors}, meta


def run_training(
    cfg: TrainConfig,
    report: Report,
    resume_dir: Path | None = None,
    *,
    device: str | torch.device | None = None,
    work_dir: Path | None = None,
) -> TrainResult:
    """Train one trial; call report(metrics, checkpoint_dir) after every epoch.

    checkpoint_dir (or None on epochs without one, see cfg.checkpoint_every) exists only
    during the call: copy it to keep it (Ray's tune.report does). The last report also
    carries the test metrics of the best weights and per_image.parquet. resume_dir: a
    checkpoint folder of this trial to continue from exactly.
    """
    from vlsm.data.prompts import prompt_key
    from vlsm.models import build_tokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    key = prompt_key(cfg.prompt)

    train_split, val_split = _open(cfg.train_cache, "train_cache"), _open(cfg.val_cache, "val_cache")
    test_split = _open(cfg.test_cache, "test_cache") if cfg.test_cache else None
    model = ckpt.rebuild(_model_spec(cfg))
    for split, name in ((train_split, "train_cache"), (val_split, "val_cache"), (test_split, "test_cache")):
        if split is not None and split.size != model.input_size:
            raise ValueError(
                f"{name}: {split.root} holds {split.size} px images, model {cfg.model} expects "
                f"{model.input_size} px; prepare the cache with --size {model.input_size}"
            )
    base_sha = ckpt.frozen_fingerprint(model)
    if resume_dir is not None:
        ckpt.load_stored_into(model, resume_dir)
    elif cfg.init_from is not None:
        ckpt.load_weights_into(model, Path(cfg.init_from))
        log.info("initialised weights from %s (fresh optimizer and scheduler)", cfg.init_from)
    frozen_sha = ckpt.frozen_fingerprint(model)
    include_frozen = frozen_sha != base_sha  # frozen part not re-derivable from spec + seed
    model.to(device)

    tokenizer = build_tokenizer(cfg.model, pretrained=cfg.pretrained, config=cfg.model_config,
                                tokenizer=cfg.tokenizer)
    splits = [s for s in (train_split, val_split, test_split) if s is not None]
    prompts = _Prompts(splits, key, tokenizer, device, synthetic_style=train_split.synthetic)
    inputs = _Inputs(model, prompts, device)
    train_data = _SplitData(train_split, cfg, device, with_eval=False)
    val_data = _SplitData(val_split, cfg, device, with_eval=True)
    loss_fn = DiceBCELoss(cfg.dice_weight, cfg.bce_weight, cfg.dice_smooth)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    stopper = EarlyStopping(cfg.patience, cfg.min_delta, cfg.min_epochs)
    result, start, last_metrics = TrainResult(), 1, {}

    with tempfile.TemporaryDirectory(prefix="vlsm-trial-", dir=work_dir) as tmp:
        best_dir = Path(tmp) / ckpt.BEST_DIR
        if resume_dir is not None:
            tensors, meta = ckpt.load_train_state(resume_dir)
            optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors, meta["optimizer"]))
            scheduler.load_state_dict(meta["scheduler"])
            scaler.load_state_dict(meta["scaler"])
            stopper.best, stopper.wait = meta["early_stopping"]["best"], meta["early_stopping"]["wait"]
            result.best_val_dice, result.best_epoch = meta["best_val_dice"], meta["best_epoch"]
            result.stop_reason, last_metrics = meta["stop_reason"], meta["last_metrics"]
            ckpt.restore_rng(tensors, meta["rng"])
            if (Path(resume_dir) / ckpt.BEST_DIR).is_dir():
                ckpt.copy_tree(Path(resume_dir) / ckpt.BEST_DIR, best_dir)
            start = meta["epoch"] + 1
            log.info("resuming after epoch %d from %s", meta["epoch"], resume_dir)
            finished = _finished_result(resume_dir, last_metrics)
            if finished is not None:
                log.info("the trial had finished; reporting its result again")
                report(finished, None)
                return result

        def write_checkpoint(epoch: int) -> Path:
            out = Path(tempfile.mkdtemp(prefix=f"epoch{epoch:04d}-", dir=tmp))
            ckpt.save_model(model, out, include_frozen=include_frozen,
                            frozen_sha256=frozen_sha)
            tensors, meta = _train_state(epoch, optimizer, scheduler, scaler, stopper, result, last_metrics)
            ckpt.save_train_state(out, tensors, meta)
            write_json_atomic(out / ckpt.CONFIG_FILE, cfg.to_dict())
            if best_dir.is_dir():
                ckpt.copy_tree(best_dir, out / ckpt.BEST_DIR)
            return out

        epoch = start - 1
        epochs = range(0) if result.stop_reason else range(start, cfg.max_epochs + 1)
        for epoch in epochs:
            # --- train one epoch ---
            model.train()
            order = _epoch_order(len(train_data), cfg.seed, epoch)
            phrasing = prompts.choose(train_split.items, random.Random(f"{cfg.seed}:{epoch}"))
            loss_sum = torch.zeros((), device=device)
            started = time.perf_counter()
            for idx, images, labels in train_data.batches(order, cfg.batch_size):
                target = (labels == train_data.structure[idx].to(device).view(-1, 1, 1)).unsqueeze(1)
                with _autocast(device, precision):
                    logits = inputs(model, images, phrasing[idx])  # (B, 1, S, S)
                loss = loss_fn(logits, target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach() * len(idx)
            _sync(device)
            train_seconds = time.perf_counter() - started
            train_loss = float(loss_sum) / len(train_data)
            # --- validate, keep the best, decide ---
            val_loss, val_rows = evaluate(model, val_data, inputs, loss_fn, cfg, precision)
            val_dice = float(np.mean([r[DICE] for r in val_rows]))
            finite = math.isfinite(train_loss) and math.isfinite(val_loss)
            if finite and val_dice > result.best_val_dice:
                result.best_val_dice, result.best_epoch = val_dice, epoch
                _save_best(model, best_dir, cfg, include_frozen, frozen_sha,
                           {EPOCH: epoch, VAL_DICE: val_dice, VAL_LOSS: val_loss})
            lr = optimizer.param_groups[0]["lr"]
            if finite:
                scheduler.step(val_loss)
            if not finite:
                bad = TRAIN_LOSS if not math.isfinite(train_loss) else VAL_LOSS
                result.stop_reason = f"non-finite {bad} at epoch {epoch}"
                log.warning("stopping: %s", result.stop_reason)
            elif stopper.update(val_dice, epoch):
                result.stop_reason = "early_stopping"
            elif epoch == cfg.max_epochs:
                result.stop_reason = "max_epochs"
            last_metrics = {
                EPOCH: epoch, TRAIN_LOSS: train_loss, VAL_LOSS: val_loss, VAL_DICE: val_dice,
                BEST_VAL_DICE: result.best_val_dice, BEST_EPOCH: result.best_epoch, LR: lr,
                IMAGES_PER_S: len(train_data) / max(train_seconds, 1e-9),
                SECONDS: time.perf_counter() - started, STOP_REASON: result.stop_reason,
            }
            log.info("epoch %d: %s", epoch, last_metrics)
            if result.stop_reason:
                break  # the final report below carries this epoch
            directory = write_checkpoint(epoch) if epoch % cfg.checkpoint_every == 0 else None
            result.history.append(dict(last_metrics))
            report(dict(last_metrics), directory)
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

        # --- the end: test the best weights, report once more with everything ---
        if not result.stop_reason:  # resumed after the last epoch of a trial
            result.stop_reason = "max_epochs"
        last_metrics[STOP_REASON] = result.stop_reason
        directory = write_checkpoint(epoch)
        if test_split is not None:
            last_metrics.update(_test_best(best_dir, test_split, cfg, prompts, device, precision,
                                           loss_fn, directory, result))
        result.history.append(dict(last_metrics))
        report(dict(last_metrics), directory)
    return result


def _save_best(model, best_dir: Path, cfg, include_frozen, frozen_sha, metrics) -> None:
    """Replace best_dir by the current weights (written beside it, then renamed)."""
    staging = best_dir.with_name(best_dir.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    ckpt.save_model(model, staging, include_frozen=include_frozen,
                    frozen_sha256=frozen_sha)
    write_json_atomic(staging / "metrics.json", metrics)
    shutil.rmtree(best_dir, ignore_errors=True)
    staging.rename(best_dir)


def _test_best(best_dir, test_split, cfg, prompts, device, precision, loss_fn, out_dir, result):
    """Test metrics of the best weights; per-image rows written to out_dir/per_image.parquet."""
    import pandas as pd

    if not best_dir.is_dir():  # no finite epoch ever: nothing to test
        log.warning("no best checkpoint (no finite epoch); test metrics are NaN")
        return {TEST_DICE_MEAN: math.nan, TEST_DICE_STD: math.nan}
    model = ckpt.load_model(best_dir, device=device)
    data = _SplitData(test_split, cfg, device, with_eval=True)
    _, rows = evaluate(model, data, _Inputs(model, prompts, device), loss_fn, cfg, precision,
                       with_hausdorff=True)
    frame = pd.DataFrame(rows)
    with atomic_path(out_dir / ckpt.PER_IMAGE_FILE) as tmp:
        frame.to_parquet(tmp, index=False)
    result.test_rows = rows
    del model, data
    return _test_summary(frame[DICE].to_numpy())


def _test_summary(dice: np.ndarray) -> dict[str, float]:
    """Mean and sample standard deviation of the per-image test Dice."""
    return {TEST_DICE_MEAN: float(dice.mean()),
            TEST_DICE_STD: float(dice.std(ddof=1)) if len(dice) > 1 else math.nan}


def _finished_result(resume_dir: Path, last_metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The final report of a trial whose last checkpoint is resume_dir, if it had finished.

    Ray restores a trial that finished just before the driver died (after our chain state
    saw it finish, before Ray's experiment snapshot did). Reporting its result again,
    without a new checkpoint, keeps its checkpoint (which finetunes start from) in place.
    """
    per_image = Path(resume_dir) / ckpt.PER_IMAGE_FILE
    if not per_image.is_file():
        return None
    import pandas as pd

    return {**last_metrics, **_test_summary(pd.read_parquet(per_image)[DICE].to_numpy())}
