"""Cache folders on shared storage (s3://...) for trials on other nodes of a cluster:
`publish` copies a folder there once, `localize` downloads it once per node
(docs/design.md, "The preprocessing cache").
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from vlsm.atomic import atomic_folder

logger = logging.getLogger(__name__)

LOCAL_ROOT = Path(os.environ.get("VLSM_REMOTE_CACHE", Path.home() / ".cache" / "vlsm" / "remote"))


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def publish(folder: Path, storage: str) -> str:
    """Copy a local cache folder to <storage>/cache/<name> unless it is there; its URI."""
    uri = f"{storage.rstrip('/')}/cache/{Path(folder).name}"
    publish_folder(folder, uri)
    return uri


def is_published(uri: str) -> bool:
    """Whether a folder is complete at uri (its meta.json, written last, is there)."""
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(uri)
    return fs.get_file_info(f"{inner}/meta.json").type == pyarrow.fs.FileType.File


def publish_folder(folder: Path, uri: str) -> None:
    """Copy a finished local folder (flat: files only) to uri unless it is there. meta.json
    goes last, so `localize` on another node never takes a folder that is half there."""
    import pyarrow.fs

    if is_published(uri):
        return
    logger.info("copying %s to %s", folder, uri)
    fs, inner = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(inner, recursive=True)
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    for path in [p for p in files if p.name != "meta.json"] + [Path(folder) / "meta.json"]:
        with open(path, "rb") as src, fs.open_output_stream(f"{inner}/{path.name}") as out:
            shutil.copyfileobj(src, out, 1 << 24)


def local_folder(uri: str | os.PathLike) -> Path:
    """Where `localize` keeps the folder of a URI on this node."""
    return LOCAL_ROOT / str(uri).rstrip("/").rsplit("/", 1)[-1]


def localize(path: str | os.PathLike) -> Path:
    """A local folder for a cache path or URI (downloaded once per node for a URI)."""
    if not is_remote(path):
        return Path(path)
    import pyarrow.fs

    uri = str(path).rstrip("/")
    target = local_folder(uri)
    if (target / "meta.json").is_file():
        return target
    fs, inner = pyarrow.fs.FileSystem.from_uri(uri)
    with atomic_folder(target) as tmp:  # another trial's finished download is kept
        pyarrow.fs.copy_files(inner, str(tmp), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return target
