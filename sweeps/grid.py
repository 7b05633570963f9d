"""Expand a sweep definition into trials (grid cells) with their dependencies.

A cell is (model, strategy, encoder, prompt), its synthetic source where it trains on
synthetic data, its provenance where it is real+synthetic, and its seed. Each
synth-PT:real-FT cell starts from the best checkpoint of the synthetic cell with the
same model, encoder mode, source and seed, and the prompt `grid.finetune_upstream` names
(P6 for P7: synthetic data has no P7). A source builds only the prompts its metadata
allows (`source_prompts`: DiffEcho has no sex or age, so P0-P3): its other cells are
skipped, each with the reason (`plan_grid`, printed by the plan). Cells are ordered
so that the longest chains start first: synthetic cells with the most finetunes waiting
on them, then the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from sweeps.cell import Cell
from sweeps.spec import SweepSpec, grid_sources
from vlsm.axes import (
    STRATEGY_FINETUNE,
    STRATEGY_MIXED,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    SYNTHETIC_PROMPTS,
)
from vlsm.model_registry import model_entry

__all__ = ["dependents", "expand_grid", "order_cells", "plan_grid"]

# source -> the prompts its records can build; a source missing here builds P0-P6.
SourcePrompts = Mapping[str, tuple[str, ...]]


def _buildable(source_prompts: SourcePrompts | None, source: str) -> tuple[str, ...]:
    prompts = (source_prompts or {}).get(source, SYNTHETIC_PROMPTS)
    return tuple(p for p in prompts if p in SYNTHETIC_PROMPTS)  # synthetic style: never P7


def _candidates(spec: SweepSpec, source_prompts: SourcePrompts | None) -> Iterator[tuple[Cell, str]]:
    """Every cell the grid names with "" (planned) or why it cannot run; a finetune's
    upstream comes right before it."""
    grid = spec.grid
    sources = grid_sources(spec)
    for seed in grid.seeds:
        for model in grid.models:
            for encoder in grid.encoders:
                for prompt in grid.prompts:
                    for strategy in grid.strategies:
                        if strategy == STRATEGY_REAL:
                            yield Cell(model, strategy, encoder, prompt, seed=seed), ""
                            continue
                        for source in sources:
                            yield from _synthetic_cells(spec, model, strategy, encoder, prompt, source, seed,
                                                        _buildable(source_prompts, source))


def _synthetic_cells(spec: SweepSpec, model: str, strategy: str, encoder: str, prompt: str, source: str,
                     seed: int, buildable: tuple[str, ...]) -> Iterator[tuple[Cell, str]]:
    """The cells of one strategy that trains on synthetic source `source`."""
    skip = f"{source} builds prompts {', '.join(buildable) or 'none'} only"
    if strategy in (STRATEGY_SYNTHETIC, STRATEGY_MIXED) and prompt not in SYNTHETIC_PROMPTS:
        return  # the synthetic style has no P7: not a cell of the grid (as in the paper)
    if strategy == STRATEGY_SYNTHETIC:
        yield Cell(model, strategy, encoder, prompt, synthetic_source=source, seed=seed), (
            "" if prompt in buildable else skip)
    elif strategy == STRATEGY_MIXED:
        for provenance in spec.grid.provenance:
            yield Cell(model, strategy, encoder, prompt, synthetic_source=source, provenance=provenance,
                       seed=seed), "" if prompt in buildable else skip
    elif strategy == STRATEGY_FINETUNE:
        upstream_prompt = spec.grid.finetune_upstream.get(prompt, prompt)
        if upstream_prompt not in SYNTHETIC_PROMPTS:
            raise ValueError(
                f"grid.finetune_upstream: {prompt} -> {upstream_prompt}, but synthetic data has "
                f"only {list(SYNTHETIC_PROMPTS)}; map {prompt} to one of them"
            )
        up = Cell(model, STRATEGY_SYNTHETIC, encoder, upstream_prompt, synthetic_source=source, seed=seed)
        runs = upstream_prompt in buildable
        yield up, "" if runs else skip
        yield (Cell(model, strategy, encoder, prompt, up.cell_id, synthetic_source=source, seed=seed),
               "" if runs else f"its upstream {up.cell_id} cannot run: {skip}")
    else:  # spec checking refuses other strategies first
        raise ValueError(f"unknown strategy {strategy!r}")


def plan_grid(spec: SweepSpec, source_prompts: SourcePrompts | None = None) -> tuple[list[Cell], dict[str, str]]:
    """(the cells that can run, in planning order; cell_id -> why it does not run, for
    the cells the grid names that cannot).

    A finetune whose upstream synthetic cell is not in the grid (e.g. `--strategies
    synth-PT:real-FT` alone) is still planned: its upstream is added, since it cannot
    start without it. source_prompts: the prompts each synthetic source builds
    (default P0-P6 for every source).
    """
    cells: dict[str, Cell] = {}
    skipped: dict[str, str] = {}
    for cell, reason in _candidates(spec, source_prompts):
        if reason:
            skipped.setdefault(cell.cell_id, reason)
        else:
            cells.setdefault(cell.cell_id, cell)
    return order_cells(list(cells.values())), skipped


def expand_grid(spec: SweepSpec, source_prompts: SourcePrompts | None = None) -> list[Cell]:
    """The cells of `plan_grid`, in planning order."""
    return plan_grid(spec, source_prompts)[0]


def dependents(cells: list[Cell]) -> dict[str, list[str]]:
    """cell_id -> ids of the finetunes that wait on it."""
    waiting: dict[str, list[str]] = {c.cell_id: [] for c in cells}
    for cell in cells:
        if cell.upstream is not None:
            waiting[cell.upstream].append(cell.cell_id)
    return waiting


def order_cells(cells: list[Cell]) -> list[Cell]:
    """Longest chains first: synthetic cells by number of dependents, then real and
    real+synthetic cells (CRIS before CLIPSeg, unfrozen before frozen: the slow ones
    first), then finetunes, which start as soon as their own upstream has finished.
    Within a stage the first seed's cells come first."""
    waiting = dependents(cells)
    strategy_rank = {STRATEGY_SYNTHETIC: 0, STRATEGY_REAL: 1, STRATEGY_MIXED: 1, STRATEGY_FINETUNE: 2}
    seed_rank = {seed: i for i, seed in enumerate(dict.fromkeys(c.seed for c in cells))}

    def key(cell: Cell) -> tuple:
        return (
            strategy_rank[cell.strategy],
            -len(waiting[cell.cell_id]),
            seed_rank[cell.seed],
            model_entry(cell.model).schedule_rank,
            cell.encoder != "unfrozen",
            cell.prompt,
            cell.strategy,
            cell.synthetic_source,
            cell.provenance,
        )

    return sorted(cells, key=key)
