"""The hierarchical bootstrap: reproducible, paired, and its 95% interval covers the truth
at about the nominal rate when both the seed and the images add noise."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import bootstrap_interval, hierarchical_bootstrap
from analysis.intervals import percentile_interval

MU = 0.85


def _cell(rng: np.random.Generator, image_effect: np.ndarray, n_seeds: int, sd_seed: float, sd_noise: float,
          mu: float = MU) -> np.ndarray:
    """(seeds, units) Dice: mu + a seed's shift + the unit's own effect (shared by seeds) + noise."""
    n_units = image_effect.shape[1]
    return mu + rng.normal(0.0, sd_seed, (n_seeds, 1)) + image_effect + rng.normal(0.0, sd_noise, (n_seeds, n_units))


def test_reproducible_and_seeded() -> None:
    x = np.random.default_rng(0).uniform(0.6, 0.95, size=(3, 50))
    first = hierarchical_bootstrap([x], n_boot=300, seed=7)
    assert first.shape == (300,)
    assert np.array_equal(first, hierarchical_bootstrap([x], n_boot=300, seed=7))
    assert not np.array_equal(first, hierarchical_bootstrap([x], n_boot=300, seed=8))
    assert bootstrap_interval([x], n_boot=300, seed=[7, 1]) == bootstrap_interval([x], n_boot=300, seed=[7, 1])
    assert np.isnan(bootstrap_interval([x], n_boot=0)).all()  # no resamples, no interval


def test_one_seed_is_the_image_bootstrap_of_the_mean() -> None:
    x = np.random.default_rng(1).normal(0.8, 0.1, size=(1, 400))
    resamples = hierarchical_bootstrap([x], n_boot=4000, seed=0)
    assert resamples.mean() == pytest.approx(x.mean(), abs=1e-3)
    assert resamples.std() == pytest.approx(x.std() / np.sqrt(400), rel=0.1)
    low, high = percentile_interval(resamples)
    assert low < x.mean() < high


def test_a_difference_is_paired_unit_by_unit() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0.8, 0.1, size=(1, 200))
    assert np.all(hierarchical_bootstrap([a, a], (1.0, -1.0), n_boot=200) == 0.0)
    b = a - 0.01 + rng.normal(0.0, 0.002, size=a.shape)  # a shared image effect, a small shift
    low, high = bootstrap_interval([a, b], (1.0, -1.0), n_boot=1000)
    assert 0.0 < low < 0.01 < high < 0.02  # paired: the image spread (0.1) cancels
    alone = bootstrap_interval([a], n_boot=1000)
    assert alone[1] - alone[0] > 20 * (high - low)


def test_more_seed_noise_widens_the_interval() -> None:
    rng = np.random.default_rng(3)
    images = rng.normal(0.0, 0.05, size=(1, 100))
    quiet = _cell(rng, images, 5, 0.001, 0.01)
    noisy = quiet + np.array([[-0.02], [0.01], [0.0], [0.02], [-0.01]])  # the same, five different seed shifts
    width = [np.subtract(*bootstrap_interval([x], n_boot=1000)[::-1]) for x in (quiet, noisy)]
    assert width[1] > 1.5 * width[0]


def test_the_interval_covers_the_truth_at_about_the_nominal_rate() -> None:
    # between-seed sd 1 Dice point, between-image sd 5, noise 2; 5 seeds, 150 image-structure pairs
    rng = np.random.default_rng(11)
    covered = {"both": 0, "images only": 0}
    for r in range(200):
        x = _cell(rng, rng.normal(0.0, 0.05, size=(1, 150)), 5, 0.01, 0.02)
        low, high = bootstrap_interval([x], n_boot=400, seed=r)
        covered["both"] += low <= MU <= high
        # the seeds' mean treated as one run: the training run's noise is not counted
        low, high = bootstrap_interval([x.mean(axis=0, keepdims=True)], n_boot=400, seed=r)
        covered["images only"] += low <= MU <= high
    assert 0.88 * 200 <= covered["both"] <= 0.99 * 200, covered
    assert covered["images only"] < 0.85 * 200, covered


def test_the_paired_difference_covers_the_true_difference() -> None:
    rng = np.random.default_rng(12)
    delta, covered, covered_images = 0.003, 0, 0
    for r in range(200):
        images = rng.normal(0.0, 0.05, size=(1, 150))  # the same test images for both cells
        a = _cell(rng, images, 5, 0.003, 0.02, mu=MU + delta)
        b = _cell(rng, images, 5, 0.003, 0.02)
        low, high = bootstrap_interval([a, b], (1.0, -1.0), n_boot=400, seed=r)
        covered += low <= delta <= high
        low, high = bootstrap_interval([a.mean(0, keepdims=True), b.mean(0, keepdims=True)], (1.0, -1.0),
                                       n_boot=400, seed=r)
        covered_images += low <= delta <= high
    assert 0.88 * 200 <= covered <= 0.99 * 200, covered
    assert covered_images < 0.8 * 200, covered_images


def test_bad_input_is_refused() -> None:
    x = np.ones((2, 5))
    with pytest.raises(ValueError, match="2 cell"):
        hierarchical_bootstrap([x, x], (1.0,))
    with pytest.raises(ValueError, match="paired unit by unit"):
        hierarchical_bootstrap([x, np.ones((2, 4))], (1.0, -1.0))
    with pytest.raises(ValueError, match="NaN"):
        hierarchical_bootstrap([np.array([[1.0, np.nan]])])
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        hierarchical_bootstrap([np.ones(5)])
    with pytest.raises(ValueError, match="n_boot=-1"):
        hierarchical_bootstrap([x], n_boot=-1)
    with pytest.raises(ValueError, match="level=95"):
        bootstrap_interval([x], level=95)
