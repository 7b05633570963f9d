"""The Ray Tune function trainable: one trial = `train_vlsm(config)`, a `TrainConfig` as a
dict (data as cache folder paths), reported each epoch with `tune.report` and resumed from
`tune.get_checkpoint()` (docs/design.md, "One trial"). Workers are reused between trials, so
a trial resets seeds first and frees GPU memory last.

    tune.Tuner(train_vlsm, param_space={"model": "clipseg", "train_cache": ..., ...}).fit()
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from pathlib import Path
from typing import Any

__all__ = ["limit_to_share", "train_vlsm"]

log = logging.getLogger(__name__)


def _assigned_resources() -> dict[str, float]:
    """{"CPU": n, "GPU": share} Ray gave this trial; empty outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return {}
        return dict(ray.get_runtime_context().get_assigned_resources())
    except Exception:  # noqa: BLE001 - outside a Ray worker there is nothing assigned
        return {}


def limit_to_share(resources: dict[str, float]) -> str:
    """Threads = assigned CPUs; GPU memory capped at the GPU share; returns the device."""
    import torch

    cpus = resources.get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    if not torch.cuda.is_available():
        return "cpu"
    if resources and not resources.get("GPU"):  # Ray leaves CUDA_VISIBLE_DEVICES alone then
        return "cpu"
    share = resources.get("GPU", 1.0)  # outside Ray: the whole device
    if 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share, 0)
    return "cuda"


def _free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_vlsm(config: dict[str, Any]) -> None:
    """Run one trial under Ray Tune (see the module docstring)."""
    from ray import tune

    from vlsm.config import TrainConfig
    from vlsm.system_metrics import SystemSampler
    from vlsm.train import run_training, seed_everything

    cfg = TrainConfig.from_dict(config)
    seed_everything(cfg.seed)  # a reused worker starts from the same global state
    device = limit_to_share(_assigned_resources())

    sampler = SystemSampler(cfg.system_metrics_interval_s, gpu=device == "cuda")

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(directory)) if directory else None
        tune.report({**metrics, **sampler.take()}, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(sampler)
            if cfg.init_from and "://" in cfg.init_from:  # an upstream checkpoint on shared storage
                local = stack.enter_context(tune.Checkpoint(cfg.init_from).as_directory())
                cfg = dataclasses.replace(cfg, init_from=str(local))
            resume_dir = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
            run_training(cfg, report, resume_dir, device=device)
    finally:
        _free_device_memory()
