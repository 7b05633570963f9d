"""INTERIM (replaced by the readers branch): sdm only."""

from __future__ import annotations

from pathlib import Path

from vlsm.axes import PROMPTS, SYNTHETIC_PROMPTS


def buildable_prompts(fmt: str, root: Path | None, camus_root: Path | None = None) -> tuple[str, ...]:
    if fmt == "sdm":
        return SYNTHETIC_PROMPTS if camus_root is not None else PROMPTS[:4]
    return PROMPTS[:4]


def load_synthetic(fmt: str, root: Path, *, camus_root=None, split_scheme="paper", n_val=None) -> list:
    from vlsm.data.sdm import load_sdm

    return load_sdm(root)
