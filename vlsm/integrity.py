"""Checksums of files at rest, so that a truncated or bit-flipped file is found and never
trusted (docs/faults.md, "Corruption at rest"): a manifest of every file's size and digest
is recorded when a folder is written, and checked when it is read.

    meta = seal({..., "files": manifest(folder, ["images.npy", "items.json"])})  # written last
    verify_files(folder, read_sealed(folder / "meta.json", remedy)["files"], remedy)

Hashing costs about 0.65 CPU seconds a GB (sha256 with the CPU's SHA extensions;
bench/integrity.py), so `verify_files` hashes a file version once: it leaves a stamp
beside the folder naming each verified file's size, times and inode, and a later check
whose files still match the stamp (nothing wrote them since) only compares sizes.
``VLSM_VERIFY=always`` hashes on every check (docs/design.md, "The preprocessing cache").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from vlsm.atomic import write_json_atomic

__all__ = ["ALGORITHM", "ALGORITHMS", "MANIFEST_FILE", "VERIFY_ENV", "BadFile", "CorruptFile", "bytes_problem",
           "check_sealed", "file_digest", "manifest", "parse_manifest", "read_json", "read_manifest", "read_sealed",
           "remember_verified", "seal", "verify_files", "verify_manifest", "verify_mode", "write_manifest"]

log = logging.getLogger(__name__)

# hashlib's sha256: 1.5 GB a CPU second where the CPU has SHA extensions (x86 since AMD Zen
# and Intel Ice Lake, most ARMv8 servers), against 0.85 for blake2b (bench/integrity.py);
# xxhash is no dependency.
ALGORITHM = "sha256"
ALGORITHMS = ("sha256", "blake2b")  # either verifies: a manifest names the one it used
MANIFEST_FILE = "manifest.json"  # a checkpoint folder's (`write_manifest`); caches and stores seal meta.json
_MANIFEST_FORMAT = 1
VERIFY_ENV = "VLSM_VERIFY"  # "once" (the default): hash a file version once; "always": every check
_MODES = ("once", "always")
_CHUNK = 1 << 22
_CHECKSUM = "checksum"  # the key of a sealed JSON object's own digest
_verified_here: dict[str, str] = {}  # folder -> stamp, where no stamp file can be written


class CorruptFile(ValueError):
    """A file whose bytes differ from what was recorded when it was written; the message is
    one line: the file, what is wrong, what to do."""

    def __init__(self, path: str | os.PathLike, problem: str, remedy: str):
        super().__init__(f"{path}: {problem}; {remedy}")
        self.path, self.problem, self.remedy = Path(path), problem, remedy

    def __reduce__(self):  # Ray sends a trial's error to the driver pickled
        return CorruptFile, (self.path, self.problem, self.remedy)


def file_digest(path: str | os.PathLike, algorithm: str = ALGORITHM) -> str:
    """Hex digest of a file's bytes (read in 4 MiB chunks; hashlib lets other threads run)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _digests(folder: Path, names: Sequence[str], algorithm: str, workers: int | None) -> dict[str, str]:
    """name -> digest; files hashed in `workers` threads (default one per file, at most the CPUs)."""
    workers = min(len(names), os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(names) <= 1:
        return {name: file_digest(folder / name, algorithm) for name in names}
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(names, pool.map(lambda name: file_digest(folder / name, algorithm), names), strict=True))


def manifest(folder: str | os.PathLike, names: Sequence[str], *, algorithm: str = ALGORITHM,
             workers: int | None = None) -> dict[str, Any]:
    """What `verify_files` checks: {"algorithm", "files": {name: {"bytes", "digest"}}}."""
    folder = Path(folder)
    digests = _digests(folder, list(names), algorithm, workers)
    return {"algorithm": algorithm,
            "files": {name: {"bytes": (folder / name).stat().st_size, "digest": digests[name]} for name in names}}


def _json_digest(value: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def seal(value: Mapping[str, Any]) -> dict[str, Any]:
    """value with a "checksum" of its own content (canonical JSON), for `read_sealed`."""
    return {**value, _CHECKSUM: _json_digest(value)}


def read_json(path: str | os.PathLike, remedy: str) -> Any:
    """A JSON file's value; CorruptFile when it is cut short or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFile(path, f"not valid JSON ({err})", remedy) from None


def check_sealed(value: Any, path: str | os.PathLike, remedy: str) -> dict[str, Any]:
    """value (read from path) without its checksum; CorruptFile when it was changed after
    `seal` or never sealed."""
    if not isinstance(value, dict) or not isinstance(value.get(_CHECKSUM), str):
        raise CorruptFile(path, "holds no checksum (damaged, or written by an older version)", remedy)
    value = dict(value)
    recorded = value.pop(_CHECKSUM)
    if _json_digest(value) != recorded:
        raise CorruptFile(path, "its content does not match its checksum (changed or damaged)", remedy)
    return value


def read_sealed(path: str | os.PathLike, remedy: str) -> dict[str, Any]:
    """A JSON object written through `seal`, checked (CorruptFile when cut short, unreadable,
    changed or never sealed); returned without its checksum."""
    return check_sealed(read_json(path, remedy), path, remedy)


def verify_mode() -> str:
    """How often `verify_files` hashes: VLSM_VERIFY, "once" (default) or "always"."""
    mode = os.environ.get(VERIFY_ENV, "once")
    if mode not in _MODES:
        raise ValueError(f"{VERIFY_ENV}={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def _stamp_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.verified"


def _stamp(folder: Path, recorded: Mapping[str, Any]) -> str:
    """What identifies these file versions: the manifest, and each file's size, times, inode."""
    stats = {name: list(_identity(os.stat(folder / name))) for name in sorted(recorded["files"])}
    return _json_digest({"manifest": recorded, "files": stats})


def _identity(st: os.stat_result) -> tuple[int, ...]:
    # any write, truncation, copy or replacement changes one of them (ctime cannot be set back)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def remember_verified(folder: str | os.PathLike, recorded: Mapping[str, Any]) -> None:
    """Record that folder's files match `recorded` as they are now (after hashing them, or
    after writing them and hashing what was written)."""
    folder = Path(folder)
    stamp = _stamp(folder, recorded)
    _verified_here[str(folder.resolve())] = stamp
    try:
        write_json_atomic(_stamp_path(folder), {"stamp": stamp})
    except OSError as err:  # a read-only cache folder: this process remembers it
        log.debug("cannot write %s (%s): verified once per process", _stamp_path(folder), err)


def _verified_before(folder: Path, recorded: Mapping[str, Any]) -> bool:
    stamp = _stamp(folder, recorded)
    if _verified_here.get(str(folder.resolve())) == stamp:
        return True
    try:
        return json.loads(_stamp_path(folder).read_text()).get("stamp") == stamp
    except (OSError, ValueError, AttributeError):  # none, or a damaged stamp: hash again
        return False


def verify_files(folder: str | os.PathLike, recorded: Mapping[str, Any], remedy: str, *,
                 mode: str | None = None, workers: int | None = None) -> None:
    """CorruptFile naming the first file of `recorded` (a `manifest`) that is missing, of
    another size or (hashed once per file version, or always) of another digest."""
    folder, mode = Path(folder), mode or verify_mode()
    files = recorded["files"]
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CorruptFile(path, "missing", remedy)
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CorruptFile(path, f"{size} bytes, {entry['bytes']} when it was written (cut short or changed)",
                              remedy)
    if mode == "once" and _verified_before(folder, recorded):
        return
    stamp = _stamp(folder, recorded)  # before hashing: a file changed meanwhile fails the next check
    digests = _digests(folder, list(files), recorded["algorithm"], workers)
    for name, entry in files.items():
        if digests[name] != entry["digest"]:
            raise CorruptFile(folder / name, f"its {recorded['algorithm']} differs from the one recorded when it "
                              "was written (changed or damaged on disk)", remedy)
    if _stamp(folder, recorded) == stamp:
        remember_verified(folder, recorded)


# --- manifest.json: folders read rarely and whole (checkpoints), hashed on every check -----


class BadFile(NamedTuple):
    """A listed file that is not as it was written: its path in the folder, and why."""

    name: str
    why: str


def write_manifest(folder: str | os.PathLike, files: Iterable[str], algorithm: str = ALGORITHM) -> None:
    """Record the size and digest of each file (paths relative to folder) in
    folder/manifest.json; call it last, once every listed file is complete."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"checksum algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    recorded = manifest(folder, sorted(set(files)), algorithm=algorithm, workers=1)
    write_json_atomic(Path(folder) / MANIFEST_FILE, {"format": _MANIFEST_FORMAT, **recorded})


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """folder's manifest, None when it has none; ValueError when it cannot be read."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(data: bytes, source: str) -> dict[str, Any]:
    """A manifest's JSON bytes checked for the fields `verify_manifest` reads."""
    try:
        recorded = json.loads(data)
        if recorded["format"] != _MANIFEST_FORMAT or recorded["algorithm"] not in ALGORITHMS:
            raise ValueError(f"format {recorded['format']!r}, algorithm {recorded['algorithm']!r}")
        dict(recorded["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{source}: damaged or not a manifest of this version ({err})") from None
    return recorded


def _entry_problem(entry: Mapping[str, Any], algorithm: str, size: int, digest: Any) -> str | None:
    """Why a file of `size` bytes differs from its manifest entry; digest() is hashed only
    when the size matches."""
    if size != entry["bytes"]:
        return f"{size} bytes, {entry['bytes']} when written"
    if digest() != entry["digest"]:
        return f"{algorithm} differs from the one recorded when it was written"
    return None


def bytes_problem(recorded: dict[str, Any], name: str, data: bytes) -> str | None:
    """Why data (the bytes read of file `name`) differs from its manifest entry, or None (also
    when the manifest does not list it)."""
    entry, algorithm = recorded["files"].get(name), recorded["algorithm"]
    if entry is None:
        return None
    return _entry_problem(entry, algorithm, len(data), lambda: hashlib.new(algorithm, data).hexdigest())


def verify_manifest(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[BadFile]:
    """The files of folder's manifest (or only `names` among them) that are missing, of another
    size or another digest; [] when all are as written or folder has no manifest."""
    folder = Path(folder)
    try:
        recorded = read_manifest(folder)
    except ValueError as err:
        return [BadFile(MANIFEST_FILE, str(err).split(": ", 1)[-1])]
    if recorded is None:
        return []
    listed, algorithm, bad = recorded["files"], recorded["algorithm"], []
    for name in sorted(listed if names is None else set(names) & set(listed)):
        path = folder / name
        why = "missing" if not path.is_file() else _entry_problem(
            listed[name], algorithm, path.stat().st_size, lambda p=path: file_digest(p, algorithm))
        if why:
            bad.append(BadFile(name, why))
    return bad
