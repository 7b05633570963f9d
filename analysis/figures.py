"""The paper's figures: Fig. 2 (each arm minus real, per prompt) and Fig. 3 (frozen minus unfrozen).

Built as `matplotlib.figure.Figure` without pyplot, so no display and no global backend
are touched; `save_figure` writes PNG and PDF.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.schema import require_columns
from analysis.tables import ARM, arms, cell_exists, with_arm
from vlsm.atomic import atomic_path
from vlsm.axes import PROVENANCE, STRATEGY_REAL, SYNTHETIC_SOURCE
from vlsm.data.prompts import prompt_names
from vlsm.model_registry import model_names

__all__ = [
    "FIGURE_FORMATS", "encoder_difference", "encoder_difference_figure", "figure_png", "panels", "plain_text",
    "save_figure", "strategy_difference", "strategy_difference_figure",
]

FIGURE_FORMATS = ("png", "pdf")
_TABLE_COLUMNS = ("model", "strategy", "encoder", "prompt", "mean")
_ARM_COLUMNS = ["model", ARM, "strategy", SYNTHETIC_SOURCE, PROVENANCE, "prompt"]


def strategy_difference(table: pd.DataFrame, encoder: str = "unfrozen") -> pd.DataFrame:
    """Mean Dice (x 100) of each arm other than real minus real, per model and prompt.

    table: `dice_table(...)`. Columns: model, arm, strategy, synthetic_source,
    provenance, prompt, diff (NaN where either cell is missing).
    """
    require_columns(table, _TABLE_COLUMNS, "dice table")
    rows = with_arm(table[table["encoder"] == encoder])
    means = rows.pivot_table(index=["model", "prompt"], columns=ARM, values="mean")
    if STRATEGY_REAL not in means.columns:
        raise ValueError(f"dice table: no {STRATEGY_REAL!r} cells with encoder {encoder!r}; nothing to subtract from")
    records = []
    for (model, prompt), row in means.iterrows():
        for label, strategy, source, provenance in arms(rows):
            if strategy == STRATEGY_REAL:
                continue
            records.append({"model": model, ARM: label, "strategy": strategy, SYNTHETIC_SOURCE: source,
                            PROVENANCE: provenance, "prompt": prompt, "diff": row[label] - row[STRATEGY_REAL]})
    return pd.DataFrame.from_records(records, columns=[*_ARM_COLUMNS, "diff"])


def encoder_difference(table: pd.DataFrame) -> pd.DataFrame:
    """Frozen minus unfrozen mean Dice (x 100), per model, arm and prompt."""
    require_columns(table, _TABLE_COLUMNS, "dice table")
    rows = with_arm(table)
    means = rows.pivot_table(index=_ARM_COLUMNS, columns="encoder", values="mean")
    for encoder in ("frozen", "unfrozen"):
        if encoder not in means.columns:
            raise ValueError(f"dice table: no {encoder!r} cells; frozen minus unfrozen needs both encoder modes")
    return (means["frozen"] - means["unfrozen"]).rename("diff").reset_index()


def _models(diff: pd.DataFrame) -> list[str]:
    """Models with at least one difference to draw (a panel each)."""
    present = set(diff.dropna(subset=["diff"])["model"])
    if not present:
        raise ValueError("no difference to draw: no model has both cells of any pair")
    return [m for m in model_names() if m in present]


def plain_text(text: object) -> str:
    """A name as matplotlib shows it as written: a '$' would start mathtext (and an unpaired
    one fails the drawing), a leading '_' hides a legend entry."""
    text = str(text).replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def panels(models: Sequence[str], title: str) -> tuple[Figure, list]:
    """A figure with one panel per model, sharing the y axis."""
    fig = Figure(figsize=(4.2 * len(models), 3.4), layout="constrained")
    axes = fig.subplots(1, len(models), sharey=True, squeeze=False)[0]
    fig.suptitle(plain_text(title))
    return fig, list(axes)


def _draw(ax, frame: pd.DataFrame, model: str, ylabel: str) -> None:
    """A line per arm, with error bars where `frame` has ci_low and ci_high; x = the
    prompt's position in prompt_names(), so gaps stay gaps."""
    drawn = 0
    of_model = frame[frame["model"] == model]
    for label, strategy, _source, _provenance in arms(of_model):
        line = of_model[of_model[ARM] == label]
        line = line.set_index("prompt").reindex([p for p in prompt_names() if cell_exists(strategy, p)])
        line = line.dropna(subset=["diff"])
        if line.empty:
            continue
        x = [prompt_names().index(p) for p in line.index]
        y = line["diff"].to_numpy()
        if "ci_low" in line:
            errors = [y - line["ci_low"].to_numpy(), line["ci_high"].to_numpy() - y]
            ax.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=plain_text(label))
        else:
            ax.plot(x, y, marker="o", label=plain_text(label))
        drawn += 1
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(prompt_names())), list(prompt_names()))
    ax.set_title(plain_text(model))
    ax.set_xlabel("prompt")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")


def strategy_difference_figure(table: pd.DataFrame, encoder: str = "unfrozen") -> Figure:
    """Fig. 2: each arm minus real, mean Dice x 100 per prompt, a panel per model. table:
    `dice_table(...)`, or `difference_to_real(per_image, encoder)` for error bars."""
    if "diff" in table.columns:
        require_columns(table, ("encoder", *_ARM_COLUMNS, "diff", "ci_low", "ci_high"), "differences")
        diff = table[table["encoder"] == encoder]
    else:
        diff = strategy_difference(table, encoder)
    models = _models(diff)
    intervals = " (95% intervals)" if "ci_low" in diff.columns else ""
    fig, axes = panels(models, f"Dice difference to real ({encoder} encoders){intervals}")
    for ax, model in zip(axes, models, strict=True):
        _draw(ax, diff, model, "Δ mean Dice (x100) vs real")
    return fig


def encoder_difference_figure(table: pd.DataFrame) -> Figure:
    """Fig. 3: frozen minus unfrozen, mean Dice x 100 per prompt, a line per strategy."""
    diff = encoder_difference(table)
    models = _models(diff)
    fig, axes = panels(models, "Dice difference, frozen minus unfrozen encoders")
    for ax, model in zip(axes, models, strict=True):
        _draw(ax, diff, model, "Δ mean Dice (x100), frozen - unfrozen")
    return fig


def save_figure(fig: Figure, stem: Path | str, formats: Sequence[str] = FIGURE_FORMATS) -> list[Path]:
    """Write `fig` as <stem>.png and <stem>.pdf (or `formats`); returns the paths."""
    bad = sorted(set(formats) - set(FIGURE_FORMATS))
    if bad:
        raise ValueError(f"formats {bad}; expected some of {FIGURE_FORMATS}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        paths.append(stem.with_name(f"{stem.name}.{fmt}"))
        with atomic_path(paths[-1]) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
    return paths


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for embedding in a report or a notebook)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
