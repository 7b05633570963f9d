"""Analysis of Synthetic Boost sweeps: the paper's claims, tables, paired tests, figures, convergence.

Works on one long per-image frame (model, strategy, encoder, prompt, synthetic_source,
provenance, seed, image, structure, dice, iou, hausdorff; dice and iou as fractions)
from our sweep's Parquet exports (`load_sweep`) or from the authors' published CSV files
(`load_published`), so that our numbers and theirs go through exactly the same code.
A cell's seeds are its replicates: intervals count them and the images
(`hierarchical_bootstrap`), and `claims` tests each claim of the paper with them.

    python -m analysis report <output_dir> [--published [PATH]]   (no PATH: the bundled copy)

Names are imported lazily (PEP 562) so that `python -m analysis --help` does not pay
for pandas, scipy and matplotlib.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "load_published": "analysis.published",
    "load_sweep": "analysis.sweep",
    "read_trials": "analysis.sweep",
    "read_epochs": "analysis.sweep",
    "dice_table": "analysis.tables",
    "render_table": "analysis.tables",
    "claims": "analysis.paper_claims",
    "compare": "analysis.stats",
    "difference_to_real": "analysis.stats",
    "hierarchical_bootstrap": "analysis.intervals",
    "bootstrap_interval": "analysis.intervals",
    "render_intervals": "analysis.tables",
    "arm_label": "analysis.tables",
    "compare_sources": "analysis.stats",
    "paired_test": "analysis.stats",
    "paper_comparisons": "analysis.stats",
    "holm": "analysis.stats",
    "best_cell": "analysis.stats",
    "CompareResult": "analysis.stats",
    "strategy_difference": "analysis.figures",
    "strategy_difference_figure": "analysis.figures",
    "encoder_difference": "analysis.figures",
    "encoder_difference_figure": "analysis.figures",
    "figure_png": "analysis.figures",
    "save_figure": "analysis.figures",
    "epochs_to_best": "analysis.convergence",
    "speedup": "analysis.convergence",
    "val_dice_figure": "analysis.convergence",
    "build_report": "analysis.report",
    "write_example_exports": "analysis.example",
    "build_notebooks": "analysis.notebook_builder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
