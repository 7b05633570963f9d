"""A grid cell: the identity of one trial, and how it crosses the Ray boundary.

Ray ships a trial's config (a dict), not our objects, so a trial carries its cell as
`config["tags"]`. `Cell.tags` writes that mapping and `Cell.of_config` reads it back:
they are the only code that knows its keys. The cell's axes are `vlsm.axes.CELL_AXES`
(model, strategy, encoder, prompt), which also name the export columns and MLflow
parameters.

    cell = Cell("CRIS", "synth-PT:real-FT", "frozen", "P3", upstream="cris-synthetic-frozen-p3")
    cell.cell_id                          # "cris-synth-pt-real-ft-frozen-p3"
    Cell.of_config({"tags": cell.tags()}) == cell
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlsm.axes import CELL_AXES, STRATEGY_FINETUNE, STRATEGY_SYNTHETIC

__all__ = ["CELL_ID", "Cell"]

CELL_ID = "cell_id"  # the key of a cell's id in a trial's tags, and the MLflow tag's suffix
_UPSTREAM = "upstream_cell_id"
_ID_STRATEGY = {"real": "real", STRATEGY_SYNTHETIC: "synthetic", STRATEGY_FINETUNE: "synth-pt-real-ft"}


@dataclass(frozen=True)
class Cell:
    """One trial of the grid: a (model, strategy, encoder, prompt) combination."""

    model: str  # "CLIPSeg" | "CRIS"
    strategy: str  # "real" | "synthetic" | "synth-PT:real-FT"
    encoder: str  # "frozen" | "unfrozen"
    prompt: str  # "P0".."P7"
    upstream: str | None = None  # cell_id of the synthetic cell a finetune starts from

    @property
    def cell_id(self) -> str:
        """Stable, path-safe id: clipseg-synth-pt-real-ft-frozen-p3."""
        return f"{self.model.lower()}-{_ID_STRATEGY[self.strategy]}-{self.encoder}-{self.prompt.lower()}"

    @property
    def train_data(self) -> str:
        """Which dataset trains this cell: 'sdm' for synthetic, 'camus' otherwise."""
        return "sdm" if self.strategy == STRATEGY_SYNTHETIC else "camus"

    def axes(self) -> dict[str, str]:
        """{axis: value} for every axis of `vlsm.axes.CELL_AXES`."""
        return {axis: getattr(self, axis) for axis in CELL_AXES}

    def tags(self) -> dict[str, Any]:
        """What a trial config carries as `tags` (JSON-able; `of_config` reads it back)."""
        return {CELL_ID: self.cell_id, **self.axes(), _UPSTREAM: self.upstream}

    @classmethod
    def of_config(cls, config: Mapping[str, Any]) -> Cell | None:
        """The cell a trial config was made for; None for a config of no cell."""
        tags = config.get("tags") or {}
        if CELL_ID not in tags:
            return None
        return cls(**{axis: tags[axis] for axis in CELL_AXES}, upstream=tags.get(_UPSTREAM))


# The axes are spelled once, in vlsm.axes; the dataclass must hold exactly those.
assert tuple(f.name for f in dataclasses.fields(Cell))[: len(CELL_AXES)] == CELL_AXES
