"""Expand a sweep definition into trials (grid cells) with their dependencies.

Each synth-PT:real-FT cell starts from the best checkpoint of the synthetic cell with
the same model, encoder mode and the prompt `grid.finetune_upstream` names (P6 for P7:
synthetic data has no P7). Cells are ordered so that the longest chains start first:
synthetic cells with the most finetunes waiting on them, then the rest.
"""

from __future__ import annotations

from sweeps.cell import Cell
from sweeps.spec import SweepSpec
from vlsm.axes import (
    STRATEGY_FINETUNE,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    SYNTHETIC_PROMPTS,
)


def expand_grid(spec: SweepSpec) -> list[Cell]:
    """All cells of the grid, in planning order (see `order_cells`).

    Synthetic cells exist for P0-P6 only. A finetune whose upstream synthetic cell is
    not in the grid (e.g. `--strategies synth-PT:real-FT` alone) is still planned: its
    upstream is added, since it cannot start without it.
    """
    grid = spec.grid
    cells: dict[str, Cell] = {}
    for model in grid.models:
        for encoder in grid.encoders:
            for prompt in grid.prompts:
                for strategy in grid.strategies:
                    if strategy == STRATEGY_SYNTHETIC and prompt not in SYNTHETIC_PROMPTS:
                        continue
                    upstream = None
                    if strategy == STRATEGY_FINETUNE:
                        source = grid.finetune_upstream.get(prompt, prompt)
                        if source not in SYNTHETIC_PROMPTS:
                            raise ValueError(
                                f"grid.finetune_upstream: {prompt} -> {source}, but synthetic data has "
                                f"only {list(SYNTHETIC_PROMPTS)}; map {prompt} to one of them"
                            )
                        up = Cell(model, STRATEGY_SYNTHETIC, encoder, source)
                        cells.setdefault(up.cell_id, up)
                        upstream = up.cell_id
                    cell = Cell(model, strategy, encoder, prompt, upstream)
                    cells.setdefault(cell.cell_id, cell)
    return order_cells(list(cells.values()))


def dependents(cells: list[Cell]) -> dict[str, list[str]]:
    """cell_id -> ids of the finetunes that wait on it."""
    waiting: dict[str, list[str]] = {c.cell_id: [] for c in cells}
    for cell in cells:
        if cell.upstream is not None:
            waiting[cell.upstream].append(cell.cell_id)
    return waiting


def order_cells(cells: list[Cell]) -> list[Cell]:
    """Longest chains first: synthetic cells by number of dependents, then real cells
    (CRIS before CLIPSeg, unfrozen before frozen: the slow ones first), then finetunes,
    which start as soon as their own upstream has finished."""
    waiting = dependents(cells)
    strategy_rank = {STRATEGY_SYNTHETIC: 0, STRATEGY_REAL: 1, STRATEGY_FINETUNE: 2}

    def key(cell: Cell) -> tuple:
        return (
            strategy_rank[cell.strategy],
            -len(waiting[cell.cell_id]),
            cell.model != "CRIS",
            cell.encoder != "unfrozen",
            cell.prompt,
        )

    return sorted(cells, key=key)
