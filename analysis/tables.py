"""The paper's Dice tables (Tables 2 and 3): numbers and their renderings.

`dice_table` computes one row per grid cell (n, mean and sample std of Dice x 100);
`render_table` lays one encoder mode out as the paper does: strategy and model as rows,
P0-P7 as columns, "mean ± std", the best of each column in bold, N/A where the cell
cannot exist (synthetic data has no P7) and a dash where it could but was not run.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.schema import CELL_COLUMNS, require_columns
from vlsm.axes import (
    DICE,
    ENCODERS,
    MODELS,
    PROMPTS,
    STRATEGIES,
    STRATEGY_FINETUNE,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    SYNTHETIC_PROMPTS,
)

__all__ = [
    "FORMATS",
    "PAPER_STRATEGY_ORDER",
    "cell_exists",
    "dice_table",
    "layout",
    "render_table",
    "sort_cells",
]

# Row order of the paper's Tables 2 and 3.
PAPER_STRATEGY_ORDER: tuple[str, ...] = (STRATEGY_SYNTHETIC, STRATEGY_REAL, STRATEGY_FINETUNE)
FORMATS = ("markdown", "latex", "csv", "html")
NOT_APPLICABLE = "N/A"
MISSING = "–"
_ORDER = {"model": MODELS, "strategy": STRATEGIES, "encoder": ENCODERS, "prompt": PROMPTS}


def cell_exists(strategy: str, prompt: str) -> bool:
    """False for cells the grid cannot have: synthetic data has no P7."""
    return strategy != STRATEGY_SYNTHETIC or prompt in SYNTHETIC_PROMPTS


def sort_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by model, strategy, encoder, prompt in the order of vlsm.axes."""
    keys = [c for c in CELL_COLUMNS if c in frame.columns]
    ranks = {c: frame[c].map({v: i for i, v in enumerate(_ORDER[c])}) for c in keys}
    order = pd.DataFrame(ranks).sort_values(keys, kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def dice_table(per_image: pd.DataFrame, metric: str = DICE) -> pd.DataFrame:
    """One row per (model, strategy, encoder, prompt): n, mean and sample std of metric x 100.

    n counts image-structure pairs with a value. Columns: model, strategy, encoder,
    prompt, n, mean, std.
    """
    require_columns(per_image, (*CELL_COLUMNS, metric), "per-image frame")
    grouped = per_image.groupby(list(CELL_COLUMNS), observed=True)[metric]
    table = pd.DataFrame(
        {
            "n": grouped.count(),
            "mean": grouped.mean() * 100.0,
            "std": grouped.std(ddof=1) * 100.0,
        }
    ).reset_index()
    return sort_cells(table)


def layout(table: pd.DataFrame, encoder: str) -> pd.DataFrame:
    """The paper's grid for one encoder mode: index (strategy, model), columns P0-P7, values mean.

    Rows: the paper's strategy order, models present in `table`. Cells that do not
    exist are NaN, as are cells not run; `cell_exists` tells them apart.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder={encoder!r}; expected one of {list(ENCODERS)}")
    rows = table[table["encoder"] == encoder]
    if rows.empty:
        raise ValueError(
            f"no cells with encoder {encoder!r} in the table; encoders present: "
            f"{sorted(set(table['encoder']))}"
        )
    models = [m for m in MODELS if m in set(table["model"])]
    index = pd.MultiIndex.from_product([PAPER_STRATEGY_ORDER, models], names=["strategy", "model"])
    return rows.pivot_table(index=["strategy", "model"], columns="prompt", values="mean").reindex(
        index=index, columns=list(PROMPTS)
    )


def _cells(table: pd.DataFrame, encoder: str, decimals: Sequence[int], pm: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Formatted "mean ± std" strings and a same-shaped frame of booleans (best in column)."""
    means = layout(table, encoder)
    rows = table[table["encoder"] == encoder].set_index(["strategy", "model", "prompt"])
    text = pd.DataFrame(MISSING, index=means.index, columns=means.columns, dtype=object)
    col_max = means.max(axis=0)
    best = pd.DataFrame(False, index=means.index, columns=means.columns)
    for strategy, model in means.index:
        for prompt in means.columns:
            if not cell_exists(strategy, prompt):
                text.loc[(strategy, model), prompt] = NOT_APPLICABLE
                continue
            key = (strategy, model, prompt)
            if key not in rows.index or np.isnan(rows.loc[key, "mean"]):
                continue
            mean, std = rows.loc[key, "mean"], rows.loc[key, "std"]
            std_text = "–" if np.isnan(std) else f"{std:.{decimals[1]}f}"
            text.loc[(strategy, model), prompt] = f"{mean:.{decimals[0]}f}{pm}{std_text}"
            best.loc[(strategy, model), prompt] = bool(mean == col_max[prompt])
    return text, best


def render_table(
    table: pd.DataFrame,
    fmt: str = "markdown",
    *,
    encoder: str = "unfrozen",
    decimals: Sequence[int] = (2, 2),
    caption: str | None = None,
) -> str:
    """Render `dice_table(...)` for one encoder mode in the paper's layout.

    fmt: "markdown", "latex", "csv" or "html". decimals: (mean, std) decimal places.
    Bold is `**x**` in Markdown and CSV, `\\textbf{x}` in LaTeX, `<b>x</b>` in HTML.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}; expected one of {FORMATS}")
    pm = r" $\pm$ " if fmt == "latex" else " ± "
    text, best = _cells(table, encoder, decimals, pm)
    bold = {
        "markdown": "**{}**",
        "csv": "**{}**",
        "latex": r"\textbf{{{}}}",
        "html": "<b>{}</b>",
    }[fmt]
    rows = []
    for strategy, model in text.index:
        cells = [
            bold.format(text.loc[(strategy, model), p]) if best.loc[(strategy, model), p] else text.loc[(strategy, model), p]
            for p in text.columns
        ]
        rows.append((strategy, model, cells))
    prompts = list(text.columns)
    if fmt == "markdown":
        lines = [f"| strategy | model | {' | '.join(prompts)} |", "|" + " --- |" * (len(prompts) + 2)]
        lines += [f"| {s} | {m} | {' | '.join(c)} |" for s, m, c in rows]
        return "\n".join(([f"{caption}", ""] if caption else []) + lines) + "\n"
    if fmt == "csv":
        frame = pd.DataFrame([[s, m, *c] for s, m, c in rows], columns=["strategy", "model", *prompts])
        return frame.to_csv(index=False)
    if fmt == "html":
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["strategy", "model", *prompts])
        body = "".join(
            "<tr>" + "".join(f"<td>{x if x.startswith('<b>') else html.escape(x)}</td>" for x in [s, m, *c]) + "</tr>"
            for s, m, c in rows
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"
    return _latex(rows, prompts, caption)


def _latex(rows: list[tuple[str, str, list[str]]], prompts: list[str], caption: str | None) -> str:
    lines = [r"\begin{table}[h]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{caption}}}")
    lines += [
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{l|l|" + "c" * len(prompts) + "}",
        r"\textbf{Strategy} & \textbf{Model} & " + " & ".join(rf"\textbf{{{p}}}" for p in prompts) + r" \\",
        r"\hline",
    ]
    previous = None
    for strategy, model, cells in rows:
        if previous is not None and strategy != previous:
            lines.append(r"\hline")
        label = rf"\emph{{{strategy}}}" if strategy != previous else ""
        cells = [c.replace(MISSING, "--") if c == MISSING else c for c in cells]
        lines.append(f"{label} & {model} & " + " & ".join(cells) + r" \\")
        previous = strategy
    lines += [r"\end{tabular}%", "}", r"\end{table}"]
    return "\n".join(lines) + "\n"
