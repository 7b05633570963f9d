"""SDM CAMUS label codings: detect which one a label map uses, and convert to and from CAMUS.

SDM CAMUS label maps come in two codings, detected from the pixel values, never assumed:

- "labels": 0 background, 1 LV cavity, 2 myocardium, 3 LA (the CAMUS coding);
- "sector": 0 outside the ultrasound cone, 1 LV cavity, 2 inside the cone, 3 myocardium,
  4 LA (echo_from_noise's augment_camus_labels.py: labels > 1 shifted up by one and the
  cone's background set to 2).

Why a module of its own: `vlsm.data.io` reads the label maps of every source (and so
decodes SDM maps), while `vlsm.data.sdm` writes SDM images through io's writers; with
the codings here both import this module and neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "CODINGS",
    "CODING_LABELS",
    "CODING_SECTOR",
    "SdmCodingError",
    "camus_to_sdm_labels",
    "detect_sdm_coding",
    "sdm_to_camus_labels",
]

CODING_LABELS, CODING_SECTOR = "labels", "sector"
CODINGS: tuple[str, ...] = (CODING_LABELS, CODING_SECTOR)
# sector -> labels: 0 outside cone -> 0, 1 LV -> 1, 2 cone -> 0, 3 MYO -> 2, 4 LA -> 3
_SECTOR_TO_LABELS = np.array([0, 1, 0, 2, 3], dtype=np.uint8)
# labels -> sector inside the cone: 0 -> 2, 1 -> 1, 2 -> 3, 3 -> 4
_LABELS_TO_SECTOR = np.array([2, 1, 3, 4], dtype=np.uint8)
# Detection thresholds for maps without value 4 (see detect_sdm_coding).
_SECTOR_MIN_SHARE2 = 0.5  # in "sector", 2 (cone background) is most of the non-zero area
_SECTOR_MIN_FILL = 0.3  # ... and the cone covers a good part of the image
_LABELS_MAX_FILL = 0.5  # in "labels", the heart (non-zero) is well under half the image


class SdmCodingError(ValueError):
    """A label map whose coding cannot be told from its values."""


def _where(path: Path | None) -> str:
    return f"{path}: " if path is not None else ""


def detect_sdm_coding(label_map: np.ndarray, path: Path | None = None) -> str:
    """'labels' (0-3) or 'sector' (0-4), decided from the values of a (H, W) label map.

    - any value outside 0-4: ValueError naming the values;
    - 4 present (LA in the sector coding): "sector";
    - 2 absent (the sector coding always has cone background): "labels";
    - otherwise the share of 2 among non-zero pixels (share2) and the non-zero share of
      the image (fill) decide: the cone background dominates a large cone
      (share2 >= 0.5 and fill >= 0.3) -> "sector"; myocardium is a minority of a
      heart that covers less than half the image (share2 < 0.5 and fill < 0.5) -> "labels";
      anything else, or a map with neither 1 nor 3, raises SdmCodingError (a ValueError).
    """
    array = np.asarray(label_map)
    if array.ndim != 2:
        raise ValueError(f"{_where(path)}expected a (H, W) label map, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{_where(path)}empty label map")
    values = np.unique(array)
    bad = sorted(int(v) if float(v).is_integer() else float(v) for v in values if v not in range(5))
    if bad:
        raise ValueError(
            f"{_where(path)}unknown label value(s) {bad}; SDM label maps hold 0-3 "
            "(labels coding) or 0-4 (sector coding)"
        )
    counts = np.bincount(array.astype(np.int64).ravel(), minlength=5)  # (5,)
    if counts[4]:
        return CODING_SECTOR
    if not counts[2]:
        return CODING_LABELS
    nonzero = int(counts[1:].sum())
    share2 = counts[2] / nonzero
    fill = nonzero / array.size
    stats = (
        f"values {[v for v in range(5) if counts[v]]}, share of 2 among non-zero "
        f"{share2:.2f}, non-zero fill {fill:.2f}"
    )
    if not (counts[1] or counts[3]):
        raise SdmCodingError(
            f"{_where(path)}ambiguous SDM label map ({stats}): only 0 and 2 present, which is "
            "myocardium alone (labels) or an empty cone (sector); expected LV/LA labels too"
        )
    if share2 >= _SECTOR_MIN_SHARE2 and fill >= _SECTOR_MIN_FILL:
        return CODING_SECTOR
    if share2 < _SECTOR_MIN_SHARE2 and fill < _LABELS_MAX_FILL:
        return CODING_LABELS
    raise SdmCodingError(
        f"{_where(path)}ambiguous SDM label map ({stats}): expected either a large cone whose "
        f"background (2) is >= {_SECTOR_MIN_SHARE2} of the non-zero pixels (sector coding) or "
        f"a heart covering < {_LABELS_MAX_FILL} of the image with myocardium (2) < "
        f"{_SECTOR_MIN_SHARE2} of it (labels coding)"
    )


def sdm_to_camus_labels(label_map: np.ndarray, coding: str) -> np.ndarray:
    """A (H, W) SDM label map in `coding` as a (H, W) uint8 CAMUS map in {0, 1, 2, 3}."""
    array = np.asarray(label_map)
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")
    top = 3 if coding == CODING_LABELS else 4
    values = np.unique(array)
    bad = sorted(int(v) for v in values if not 0 <= v <= top)
    if bad:
        raise ValueError(f"label values {bad} are not in the {coding!r} coding (0-{top})")
    if coding == CODING_LABELS:
        return array.astype(np.uint8)
    return _SECTOR_TO_LABELS[array.astype(np.intp)]


def camus_to_sdm_labels(
    label_map: np.ndarray, coding: str, cone: np.ndarray | None = None
) -> np.ndarray:
    """A (H, W) CAMUS map (0-3) in an SDM coding; the sector coding needs the (H, W) bool cone.

    Structures are kept where they lie outside the cone (the cone is widened to hold them).
    """
    labels = sdm_to_camus_labels(label_map, CODING_LABELS)  # validates 0-3
    if coding == CODING_LABELS:
        return labels
    if coding != CODING_SECTOR:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")
    if cone is None or np.shape(cone) != labels.shape:
        raise ValueError(
            f"the sector coding needs a bool cone of shape {labels.shape}, got "
            f"{None if cone is None else np.shape(cone)}"
        )
    inside = np.asarray(cone, dtype=bool) | (labels > 0)  # (H, W)
    return np.where(inside, _LABELS_TO_SECTOR[labels], 0).astype(np.uint8)
