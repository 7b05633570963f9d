"""Whether an ITK image file is whole: its size checked against its header, which is
parsed here once (docs/design.md, "Checking a dataset").

    check_complete(Path("patient0001_2CH_ED.nii.gz"))   # TruncatedFileError names the file and sizes
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["NIFTI1_HEADER", "TruncatedFileError", "check_complete", "mhd_data_file", "nifti_dims", "read_mhd_header"]

_CHUNK = 1 << 20
NIFTI1_HEADER = 348
# MetaImage element types -> bytes per element
_MET_BYTES: dict[str, int] = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


class TruncatedFileError(ValueError):
    """An image file holds fewer (or, for a .raw, other) bytes than its header says."""

    def __init__(self, path: Path, expected: int, found: int, detail: str, *, cut: bool = True):
        self.path, self.expected, self.found = Path(path), expected, found
        super().__init__(f"{path}: {'truncated' if cut else 'wrong size'}: {detail}")


def check_complete(path: Path) -> None:
    """Raise TruncatedFileError naming the file (the .raw for a .mhd) when it is cut short.

    Missing files and headers we cannot parse are not judged here (the reader reports
    them); only a size that contradicts a readable header is.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".mhd"):
        _check_mhd(path)
    elif name.endswith(".nii.gz"):
        _check_nifti(path, compressed=True)
    elif name.endswith(".nii"):
        _check_nifti(path, compressed=False)


# --- MetaImage -------------------------------------------------------------------------


def read_mhd_header(path: Path) -> tuple[dict[str, str], int]:
    """The `Key = Value` fields of a MetaImage header up to ElementDataFile (always last),
    and where its pixels start when they follow it in the same file (LOCAL)."""
    with open(path, "rb") as fh:
        header = fh.read(1 << 16)  # a header is a few lines
    fields: dict[str, str] = {}
    offset = 0
    for line in header.splitlines(keepends=True):
        offset += len(line)
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    return fields, offset


def mhd_data_file(path: Path) -> Path | None:
    """The file holding a .mhd header's pixels; None when they are in the header's own
    file (LOCAL) or spread over a list of files (LIST)."""
    return _data_file(Path(path), read_mhd_header(path)[0])


def _data_file(path: Path, fields: dict[str, str]) -> Path | None:
    """The header's ElementDataFile beside it; ValueError naming the header for a name that
    leads out of its folder (an absolute path or a '..' part): a dataset's headers name
    their own .raw, never another file on the machine."""
    name = fields.get("ElementDataFile", "")
    if name.upper() in ("LOCAL", "") or name.upper().startswith("LIST"):
        return None
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or ".." in re.split(r"[/\\]", name):
        raise ValueError(
            f"{path}: ElementDataFile {name!r} leads out of the header's folder; expected the name "
            "of a data file beside it (e.g. patient0001_2CH_ED.raw)"
        )
    return path.parent / name


def _check_mhd(path: Path) -> None:
    if not path.is_file():
        return
    fields, local_offset = read_mhd_header(path)
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        element = _MET_BYTES[fields.get("ElementType", "").upper()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except (KeyError, ValueError):
        return  # SimpleITK reports a header it cannot use
    if fields.get("ElementDataFile", "").upper() == "LOCAL":
        data, start = path, local_offset
    else:
        data, start = _data_file(path, fields), max(header_size, 0)
        if data is None or "%" in data.name or not data.is_file():
            return  # a file list or pattern is left to SimpleITK; so is a missing file (its error names it)
    if not dims:
        return
    expected = math.prod(dims) * channels * element
    what = f"{fields.get('ElementType')} x DimSize {' x '.join(map(str, dims))}"
    if fields.get("CompressedData", "False").lower() == "true":
        found, ended = _inflated_size(data, start)
        if found < expected or not ended:
            tail = "" if ended else " (the zlib stream ends early)"
            raise TruncatedFileError(
                data, expected, found,
                f"expected {expected} bytes of pixel data ({what}) after inflating, "
                f"found {found}{tail}",
            )
        return
    size = data.stat().st_size
    if header_size == -1:  # the pixels are the last `expected` bytes
        found = size
        short = size < expected
    else:
        found = size - start
        # a separate .raw holds exactly the pixels; after a LOCAL header more is allowed
        short = found < expected or (data != path and found != expected)
    if short:
        raise TruncatedFileError(
            data, expected, found,
            f"expected {expected} bytes of pixel data ({what}, from {path.name}), found {found}",
            cut=found < expected,
        )


def _inflated_size(path: Path, start: int) -> tuple[int, bool]:
    """Bytes a zlib stream from `start` inflates to, and whether the stream was complete."""
    inflate = zlib.decompressobj()
    total = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        try:
            while chunk := fh.read(_CHUNK):
                total += len(inflate.decompress(chunk))
                if inflate.eof:
                    break
            total += len(inflate.flush())
        except zlib.error:
            return total, False
    return total, inflate.eof


# --- NIfTI-1 ---------------------------------------------------------------------------


def _check_nifti(path: Path, *, compressed: bool) -> None:
    if not path.is_file():
        return
    opener = gzip.open if compressed else open
    found, ended = 0, True
    header = bytearray()
    try:
        with opener(path, "rb") as fh:
            # read1: one decompression step a call, so an early end loses no counted byte
            while chunk := fh.read1(_CHUNK):
                header += chunk[: NIFTI1_HEADER - len(header)]
                found += len(chunk)
    except EOFError:  # gzip: the compressed stream was cut
        ended = False
    except (OSError, zlib.error):
        return  # not gzip at all, or a corrupt stream: SimpleITK's error says so
    if len(header) < NIFTI1_HEADER:
        expected, what = NIFTI1_HEADER, "the NIfTI-1 header"
    else:
        size = _nifti_bytes(bytes(header))
        if size is None:
            return
        expected, what = size
    if found < expected or not ended:
        tail = "" if ended else " before the gzip stream ends early"
        where = " decompressed" if compressed else ""
        raise TruncatedFileError(
            path, expected, found,
            f"expected at least {expected} bytes{where} ({what}), found {found}{tail}",
        )


def _nifti_endian(header: bytes) -> str | None:
    """'<' or '>' for a NIfTI-1 header (its sizeof_hdr reads 348), else None."""
    for endian in "<>":
        if len(header) >= NIFTI1_HEADER and struct.unpack(f"{endian}i", header[:4])[0] == NIFTI1_HEADER:
            return endian
    return None  # NIfTI-2, not NIfTI, or cut short


def nifti_dims(header: bytes) -> tuple[int, ...] | None:
    """The dimensions (x, y[, z, ...]) a NIfTI-1 header declares; None for any other header."""
    endian = _nifti_endian(header)
    if endian is None:
        return None
    dim = struct.unpack(f"{endian}8h", header[40:56])
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 0 for d in dim[1 : ndim + 1]):
        return None
    return tuple(dim[1 : ndim + 1])


def _nifti_bytes(header: bytes) -> tuple[int, str] | None:
    """vox_offset + the pixels' bytes of a NIfTI-1 single-file header, and how they add
    up; None for any other header."""
    endian, shape = _nifti_endian(header), nifti_dims(header)
    if endian is None or shape is None or header[344:348] != b"n+1\0":
        return None  # NIfTI-2, not NIfTI, or a .hdr/.img pair: the pixels are elsewhere
    bitpix = struct.unpack(f"{endian}h", header[72:74])[0]
    vox_offset = struct.unpack(f"{endian}f", header[108:112])[0]
    if bitpix <= 0:
        return None
    pixels = math.ceil(math.prod(shape) * bitpix / 8)
    what = f"vox_offset {int(vox_offset)} + dim {' x '.join(map(str, shape))} x {bitpix} bits"
    return int(vox_offset) + pixels, what
