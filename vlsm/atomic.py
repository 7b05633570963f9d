"""Writes that never leave a half-written file where a whole one belongs.

Every file the project writes for someone else to read (checkpoints, cache metadata,
images, the sweep's state, exports, reports, figures) goes through `atomic_path`: the
writer fills a temporary file in the destination folder, which is then renamed onto the
target (`os.replace`, atomic within one filesystem). A reader, or a process that is
killed half way, sees the old file or the new one, never a part of one.

    from vlsm.atomic import atomic_path, write_json_atomic
    with atomic_path(out / "trials.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    write_json_atomic(out / "state.json", {"epoch": 3})
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "not_writable", "write_json_atomic", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; when the block ends without an error it
    replaces `path`, otherwise it is removed.

    The temporary file does not exist yet: the writer creates it, so it gets the usual
    permissions. `suffix` ends its name, for writers that choose a format by extension
    (SimpleITK: ".nii.gz").
    """
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


def write_json_atomic(
    path: str | os.PathLike,
    value: Any,
    *,
    indent: int | None = 1,
    sort_keys: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> None:
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
