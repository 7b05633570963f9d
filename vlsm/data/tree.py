"""Where a dataset's files are: a walk of its folder, symbolic links followed (a dataset
is often linked in from a shared volume) and each real folder walked once, so that a link
loop neither hangs nor recurses; and whether a path its files name leads out of it
(docs/data.md, "What the readers refuse").

    found = walk_files(Path("data/SDM"))   # found.files, sorted; found.skipped: (link, why)
    leads_out(Path("data/gen"), Path("data/gen/../x.png"))   # True
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["WalkedTree", "leads_out", "walk_files"]


@dataclass
class WalkedTree:
    """The files under a root (sorted, as paths below the root even through links) and the
    links that were not followed, each with why."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _folder_id(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def walk_files(root: Path) -> WalkedTree:
    """Every file under root, following links to folders; a folder reached a second time
    (a link to an ancestor, two links to one folder) and a link that loops on itself are
    skipped and listed in `skipped`."""
    root = Path(root)
    found = WalkedTree()
    seen: dict[tuple[int, int], str] = {}
    start = _folder_id(str(root))
    if start is not None:
        seen[start] = str(root)
    for where, subdirs, names in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(subdirs):
            path = os.path.join(where, name)
            key = _folder_id(path)
            if key is None:
                continue
            if key in seen:
                found.skipped.append((Path(path), f"a link to {seen[key]}, which is walked already "
                                                  "(a loop or a second link to one folder); not followed"))
                continue
            seen[key] = path
            kept.append(name)
        subdirs[:] = kept
        for name in names:
            path = Path(where) / name
            if path.is_symlink() and _loops(path):
                found.skipped.append((path, "a symbolic link that loops (to itself or through other links); "
                                            "not followed"))
            else:
                found.files.append(path)
    found.files.sort()
    return found


def _loops(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def leads_out(root: Path, path: Path) -> bool:
    """Whether path, as a dataset's file names it (root / "../x.png", or an absolute path),
    leads out of root once its '..' parts are applied. Only the text is judged: a link inside
    root may point anywhere (the dataset's owner put it there)."""
    root_text = os.path.normpath(os.path.abspath(root))
    path_text = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([root_text, path_text]) != root_text
