"""The shape word of prompt P7: a deterministic geometric classifier of a binary mask,
measured on its convex hull (docs/design.md, "Shape words (P7)": the measures, the rules
and why each threshold).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["SHAPES", "ShapeFeatures", "classify_shape", "shape_features"]

log = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("circle", "oval", "triangle", "square", "rectangle")

TRIANGLE_FILL_MIN = 0.75
RECT_FILL_MIN = 0.90
ELONGATED_ASPECT = 1.5
MIN_COMPONENT_FRACTION = 0.02
_MAX_HULL_VERTICES = 96  # the inscribed-triangle search is O(n^3)


@dataclass(frozen=True)
class ShapeFeatures:
    """Geometry of a mask's outline (docs/design.md, "Shape words (P7)")."""

    area: float  # foreground pixels (after dropping specks)
    hull_area: float  # convex hull of the pixels as unit squares
    solidity: float  # area / hull_area
    triangle_fill: float  # largest inscribed triangle / hull_area
    rect_fill: float  # hull_area / minimum-area rectangle
    aspect: float  # long / short side of the minimum-area rectangle (>= 1)


def _foreground(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool of the components that hold >= MIN_COMPONENT_FRACTION of the pixels."""
    from scipy import ndimage

    fg = np.asarray(mask) > 0
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), bool))  # 8-connectivity
    if n <= 1:
        return fg
    sizes = np.bincount(labels.ravel())[1:]  # (n,)
    keep = np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.sum()) + 1
    return np.isin(labels, keep)


def _hull(fg: np.ndarray) -> np.ndarray:
    """Convex hull vertices (counter-clockwise, (N, 2) as (x, y)) of the pixel squares."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull

    boundary = fg & ~ndimage.binary_erosion(fg)  # only edge pixels can touch the hull
    rows, cols = np.nonzero(boundary)
    corners = np.array([(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)])
    points = np.stack([cols, rows], axis=1)[:, None, :] + corners[None]  # (P, 4, 2)
    points = np.unique(points.reshape(-1, 2), axis=0)
    hull = ConvexHull(points)
    return points[hull.vertices]  # scipy orders 2-D hull vertices counter-clockwise


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _min_area_rectangle(poly: np.ndarray) -> tuple[float, float, float]:
    """(area, long side, short side) of the smallest enclosing rectangle: it has a side
    collinear with a hull edge (rotating calipers), so trying every edge is exact."""
    edges = np.roll(poly, -1, axis=0) - poly  # (N, 2)
    u = edges / np.linalg.norm(edges, axis=1, keepdims=True)  # (N, 2) edge directions
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)  # (N, 2) normals
    pu = poly @ u.T  # (N points, N directions)
    pv = poly @ v.T
    width = pu.max(axis=0) - pu.min(axis=0)
    height = pv.max(axis=0) - pv.min(axis=0)
    best = int(np.argmin(width * height))
    w, h = float(width[best]), float(height[best])
    return w * h, max(w, h), min(w, h)


def _max_inscribed_triangle(poly: np.ndarray) -> float:
    """Area of the largest triangle with vertices among the hull vertices."""
    if len(poly) > _MAX_HULL_VERTICES:  # keep evenly spaced vertices (slight underestimate)
        idx = np.linspace(0, len(poly), _MAX_HULL_VERTICES, endpoint=False).astype(int)
        poly = poly[idx]
    n = len(poly)
    best = 0.0
    for i in range(n - 2):
        a = poly[i]
        b = poly[i + 1 :, None, :] - a  # (n-i-1, 1, 2)
        c = poly[None, i + 1 :, :] - a  # (1, n-i-1, 2)
        cross = np.abs(b[..., 0] * c[..., 1] - b[..., 1] * c[..., 0])  # (m, m)
        best = max(best, 0.5 * float(cross.max()))
    return best


def shape_features(mask: np.ndarray) -> ShapeFeatures:
    """Measure a (H, W) mask (nonzero = foreground). ValueError if empty or not 2-D."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D (H, W) array, got shape {mask.shape}")
    if not np.any(mask):
        raise ValueError(f"mask: empty (no foreground pixel in a {mask.shape} mask); cannot name its shape")
    fg = _foreground(mask)
    poly = _hull(fg)  # (N, 2)
    hull_area = _polygon_area(poly)
    rect_area, long_side, short_side = _min_area_rectangle(poly)
    area = float(fg.sum())
    return ShapeFeatures(area=area, hull_area=hull_area, solidity=area / hull_area,
                         triangle_fill=_max_inscribed_triangle(poly) / hull_area,
                         rect_fill=hull_area / rect_area, aspect=long_side / short_side)


def classify_shape(mask: np.ndarray) -> str:
    """The shape word of a (H, W) mask's outline (nonzero = foreground), one of SHAPES;
    ValueError for an empty mask."""
    f = shape_features(mask)
    elongated = f.aspect >= ELONGATED_ASPECT
    if f.triangle_fill >= TRIANGLE_FILL_MIN:
        shape = "triangle"
    elif f.rect_fill >= RECT_FILL_MIN:
        shape = "rectangle" if elongated else "square"
    else:
        shape = "oval" if elongated else "circle"
    log.debug("shape %s from %s", shape, f)
    return shape
