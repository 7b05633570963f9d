"""Write the analysis notebooks from code, outputs stripped (docs/analysis.md).

    python -m analysis notebooks [--out analysis/notebooks]

They live in git as generated here (a test checks they match): no stale outputs or hidden
state. They read the exports of $VLSM_OUTPUT_DIR (a relative path from the repository root).
Their Markdown cells hold no text from a sweep; what they display as Markdown from one (the
tables, an encoder's name) is escaped (`analysis.markup`), tables as HTML by pandas.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from vlsm.atomic import write_text_atomic

__all__ = ["NOTEBOOKS", "build_notebooks", "notebook_cells"]

OUTPUT_ENV = "VLSM_OUTPUT_DIR"
PUBLISHED_ENV = "VLSM_PUBLISHED"
DEFAULT_OUTPUT = "runs/paper-grid-demo"  # the demo's sweep folder
NOTEBOOKS = ("tables_and_tests.ipynb", "figures_and_convergence.ipynb")

_SETUP = f"""import os
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

import analysis

# A relative {OUTPUT_ENV} is read from the repository's root: the first folder up from
# here (Jupyter starts in analysis/notebooks) that holds analysis/notebooks, else the
# checkout the analysis package comes from.
REPO = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "analysis" / "notebooks").is_dir()),
            Path(analysis.__file__).resolve().parents[1])
OUTPUT_DIR = REPO / Path(os.environ.get("{OUTPUT_ENV}", "{DEFAULT_OUTPUT}")).expanduser()
print("sweep output:", OUTPUT_DIR)"""

_TABLES: list[tuple[str, str]] = [
    ("md", "# Claims, tables and paired tests\n\nThe paper's claims tested with intervals, its Tables 2 and 3 "
           "and its Wilcoxon tests, from a sweep's Parquet exports. Set "
           f"`{OUTPUT_ENV}` to the sweep's output folder before starting Jupyter (default `{DEFAULT_OUTPUT}`, "
           "the demo's; a relative path is read from the repository's root)."),
    ("code", _SETUP),
    ("code", "per_image = analysis.load_sweep(OUTPUT_DIR)\n"
             "trials, epochs = analysis.read_trials(OUTPUT_DIR), analysis.read_epochs(OUTPUT_DIR)"),
    ("md", "## Claims\n\nEach claim of the paper per model, encoder mode and synthetic source: a is claimed "
           "better than b, the effect is mean a - b (Dice x 100, or epochs) with its 95% interval from the "
           "hierarchical bootstrap over seeds and then images; `holds` when the interval excludes zero in the "
           "claimed direction and the Holm-adjusted one-sided p-value is below 0.05. The best prompts are "
           "chosen on validation Dice (`chosen_on`)."),
    ("code", "claims = analysis.claims(per_image, trials, epochs)\n"
             "for note in claims.attrs['notes']:\n"
             "    print('note:', note)\n"
             "claims[['claim', 'model', 'encoder', 'synthetic_source', 'comparison', 'verdict', 'mean_diff', "
             "'ci_low', 'ci_high', 'unit', 'p_value', 'p_holm', 'a', 'b', 'chosen_on', 'interval']]"),
    ("md", "## Per cell: the mean over seeds and its 95% interval (Dice x 100)"),
    ("code", "table = analysis.dice_table(per_image)\n"
             "for encoder in sorted(set(table['encoder']), reverse=True):\n"
             "    display(Markdown(f'**encoders {analysis.markdown_text(encoder)}**\\n\\n' + analysis.render_intervals(table, encoder=encoder)))\n"
             "table"),
    ("md", "## The paper's layout (mean ± std of Dice x 100, best per column in bold)"),
    ("code", "for encoder in sorted(set(table['encoder']), reverse=True):\n"
             "    display(Markdown(f'**encoders {analysis.markdown_text(encoder)}**\\n\\n' + analysis.render_table(table, encoder=encoder)))"),
    ("md", "## Paired tests\n\nBest real vs best synthetic and best synth-PT:real-FT vs best real "
           "(one-sided Wilcoxon, best prompts chosen on the test set as the paper did), frozen vs unfrozen per "
           "cell (two-sided), Holm-adjusted within each family."),
    ("code", "tests = analysis.paper_comparisons(per_image, test='wilcoxon')\n"
             "tests"),
    ("md", "## Beside the authors' published results (optional)"),
    ("code", f"published = os.environ.get('{PUBLISHED_ENV}')\n"
             "if published:\n"
             "    display(analysis.compare_sources(per_image, analysis.load_published(published)))\n"
             "else:\n"
             f"    print('set {PUBLISHED_ENV} to the authors\\' metrics folder to compare')"),
]

_FIGURES: list[tuple[str, str]] = [
    ("md", "# Figures and convergence\n\nThe paper's Fig. 2 and Fig. 3 and the convergence of finetuning, "
           f"from a sweep's Parquet exports (`{OUTPUT_ENV}`)."),
    ("code", _SETUP),
    ("code", "per_image = analysis.load_sweep(OUTPUT_DIR)\n"
             "table = analysis.dice_table(per_image, n_boot=0)\n"
             "encoders = sorted(set(table['encoder']), reverse=True)"),
    ("md", "## Each strategy minus real, per prompt, with 95% intervals (Fig. 2)"),
    ("code", "for encoder in encoders:\n"
             "    differences = analysis.difference_to_real(per_image, encoder)\n"
             "    display(Image(analysis.figure_png(analysis.strategy_difference_figure(differences, encoder))))"),
    ("md", "## Frozen minus unfrozen, per prompt (Fig. 3)"),
    ("code", "if len(encoders) == 2:\n"
             "    display(Image(analysis.figure_png(analysis.encoder_difference_figure(table))))\n"
             "else:\n"
             "    print('needs both encoder modes; present:', encoders)"),
    ("md", "## Convergence\n\nEpochs to the best validation Dice per trial and the speed-up of "
           "synth-PT:real-FT over real (the paper: 4.55x CRIS, 1.71x CLIPSeg)."),
    ("code", "epochs, trials = analysis.read_epochs(OUTPUT_DIR), analysis.read_trials(OUTPUT_DIR)\n"
             "per_trial = analysis.epochs_to_best(epochs, trials)\n"
             "analysis.speedup(per_trial)"),
    ("code", "for encoder in encoders:\n"
             "    display(Image(analysis.figure_png(analysis.val_dice_figure(epochs, trials, encoder))))"),
]


def notebook_cells(name: str) -> list[tuple[str, str]]:
    """The (kind, source) cells of one of NOTEBOOKS."""
    cells = {NOTEBOOKS[0]: _TABLES, NOTEBOOKS[1]: _FIGURES}
    if name not in cells:
        raise ValueError(f"notebook {name!r}; expected one of {NOTEBOOKS}")
    return cells[name]


def _notebook(name: str) -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in notebook_cells(name)]
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"  # stable ids: regenerating gives identical files
    kernel = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return new_notebook(cells=cells, metadata={"kernelspec": kernel, "language_info": {"name": "python"}})


def build_notebooks(directory: Path | str) -> list[Path]:
    """Write NOTEBOOKS into `directory` (outputs stripped); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        notebook = _notebook(name)
        nbformat.validate(notebook)
        write_text_atomic(directory / name, nbformat.writes(notebook) + "\n")
    return [directory / name for name in NOTEBOOKS]
