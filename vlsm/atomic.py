"""Writes that never leave a half-written file or folder where a whole one belongs: each
is filled beside its target and renamed onto it (docs/design.md, "Layers", rule 6).

    with atomic_path(out / "trials.parquet") as tmp:
        frame.to_parquet(tmp, index=False)

A write that fails for lack of space or quota raises `DiskFullError` naming its target;
`disk_full_line` turns any error that is (or wraps) one into the line a command ends with.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["DiskFullError", "atomic_folder", "atomic_path", "build_folder_once", "disk_full", "disk_full_line",
           "not_writable", "write_json_atomic", "write_text_atomic"]

log = logging.getLogger(__name__)

DISK_FULL = {errno.ENOSPC: ("the disk is full", "ENOSPC"), errno.EDQUOT: ("over the disk quota", "EDQUOT")}
# The same, told in the text of an error that wraps it (Ray's TuneError, MLflow's, SQLite's):
_FULL_TEXT = re.compile(r"\[errno (28|122)\][^\n]*?(?:: '([^'\n]+)')?$|(no space left on device)|"
                        r"(disk quota exceeded)|(database or disk is full)", re.IGNORECASE | re.MULTILINE)


class DiskFullError(OSError):
    """A write that failed for lack of space or quota; `filename` is the whole file (or
    folder) that could not be written, not the temporary beside it."""


def _disk_full_error(err: OSError, target: Path) -> OSError:
    """`err` as a DiskFullError naming `target` when it is a full disk or quota, else itself."""
    if err.errno not in DISK_FULL or isinstance(err, DiskFullError):
        return err
    return DiskFullError(err.errno, os.strerror(err.errno), str(target))


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
    except OSError as err:
        raise _disk_full_error(err, path) from err
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
    try:
        tmp.mkdir()
        yield tmp
        _move_into_place(tmp, target, replace, remove_old)
    except OSError as err:
        raise _disk_full_error(err, target) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when it was not moved


def disk_full(err: BaseException) -> tuple[int, str | None] | None:
    """(ENOSPC or EDQUOT, the file named or None) when `err` is a full disk or quota, or
    wraps one (as its cause, its context, a Ray task's cause, or in its text); else None."""
    errors: list[BaseException] = []
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop(0)
        if current is not None and all(current is not e for e in errors):
            errors.append(current)
            pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    for current in errors:
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return current.errno, str(current.filename) if current.filename else None
    matches = [m for e in errors for m in _FULL_TEXT.finditer(str(e))]
    if not matches:
        return None
    last = ([m for m in matches if m.group(2)] or matches)[-1]  # the innermost error is told last
    return (errno.EDQUOT if last.group(1) == "122" or last.group(4) else errno.ENOSPC), last.group(2)


def disk_full_line(err: BaseException, fallback: str | os.PathLike) -> str | None:
    """The one line a command ends with when `err` is a full disk or quota (else None): the
    file (or `fallback` when the error names none), the free space there, what to do."""
    found = disk_full(err)
    if found is None:
        return None
    code, name = found
    path = Path(name or fallback)
    what, symbol = DISK_FULL[code]
    free = ""
    if "://" not in str(path):
        existing = next((p for p in (path, *path.parents) if p.is_dir()), None)
        if existing is not None:
            free = f", {_size(shutil.disk_usage(existing).free)} free in {existing}"
    return (f"cannot write {path}: {what} ({symbol}){free}; free space (or raise the quota) and run the "
            f"same command again: it resumes where it stopped")


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


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
