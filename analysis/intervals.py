"""Confidence intervals over both sources of noise, the training run (seeds) and the test images.

The hierarchical bootstrap: each cell's seeds resampled on their own, then the units
(image-structure pairs) once for all seeds and cells, so a difference stays paired
(docs/design.md, "Seeds, intervals and claims"). With one seed it covers the images only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["N_BOOT", "bootstrap_interval", "hierarchical_bootstrap", "percentile_interval"]

N_BOOT = 2000  # resamples: the usual count for a 95% percentile interval

RandomSeed = int | Sequence[int]  # what numpy.random.default_rng takes


def _seed_counts(rng: np.random.Generator, n_boot: int, n_seeds: int) -> np.ndarray:
    """(n_boot, n_seeds): how often each seed is drawn in n_seeds draws with replacement."""
    if n_seeds == 1:
        return np.ones((n_boot, 1))
    draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds), dtype=np.int32)
    return (draws[:, :, None] == np.arange(n_seeds)).sum(axis=1)


def _check_cells(cells: Sequence[np.ndarray], signs: Sequence[float]) -> list[np.ndarray]:
    if not cells:
        raise ValueError("hierarchical_bootstrap: no cells given")
    if len(signs) != len(cells):
        raise ValueError(f"hierarchical_bootstrap: {len(cells)} cell(s) but {len(signs)} sign(s)")
    arrays = [np.asarray(x, dtype=float) for x in cells]
    for i, x in enumerate(arrays):
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"cell {i}: shape {x.shape}; expected (seeds, units) with at least one of each")
        if x.shape[1] != arrays[0].shape[1]:
            raise ValueError(f"cell {i}: {x.shape[1]} units, cell 0 has {arrays[0].shape[1]}; "
                             "cells are paired unit by unit")
        if np.isnan(x).any():
            raise ValueError(f"cell {i}: NaN values; keep only units every seed of every cell has")
    return arrays


def hierarchical_bootstrap(cells: Sequence[np.ndarray], signs: Sequence[float] = (1.0,), *,
                           n_boot: int = N_BOOT, seed: RandomSeed = 0) -> np.ndarray:
    """(n_boot,) resampled values of sum_c sign_c * mean over units of cell c's seed-averaged values.

    cells: one (seeds, units) array per cell, units in the same order in every cell; signs:
    (1.0,) for a cell's mean, (1.0, -1.0) for the paired difference a - b. seed:
    numpy.random.default_rng's, so the result is reproducible.
    """
    arrays = _check_cells(cells, signs)
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}; expected at least 1")
    rng = np.random.default_rng(seed)
    n_units = arrays[0].shape[1]
    unit_draws = rng.integers(0, n_units, size=(n_boot, n_units), dtype=np.int32)  # (B, N), shared by all cells
    total = np.zeros(n_boot)
    for x, sign in zip(arrays, signs, strict=True):
        n_seeds = x.shape[0]
        per_seed = np.stack([row[unit_draws].mean(axis=1) for row in x], axis=1)  # (B, S): each seed's resampled mean
        # the mean over resampled seeds, as each seed's mean weighted by its draws: no (B, S, N) array
        total += sign * (_seed_counts(rng, n_boot, n_seeds) * per_seed).sum(axis=1) / n_seeds
    return total


def percentile_interval(resamples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled values."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}; expected a fraction in (0, 1), e.g. 0.95")
    low, high = np.quantile(resamples, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def bootstrap_interval(cells: Sequence[np.ndarray], signs: Sequence[float] = (1.0,), *, n_boot: int = N_BOOT,
                       seed: RandomSeed = 0, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of `hierarchical_bootstrap(cells, signs, ...)`; (NaN, NaN) for n_boot 0."""
    if n_boot == 0:
        return float("nan"), float("nan")
    return percentile_interval(hierarchical_bootstrap(cells, signs, n_boot=n_boot, seed=seed), level)
