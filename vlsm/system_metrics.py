"""System metrics of a trial's machine, sampled in a background thread, reported per epoch
under MLflow's names (docs/design.md, "One trial"). GPU figures are the whole card's
(``nvidia-smi``), but ``system/gpu_0_process_memory_megabytes``: this trial's peak.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections import defaultdict

__all__ = ["PREFIX", "SystemSampler"]

PREFIX = "system/"
_NVIDIA_SMI_FIELDS = "utilization.gpu,memory.used,memory.total"


class SystemSampler:
    """Samples CPU, memory and (on a CUDA trial) its GPU every `interval_s` seconds, in a
    `with` block; `take()` gives the means since the last take."""

    def __init__(self, interval_s: float, *, gpu: bool = False):
        self.interval_s = interval_s
        self._gpu_index = _visible_gpu() if gpu else None
        self._samples: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_times = _cpu_times()

    def __enter__(self) -> SystemSampler:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="vlsm-system-metrics", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Take one sample now (the thread calls this every interval)."""
        now = _cpu_times()
        values = {"cpu_utilization_percentage": _busy_percent(self._cpu_times, now), **_memory()}
        self._cpu_times = now
        if self._gpu_index is not None:
            values.update(_gpu(self._gpu_index))
        with self._lock:
            for name, value in values.items():
                self._samples[name].append(value)

    def take(self) -> dict[str, float]:
        """Means of the samples since the last call, as ``system/<name>`` metrics."""
        with self._lock:
            samples, self._samples = self._samples, defaultdict(list)
        metrics = {f"{PREFIX}{name}": round(sum(v) / len(v), 2) for name, v in samples.items() if v}
        if metrics and self._gpu_index is not None:
            import torch

            peak = torch.cuda.max_memory_allocated() / 1e6
            torch.cuda.reset_peak_memory_stats()
            metrics[f"{PREFIX}gpu_0_process_memory_megabytes"] = round(peak, 1)
        return metrics


def _cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine so far (not psutil.cpu_percent(), whose one
    baseline per process any other caller resets)."""
    import psutil

    times = psutil.cpu_times()
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _busy_percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    elapsed = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / elapsed if elapsed > 0 else 0.0


def _memory() -> dict[str, float]:
    import psutil

    memory = psutil.virtual_memory()
    return {"system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": memory.used / memory.total * 100}


def _visible_gpu() -> str | None:
    """The card this process sees as cuda:0 (Ray sets CUDA_VISIBLE_DEVICES), for nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return visible or None


def _gpu(index: str) -> dict[str, float]:
    """The card's utilisation and memory; {} when nvidia-smi does not answer."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", index, f"--query-gpu={_NVIDIA_SMI_FIELDS}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        utilization, used, total = (float(v) for v in out.strip().splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}
    return {"gpu_0_utilization_percentage": utilization, "gpu_0_memory_usage_megabytes": used,
            "gpu_0_memory_usage_percentage": used / total * 100 if total else 0.0}
