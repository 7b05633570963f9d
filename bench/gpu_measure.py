"""What `bench/gpu_suite.py` measures, one training setup at a time.

    row = measure_training(Setup("clipseg", frozen=False, batch_size=128), device, steps=10, warmup=3,
                           full_size=True)

Not `vlsm.train.run_training`: an epoch at the paper's sizes would need a cache of 1,600
images at 352 px and most of the suite's 8 minutes. A step here is the loop's step from the
same parts (`vlsm.speed`, `TrainState`, the loss, autocast, clipping) on random device inputs.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.flops import flop_counter
from vlsm.axes import IMAGES_PER_S

__all__ = ["VARIANTS", "Setup", "applies", "batch_on", "measure_training", "packed_worker", "train_step"]

# The plain path of each part of the GPU path (docs/design.md, "The GPU path"): the
# default configuration, then each part switched away from its default.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_vision_stop_early": {"vision_stop_early": False},
    "eager_attention": {"attention": "eager"},
    "no_fused_adamw": {"fused_adamw": False},
    "channels_last": {"channels_last": True},
    "fp32": {"precision": "fp32"},
    "compile": {"compile": True},
}
PROMPT_TOKENS = 16  # real tokens of a typical P3 prompt; the rest of the context is padding


@dataclass(frozen=True)
class Setup:
    """One training measurement: a model, its encoder mode, a batch size, a variant."""

    model: str  # registry key
    frozen: bool
    batch_size: int
    variant: str = "default"

    def label(self) -> dict[str, Any]:
        return {"model": self.model, "encoder": "frozen" if self.frozen else "unfrozen",
                "batch_size": self.batch_size, "variant": self.variant}


def applies(variant: str, model: str) -> bool:
    """Whether a variant changes model: a switch that some models claim (their registry
    entries' speed_switches) changes only those."""
    from vlsm.model_registry import MODELS, model_entry

    claimed = {switch for entry in MODELS for switch in entry.speed_switches}
    own = model_entry(model).speed_switches
    return all(switch in own or switch not in claimed for switch in VARIANTS[variant])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(setup: Setup, device: torch.device, full_size: bool):
    """(model, TrainConfig, TrainState, precision) of a setup, the model on device."""
    from bench.full_size import full_size_config
    from vlsm.config import TrainConfig
    from vlsm.models import build_model, tiny_config
    from vlsm.speed import prepare_model, set_kernel_flags
    from vlsm.train import resolve_precision
    from vlsm.train_state import TrainState

    config = full_size_config(setup.model) if full_size else tiny_config(setup.model)
    cfg = TrainConfig(model=setup.model, model_config=config, freeze_encoder=setup.frozen,
                      batch_size=setup.batch_size, **VARIANTS[setup.variant])
    precision = resolve_precision(cfg.precision, device)
    set_kernel_flags(cfg)  # as the loop sets them
    model = build_model(setup.model, config=config, freeze_encoder=setup.frozen)
    model = prepare_model(model.to(device), cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, cfg, TrainState.fresh(params, cfg, device, precision), precision


def _text_shape(model) -> tuple[int, int]:
    """(vocabulary size, context length) of a model's text tower (its registry entry's
    text_shape; CLIP's where the config leaves it to pretrained weights)."""
    from vlsm.model_registry import model_entry
    from vlsm.models.tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE

    shape = model_entry(model.spec["name"]).text_shape(model.spec["config"] or {})
    return shape or (CLIP_VOCAB_SIZE, CLIP_CONTEXT_LENGTH)


def batch_on(model, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random model inputs on device: normalised pixels (B, 3, S, S), right-padded tokens
    (B, L) and their mask, a target (B, 1, S, S)."""
    from vlsm.trial_data import pixel_values

    gen = torch.Generator(device=device).manual_seed(seed)
    s = model.input_size
    vocab, length = _text_shape(model)
    images = torch.randint(0, 256, (batch_size, s, s), generator=gen, device=device, dtype=torch.uint8)
    mean = torch.tensor(model.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.image_std, device=device).view(1, 3, 1, 1)
    pixels = pixel_values(images, mean, std)  # (B, 3, S, S), as ModelInputs
    real = min(PROMPT_TOKENS, length)
    mask = (torch.arange(length, device=device) < real).long().expand(batch_size, length)  # (B, L)
    ids = torch.randint(1, vocab - 2, (batch_size, length), generator=gen, device=device) * mask
    target = torch.rand(batch_size, 1, s, s, generator=gen, device=device) > 0.5
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask, "target": target}


def train_step(model, cfg, state, precision: str, batch: dict[str, Any], loss_fn) -> torch.Tensor:
    """One step of the loop (`vlsm.train._train_epoch`): forward under autocast, loss in
    float32, scaled backward, clipping, optimizer and scaler step. With batch["features"]
    and batch["text_features"] (`encode_image` and `encode_text`, as `vlsm.feature_store`
    keeps them) only `decode` runs: what the store leaves a frozen trial to compute."""
    from vlsm.trial_data import autocast_for

    device = batch["pixel_values"].device
    with autocast_for(device, precision):
        if "features" in batch:  # the frozen image encoder's output, computed once (a store)
            size = tuple(batch["pixel_values"].shape[-2:])
            logits = model.decode(batch["features"], batch["text_features"], batch["attention_mask"], size)
        else:
            logits = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    loss = loss_fn(logits, batch["target"])
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.unscale_(state.optimizer)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return loss.detach()


def _eval_pairs_per_s(model, precision: str, batch: dict[str, torch.Tensor], steps: int) -> float:
    """Validation pairs/s: each image encoded once, decoded for its 3 structures (as
    `vlsm.evaluate` does with shared_image_eval), no gradients."""
    from vlsm.trial_data import autocast_for

    device = batch["pixel_values"].device
    n = batch["pixel_values"].shape[0]
    images = max(1, n // 3)
    rows = torch.arange(n, device=device) % images  # (B,) the image of each pair
    model.eval()
    with torch.no_grad(), autocast_for(device, precision):
        for step in range(steps + 1):  # the first is a warm-up
            if step == 1:
                _sync(device)
                started = time.perf_counter()
            features = tuple(f[rows] for f in model.encode_image(batch["pixel_values"][:images]))
            text = model.encode_text(batch["input_ids"], batch["attention_mask"])
            model.decode(features, text, batch["attention_mask"], (model.input_size,) * 2)
        _sync(device)
    model.train()
    return steps * n / (time.perf_counter() - started)


def _checkpoint_seconds(model, state) -> dict[str, float]:
    """Seconds of one full checkpoint as the loop writes it (weights without frozen
    towers, train state) and of the host copy of the best weights kept each better epoch."""
    from vlsm import checkpoint as ckpt

    fingerprint = ckpt.frozen_fingerprint(model)  # the loop computes it once a trial, not per checkpoint
    started = time.perf_counter()
    ckpt.host_copy(model)
    best_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="gpu-suite-ckpt-") as tmp:
        started = time.perf_counter()
        ckpt.save_model(model, Path(tmp), frozen_sha256=fingerprint)
        state.save(Path(tmp))
        write_s = time.perf_counter() - started
    return {"checkpoint_write_s": write_s, "best_copy_s": best_s}


STREAMED_BATCHES = 4  # host rows of a streamed store: this many batches, gathered at random


def _streamed_features(features: tuple[torch.Tensor, ...], device: torch.device) -> Callable[[int], tuple]:
    """A step's features read as a streamed store reads them (`vlsm.feature_store.read_rows`:
    rows gathered from host arrays, copied to the device), from STREAMED_BATCHES batches' rows."""
    from vlsm.feature_store import host_array, read_rows

    arrays = [host_array(f).repeat(STREAMED_BATCHES, axis=0) for f in features]
    dtype, n = features[0].dtype, len(arrays[0])
    gen = torch.Generator().manual_seed(0)

    def read(batch_size: int) -> tuple[torch.Tensor, ...]:
        return tuple(read_rows(arrays, torch.randperm(n, generator=gen)[:batch_size], dtype, device))
    return read


def measure_training(setup: Setup, device: torch.device, *, steps: int, warmup: int, full_size: bool,
                     costs: bool = False, ready: Callable[[], None] | None = None,
                     precomputed: bool = False, streamed: bool = False) -> dict[str, Any]:
    """Training images/s, FLOPs per image (`bench.flops`, one step), peak memory; with
    costs also validation pairs/s and checkpoint seconds. An OOM or any other error is a
    row with an error, so the suite goes on and still writes what it measured.
    ready: called after the warm-up, right before the timed steps (packed trials wait
    there for each other). precomputed: a frozen setup trains on `encode_image` and
    `encode_text` computed once, as with the feature store (`train_step` with features);
    streamed: those image features read from host memory every step, as a store too large
    for the device is."""
    from vlsm.losses import DiceBCELoss
    from vlsm.speed import uses_fused_adamw
    from vlsm.trial_data import autocast_for

    row: dict[str, Any] = setup.label()
    try:
        model, cfg, state, precision = _build(setup, device, full_size)
        batch = batch_on(model, setup.batch_size, device)
        if precomputed:
            with torch.no_grad(), autocast_for(device, precision):  # what vlsm.feature_store holds
                batch["features"] = model.encode_image(batch["pixel_values"])
                batch["text_features"] = model.encode_text(batch["input_ids"], batch["attention_mask"])
            row["store_bytes_per_image"] = sum(f[0].numel() * f.element_size() for f in batch["features"])
        loss_fn = DiceBCELoss(cfg.dice_weight, cfg.bce_weight, cfg.dice_smooth)
        read = _streamed_features(batch["features"], device) if streamed else None

        def step() -> None:
            if read is not None:  # this step's rows from the host, as a streamed store reads them
                batch["features"] = read(setup.batch_size)
            train_step(model, cfg, state, precision, batch, loss_fn)

        row.update(precision=precision, fused_adamw=uses_fused_adamw(cfg, device))
        row.update(_timed(step, setup.batch_size, device, steps=steps, warmup=warmup, ready=ready,
                          count_flops=not cfg.compile))  # compiled graphs hide their ops
        if costs:
            row["eval_pairs_per_s"] = _eval_pairs_per_s(model, precision, batch, max(1, steps // 2))
            row.update(_checkpoint_seconds(model, state))
    except torch.cuda.OutOfMemoryError as err:
        row["error"] = f"out of memory: {str(err).splitlines()[0][:160]}"
    except Exception as err:  # noqa: BLE001 - one failed setup (a compile error, a kernel) is its row's
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    finally:
        model = state = batch = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _timed(step: Callable[[], None], batch_size: int, device: torch.device, *, steps: int, warmup: int,
           ready: Callable[[], None] | None, count_flops: bool) -> dict[str, Any]:
    """Warm-up steps, one counted step, then the timed steps: images/s and their span,
    FLOPs per image (None when not counted), peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    counter = flop_counter()
    with counter if count_flops else contextlib.nullcontext():
        step()
    _sync(device)
    if ready is not None:
        ready()
    row: dict[str, Any] = {}
    started, row["timed_from"] = time.perf_counter(), time.time()  # wall clock: packed trials
    for _ in range(steps):
        step()
    _sync(device)
    seconds, row["timed_to"] = time.perf_counter() - started, time.time()
    row["images"] = steps * batch_size
    row[IMAGES_PER_S] = row["images"] / seconds
    row["flop_per_image"] = counter.get_total_flops() / batch_size if count_flops else None
    row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return row


def packed_worker(setup: Setup, device_name: str, share: float, threads: int, steps: int, warmup: int,
                  full_size: bool, barrier, results) -> None:
    """One of N trials sharing a device, as Ray places fractional-GPU trials: memory capped
    at its share (`vlsm.trainable.limit_to_share`), started together, images/s returned."""
    from vlsm.trainable import limit_to_share

    try:  # every trial built and warm before any is timed; any failure is this trial's row
        torch.set_num_threads(threads)
        device = torch.device(limit_to_share({"GPU": share}) if device_name == "cuda" else "cpu")
        row = measure_training(setup, device, steps=steps, warmup=warmup, full_size=full_size,
                               ready=barrier.wait)
        if "error" in row:
            barrier.abort()  # the others stop waiting for this one
    except Exception as err:  # noqa: BLE001 - reported to the parent, which prints it
        row = {**setup.label(), "error": f"{type(err).__name__}: {err}"}
        with contextlib.suppress(Exception):
            barrier.abort()
    results.put(row)
