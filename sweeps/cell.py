"""A grid cell: the identity of one trial (its axes, `vlsm.axes`, and seed); a trial config
carries only its id, `config[CELL_ID]` (docs/design.md, "Vocabulary").

    Cell("CRIS", "synth-PT:real-FT", "frozen", "P3", upstream="cris-synthetic-frozen-p3").cell_id
    # "cris-synth-pt-real-ft-frozen-p3"; with seed=43: "...-p3-s43" (only what differs from the paper's grid)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vlsm.axes import (
    CELL_AXES,
    PAPER_SEED,
    PROVENANCE_NONE,
    PROVENANCE_PROMPT,
    SOURCE_SDM,
    VARIANT_AXES,
)
from vlsm.strategies import REAL, REAL_AND_SYNTHETIC, STRATEGY_REGISTRY, SYNTHETIC, uses_synthetic

__all__ = ["CELL_ID", "REAL_DATA", "Cell", "mixed_data"]

CELL_ID = "cell_id"  # the key of a cell's id in a trial config, and the MLflow tag's suffix
REAL_DATA = "camus"  # the dataset name of real CAMUS in a sweep's caches


def mixed_data(source: str) -> str:
    """The dataset name of real CAMUS and one synthetic source in one training set."""
    return f"{REAL_DATA}+{source}"


@dataclass(frozen=True)
class Cell:
    """One trial of the grid: its axes (source and provenance where they apply) and seed."""

    model: str  # "CLIPSeg" | "CRIS"
    strategy: str  # a vlsm.strategies entry: "real" | "synthetic" | "synth-PT:real-FT" | "real+synthetic"
    encoder: str  # "frozen" | "unfrozen"
    prompt: str  # "P0".."P7"
    upstream: str | None = None  # cell_id of the synthetic cell a finetune starts from
    synthetic_source: str = ""  # "sdm" | "diffecho" | "imagefolder"; "" for real cells (default: sdm)
    provenance: str = ""  # real+synthetic: "prompt" | "none" (default: prompt); "" otherwise
    seed: int = PAPER_SEED  # the replicate; the paper's 42 is left out of the id

    def __post_init__(self) -> None:
        strategy = STRATEGY_REGISTRY[self.strategy]
        synthetic = uses_synthetic(self.strategy)
        if self.synthetic_source and not synthetic:
            raise ValueError(f"a {self.strategy} cell has no synthetic source, got {self.synthetic_source!r}")
        if self.provenance and not strategy.provenance:
            raise ValueError(f"a {self.strategy} cell has no provenance, got {self.provenance!r}")
        object.__setattr__(self, "synthetic_source", (self.synthetic_source or SOURCE_SDM) if synthetic else "")
        object.__setattr__(self, "provenance", (self.provenance or PROVENANCE_PROMPT) if strategy.provenance else "")

    @property
    def cell_id(self) -> str:
        """Stable, path-safe id: clipseg-synth-pt-real-ft-frozen-p3 (the paper's source, provenance
        and seed left out, so adding seeds or sources to a sweep changes no id)."""
        variant = "" if self.synthetic_source in ("", SOURCE_SDM) else f"-{self.synthetic_source}"
        if self.provenance == PROVENANCE_NONE:
            variant += "-no-provenance"
        seed = "" if self.seed == PAPER_SEED else f"-s{self.seed}"
        slug = STRATEGY_REGISTRY[self.strategy].slug
        return f"{self.model.lower()}-{slug}{variant}-{self.encoder}-{self.prompt.lower()}{seed}"

    @property
    def train_data(self) -> str:
        """The dataset that trains this cell: 'camus', its synthetic source, or 'camus+<source>'."""
        train = STRATEGY_REGISTRY[self.strategy].train
        return {REAL: REAL_DATA, SYNTHETIC: self.synthetic_source,
                REAL_AND_SYNTHETIC: mixed_data(self.synthetic_source)}[train]

    @property
    def val_data(self) -> str:
        """The dataset that validates it: real CAMUS or its synthetic source."""
        return self.synthetic_source if STRATEGY_REGISTRY[self.strategy].val == SYNTHETIC else REAL_DATA

    def axes(self) -> dict[str, str]:
        """{axis: value} for every axis of `vlsm.axes.CELL_AXES` and `VARIANT_AXES`."""
        return {axis: getattr(self, axis) for axis in (*CELL_AXES, *VARIANT_AXES)}


# The axes are spelled once, in vlsm.axes; the dataclass must hold exactly those.
_FIELDS = tuple(f.name for f in dataclasses.fields(Cell))
assert _FIELDS[: len(CELL_AXES)] == CELL_AXES and set(VARIANT_AXES) <= set(_FIELDS)
