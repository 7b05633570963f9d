"""File checksums for folders written once and read later: a manifest of each file's size
and hash, written last inside the folder, checked when the folder is read, so a truncated or
bit-flipped file is detected and never trusted (safetensors and JSON parse fine with flipped
data bytes). A folder without a manifest (written before there were manifests) is unverified.

    write_manifest(folder, ["weights.safetensors", "config.json"])
    bad = verify_manifest(folder)    # [] when every listed file is as written
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from vlsm.atomic import write_json_atomic

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "MANIFEST_FILE", "BadFile", "bytes_problem", "file_digest", "parse_manifest",
           "read_manifest", "verify_manifest", "write_manifest"]

MANIFEST_FILE = "manifest.json"
# sha256 hashes 1.7 GB/s on one core with SHA-NI, blake2b 0.9 GB/s (bench/checkpoint_cost.py);
# either verifies, the manifest names the one it used.
ALGORITHMS = ("sha256", "blake2b")
DEFAULT_ALGORITHM = "sha256"
_FORMAT = 1
_CHUNK = 8 << 20


class BadFile(NamedTuple):
    """A listed file that is not as it was written: its path in the folder, and why."""

    name: str
    why: str


def file_digest(path: str | os.PathLike, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The hex digest of a file's bytes, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike, files: Iterable[str], algorithm: str = DEFAULT_ALGORITHM) -> None:
    """Record the size and hash of each file (paths relative to folder) in folder/manifest.json;
    write it last, once every listed file is complete."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"checksum algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    folder = Path(folder)
    entries = {name: {"bytes": (folder / name).stat().st_size, algorithm: file_digest(folder / name, algorithm)}
               for name in sorted(set(files))}
    write_json_atomic(folder / MANIFEST_FILE, {"format": _FORMAT, "algorithm": algorithm, "files": entries})


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """folder's manifest, None when it has none; ValueError when it cannot be read."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(data: bytes, source: str) -> dict[str, Any]:
    """A manifest's JSON bytes checked for the fields `verify_manifest` reads."""
    try:
        manifest = json.loads(data)
        if manifest["format"] != _FORMAT or manifest["algorithm"] not in ALGORITHMS:
            raise ValueError(f"format {manifest['format']!r}, algorithm {manifest['algorithm']!r}")
        dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{source}: damaged or not a manifest of this version ({err})") from None
    return manifest


def bytes_problem(manifest: dict[str, Any], name: str, data: bytes) -> str | None:
    """Why data (the bytes read of file `name`) differs from its manifest entry, or None (also
    when the manifest does not list it)."""
    entry = manifest["files"].get(name)
    if entry is None:
        return None
    if len(data) != entry["bytes"]:
        return f"{len(data)} bytes, {entry['bytes']} when written"
    algorithm = manifest["algorithm"]
    if hashlib.new(algorithm, data).hexdigest() != entry[algorithm]:
        return f"{algorithm} differs from the one recorded when it was written"
    return None


def verify_manifest(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[BadFile]:
    """The files of folder's manifest (or only `names` among them) that are missing, of another
    size or another hash; [] when all are as written or folder has no manifest."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except ValueError as err:
        return [BadFile(MANIFEST_FILE, str(err).split(": ", 1)[-1])]
    if manifest is None:
        return []
    listed = manifest["files"]
    algorithm, bad = manifest["algorithm"], []
    for name in sorted(listed if names is None else set(names) & set(listed)):
        path, entry = folder / name, listed[name]
        if not path.is_file():
            bad.append(BadFile(name, "missing"))
        elif path.stat().st_size != entry["bytes"]:
            bad.append(BadFile(name, f"{path.stat().st_size} bytes, {entry['bytes']} when written"))
        elif file_digest(path, algorithm) != entry[algorithm]:
            bad.append(BadFile(name, f"{algorithm} differs from the one recorded when it was written"))
    return bad
