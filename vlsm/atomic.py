"""Writes that never leave a half-written file or folder where a whole one belongs: each
is filled beside its target and renamed onto it (docs/design.md, "Layers", rule 6).

    with atomic_path(out / "trials.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
"""

from __future__ import annotations

import glob
import json
import logging
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_folder", "atomic_path", "build_folder_once", "not_writable", "write_json_atomic",
           "write_text_atomic"]

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` (not created yet; `suffix` ends its name,
    for writers that choose a format by extension); it replaces `path` when the block ends
    without an error, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, value: Any, *, indent: int | None = 1, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None) -> None:
    """Write `value` as JSON atomically (sorted keys, one-space indent by default)."""
    write_text_atomic(path, json.dumps(value, indent=indent, sort_keys=sort_keys, default=default))


def not_writable(path: str | os.PathLike) -> str | None:
    """Why a folder cannot be created or written at `path`, or None: for commands to refuse
    before any work, with one line, instead of failing at their first write."""
    path = Path(path).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


@contextmanager
def atomic_folder(
    target: str | os.PathLike, *, replace: bool = False, remove_old: Callable[[Path], Any] = shutil.rmtree
) -> Iterator[Path]:
    """Yield a new empty folder beside `target`; it becomes `target` in one rename when the
    block ends without an error, else it is deleted. An existing `target`: with replace, set
    aside, ours renamed in (the old one put back if that fails), then `remove_old(old)`;
    without replace, kept as another process's finished copy (ours deleted). Temporaries
    that killed processes of this host left beside `target` are deleted first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(target)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _move_into_place(tmp, target, replace, remove_old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when it was not moved


def build_folder_once(final: str | os.PathLike, build: Callable[[Path], Any], *,
                      reusable: Callable[[Path], bool] | None = None) -> bool:
    """Build the read-only folder `final` whole with build(tmp), unless it exists; True when
    built here. A lock beside `final` makes a second process wait, then reuse the first's.
    An existing folder that `reusable` rejects (a damaged one) is rebuilt and swapped in by
    one rename: a process that has its files open or memory-mapped keeps reading the old ones."""
    final = Path(final)
    if final.is_dir() and (reusable is None or reusable(final)):
        return False
    rejected = _inode(final)  # the damaged folder's, None when there was none
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        # another process built (or rebuilt) it while we waited: a new folder, checked
        if final.is_dir() and _inode(final) != rejected and (reusable is None or reusable(final)):
            return False
        if final.is_dir() and not _ours(final):
            raise ValueError(f"{final}: damaged, and another user's (not deleted); ask its owner to "
                             "remove it, or use another cache folder")
        with atomic_folder(final, replace=final.is_dir()) as tmp:
            build(tmp)
            _make_read_only(tmp)
    return True


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _ours(folder: Path) -> bool:
    """Whether this user owns folder (built it): only then may a damaged one be replaced."""
    return not hasattr(os, "getuid") or folder.stat().st_uid == os.getuid()


def _sibling(target: Path, kind: str) -> Path:
    """A new name beside target: ".<name>.<kind>-<pid>@<host>-<random>"."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}@{socket.gethostname()}-{secrets.token_hex(4)}")


def _move_into_place(tmp: Path, target: Path, replace: bool, remove_old: Callable[[Path], Any]) -> None:
    old = None
    if replace and target.exists():
        old = _sibling(target, "old")
        try:
            os.replace(target, old)
        except FileNotFoundError:  # another process moved it meanwhile
            old = None
    try:
        os.replace(tmp, target)  # replaces target only when it is an empty folder
    except OSError:
        if not target.is_dir():
            if old is not None:
                os.replace(old, target)
            raise
        log.info("%s was finished by another process meanwhile; keeping that one", target)
    if old is not None:
        remove_old(old)


def _remove_dead_temporaries(target: Path) -> None:
    host = socket.gethostname()
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.tmp-*@*"):
        pid, _, rest = tmp.name[len(target.name) + 6:].partition("@")
        if rest.rsplit("-", 1)[0] == host and pid.isdigit() and not _pid_alive(int(pid)):
            log.info("removing %s, left by a killed process (pid %s)", tmp, pid)
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _make_read_only(folder: Path) -> None:
    """Files r--r--r--; the folder rwxr-xr-x (other users on a node may share it; its owner
    can delete it)."""
    for path in folder.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    folder.chmod(0o755)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An advisory lock (flock); a no-op without fcntl (the rename alone keeps folders whole)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
