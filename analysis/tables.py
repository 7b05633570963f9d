"""The paper's Dice tables (Tables 2 and 3): numbers and their renderings.

`dice_table`: one row per cell, the paper's numbers over image-structure pairs and ours
over seeds with an interval. `render_table`: one encoder mode in the paper's layout.
`render_intervals`: the intervals, a row per model and prompt, a column per arm.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.intervals import N_BOOT, bootstrap_interval
from analysis.markup import Markup, html_text, markdown_text
from analysis.schema import CELL_KEYS, cell_values, complete_variants, require_columns
from vlsm.axes import (
    DICE,
    ENCODERS,
    PROVENANCE,
    PROVENANCE_NONE,
    SEED,
    SOURCE_SDM,
    STRATEGY_FINETUNE,
    STRATEGY_MIXED,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    SYNTHETIC_SOURCE,
)
from vlsm.data.prompts import prompt_names
from vlsm.model_registry import model_names
from vlsm.strategies import STRATEGY_REGISTRY, strategy_names

__all__ = [
    "ARM", "FORMATS", "PAPER_STRATEGY_ORDER", "arm_label", "arms", "cell_exists", "cell_matrices",
    "cell_rng_seed", "dice_table", "layout", "render_intervals", "render_rows", "render_table", "seed_matrix",
    "sort_cells", "with_arm",
]

# Row order of the paper's Tables 2 and 3; arms it did not have follow.
PAPER_STRATEGY_ORDER: tuple[str, ...] = (STRATEGY_SYNTHETIC, STRATEGY_REAL, STRATEGY_FINETUNE)
FORMATS = ("markdown", "latex", "csv", "html")
NOT_APPLICABLE = "N/A"
MISSING = "–"
ARM = "arm"  # the column `with_arm` adds
_ARM_STRATEGY_ORDER = (*PAPER_STRATEGY_ORDER, STRATEGY_MIXED)
_UNITS = ("image", "structure")


def arm_label(strategy: str, source: str = "", provenance: str = "") -> str:
    """'synthetic', 'synthetic (diffecho)', 'real+synthetic (no provenance)': the defaults
    (source sdm, the paper's; provenance "prompt") left out."""
    parts = [source] if source not in ("", SOURCE_SDM) else []
    if provenance == PROVENANCE_NONE:
        parts.append("no provenance")
    return f"{strategy} ({', '.join(parts)})" if parts else strategy


def with_arm(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (with missing variant columns filled) plus an `arm` column of `arm_label`s."""
    out = complete_variants(frame)
    labels = [arm_label(*v) for v in zip(out["strategy"], out[SYNTHETIC_SOURCE], out[PROVENANCE], strict=True)]
    return out.assign(**{ARM: labels})


def arms(frame: pd.DataFrame, order: Sequence[str] = _ARM_STRATEGY_ORDER) -> list[tuple[str, str, str, str]]:
    """(arm label, strategy, source, provenance) of every arm in `frame`, strategies in `order`."""
    found = complete_variants(frame)[["strategy", SYNTHETIC_SOURCE, PROVENANCE]].drop_duplicates()
    found = sort_cells(found)
    rank = {s: i for i, s in enumerate(order)}
    keys = sorted(found.itertuples(index=False, name=None), key=lambda k: rank.get(k[0], len(rank)))
    return [(arm_label(*k), *k) for k in keys]


def cell_exists(strategy: str, prompt: str) -> bool:
    """False for cells the grid cannot have: synthetic data has no P7 (nor real+synthetic)."""
    synthetic_style = strategy in STRATEGY_REGISTRY and STRATEGY_REGISTRY[strategy].synthetic_style
    return not synthetic_style or prompt in prompt_names(synthetic=True)


def sort_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by model, strategy, encoder, prompt, source, provenance in the order of vlsm.axes."""
    keys = [c for c in (*CELL_KEYS, SEED) if c in frame.columns]
    values = cell_values()
    ranks = {c: frame[c].map({v: i for i, v in enumerate(values[c])}) if c in values else frame[c] for c in keys}
    order = pd.DataFrame(ranks).sort_values(keys, kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def seed_matrix(rows: pd.DataFrame, metric: str, units: Sequence[str] = _UNITS) -> pd.DataFrame:
    """One cell's values as (seeds x units): a row per seed, a column per unit; NaN where missing."""
    values = rows.set_index([SEED, *units])[metric].astype(float)
    if values.index.duplicated().any():
        seed, *unit = values.index[values.index.duplicated()][0]
        raise ValueError(f"seed {seed} has {dict(zip(units, unit, strict=True))} more than once in one cell")
    return values.unstack(list(units)).sort_index()


def cell_matrices(per_image: pd.DataFrame, metric: str = DICE) -> dict[tuple, pd.DataFrame]:
    """Every cell's `seed_matrix`, keyed by its CELL_KEYS values (per_image: with its variant columns)."""
    return {key: seed_matrix(rows, metric) for key, rows in per_image.groupby(list(CELL_KEYS), sort=False)}


def cell_rng_seed(seed: int, label: str) -> list[int]:
    """The bootstrap seed of one cell or comparison: `seed` and a stable hash of its label,
    so its interval does not depend on which other cells are in the table."""
    return [seed, zlib.crc32(label.encode("utf-8"))]


def _seed_columns(rows: pd.DataFrame, metric: str, label: str, *, n_boot: int, seed: int, level: float) -> dict:
    """dice_table's columns over seeds, for one cell's rows (with a value)."""
    per_seed = rows.groupby(SEED)[metric].mean() * 100.0
    low = high = float("nan")
    matrix = seed_matrix(rows, metric).dropna(axis=1) if n_boot else None  # units every seed has
    if matrix is not None and matrix.size:
        low, high = bootstrap_interval([matrix.to_numpy()], n_boot=n_boot, seed=cell_rng_seed(seed, label),
                                       level=level)
    return {
        "n_seeds": len(per_seed),
        "seed_mean": float(per_seed.mean()),
        "seed_std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
        "ci_low": low * 100.0,
        "ci_high": high * 100.0,
    }


def dice_table(per_image: pd.DataFrame, metric: str = DICE, *, n_boot: int = N_BOOT, seed: int = 0,
               level: float = 0.95) -> pd.DataFrame:
    """One row per cell (grid cell and variant): the paper's numbers and those over seeds, x 100.

    n, mean, std: over every image-structure pair of every seed (with one seed, the
    paper's Table 2). n_seeds, seed_mean, seed_std: of the per-seed means (std NaN for one
    seed). ci_low, ci_high: the bootstrap interval of the mean, seeded by `seed` and the
    cell; NaN with n_boot=0 (for callers that need the means only).
    """
    require_columns(per_image, (*CELL_KEYS[:4], *_UNITS, metric), "per-image frame")
    frame = complete_variants(per_image)
    grouped = frame.groupby(list(CELL_KEYS), observed=True, sort=False)
    table = pd.DataFrame({"n": grouped[metric].count(), "mean": grouped[metric].mean() * 100.0,
                          "std": grouped[metric].std(ddof=1) * 100.0})
    keys, records = [], []
    for key, rows in grouped:
        keys.append(key)
        records.append(_seed_columns(rows.dropna(subset=[metric]), metric, " ".join(map(str, key)),
                                     n_boot=n_boot, seed=seed, level=level))
    over_seeds = pd.DataFrame.from_records(records, index=pd.MultiIndex.from_tuples(keys, names=list(CELL_KEYS)))
    table = table.join(over_seeds)
    return sort_cells(table.reset_index())


def layout(table: pd.DataFrame, encoder: str) -> pd.DataFrame:
    """The paper's grid for one encoder mode: index (arm, model), columns P0-P7, values mean.

    Rows: the paper's three strategies (present or not), each followed by its other arms
    (another synthetic source), then real+synthetic's. Cells that cannot exist are NaN, as
    are cells not run (`cell_exists` tells them apart).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder={encoder!r}; expected one of {list(ENCODERS)}")
    rows = with_arm(table[table["encoder"] == encoder])
    if rows.empty:
        raise ValueError(f"no cells with encoder {encoder!r} in the table; encoders present: "
                         f"{sorted(set(table['encoder']))}")
    models = [m for m in model_names() if m in set(table["model"])]
    present = arms(rows)
    labels = []
    for strategy in _ARM_STRATEGY_ORDER:  # each strategy's arms together, the paper's three always
        labels += [strategy] if strategy in PAPER_STRATEGY_ORDER else []
        labels += [a[0] for a in present if a[1] == strategy and a[0] not in labels]
    index = pd.MultiIndex.from_product([labels, models], names=[ARM, "model"])
    return rows.pivot_table(index=[ARM, "model"], columns="prompt", values="mean").reindex(
        index=index, columns=list(prompt_names())
    )


def _arm_strategies(table: pd.DataFrame) -> dict[str, str]:
    """Arm label -> its strategy, for the paper's strategies and every arm in `table`."""
    return {**{s: s for s in strategy_names()}, **{a[0]: a[1] for a in arms(table)}}


def _cells(table: pd.DataFrame, encoder: str, decimals: Sequence[int], pm: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Formatted "mean ± std" strings and a same-shaped frame of booleans (best in column)."""
    means = layout(table, encoder)
    rows = with_arm(table[table["encoder"] == encoder]).set_index([ARM, "model", "prompt"])
    strategy_of = _arm_strategies(table)
    text = pd.DataFrame(MISSING, index=means.index, columns=means.columns, dtype=object)
    col_max = means.max(axis=0)
    best = pd.DataFrame(False, index=means.index, columns=means.columns)
    for arm, model in means.index:
        for prompt in means.columns:
            if not cell_exists(strategy_of[arm], prompt):
                text.loc[(arm, model), prompt] = NOT_APPLICABLE
                continue
            key = (arm, model, prompt)
            if key not in rows.index or np.isnan(rows.loc[key, "mean"]):
                continue
            mean, std = rows.loc[key, "mean"], rows.loc[key, "std"]
            std_text = "–" if np.isnan(std) else f"{std:.{decimals[1]}f}"
            text.loc[(arm, model), prompt] = f"{mean:.{decimals[0]}f}{pm}{std_text}"
            best.loc[(arm, model), prompt] = bool(mean == col_max[prompt])
    return text, best


def render_table(table: pd.DataFrame, fmt: str = "markdown", *, encoder: str = "unfrozen",
                 decimals: Sequence[int] = (2, 2), caption: str | None = None) -> str:
    """Render `dice_table(...)` for one encoder mode in the paper's layout (`layout`): "mean ±
    std", the best of each column in bold, N/A where a cell cannot exist, a dash where not run.
    fmt: one of FORMATS; decimals: (mean, std) decimal places."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}; expected one of {FORMATS}")
    pm = r" $\pm$ " if fmt == "latex" else " ± "
    text, best = _cells(table, encoder, decimals, pm)
    bold = {"markdown": "**{}**", "csv": "**{}**", "latex": r"\textbf{{{}}}", "html": "<b>{}</b>"}[fmt]
    escape = {"markdown": markdown_text, "html": html_text}.get(fmt, str)
    rows = []
    for strategy, model in text.index:
        cells = [Markup(bold.format(escape(x))) if is_best else x
                 for x, is_best in zip(text.loc[(strategy, model)], best.loc[(strategy, model)], strict=True)]
        rows.append((strategy, model, cells))
    prompts = list(text.columns)
    if fmt == "latex":
        return _latex(rows, prompts, caption)
    return render_rows(["strategy", "model", *prompts], [[s, m, *c] for s, m, c in rows], fmt, caption)


def render_rows(header: list[str], body: list[list[str]], fmt: str, caption: str | None = None) -> str:
    """Rows of text as a Markdown, CSV or HTML table, every cell and the caption escaped for
    the format (`analysis.markup`) but for `Markup` (a bold cell, a bold caption)."""
    if fmt == "csv":
        return pd.DataFrame(body, columns=header).to_csv(index=False)
    if fmt == "html":
        head = "".join(f"<th>{html_text(h)}</th>" for h in header)
        cells = "".join("<tr>" + "".join(f"<td>{html_text(x)}</td>" for x in line) + "</tr>" for line in body)
        cap = f"<caption>{html_text(caption)}</caption>" if caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>\n"
    lines = ["| " + " | ".join(map(markdown_text, header)) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(map(markdown_text, line)) + " |" for line in body]
    return "\n".join(([markdown_text(caption), ""] if caption else []) + lines) + "\n"


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


def render_intervals(table: pd.DataFrame, fmt: str = "markdown", *, encoder: str = "unfrozen",
                     decimals: int = 2) -> str:
    """`dice_table(...)` with its intervals: a row per model and prompt, a column per arm, each
    "seed_mean [ci_low, ci_high]"; N/A where a cell cannot exist, a dash where not run.
    fmt: "markdown", "csv" or "html"."""
    if fmt not in ("markdown", "csv", "html"):
        raise ValueError(f"fmt={fmt!r}; expected one of ('markdown', 'csv', 'html')")
    require_columns(table, ("seed_mean", "ci_low", "ci_high"), "dice table")
    rows = with_arm(table[table["encoder"] == encoder])
    if rows.empty:
        raise ValueError(f"no cells with encoder {encoder!r} in the table; encoders present: "
                         f"{sorted(set(table['encoder']))}")
    columns = arms(rows, strategy_names())  # real first: the differences are taken to it
    cells = rows.set_index(["model", "prompt", ARM])
    body = []
    for model in (m for m in model_names() if m in set(rows["model"])):
        for prompt in (p for p in prompt_names() if p in set(rows.loc[rows["model"] == model, "prompt"])):
            line = [model, prompt]
            for label, strategy, _source, _provenance in columns:
                key = (model, prompt, label)
                if not cell_exists(strategy, prompt):
                    line.append(NOT_APPLICABLE)
                elif key not in cells.index or np.isnan(cells.loc[key, "seed_mean"]):
                    line.append(MISSING)
                else:
                    row = cells.loc[key]
                    line.append(f"{row['seed_mean']:.{decimals}f} [{row['ci_low']:.{decimals}f}, "
                                f"{row['ci_high']:.{decimals}f}]")
            body.append(line)
    return render_rows(["model", "prompt", *(c[0] for c in columns)], body, fmt)
