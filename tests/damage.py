"""Damage a file in place, as a failing disk or a copy cut short would: for the tests of
corruption at rest (tests/test_cache.py, tests/test_feature_store.py)."""

from __future__ import annotations

import os
from pathlib import Path


def damage(path: Path, how: str, *, at: int | None = None) -> None:
    """Cut a file short ("truncate": its last 100 bytes) or flip one bit ("flip": of byte
    `at`, by default the middle one); its read-only mode is kept."""
    mode = path.stat().st_mode
    os.chmod(path, 0o644)
    if how == "truncate":
        os.truncate(path, path.stat().st_size - 100)
    else:
        at = path.stat().st_size // 2 if at is None else at
        with open(path, "r+b") as fh:
            fh.seek(at)
            byte = fh.read(1)[0]
            fh.seek(at)
            fh.write(bytes([byte ^ 0x01]))
    os.chmod(path, mode)
