"""The training loop of one trial: train, validate, checkpoint, stop early, test the best;
it needs only a `report` callable, so it runs without Ray (docs/design.md, "One trial").

    run_training(TrainConfig.from_dict({...}), report=lambda metrics, checkpoint_dir: ...)
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vlsm import checkpoint as ckpt
from vlsm.atomic import atomic_folder, write_json_atomic
from vlsm.axes import (
    BEST_EPOCH,
    BEST_VAL_DICE,
    DICE,
    EPOCH,
    IMAGES_PER_S,
    LR,
    SECONDS,
    STOP_REASON,
    TRAIN_LOSS,
    VAL_DICE,
    VAL_LOSS,
)
from vlsm.config import TrainConfig
from vlsm.evaluate import EvalSetup, evaluate, evaluate_best, read_test_summary
from vlsm.feature_store import FeatureStore, SplitFeatures, uses_feature_store
from vlsm.losses import DiceBCELoss
from vlsm.speed import prepare_model, set_kernel_flags
from vlsm.train_state import TrainState
from vlsm.trial_data import ModelInputs, PromptTable, SplitTensors, mixed_epoch_order, open_cache

if TYPE_CHECKING:
    from vlsm.data.cache import PreparedSplit
    from vlsm.models.tokenizer import PromptTokenizer

__all__ = ["Report", "TrainResult", "resolve_precision", "run_training", "seed_everything"]

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], "Path | None"], None]


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
    if precision == "auto":  # native bf16 only: emulated bf16 (V100, T4) is slower than fp16
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return precision


def run_training(cfg: TrainConfig, report: Report, resume_dir: Path | None = None, *,
                 device: str | torch.device | None = None, work_dir: Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> TrainResult:
    """Train one trial; call report(metrics, checkpoint_dir) after every epoch. checkpoint_dir
    is a full checkpoint once cfg.checkpoint_interval_s passed on clock (else None), and at
    the end, with the test of the best weights; it exists only during the call. resume_dir:
    a checkpoint of this trial to continue from exactly (one with a damaged file is not
    trusted: the trial trains from its start, `vlsm.checkpoint.resumable`)."""
    if resume_dir is not None and not ckpt.resumable(resume_dir, cfg.cell_id):
        resume_dir = None
    trial = _set_up(cfg, device, resume_dir)
    state, history = trial.state, []
    with tempfile.TemporaryDirectory(prefix="vlsm-trial-", dir=work_dir) as tmp:
        files = _TrialFiles(Path(tmp), trial)
        if resume_dir is not None:
            files.resume(state, resume_dir)
            finished = _finished_result(resume_dir, state.last_metrics)
            if finished is not None:
                log.info("the trial had finished; reporting its result again")
                report(finished, None)
                return _result(state, history)
        checkpoint_due = _CheckpointClock(cfg.checkpoint_interval_s, clock)
        for epoch in range(0) if state.stop_reason else range(state.epoch + 1, cfg.max_epochs + 1):
            _run_epoch(trial, files, epoch)
            if state.stop_reason:
                break  # the final report below carries this epoch
            directory = files.save(state) if checkpoint_due() else None  # report
            history.append(dict(state.last_metrics))
            report(dict(state.last_metrics), directory)
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        # --- the end: test the best weights, report once more with everything ---
        state.stop_reason = state.stop_reason or "max_epochs"  # or resumed after the last epoch
        state.last_metrics[STOP_REASON] = state.stop_reason
        directory, test_rows = files.save(state, seal=False), None
        if trial.test_split is not None:
            summary, test_rows = evaluate_best(files.best_dir, trial.test_split, trial.setup, directory)
            state.last_metrics.update(summary)
        ckpt.seal(directory)  # its per_image.parquet included
        history.append(dict(state.last_metrics))
        report(dict(state.last_metrics), directory)
    return _result(state, history, test_rows)


@dataclass
class _Trial:
    """The parts of one trial the epoch loop works with (built by `_set_up`)."""

    cfg: TrainConfig
    device: torch.device
    model: nn.Module
    include_frozen: bool  # the frozen weights are not re-derivable from spec + seed
    frozen_sha: str
    params: list[nn.Parameter]  # the trained ones
    tokenizer: PromptTokenizer  # saved in best/ beside the weights
    setup: EvalSetup
    inputs: ModelInputs
    train_data: SplitTensors
    val_data: SplitTensors
    train_features: SplitFeatures | None  # the stored image features (feature_store)
    test_split: PreparedSplit | None
    state: TrainState


def _set_up(cfg: TrainConfig, device: str | torch.device | None, resume_dir: Path | None) -> _Trial:
    """Seeds, data, model (with the resumed or init_from weights), prompts and a fresh state."""
    from vlsm.data.prompts import prompt_key
    from vlsm.models import build_tokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    set_kernel_flags(cfg)  # cuDNN autotuning, deterministic algorithms (vlsm.speed)
    key = prompt_key(cfg.prompt)
    train_split = open_cache(cfg.train_cache, "train_cache")
    val_split = open_cache(cfg.val_cache, "val_cache")
    test_split = open_cache(cfg.test_cache, "test_cache") if cfg.test_cache else None
    splits = (train_split, val_split, test_split)
    model, include_frozen, frozen_sha = _build_model(cfg, splits, resume_dir)
    model = prepare_model(model.to(device), cfg, device)  # the speed switches (vlsm.speed)

    tokenizer = build_tokenizer(cfg.model, pretrained=cfg.pretrained, config=cfg.model_config, tokenizer=cfg.tokenizer)
    prompts = PromptTable([s for s in splits if s is not None], key, tokenizer, device,
                          synthetic_style=train_split.synthetic, generator=cfg.prompt_source == "generator",
                          provenance=cfg.provenance_phrases)
    inputs = ModelInputs(model, prompts, device, precision)
    features = None
    if uses_feature_store(cfg):  # the frozen image features computed once, read back
        features = FeatureStore(inputs, cfg, device)
        features.check_writable(model, [s for s in splits if s is not None])
    setup = EvalSetup(prompts, DiceBCELoss(cfg.dice_weight, cfg.bce_weight, cfg.dice_smooth), cfg,
                      precision, device, features)
    train_data = SplitTensors(train_split, cfg, device, with_eval=False)
    val_data = SplitTensors(val_split, cfg, device, with_eval=True)
    train_features = None if features is None else features.split(model, train_split)
    params = [p for p in model.parameters() if p.requires_grad]
    state = TrainState.fresh(params, cfg, device, precision)
    return _Trial(cfg, device, model, include_frozen, frozen_sha, params, tokenizer, setup,
                  inputs, train_data, val_data, train_features, test_split, state)


def _model_spec(cfg: TrainConfig) -> dict[str, Any]:
    """What `vlsm.checkpoint.rebuild` builds this trial's model from."""
    spec = {"name": cfg.model, "pretrained": cfg.pretrained, "config": cfg.model_config,
            "freeze_encoder": cfg.freeze_encoder, "init_seed": cfg.seed}
    if cfg.checkpoint is not None:
        spec["checkpoint"] = cfg.checkpoint
    return spec


def _build_model(cfg: TrainConfig, splits: Sequence[PreparedSplit | None],
                 resume_dir: Path | None) -> tuple[nn.Module, bool, str]:
    """(model, include_frozen, frozen_sha256): rebuilt from the spec, then the resumed (on the
    CPU; the rest of the checkpoint: `_TrialFiles.resume`) or init_from weights loaded."""
    model = ckpt.rebuild(_model_spec(cfg))
    for split, name in zip(splits, ("train_cache", "val_cache", "test_cache"), strict=True):
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
    return model, include_frozen, frozen_sha


def _train_epoch(trial: _Trial, epoch: int) -> tuple[float, float, int]:
    """One pass over the training split: (mean loss, seconds its batches took, pairs trained)."""
    cfg, device, state, data = trial.cfg, trial.device, trial.state, trial.train_data
    trial.model.train()
    order = mixed_epoch_order(data.synthetic, cfg.synthetic_share, cfg.seed, epoch)  # (n,) n = N without a share
    rng = random.Random(f"{cfg.seed}:{epoch}")
    phrasing = trial.setup.prompts.choose(data.split.items, rng)  # (N,)
    loss_sum = torch.zeros((), device=device)
    started = time.perf_counter()
    for idx, images, labels in data.batches(order, cfg.batch_size):
        structure = data.structure[idx].to(device).view(-1, 1, 1)  # (B, 1, 1)
        target = (labels == structure).unsqueeze(1)  # (B, 1, S, S)
        logits = trial.inputs(trial.model, images, phrasing[idx], data.image_index[idx],
                              stored=trial.train_features)  # (B, 1, S, S)
        loss = trial.setup.loss_fn(logits, target)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(trial.params, cfg.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        loss_sum += loss.detach() * len(idx)
    if device.type == "cuda":  # the timing covers the device's work
        torch.cuda.synchronize(device)
    return float(loss_sum) / len(order), time.perf_counter() - started, len(order)


def _run_epoch(trial: _Trial, files: _TrialFiles, epoch: int) -> None:
    """Train and validate one epoch: keep the best weights, step the scheduler, and set the
    state's epoch, stop reason and metrics."""
    cfg, state = trial.cfg, trial.state
    started = time.perf_counter()
    train_loss, train_seconds, train_pairs = _train_epoch(trial, epoch)
    val_loss, val_rows = evaluate(trial.model, trial.val_data, trial.setup)  # validate
    val_dice = float(np.mean([r[DICE] for r in val_rows]))
    finite = math.isfinite(train_loss) and math.isfinite(val_loss)
    if finite and val_dice > state.best_val_dice:  # keep the best
        state.best_val_dice, state.best_epoch = val_dice, epoch
        files.keep_best({EPOCH: epoch, VAL_DICE: val_dice, VAL_LOSS: val_loss})
    lr = state.optimizer.param_groups[0]["lr"]  # the epoch's, before the scheduler steps
    if finite:
        state.scheduler.step(val_loss)
    state.stop_reason = _stop_reason(state, cfg, epoch, train_loss, val_loss, val_dice)
    state.epoch, state.last_metrics = epoch, {
        EPOCH: epoch, TRAIN_LOSS: train_loss, VAL_LOSS: val_loss, VAL_DICE: val_dice,
        BEST_VAL_DICE: state.best_val_dice, BEST_EPOCH: state.best_epoch, LR: lr,
        IMAGES_PER_S: train_pairs / max(train_seconds, 1e-9),
        SECONDS: time.perf_counter() - started, STOP_REASON: state.stop_reason,
    }
    log.info("epoch %d: %s", epoch, state.last_metrics)


def _stop_reason(state: TrainState, cfg: TrainConfig, epoch: int, train_loss: float,
                 val_loss: float, val_dice: float) -> str:
    """Why training stops after epoch ("" to go on); updates the early stopping."""
    if not math.isfinite(train_loss) or not math.isfinite(val_loss):
        bad = TRAIN_LOSS if not math.isfinite(train_loss) else VAL_LOSS
        reason = f"non-finite {bad} at epoch {epoch}"
        log.warning("stopping: %s", reason)
        return reason
    if state.stopper.update(val_dice, epoch):
        return "early_stopping"
    return "max_epochs" if epoch == cfg.max_epochs else ""


class _CheckpointClock:
    """Whether a full checkpoint is due: interval_s passed since the last one (or the start).
    A clock, not an epoch count: a checkpoint costs seconds, and a crash loses time."""

    def __init__(self, interval_s: float, clock: Callable[[], float]):
        self.interval_s, self.clock, self.last = interval_s, clock, clock()

    def __call__(self) -> bool:
        """True when due; the interval then counts from now."""
        now = self.clock()
        if now - self.last < self.interval_s:
            return False
        self.last = now
        return True


class _TrialFiles:
    """The trial's checkpoint folders and best weights in its temporary folder: the best are
    a host copy when they improve (`keep_best`), written to best/ by the next `save`."""

    def __init__(self, tmp: Path, trial: _Trial):
        self.tmp, self.trial, self.best_dir = tmp, trial, tmp / ckpt.BEST_DIR
        self.pending_best: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def save(self, state: TrainState, *, seal: bool = True) -> Path:
        """A new checkpoint folder: weights, state, config and best/ (`vlsm.checkpoint`), and
        its manifest last unless not `seal` (files are still to come)."""
        self._write_best()
        out = Path(tempfile.mkdtemp(prefix=f"epoch{state.epoch:04d}-", dir=self.tmp))
        ckpt.save_model(self.trial.model, out, include_frozen=self.trial.include_frozen,
                        frozen_sha256=self.trial.frozen_sha)
        state.save(out)
        write_json_atomic(out / ckpt.CONFIG_FILE, self.trial.cfg.to_dict())
        if self.best_dir.is_dir():
            ckpt.copy_tree(self.best_dir, out / ckpt.BEST_DIR)
        if seal:
            ckpt.seal(out)
        return out

    def resume(self, state: TrainState, directory: Path) -> None:
        """The mirror of `save` (the weights were loaded when the model was built)."""
        state.load(directory)
        if (Path(directory) / ckpt.BEST_DIR).is_dir():
            ckpt.copy_tree(Path(directory) / ckpt.BEST_DIR, self.best_dir)
        log.info("resuming after epoch %d from %s", state.epoch, directory)

    def keep_best(self, metrics: dict[str, Any]) -> None:
        """Keep the current weights in host memory as the best so far."""
        tensors = ckpt.host_copy(self.trial.model, include_frozen=self.trial.include_frozen)
        self.pending_best = tensors, metrics

    def _write_best(self) -> None:
        """Replace best/ by the kept best weights, if newer."""
        if self.pending_best is None:
            return
        tensors, metrics = self.pending_best
        with atomic_folder(self.best_dir, replace=True) as staging:
            ckpt.save_model(self.trial.model, staging, include_frozen=self.trial.include_frozen,
                            frozen_sha256=self.trial.frozen_sha, tokenizer=self.trial.tokenizer,
                            tensors=tensors)
            write_json_atomic(staging / "metrics.json", metrics)
            ckpt.seal(staging)
        self.pending_best = None


def _result(state: TrainState, history: list[dict[str, Any]],
            test_rows: list[dict[str, Any]] | None = None) -> TrainResult:
    """The TrainResult of a trial that ended in state."""
    return TrainResult(history, state.stop_reason, state.best_val_dice, state.best_epoch, test_rows)


def _finished_result(resume_dir: Path, last_metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The final report of a trial whose last checkpoint is resume_dir, if it had finished:
    Ray restores a trial that finished just before its snapshot; reporting again without a
    new checkpoint keeps the checkpoint finetunes start from in place."""
    summary = read_test_summary(resume_dir)
    return None if summary is None else {**last_metrics, **summary}
