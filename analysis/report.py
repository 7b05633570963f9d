"""One self-contained report of a sweep: claims, tables, paired tests, figures, convergence.

    python -m analysis report runs/paper_grid [--published [PATH]] [--format html|md]

One HTML or Markdown file with its figures embedded as base64 PNG (it can be mailed as it
is), the figures also as PNG and PDF under `figures/` beside it (docs/analysis.md).
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.convergence import epochs_to_best, speedup, val_dice_figure
from analysis.figures import encoder_difference_figure, save_figure, strategy_difference_figure
from analysis.intervals import N_BOOT
from analysis.markup import Markup, html_text, markdown_text
from analysis.paper_claims import BEST_PROMPT_CHOICES, EPOCH_UNIT, claims
from analysis.published import BUNDLE, load_published
from analysis.schema import EPOCHS_FILE, exports_dir
from analysis.stats import FAMILIES, compare_sources, difference_to_real, paper_comparisons
from analysis.sweep import load_sweep, read_epochs, read_trials
from analysis.tables import (
    ARM,
    dice_table,
    render_intervals,
    render_rows,
    render_table,
    sort_cells,
    with_arm,
)
from vlsm.atomic import not_writable, write_text_atomic
from vlsm.axes import ENCODERS, PROVENANCE, SYNTHETIC_SOURCE
from vlsm.data.prompts import prompt_names

__all__ = ["REPORT_FORMATS", "build_report"]

log = logging.getLogger(__name__)

REPORT_FORMATS = ("html", "md")
_TABLE_NUMBER = {"unfrozen": "Table 2", "frozen": "Table 3"}
_P = "{:.2e}".format


def _fmt_float(value: object, spec: str = "{:.2f}") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return spec.format(value) if isinstance(value, float) else str(value)


@dataclass
class _Document:
    """Blocks rendered to Markdown or HTML; figures are embedded and saved beside."""
    title: str
    figures_dir: Path
    blocks: list[tuple[str, ...]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", str(level), text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, markdown: str, html_table: str) -> None:
        self.blocks.append(("table", markdown, html_table))

    def frame(self, frame: pd.DataFrame, formats: Mapping[str, Callable[[object], str]] | None = None) -> None:
        formats = formats or {}
        cells = pd.DataFrame(
            {c: [formats.get(c, _fmt_float)(v) for v in frame[c]] for c in frame.columns}, columns=frame.columns
        )
        header, body = [str(c) for c in cells.columns], [list(row) for row in cells.itertuples(index=False)]
        self.table(render_rows(header, body, "markdown"), render_rows(header, body, "html"))

    def figure(self, fig: Figure, name: str, caption: str) -> None:
        png, _pdf = save_figure(fig, self.figures_dir / name, formats=("png", "pdf"))
        data = base64.b64encode(png.read_bytes()).decode("ascii")  # the same PNG, embedded
        self.blocks.append(("figure", name, data, caption))

    def markdown(self) -> str:
        """The document as Markdown: every text escaped (`markdown_text`; Markdown renders raw HTML)."""
        md = markdown_text
        parts = [f"# {md(self.title)}\n"]
        for kind, *rest in self.blocks:
            if kind == "heading":
                parts.append(f"{'#' * int(rest[0])} {md(rest[1])}\n")
            elif kind == "text":
                parts.append(md(rest[0]) + "\n")
            elif kind == "table":
                parts.append(rest[0])
            else:
                name, data, caption = rest
                parts.append(f"![{md(caption)}](data:image/png;base64,{data})\n\n*{md(caption)}* (`figures/{name}.pdf`)\n")
        return "\n".join(parts)

    def html(self) -> str:
        """The document as one HTML page: every text escaped (`html_text`)."""
        parts = []
        for kind, *rest in self.blocks:
            if kind == "heading":
                parts.append(f"<h{rest[0]}>{html_text(rest[1])}</h{rest[0]}>")
            elif kind == "text":
                parts.append(f"<p>{html_text(rest[0])}</p>")
            elif kind == "table":
                parts.append(rest[1])
            else:
                name, data, caption = rest
                parts.append(
                    f'<figure><img alt="{html_text(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html_text(caption)} (figures/{html_text(name)}.pdf)</figcaption></figure>"
                )
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
            "img{max-width:100%}caption,figcaption{font-style:italic}"
        )
        return (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html_text(self.title)}</title>"
            f"<style>{style}</style></head><body><h1>{html_text(self.title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
        )


def _effect(row: pd.Series) -> str:
    unit = " epochs" if row["unit"] == EPOCH_UNIT else ""
    return f"{row['mean_diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]{unit}"


def _claims(doc: _Document, found: pd.DataFrame, best_prompt: str, n_boot: int) -> None:
    doc.heading("Claims")
    doc.text("Each claim of the paper (and, where real+synthetic cells exist, whether the provenance phrase "
             "helps), per model, encoder mode and synthetic source: a is claimed better than b; effect = mean "
             "a - b (Dice x 100, or epochs to the best validation Dice) with its 95% interval from a "
             f"hierarchical bootstrap ({n_boot} resamples of the seeds, then of the image-structure pairs); "
             "p: one-sided paired test on seed-averaged pairs, p_holm: Holm-adjusted within the claim. "
             "Verdict 'holds': the interval excludes zero in the claimed direction and p_holm < 0.05; "
             "'opposite': it excludes zero the other way; 'not shown': neither. "
             f"Best prompts chosen on {best_prompt} Dice" + (" where validation results exist." if
                                                             best_prompt == "validation" else ", as the paper did."))
    for note in found.attrs.get("notes", []):
        doc.text(f"Note: {note}.")
    if found.empty:
        doc.text("No claim could be tested: no pair of cells it needs.")
        return
    shown = pd.DataFrame({
        "claim": found["claim"], "model": found["model"], "encoder": found["encoder"],
        "source": found[SYNTHETIC_SOURCE], "comparison": found["comparison"], "verdict": found["verdict"],
        "effect [95% interval]": found.apply(_effect, axis=1), "p": found["p_value"], "p_holm": found["p_holm"],
        "a": found["a"], "b": found["b"], "best prompt on": found["chosen_on"],
        "seeds": [f"{a}/{b}" for a, b in zip(found["n_seeds_a"], found["n_seeds_b"], strict=True)],
        "interval over": found["interval"],
    })
    doc.frame(shown, {"p": _P, "p_holm": _P})


def _tables_and_tests(doc: _Document, per_image: pd.DataFrame, table: pd.DataFrame, test: str, n_boot: int) -> None:
    encoders = [e for e in ENCODERS[::-1] if e in set(table["encoder"])]  # unfrozen (Table 2) first
    doc.heading("Dice tables")
    seeds = sorted(set(table["n_seeds"]))
    seed_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
    doc.text(f"Mean test Dice x 100 over seeds (each seed's mean over image-structure pairs; {seed_text} seed(s) "
             f"per cell) and its 95% interval from the hierarchical bootstrap ({n_boot} resamples of seeds, then "
             "images; with one seed, over images only). A column per arm: the strategy, with its synthetic "
             "source and provenance where not the defaults (sdm, provenance in the prompt).")
    for encoder in encoders:
        doc.heading(f"Encoders {encoder}: means and intervals", 3)
        doc.table(render_intervals(table, "markdown", encoder=encoder), render_intervals(table, "html", encoder=encoder))
    doc.text("The paper's layout: mean ± sample standard deviation of test Dice x 100 over image-structure pairs "
             "(of every seed); best of each column in bold; N/A: the cell cannot exist (synthetic data has no P7); "
             "–: not run.")
    for encoder in encoders:
        caption = f"{_TABLE_NUMBER[encoder]} layout: encoders {encoder}"
        doc.table(
            render_table(table, "markdown", encoder=encoder, caption=Markup(f"**{markdown_text(caption)}**")),
            render_table(table, "html", encoder=encoder, caption=caption),
        )
    doc.heading("Paired tests")
    doc.text(f"Test: {test}, paired over the same test images and structures; mean_diff = a - b (Dice x 100); "
             "'best' = the prompt with the highest mean test Dice, as in the paper; p_holm: Holm-adjusted within each family.")
    for encoder in encoders:
        # frozen vs unfrozen does not depend on the encoder: computed and listed once, under the first
        families = FAMILIES if encoder == encoders[0] else [f for f in FAMILIES if f != "frozen vs unfrozen"]
        tests = paper_comparisons(per_image, test=test, encoder=encoder, n_boot=n_boot, families=families)
        doc.heading(f"Encoders {encoder}", 3)
        if tests.empty:
            doc.text("No pair of cells to compare.")
            continue
        doc.frame(tests.drop(columns=["statistic"]), {"p_value": _P, "p_holm": _P, "n": str, "n_seeds_a": str,
                                                      "n_seeds_b": str})


def _figures(doc: _Document, per_image: pd.DataFrame, table: pd.DataFrame, n_boot: int) -> None:
    doc.heading("Figures")
    encoders = set(table["encoder"])
    for encoder in (e for e in ENCODERS[::-1] if e in encoders):  # unfrozen (Fig. 2's) first
        try:
            fig = strategy_difference_figure(difference_to_real(per_image, encoder, n_boot=n_boot), encoder)
        except ValueError as err:
            doc.text(f"Difference to real ({encoder}): {err}")
            continue
        doc.figure(fig, f"strategy_difference_{encoder}",
                   f"Mean Dice of each strategy minus real, per prompt, with 95% intervals over seeds and images "
                   f"({encoder} encoders; the paper's Fig. 2)")
    if len(encoders) == len(ENCODERS):
        doc.figure(encoder_difference_figure(table), "encoder_difference",
                   "Mean Dice with frozen minus with unfrozen encoders, per prompt (the paper's Fig. 3)")
    else:
        doc.text("Frozen minus unfrozen (Fig. 3): needs both encoder modes; only "
                 f"{sorted(encoders)} present.")


def _convergence(doc: _Document, epochs: pd.DataFrame | None, trials: pd.DataFrame) -> None:
    doc.heading("Convergence")
    if epochs is None:
        doc.text("No convergence data: no epochs.parquet in the exports.")
        return
    per_trial = epochs_to_best(epochs, trials)
    if per_trial.empty:
        doc.text("No trial has a validation Dice yet.")
        return
    doc.text("Epochs to the best validation Dice (counted from the trial's first epoch, averaged over seeds; a "
             "finetune's epochs exclude its synthetic pretraining). The paper reports synth-PT:real-FT converging "
             "4.55x faster than real for CRIS and 1.71x for CLIPSeg.")
    keys = ["model", "strategy", SYNTHETIC_SOURCE, PROVENANCE, "encoder"]
    grid = per_trial.pivot_table(index=keys, columns="prompt", values="epochs_to_best", aggfunc="mean")
    grid = sort_cells(grid.reindex(columns=[p for p in prompt_names() if p in grid.columns]).reset_index())
    grid = with_arm(grid)
    grid = grid[["model", ARM, "encoder", *(p for p in prompt_names() if p in grid.columns)]]
    doc.frame(grid, {p: (lambda v: _fmt_float(v, "{:.1f}")) for p in prompt_names()})
    speed = speedup(per_trial)
    if speed.empty:
        doc.text("Speed-up: needs real and synth-PT:real-FT trials with the same prompts.")
    else:
        doc.frame(speed, {"n_prompts": str, "real_epochs": lambda v: _fmt_float(v, "{:.1f}"),
                          "finetune_epochs": lambda v: _fmt_float(v, "{:.1f}"),
                          "speedup": lambda v: _fmt_float(v, "{:.2f}x")})
    for encoder in ENCODERS[::-1]:
        if encoder in set(trials["encoder"]) and encoder in set(per_trial["encoder"]):
            doc.figure(val_dice_figure(epochs, trials, encoder), f"val_dice_{encoder}",
                       f"Validation Dice per epoch ({encoder} encoders)")


def _published(doc: _Document, per_image: pd.DataFrame, published: Path | None, test: str) -> None:
    """published: the authors' metrics folder, or None for the copy bundled with the package."""
    doc.heading("Ours beside the authors'")
    theirs = load_published(published)
    side = compare_sources(per_image, theirs, test=test)
    source = (f"the copy bundled with this package (analysis/{BUNDLE}, from commit 532d3dc)"
              if published is None else str(published))
    doc.text(f"Authors' per-image results: {source} (naamiinepal/synthetic-boost, CC-BY 4.0; encoders unfrozen). "
             f"Each cell both have: mean ± std Dice x 100, mean_diff = ours - theirs, paired {test} test "
             "(two-sided) over the same images and structures, p_holm over all cells.")
    if side.empty:
        doc.text("No cell in common (the published runs are all with unfrozen encoders).")
        return
    doc.frame(side.drop(columns=["statistic"]), {"p_value": _P, "p_holm": _P, "n_ours": str, "n_theirs": str, "n_pairs": str})


def build_report(output_dir: Path | str, *, published: Path | str | bool | None = None, fmt: str = "html",
                 out: Path | str | None = None, test: str = "wilcoxon", best_prompt: str = "validation",
                 n_boot: int = N_BOOT) -> Path:
    """Write the report of the sweep in `output_dir` to `out` (default
    `<output_dir>/report.<fmt>`, figures/ beside it); returns its path.

    published: True for the authors' bundled results beside ours, a path for their
    metrics folder, None or False for none. best_prompt: "validation" or "test" (the paper's).
    """
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"format {fmt!r}; expected one of {REPORT_FORMATS}")
    if best_prompt not in BEST_PROMPT_CHOICES:
        raise ValueError(f"best_prompt={best_prompt!r}; expected one of {BEST_PROMPT_CHOICES}")
    output_dir = Path(output_dir)
    out = Path(out) if out is not None else output_dir / f"report.{fmt}"
    problem = not_writable(out.parent)
    if problem:  # before the tables and figures are computed
        raise ValueError(f"cannot write the report {out}: {problem} (give --out another folder)")
    per_image = load_sweep(output_dir)
    table = dice_table(per_image, n_boot=n_boot)
    doc = _Document(title=f"Sweep report: {output_dir}", figures_dir=out.parent / "figures")
    trials = read_trials(output_dir)
    epochs = read_epochs(output_dir) if (exports_dir(output_dir) / EPOCHS_FILE).is_file() else None
    doc.text(f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} from {output_dir.resolve()}: "
             f"{len(trials)} trials, {trials['trial_id'].isin(per_image['trial_id']).sum()} with test results, "
             f"{len(per_image)} image-structure rows.")
    status = with_arm(trials).groupby([ARM, "status"], dropna=False).size().rename("trials").reset_index()
    doc.frame(status, {"trials": str})
    found = claims(per_image, trials, epochs, best_prompt=best_prompt, test=test, n_boot=n_boot)
    _claims(doc, found, best_prompt, n_boot)
    _tables_and_tests(doc, per_image, table, test, n_boot)
    _figures(doc, per_image, table, n_boot)
    _convergence(doc, epochs, trials)
    if published is not None and published is not False:
        _published(doc, per_image, None if published is True else Path(published), test)
    write_text_atomic(out, doc.html() if fmt == "html" else doc.markdown())
    log.info("report written to %s", out)
    return out
