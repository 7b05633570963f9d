"""Analysis of Synthetic Boost sweeps: the paper's claims, tables, paired tests, figures, convergence.

Every function takes one long per-image frame, from our exports (`load_sweep`) or the
authors' files (`load_published`), so both go through the same code (docs/design.md,
"Seeds, intervals and claims"). `python -m analysis report <output_dir> [--published [PATH]]`.
Names are imported lazily (PEP 562): `python -m analysis --help` pays for no pandas or scipy.
"""

from __future__ import annotations

import importlib

_MODULES: dict[str, tuple[str, ...]] = {
    "analysis.published": ("load_published",),
    "analysis.sweep": ("load_sweep", "read_trials", "read_epochs"),
    "analysis.tables": ("dice_table", "render_table", "render_intervals", "arm_label"),
    "analysis.paper_claims": ("claims",),
    "analysis.stats": ("compare", "difference_to_real", "compare_sources", "paper_comparisons", "holm"),
    "analysis.intervals": ("hierarchical_bootstrap", "bootstrap_interval"),
    "analysis.figures": ("strategy_difference", "strategy_difference_figure", "encoder_difference",
                         "encoder_difference_figure", "figure_png", "save_figure"),
    "analysis.convergence": ("epochs_to_best", "speedup", "val_dice_figure"),
    "analysis.report": ("build_report",),
    "analysis.example": ("write_example_exports",),
    "analysis.notebook_builder": ("build_notebooks",),
    "analysis.markup": ("markdown_text",),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
