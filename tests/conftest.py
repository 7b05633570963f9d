"""Shared pytest fixtures: the hub kept offline, one phantom CAMUS cache for the tests
that train or evaluate tiny models, tiny synthetic echo arrays.

`make_label_map(h, w)` draws a CAMUS-coded heart (1 LV cavity, 2 myocardium ring,
3 left atrium below) small enough to sit inside `make_cone(h, w)`, a fan that opens
from the top centre like an apical ultrasound sector. `make_image(h, w)` is uint8
noise, non-zero exactly inside the cone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Nothing may download at test time: set before any test module imports transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    """Every test (and every subprocess it starts) sees the Hugging Face hub as offline."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def phantom_caches(tmp_path_factory) -> dict[str, Path]:
    """split -> cache folder of a phantom CAMUS (5 train, 2 val, 1 test patients, official
    split) at the tiny models' 64 px: every test that trains or evaluates a tiny model reads
    it (read-only, as trials read caches)."""
    from vlsm.data.cache import prepare_dataset
    from vlsm.data.phantom import write_demo_data

    root = tmp_path_factory.mktemp("phantom")
    demo = write_demo_data(root / "demo", seed=0, n_patients=8, n_test=1, n_val=2)
    return prepare_dataset("camus", demo.camus_root, 64, root / "cache", split_scheme="official", progress=False)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]  # (H, W) each
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0


def label_map(h: int = 40, w: int = 56) -> np.ndarray:
    """(H, W) uint8 in {0, 1, 2, 3}: LV (1) inside a myocardium ring (2), LA (3) below."""
    cy, cx = 0.45 * h, w / 2
    out = np.zeros((h, w), np.uint8)
    out[_ellipse(h, w, cy, cx, 0.25 * h, 0.125 * w)] = 2
    out[_ellipse(h, w, cy, cx, 0.2 * h, 0.09 * w)] = 1
    la = _ellipse(h, w, 0.78 * h, cx, 0.1 * h, 0.09 * w) & (out == 0)
    out[la] = 3
    return out


def cone(h: int = 40, w: int = 56) -> np.ndarray:
    """(H, W) bool ultrasound fan opening from the top centre."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.abs(cols - (w - 1) / 2) <= 0.9 * (rows + 2)


def image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    """(H, W) uint8 speckle, 1-255 inside `cone`, 0 outside."""
    rng = np.random.default_rng(seed)
    return np.where(cone(h, w), rng.integers(1, 256, (h, w)), 0).astype(np.uint8)


@pytest.fixture
def make_label_map() -> Callable[..., np.ndarray]:
    return label_map


@pytest.fixture
def make_cone() -> Callable[..., np.ndarray]:
    return cone


@pytest.fixture
def make_image() -> Callable[..., np.ndarray]:
    return image
