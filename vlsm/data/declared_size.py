"""What an image file says its size is, checked before a pixel is decoded: a PNG's IHDR,
a MetaImage's DimSize, a NIfTI-1 header's dim (docs/data.md, "What the readers refuse").

    check_declared_size(Path("bomb.png"))   # ImageSizeError: declares 20000 x 20000 (W x H) ...

Why here and not in the decoders: Pillow refuses a decompression bomb only above twice its
MAX_IMAGE_PIXELS (and only warns below that), and SimpleITK allocates whatever a header
declares; a 1 x 1 or one-row image decodes fine and is nothing to segment.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

from vlsm.data.itk_size import NIFTI1_HEADER, nifti_dims, read_mhd_header

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV", "MIN_SIDE", "ImageSizeError", "check_declared_size",
           "check_sides", "declared_size", "max_image_pixels"]

MAX_PIXELS_ENV = "VLSM_MAX_IMAGE_PIXELS"
# 4096 x 4096: no echocardiogram comes near (CAMUS ~ 600-1200 px a side, SDM 256), and a
# uint8 image of it is 16 MiB; raise it with VLSM_MAX_IMAGE_PIXELS for larger images.
DEFAULT_MAX_PIXELS = 4096 * 4096
# Below 8 px a side (1 x 1, one row, empty) there is no anatomy: resizing it to the model's
# 352/416 px input, as the paper's preprocessing does, would train on a blur of a few values.
MIN_SIDE = 8
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageSizeError(ValueError):
    """An image file declares a size the readers refuse (too large, or degenerate)."""

    def __init__(self, path: Path, message: str):
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


def max_image_pixels() -> int:
    """The largest image the readers decode, in pixels: VLSM_MAX_IMAGE_PIXELS, else 4096 x 4096."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < MIN_SIDE * MIN_SIDE:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r}: expected a whole number of pixels >= {MIN_SIDE * MIN_SIDE}")
    return int(text)


def declared_size(path: Path) -> tuple[int, ...] | None:
    """The dimensions a file's header declares, in file order (W, H[, ...]); None when the
    header is not one we parse (the decoder then reports the file)."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".png"):
            return _png_size(path)
        if name.endswith(".mhd"):
            dims = read_mhd_header(path)[0].get("DimSize", "").split()
            return tuple(int(d) for d in dims) or None
        if name.endswith((".nii", ".nii.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as fh:
                return nifti_dims(fh.read(NIFTI1_HEADER))
    except (OSError, EOFError, zlib.error, ValueError):
        return None
    return None


def _png_size(path: Path) -> tuple[int, int] | None:
    with open(path, "rb") as fh:
        head = fh.read(24)  # signature, then the IHDR chunk: length, type, width, height
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def check_sides(path: Path, dims: tuple[int, ...]) -> None:
    """ImageSizeError naming the file when dims (W, H[, ...]) are too many pixels, or a
    side of the 2-D image is under MIN_SIDE."""
    shown = " x ".join(map(str, dims))
    order = "W x H" if len(dims) == 2 else "W x H x ..."
    pixels, limit = math.prod(dims), max_image_pixels()
    if pixels > limit:
        raise ImageSizeError(path, (
            f"declares {shown} pixels ({order}), {pixels} in all, above the limit of {limit}: refused before "
            f"decoding (a decompression bomb?); set {MAX_PIXELS_ENV} to read larger images"))
    if len(dims) < 2 or min(dims[:2]) < MIN_SIDE:
        raise ImageSizeError(path, (
            f"declares {shown} pixels ({order}); an image or mask needs at least {MIN_SIDE} pixels a side "
            "(a degenerate image holds nothing to segment)"))


def check_declared_size(path: Path) -> None:
    """`check_sides` on what the file's header declares (nothing when it declares nothing we parse)."""
    dims = declared_size(path)
    if dims is not None:
        check_sides(path, dims)
