"""Pixel I/O: the one place that opens image files, so that orientation, dtype and label
coding are decided once (docs/design.md, "Pixels and label codings"): arrays (H, W), images
uint8 grey, label maps uint8 0-3, spacing (row, col) mm, a cut-short ITK file and a size
no echo has (`vlsm.data.declared_size`) refused before decoding; writers never leave a
partial file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from vlsm.atomic import atomic_path
from vlsm.axes import STRUCTURES
from vlsm.data.declared_size import ImageSizeError, check_declared_size, check_sides
from vlsm.data.itk_size import check_complete
from vlsm.data.label_codings import (
    CODING_GREY,
    CODING_LABELS,
    detect_grey_coding,
    detect_sdm_coding,
    grey_to_camus_labels,
    sdm_to_camus_labels,
)
from vlsm.data.records import EchoImage
from vlsm.data.synthetic_sources import SYNTHETIC_SOURCE_REGISTRY

__all__ = ["ITK_SUFFIXES", "PNG_MODES", "check_count", "check_image_and_label_map", "decode_label_map",
           "read_image", "read_label_map", "read_itk", "read_png", "resize", "write_itk", "write_png"]

log = logging.getLogger(__name__)

ITK_SUFFIXES: tuple[str, ...] = (".mhd", ".nii.gz", ".nii")
PNG_SUFFIX = ".png"
PNG_MODES: tuple[str, ...] = ("L", "RGB", "RGBA")  # what write_png writes: grey in each channel
_LABELS = frozenset([0, *STRUCTURES])  # {0, 1, 2, 3}
CODING_BINARY = "binary masks"  # three files, one per structure (the authors' layout)


def _kind(path: Path) -> str:
    """'itk' | 'png' from the file name; ValueError for anything else."""
    name = path.name.lower()
    if name.endswith(PNG_SUFFIX):
        return "png"
    if any(name.endswith(s) for s in ITK_SUFFIXES):
        return "itk"
    raise ValueError(
        f"{path}: unsupported image file type; expected one of "
        f"{', '.join((*ITK_SUFFIXES, PNG_SUFFIX))}"
    )


def _to_2d(array: np.ndarray, path: Path) -> np.ndarray:
    """Squeeze singleton leading/trailing dims to (H, W); ValueError otherwise."""
    if array.ndim > 2:
        array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D image, got an array of shape {array.shape}")
    return array


def read_itk(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """A .mhd/.nii(.gz) file's (H, W) array in its dtype and its (row, col) spacing in mm (a
    singleton third dimension, as CAMUS 2019's W x H x 1, dropped). A file shorter than its
    header says is a `TruncatedFileError` (SimpleITK would zero-fill the missing pixels); a
    header declaring a size no echo has, an `ImageSizeError` (SimpleITK would allocate it)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    check_declared_size(path)
    check_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path}: SimpleITK could not read this file ({err})") from err
    array = sitk.GetArrayFromImage(image)  # (Z, H, W) or (H, W): numpy order is reversed
    spacing_xyz = image.GetSpacing()  # (col, row[, slice]) in ITK order
    array = _to_2d(array, path)
    return array, (float(spacing_xyz[1]), float(spacing_xyz[0]))


def read_png(path: Path, *, mask: bool = False) -> np.ndarray:
    """A PNG's (H, W) values (palette indices kept); with mask an RGB(A) PNG must be grey (R =
    G = B, alpha ignored) and gives its R, else it is converted to L. A size no echo has
    is an `ImageSizeError`, from the IHDR before Pillow opens the file (Pillow itself only
    refuses above twice its MAX_IMAGE_PIXELS)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    check_declared_size(path)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as err:  # not a PNG inside, and far too large
        raise ImageSizeError(path, f"refused before decoding ({err})") from None
    with im:
        check_sides(path, im.size)  # what the decoder read from the header: (W, H)
        if im.mode in ("P", "L", "I;16", "I", "1"):
            # palette PNGs keep their indices (label maps are often written as P)
            array = np.asarray(im)
        elif mask and im.mode in ("RGB", "RGBA"):
            rgb = np.asarray(im.convert("RGB"))  # (H, W, 3)
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise ValueError(
                    f"{path}: colour label map (its R, G and B differ); expected a grey mask "
                    "(labels 0-3 or grey levels, equal in R, G and B)"
                )
            array = rgb[..., 0]
        else:
            array = np.asarray(im.convert("L"))
    return _to_2d(array, path)


def _read_any(path: Path, *, mask: bool = False) -> np.ndarray:
    """A file's (H, W) values; a mask's RGB(A) PNG must be grey (R = G = B), alpha ignored."""
    return read_png(path, mask=mask) if _kind(path) == "png" else read_itk(path)[0]


def _as_uint8_image(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    lo, hi = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.integer) and lo >= 0 and hi <= 255:
        return array.astype(np.uint8)
    log.debug("%s: rescaling %s range [%g, %g] to uint8", path, array.dtype, lo, hi)
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    scaled = (array.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_image(rec: EchoImage) -> np.ndarray:
    """The record's image as (H, W) uint8 grey; other intensities outside 0-255 are min-max
    rescaled (a fallback: CAMUS and SDM ship uint8)."""
    path = Path(rec.image_path)
    return _as_uint8_image(_read_any(path), path)


def _check_labels(array: np.ndarray, path: Path, allowed: frozenset[int]) -> np.ndarray:
    unknown = sorted({int(v) for v in np.unique(array)} - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown label value(s) {unknown}; expected values in {sorted(allowed)}")
    return array.astype(np.uint8)


def read_label_map(rec: EchoImage) -> np.ndarray:
    """The record's ground truth as one (H, W) uint8 map in {0, 1, 2, 3}
    (`decode_label_map` without the coding)."""
    return decode_label_map(rec)[0]


def decode_label_map(rec: EchoImage) -> tuple[np.ndarray, str]:
    """The record's ground truth as one (H, W) uint8 map in {0, 1, 2, 3}, and the coding found
    ("labels" | "sector" | "grey" | "binary masks"): one file in its source's label coding
    (real CAMUS: labels), or three disjoint binary masks (the authors' layout: label k where
    mask k > 0). ValueError naming the file for no ground truth or unexpected values."""
    masks = tuple(Path(p) for p in rec.mask_paths)
    if not masks:
        raise ValueError(
            f"{rec.image_path}: record {rec.source}/{rec.name} has no ground-truth mask "
            "(mask_paths is empty; e.g. a CAMUS 2019 test patient)"
        )
    if len(masks) == 1:
        path = masks[0]
        array = _read_any(path, mask=True)
        if not np.issubdtype(array.dtype, np.integer) and not np.all(array == np.rint(array)):
            raise ValueError(f"{path}: label map holds non-integer values; expected 0-3")
        registry = SYNTHETIC_SOURCE_REGISTRY  # real CAMUS (no entry): labels 0-3
        source_coding = registry[rec.source].label_coding if rec.source in registry else None
        if source_coding == "sdm":
            coding = detect_sdm_coding(array, path)
            return sdm_to_camus_labels(array, coding), coding
        if source_coding == "grey":
            coding = detect_grey_coding(array, path)
            if coding == CODING_GREY:
                return grey_to_camus_labels(array, path), coding
        return _check_labels(array, path, _LABELS), CODING_LABELS
    if len(masks) == len(STRUCTURES):
        return _binary_masks(masks), CODING_BINARY
    raise ValueError(
        f"{rec.image_path}: record {rec.source}/{rec.name} has {len(masks)} mask paths; "
        f"expected 1 label map or {len(STRUCTURES)} binary masks"
    )


def _binary_masks(masks: tuple[Path, ...]) -> np.ndarray:
    out: np.ndarray | None = None
    for label, path in zip(sorted(STRUCTURES), masks, strict=True):
        mask = _read_any(path) > 0  # (H, W) bool
        if out is None:
            out = np.zeros(mask.shape, np.uint8)
        elif mask.shape != out.shape:
            raise ValueError(
                f"{path}: mask shape {mask.shape} differs from {masks[0]} {out.shape}"
            )
        if np.any(mask & (out > 0)):
            raise ValueError(
                f"{path}: mask of structure {label} overlaps an earlier structure's mask; "
                "expected disjoint binary masks"
            )
        out[mask] = label
    assert out is not None
    return out


def resize(array: np.ndarray, size: int, *, nearest: bool) -> np.ndarray:
    """(H, W) uint8 -> (size, size) uint8, bilinear (antialiased) or nearest, as the cache and
    the authors' layout resize."""
    if array.shape == (size, size):
        return np.array(array, dtype=np.uint8, copy=True)
    from PIL import Image

    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    return np.asarray(image.resize((size, size), resample=resample))


# --- writers --------------------------------------------------------------------------


def check_count(name: str, value: int, note: str = "") -> int:
    """value as an int >= 0 (an index, a subject, n_val); ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0{note}, got {value!r}")
    return int(value)


def check_image_and_label_map(image: np.ndarray, label_map: np.ndarray, *, uint8: bool = True) -> np.ndarray:
    """A writer's image as an array, (H, W) uint8 when uint8, with label_map of its shape;
    ValueError otherwise."""
    image = np.asarray(image)
    if uint8 and (image.ndim != 2 or image.dtype != np.uint8):
        raise ValueError(f"image must be a (H, W) uint8 array, got {image.dtype} {image.shape}")
    if np.shape(label_map) != image.shape:
        raise ValueError(f"label map shape {np.shape(label_map)} differs from image {image.shape}")
    return image


def _check_2d(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{path}: can only write 2-D (H, W) arrays, got shape {array.shape}")
    return array


def write_itk(
    path: Path,
    array: np.ndarray,
    spacing: tuple[float, float] = (1.0, 1.0),
    *,
    singleton_z: bool = False,
) -> None:
    """Write a (H, W) array as .mhd(+.raw) or .nii(.gz), by suffix, atomically; spacing (row,
    col) mm. singleton_z stores W x H x 1, as CAMUS 2019's .mhd files. A .mhd's .raw goes
    first and the header last, so a visible .mhd always has its data."""
    import SimpleITK as sitk

    path = Path(path)
    if _kind(path) != "itk":
        raise ValueError(f"{path}: write_itk expects a .mhd, .nii or .nii.gz path")
    array = _check_2d(array, path)
    itk_spacing = (float(spacing[1]), float(spacing[0]))  # ITK order (col, row)
    if singleton_z:
        array = array[None]  # (1, H, W) -> ITK size (W, H, 1)
        itk_spacing += (1.0,)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # ITK size (W, H[, 1])
    image.SetSpacing(itk_spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".mhd"):
        raw = path.with_suffix(".raw")
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp_dir:
            tmp_mhd = Path(tmp_dir) / path.name
            writer = sitk.ImageFileWriter()
            writer.SetFileName(str(tmp_mhd))
            writer.SetUseCompression(False)
            writer.Execute(image)
            header = tmp_mhd.read_text()
            tmp_raw = tmp_mhd.with_suffix(".raw")
            if not tmp_raw.is_file():  # SimpleITK names the data file after the header
                raise RuntimeError(f"{path}: SimpleITK did not write {tmp_raw.name}")
            os.replace(tmp_raw, raw)
            with atomic_path(path, ".mhd") as tmp:
                tmp.write_text(header)
        return
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix) as tmp:
        sitk.WriteImage(image, str(tmp))


def write_png(path: Path, array: np.ndarray, *, mode: str = "L") -> None:
    """Write a (H, W) uint8 array as an 8-bit PNG, atomically: mode "L" grey, "RGB" / "RGBA"
    the value in R, G and B (alpha 255), as diffusers (RGB) and imsave (RGBA) write grey."""
    from PIL import Image

    path = Path(path)
    array = _check_2d(array, path)
    if mode not in PNG_MODES:
        raise ValueError(f"{path}: PNG mode must be one of {PNG_MODES}, got {mode!r}")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"{path}: PNG values must be 0-255, got range [{array.min()}, {array.max()}]"
            )
        array = array.astype(np.uint8)
    if mode != "L":
        channels = [array] * 3 + ([np.full_like(array, 255)] if mode == "RGBA" else [])
        array = np.stack(channels, axis=-1)  # (H, W) -> (H, W, 3|4)
    with atomic_path(path, ".png") as tmp:
        # the mode follows from the shape: (H, W) L, (H, W, 3) RGB, (H, W, 4) RGBA
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
