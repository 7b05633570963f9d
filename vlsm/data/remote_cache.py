"""Cache folders on shared storage (s3://..., or a folder every node mounts as file://...)
for trials on other nodes of a cluster: `publish` copies a folder there once, `localize`
downloads it once per node (docs/design.md, "The preprocessing cache").

A published folder counts only once its manifest (`MANIFEST`, written after every file it
names) is there and every file it names is there at its size. A publisher that dies midway
(a lost node) leaves nothing that `is_published` or `localize` accepts, and a download cut
off midway leaves nothing on the node (docs/faults.md, "A lost node").
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import IO

from vlsm.atomic import atomic_folder

logger = logging.getLogger(__name__)

LOCAL_ROOT = Path(os.environ.get("VLSM_REMOTE_CACHE", Path.home() / ".cache" / "vlsm" / "remote"))
# {"files": {name: size in bytes}} of a published folder, written last; hidden, so never downloaded
MANIFEST = ".published.json"
_CHUNK = 1 << 24


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def publish(folder: Path, storage: str) -> str:
    """Copy a local cache folder to <storage>/cache/<name> unless it is there; its URI."""
    uri = f"{storage.rstrip('/')}/cache/{Path(folder).name}"
    publish_folder(folder, uri)
    return uri


def _published_files(fs, inner: str) -> dict[str, int] | None:
    """name -> size of every file the manifest at `inner` names, when each is there at that
    size; None when the folder is not wholly there (no manifest, half a one, a short file)."""
    import pyarrow.fs

    manifest = f"{inner}/{MANIFEST}"
    if fs.get_file_info(manifest).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(manifest) as stream:
        try:
            files = json.loads(stream.readall())["files"]
        except (ValueError, KeyError, TypeError):  # an object store keeps half a manifest whose upload failed
            return None
    if not isinstance(files, dict) or any(Path(name).name != name or name.startswith(".") for name in files):
        return None  # plain file names only: nothing may land outside the local folder
    infos = fs.get_file_info([f"{inner}/{name}" for name in files])
    whole = all(i.type == pyarrow.fs.FileType.File and i.size == files[i.base_name] for i in infos)
    return files if whole else None


def is_published(uri: str) -> bool:
    """Whether a folder is wholly at uri: its manifest, and every file it names at its size."""
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(uri)
    return _published_files(fs, inner) is not None


def _put(fs, source: IO[bytes], dest: str) -> None:
    """Copy a stream to dest without ever leaving part of it there. On a filesystem (file://)
    it is written beside dest under a hidden name and renamed onto it; an object store shows
    an object only once its upload completes (one that fails midway may be kept short: the
    manifest's sizes reject it), and renaming there would copy it again."""
    if fs.type_name != "local":
        with fs.open_output_stream(dest) as out:
            shutil.copyfileobj(source, out, _CHUNK)
        return
    folder, _, name = dest.rpartition("/")
    part = f"{folder}/.{name}.part-{secrets.token_hex(4)}"
    try:
        with fs.open_output_stream(part) as out:
            shutil.copyfileobj(source, out, _CHUNK)
        fs.move(part, dest)
    except Exception:
        with contextlib.suppress(OSError):  # ours; a publisher that is killed leaves it, hidden and never read
            fs.delete_file(part)
        raise


def publish_folder(folder: Path, uri: str) -> None:
    """Copy a finished local folder (flat: files only) to uri unless it is there: each file
    whole under its name, then the manifest. Two publishers of one folder (two nodes that
    built the same store) write the same files and the same manifest."""
    import pyarrow.fs

    if is_published(uri):
        return
    logger.info("copying %s to %s", folder, uri)
    fs, inner = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(inner, recursive=True)
    files = {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name[0] != "."}
    for name in files:
        with open(Path(folder) / name, "rb") as source:
            _put(fs, source, f"{inner}/{name}")
    _put(fs, io.BytesIO(json.dumps({"files": files}).encode()), f"{inner}/{MANIFEST}")


def local_folder(uri: str | os.PathLike) -> Path:
    """Where `localize` keeps the folder of a URI on this node."""
    return LOCAL_ROOT / str(uri).rstrip("/").rsplit("/", 1)[-1]


def localize(path: str | os.PathLike, *, again: bool = False) -> Path:
    """A local folder for a cache path or URI (downloaded once per node for a URI): the files
    the manifest names, each checked against its size, renamed into place only when all are
    there. again: download it anew over this node's copy (one found damaged). FileNotFoundError
    naming the URI when it is not wholly published."""
    if not is_remote(path):
        return Path(path)
    import pyarrow.fs

    uri = str(path).rstrip("/")
    target = local_folder(uri)
    if (target / "meta.json").is_file() and not again:  # it only ever appears whole (renamed into place)
        return target
    fs, inner = pyarrow.fs.FileSystem.from_uri(uri)
    files = _published_files(fs, inner)
    if files is None:
        raise FileNotFoundError(f"{uri}: not wholly on the shared storage (no {MANIFEST} naming its files at "
                                f"their sizes: its publisher stopped midway); the sweep publishes it again when "
                                f"the same command runs again")
    with atomic_folder(target, replace=again) as tmp:  # else another trial's finished download is kept
        for name, size in files.items():
            with fs.open_input_stream(f"{inner}/{name}") as source, open(tmp / name, "wb") as out:
                shutil.copyfileobj(source, out, _CHUNK)
            if (tmp / name).stat().st_size != size:
                raise OSError(f"{uri}/{name}: downloaded {(tmp / name).stat().st_size} bytes, its manifest "
                              f"says {size}; run the command again to fetch it again")
    return target
