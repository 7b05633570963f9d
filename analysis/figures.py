"""The paper's figures: Dice differences per prompt, drawn with matplotlib.

Fig. 2: each strategy's mean Dice minus real's, per prompt, one panel per model.
Fig. 3: frozen minus unfrozen mean Dice, per prompt, one line per strategy.

Figures are built as `matplotlib.figure.Figure` objects without pyplot, so they need no
display and never touch the global backend (notebooks and servers alike); `save_figure`
writes PNG and PDF.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.schema import require_columns
from analysis.tables import cell_exists
from vlsm.atomic import atomic_path
from vlsm.axes import MODELS, PROMPTS, STRATEGIES, STRATEGY_REAL

__all__ = [
    "FIGURE_FORMATS",
    "encoder_difference",
    "encoder_difference_figure",
    "figure_png",
    "save_figure",
    "strategy_difference",
    "strategy_difference_figure",
]

FIGURE_FORMATS = ("png", "pdf")
_TABLE_COLUMNS = ("model", "strategy", "encoder", "prompt", "mean")


def strategy_difference(table: pd.DataFrame, encoder: str = "unfrozen") -> pd.DataFrame:
    """Mean Dice (x 100) of each non-real strategy minus real, per model and prompt.

    table: `dice_table(...)`. Columns: model, strategy, prompt, diff (NaN where either
    cell is missing).
    """
    require_columns(table, _TABLE_COLUMNS, "dice table")
    rows = table[table["encoder"] == encoder]
    means = rows.pivot_table(index=["model", "prompt"], columns="strategy", values="mean")
    if STRATEGY_REAL not in means.columns:
        raise ValueError(f"dice table: no {STRATEGY_REAL!r} cells with encoder {encoder!r}; nothing to subtract from")
    records = []
    for (model, prompt), row in means.iterrows():
        for strategy in STRATEGIES:
            if strategy == STRATEGY_REAL or strategy not in means.columns:
                continue
            records.append({"model": model, "strategy": strategy, "prompt": prompt, "diff": row[strategy] - row[STRATEGY_REAL]})
    return pd.DataFrame.from_records(records, columns=["model", "strategy", "prompt", "diff"])


def encoder_difference(table: pd.DataFrame) -> pd.DataFrame:
    """Frozen minus unfrozen mean Dice (x 100), per model, strategy and prompt."""
    require_columns(table, _TABLE_COLUMNS, "dice table")
    means = table.pivot_table(index=["model", "strategy", "prompt"], columns="encoder", values="mean")
    for encoder in ("frozen", "unfrozen"):
        if encoder not in means.columns:
            raise ValueError(f"dice table: no {encoder!r} cells; frozen minus unfrozen needs both encoder modes")
    diff = (means["frozen"] - means["unfrozen"]).rename("diff").reset_index()
    return diff


def _models(diff: pd.DataFrame) -> list[str]:
    """Models with at least one difference to draw (a panel each)."""
    present = set(diff.dropna(subset=["diff"])["model"])
    if not present:
        raise ValueError("no difference to draw: no model has both cells of any pair")
    return [m for m in MODELS if m in present]


def _panels(models: Sequence[str], title: str) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.2 * len(models), 3.4), layout="constrained")
    axes = fig.subplots(1, len(models), sharey=True, squeeze=False)[0]
    fig.suptitle(title)
    return fig, list(axes)


def _draw(ax, frame: pd.DataFrame, model: str, ylabel: str) -> None:
    """A line per strategy; x = the prompt's position in PROMPTS (so gaps stay gaps)."""
    drawn = 0
    for strategy in STRATEGIES:
        line = frame[(frame["model"] == model) & (frame["strategy"] == strategy)]
        line = line.set_index("prompt").reindex([p for p in PROMPTS if cell_exists(strategy, p)])
        line = line.dropna(subset=["diff"])
        if line.empty:
            continue
        x = [PROMPTS.index(p) for p in line.index]
        ax.plot(x, line["diff"].to_numpy(), marker="o", label=strategy)
        drawn += 1
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(PROMPTS)), list(PROMPTS))
    ax.set_title(model)
    ax.set_xlabel("prompt")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")


def strategy_difference_figure(table: pd.DataFrame, encoder: str = "unfrozen") -> Figure:
    """Fig. 2: each strategy minus real, mean Dice x 100 per prompt, a panel per model."""
    diff = strategy_difference(table, encoder)
    models = _models(diff)
    fig, axes = _panels(models, f"Dice difference to real ({encoder} encoders)")
    for ax, model in zip(axes, models, strict=True):
        _draw(ax, diff, model, "Δ mean Dice (x100) vs real")
    return fig


def encoder_difference_figure(table: pd.DataFrame) -> Figure:
    """Fig. 3: frozen minus unfrozen, mean Dice x 100 per prompt, a line per strategy."""
    diff = encoder_difference(table)
    models = _models(diff)
    fig, axes = _panels(models, "Dice difference, frozen minus unfrozen encoders")
    for ax, model in zip(axes, models, strict=True):
        _draw(ax, diff, model, "Δ mean Dice (x100), frozen - unfrozen")
    return fig


def save_figure(fig: Figure, stem: Path | str, formats: Sequence[str] = FIGURE_FORMATS) -> list[Path]:
    """Write `fig` as <stem>.png and <stem>.pdf (or `formats`); returns the paths."""
    stem = Path(stem)
    bad = sorted(set(formats) - set(FIGURE_FORMATS))
    if bad:
        raise ValueError(f"formats {bad}; expected some of {FIGURE_FORMATS}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
        paths.append(path)
    return paths


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for embedding in a report or a notebook)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
