"""The P7 shape classifier on drawn shapes: sizes, rotations, noise."""

from __future__ import annotations

import numpy as np
import pytest

from vlsm.data.shapes import SHAPES, classify_shape, shape_features

SIZES = (12, 25, 60)  # circumradius-like scale in pixels


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of an (n, n) image, centred off the pixel grid."""
    y, x = np.mgrid[0:n, 0:n].astype(float)
    return x - (n - 1) / 2 + 0.3, y - (n - 1) / 2 + 0.1


def _canvas(size: float) -> int:
    return int(size * 2.4) + 10


def _ellipse(size: float, ratio: float, deg: float) -> np.ndarray:
    x, y = _grid(_canvas(size))
    t = np.deg2rad(deg)
    u, v = np.cos(t) * x + np.sin(t) * y, -np.sin(t) * x + np.cos(t) * y
    return (u / size) ** 2 + (v / (size / ratio)) ** 2 <= 1  # (n, n) bool


def _polygon(size: float, vertices: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex polygon filled on pixel centres."""
    x, y = _grid(_canvas(size))
    inside = np.ones(x.shape, bool)
    for p, q in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        inside &= (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0]) >= 0
    return inside


def _rotate(vertices: np.ndarray, deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.asarray(vertices, float) @ rot.T


def _rectangle(size: float, ratio: float, deg: float) -> np.ndarray:
    w = 1.6 * size
    h = w / ratio
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return _polygon(size, _rotate(corners, deg))


def _triangle(size: float, deg: float, obtuse: bool) -> np.ndarray:
    if obtuse:
        corners = [(-size, -size / 3), (size, -size / 3), (0.3 * size, size / 3)]
    else:
        a = np.deg2rad(90) + np.arange(3) * 2 * np.pi / 3
        corners = np.stack([size * np.cos(a), size * np.sin(a)], axis=1)
    return _polygon(size, _rotate(corners, deg))


CASES = [
    *[(f"disc-{s}", "circle", _ellipse(s, 1.0, 0)) for s in SIZES],
    *[(f"ellipse2:1-{s}-{d}", "oval", _ellipse(s, 2.0, d)) for s in SIZES for d in (0, 35)],
    *[
        (f"triangle-{s}-{d}-{o}", "triangle", _triangle(s, d, o))
        for s in SIZES
        for d in (0, 50)
        for o in (False, True)
    ],
    *[(f"square-{s}-{d}", "square", _rectangle(s, 1.0, d)) for s in SIZES for d in (0, 30, 45)],
    *[(f"rect2.5:1-{s}-{d}", "rectangle", _rectangle(s, 2.5, d)) for s in SIZES for d in (0, 30, 45)],
]


@pytest.mark.parametrize(("name", "expected", "mask"), CASES, ids=[c[0] for c in CASES])
def test_drawn_shapes(name: str, expected: str, mask: np.ndarray) -> None:
    assert expected in SHAPES
    assert classify_shape(mask) == expected, shape_features(mask)


def _flip_boundary(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Flip n foreground pixels on the edge off and n background pixels beside it on."""
    from scipy import ndimage

    inner = mask & ~ndimage.binary_erosion(mask)
    outer = ndimage.binary_dilation(mask) & ~mask
    out = mask.copy()
    for region, value in ((inner, False), (outer, True)):
        rows, cols = np.nonzero(region)
        pick = rng.choice(len(rows), size=n, replace=False)
        out[rows[pick], cols[pick]] = value
    return out


@pytest.mark.parametrize(
    ("name", "expected", "mask"),
    [c for c in CASES if c[0].split("-")[1] == "25"],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_noise_does_not_change_the_answer(name: str, expected: str, mask: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for _ in range(3):
        noisy = _flip_boundary(mask, 4, rng)
        assert not np.array_equal(noisy, mask)
        assert classify_shape(noisy) == expected, shape_features(noisy)


def test_specks_are_ignored() -> None:
    mask = _rectangle(25, 2.5, 30)
    mask[0, 0] = mask[-1, 0] = True  # far-away single pixels would stretch the hull
    assert classify_shape(mask) == "rectangle"


def test_deterministic_and_int_masks() -> None:
    mask = _triangle(25, 10, False).astype(np.uint8) * 255
    assert classify_shape(mask) == classify_shape(mask.copy()) == "triangle"


def test_features_of_a_square() -> None:
    f = shape_features(_rectangle(60, 1.0, 0))
    assert f.rect_fill == pytest.approx(1.0, abs=0.01)
    assert f.triangle_fill == pytest.approx(0.5, abs=0.01)
    assert f.aspect == pytest.approx(1.0, abs=0.02)
    assert 0.95 <= f.solidity <= 1.0


def test_bad_masks() -> None:
    with pytest.raises(ValueError, match="empty"):
        classify_shape(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        classify_shape(np.ones((2, 8, 8), np.uint8))
