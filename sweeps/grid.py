"""Expand a sweep definition into cells: one per synthetic source and provenance a strategy
varies by, a finetune after its upstream (same model, encoder, source and seed; the prompt
`grid.finetune_upstream` names), the cells a source cannot build skipped with the reason,
longest chains first (docs/sweeps.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from sweeps.cell import Cell
from sweeps.spec import SweepSpec, grid_sources
from vlsm.data.prompts import prompt_names
from vlsm.model_registry import model_entry
from vlsm.strategies import STRATEGY_REGISTRY, SYNTHETIC, uses_synthetic

__all__ = ["dependents", "expand_grid", "order_cells", "plan_grid"]

# source -> the prompts its records can build; a source missing here builds P0-P6.
SourcePrompts = Mapping[str, tuple[str, ...]]


def _candidates(spec: SweepSpec, source_prompts: SourcePrompts | None) -> Iterator[tuple[Cell, str]]:
    """Every cell the grid names with "" or why it cannot run, its upstream right before it."""
    grid = spec.grid
    for seed in grid.seeds:
        for model in grid.models:
            for encoder in grid.encoders:
                for prompt in grid.prompts:
                    for strategy in grid.strategies:
                        sources = grid_sources(spec) if uses_synthetic(strategy) else ("",)
                        for source in sources:
                            buildable = (source_prompts or {}).get(source, prompt_names(synthetic=True))
                            yield from _cells(spec, strategy, (model, encoder, prompt, seed), source, buildable)


def _cells(spec: SweepSpec, name: str, where: tuple[str, str, str, int], source: str,
           buildable: tuple[str, ...]) -> Iterator[tuple[Cell, str]]:
    """The cells of strategy `name` at (model, encoder, prompt, seed) on one source ("" for
    none), each with "" or why it cannot run, its upstream's cells first."""
    model, encoder, prompt, seed = where
    strategy = STRATEGY_REGISTRY[name]
    if strategy.synthetic_style and prompt not in prompt_names(synthetic=True):
        return  # the synthetic style has no P7: not a cell of the grid (as in the paper)
    upstream, why = None, ""
    if source and (strategy.synthetic_style or strategy.val == SYNTHETIC) and prompt not in buildable:
        why = f"{source} builds prompts {', '.join(p for p in buildable if p in prompt_names(synthetic=True)) or 'none'} only"
    if strategy.upstream is not None:
        upstream_prompt = spec.grid.finetune_upstream.get(prompt, prompt)
        if STRATEGY_REGISTRY[strategy.upstream].synthetic_style and upstream_prompt not in prompt_names(synthetic=True):
            raise ValueError(
                f"grid.finetune_upstream: {prompt} -> {upstream_prompt}, but synthetic data has only "
                f"{list(prompt_names(synthetic=True))}; map {prompt} to one of them")
        upstream_source = source if uses_synthetic(strategy.upstream) else ""
        for upstream, upstream_why in _cells(spec, strategy.upstream, (model, encoder, upstream_prompt, seed),
                                             upstream_source, buildable):
            yield upstream, upstream_why
            why = why or (f"its upstream {upstream.cell_id} cannot run: {upstream_why}" if upstream_why else "")
            break  # an upstream varying by provenance: its first
    for provenance in spec.grid.provenance if strategy.provenance else ("",):
        yield Cell(model, name, encoder, prompt, upstream.cell_id if upstream else None, synthetic_source=source,
                   provenance=provenance, seed=seed), why


def plan_grid(spec: SweepSpec, source_prompts: SourcePrompts | None = None) -> tuple[list[Cell], dict[str, str]]:
    """(the cells that can run, in planning order, their upstreams included; cell_id -> why
    not, for the others). source_prompts: what each synthetic source builds (default P0-P6)."""
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
    """Longest chains first: by strategy stage (synthetic, real and real+synthetic,
    finetunes), then dependents, seed, and the slow ones (CRIS, unfrozen) first."""
    waiting = dependents(cells)
    seed_rank = {seed: i for i, seed in enumerate(dict.fromkeys(c.seed for c in cells))}

    def key(cell: Cell) -> tuple:
        return (
            STRATEGY_REGISTRY[cell.strategy].stage,
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
