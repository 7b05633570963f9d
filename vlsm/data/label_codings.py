"""Label codings of synthetic masks ("labels" 0-3, SDM's "sector" 0-4, imsave's "grey"
levels): which one a label map uses, from its values, and its CAMUS labels
(docs/design.md, "Pixels and label codings").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CODINGS", "CODING_GREY", "CODING_LABELS", "CODING_SECTOR", "CODING_DESCRIPTIONS", "SdmCodingError",
           "camus_to_sdm_labels", "detect_grey_coding", "detect_sdm_coding", "grey_levels", "grey_to_camus_labels",
           "sdm_to_camus_labels", "spread_to_grey"]

CODING_LABELS, CODING_SECTOR, CODING_GREY = "labels", "sector", "grey"
CODINGS: tuple[str, ...] = (CODING_LABELS, CODING_SECTOR)  # SDM CAMUS's two
CODING_DESCRIPTIONS: dict[str, str] = {
    CODING_LABELS: "values 0-3",
    CODING_SECTOR: "SDM sector coding, values 0-4",
    CODING_GREY: "grey levels 0/85/170/255, as matplotlib's imsave(cmap='gray') spreads 0-3",
}
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
    """'labels' (0-3) or 'sector' (0-4), from a (H, W) label map's values: 4 (LA in sector)
    -> sector; no 2 (sector always has cone background) -> labels; else the cone background
    dominates a large cone -> sector, or myocardium (2) is a minority of a heart under half
    the image -> labels. Anything else is an SdmCodingError, a value outside 0-4 a ValueError."""
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
    stats = (f"values {[v for v in range(5) if counts[v]]}, share of 2 among non-zero {share2:.2f}, "
             f"non-zero fill {fill:.2f}")
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
    """A (H, W) CAMUS map (0-3) in an SDM coding; sector needs the (H, W) bool cone (widened
    to hold structures that lie outside it)."""
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


# --- grey-spread masks (matplotlib imsave(..., cmap="gray")) ---------------------------

# matplotlib's "gray" colormap as bytes: its 256-entry table times 255, truncated, so
# that some levels are one below i (33 -> 32); imsave writes these values.
_GREY_LUT = (np.linspace(0.0, 1.0, 256) * 255).astype(np.uint8)  # (256,)


def spread_to_grey(array: np.ndarray) -> np.ndarray:
    """(H, W) numbers -> (H, W) uint8, the grey of matplotlib's ``imsave(path, array,
    cmap="gray")``: scaled by the array's own min and max (a constant array is all 0), in
    float32 for integers as matplotlib's Normalize, so uint8 inputs give identical bytes."""
    values = np.asarray(array)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"spread_to_grey: expected a non-empty (H, W) array, got shape {values.shape}")
    work = values.astype(np.promote_types(values.dtype, np.float32))
    lo, hi = work.min(), work.max()
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    index = (work - lo) / (hi - lo) * 256  # (H, W) in [0, 256]
    index = np.clip(index, 0, 255).astype(np.intp)  # 256 (the max) -> the last entry
    return _GREY_LUT[index]


def grey_levels(top: int) -> tuple[int, ...]:
    """The grey level of each label 0..top in a map holding 0 and top: (0, 85, 170, 255) for 3."""
    return tuple(int(v) for v in spread_to_grey(np.arange(top + 1)[None])[0])


# A mask always holds background (0), so its grey levels say its top label: the levels
# of labels 0..3, or 0..2 when LA is absent. Levels 0 and 255 alone (one structure) are
# ambiguous: any of labels 1-3 would be 255.
_GREY_DECODINGS: dict[tuple[int, ...], int] = {grey_levels(top): top for top in (3, 2)}


def _grey_top(values: set[int]) -> int | None:
    for levels, top in _GREY_DECODINGS.items():
        if values <= set(levels) and {0, levels[-1]} <= values and values - {0, 255}:
            return top
    return None


def detect_grey_coding(label_map: np.ndarray, path: Path | None = None) -> str:
    """'labels' (values 0-3) or 'grey' (0/85/170/255 or 0/128/255), from a (H, W) map's values;
    ValueError naming them otherwise, or for levels 0 and 255 alone (which structure?)."""
    array = np.asarray(label_map)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{_where(path)}expected a non-empty (H, W) label map, got shape {array.shape}")
    values = {int(v) for v in np.unique(array)}
    if values <= {0, 1, 2, 3}:
        return CODING_LABELS
    if _grey_top(values) is not None:
        return CODING_GREY
    if values == {0, 255}:
        raise ValueError(
            f"{_where(path)}ambiguous grey label map: levels 0 and 255 only (one structure), so "
            "which of LV, MYO, LA it shows cannot be told; expected levels 0/85/170/255"
        )
    known = set(grey_levels(3)) | set(grey_levels(2)) | {1, 2, 3}
    raise ValueError(
        f"{_where(path)}unknown label level(s) {sorted(values - known) or sorted(values)}; expected "
        "labels 0-3 or the grey levels of matplotlib imsave(cmap='gray'): 0/85/170/255 "
        "(0/128/255 without LA)"
    )


def grey_to_camus_labels(label_map: np.ndarray, path: Path | None = None) -> np.ndarray:
    """A (H, W) grey-spread map (`detect_grey_coding` == 'grey') as uint8 CAMUS labels 0-3."""
    array = np.asarray(label_map)
    top = _grey_top({int(v) for v in np.unique(array)})
    if top is None:
        detect_grey_coding(array, path)  # raises with the reason
        raise ValueError(f"{_where(path)}not a grey-spread label map; expected levels 0/85/170/255")
    lut = np.zeros(256, np.uint8)
    for label, level in enumerate(grey_levels(top)):
        lut[level] = label
    return lut[array.astype(np.intp)]
