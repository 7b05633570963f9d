"""Paired tests between grid cells, as in the paper, with Holm correction.

Two cells are compared over the same test images and structures (pairs joined on
image + structure), with scipy's Wilcoxon signed-rank test (the paper's choice) or a
paired t-test. The paper's one-sided tests are `alternative="greater"` with a = the
cell claimed better: best real CRIS (P2) against best synthetic CRIS (P5) gives
p = 8.8e-73, and synth-PT:real-FT CRIS P2 against real CRIS P2 gives p = 8.3e-6, both
with scipy's defaults (600 pairs, normal approximation, zero_method "wilcox").
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.schema import CELL_COLUMNS, require_columns
from analysis.sweep import check_cells
from analysis.tables import dice_table
from vlsm.axes import (
    DICE,
    ENCODERS,
    MODELS,
    PROMPTS,
    STRATEGIES,
    STRATEGY_FINETUNE,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
)

__all__ = [
    "ALTERNATIVES",
    "TESTS",
    "CompareResult",
    "best_cell",
    "cell_label",
    "compare",
    "compare_sources",
    "holm",
    "paired_test",
    "paper_comparisons",
]

log = logging.getLogger(__name__)

TESTS = ("wilcoxon", "ttest")
ALTERNATIVES = ("two-sided", "greater", "less")
PAIR_KEYS = ("image", "structure")


@dataclass(frozen=True)
class CompareResult:
    """A paired test of cell a against cell b; differences are a - b, x 100."""

    a: str
    b: str
    test: str
    alternative: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    statistic: float
    p_value: float

    def as_dict(self) -> dict:
        return asdict(self)


def cell_label(cell: Mapping[str, str]) -> str:
    """'CRIS real unfrozen P2' (the keys given, in grid order)."""
    return " ".join(str(cell[c]) for c in CELL_COLUMNS if c in cell)


def _select(per_image: pd.DataFrame, cell: Mapping[str, str], metric: str, name: str) -> pd.Series:
    unknown = sorted(set(cell) - set(CELL_COLUMNS))
    if unknown:
        raise ValueError(f"{name}={dict(cell)}: unknown key(s) {unknown}; expected keys from {list(CELL_COLUMNS)}")
    check_cells(pd.DataFrame({c: [cell.get(c)] for c in CELL_COLUMNS}), f"{name}={dict(cell)}")
    mask = np.ones(len(per_image), dtype=bool)
    for key, value in cell.items():
        mask &= (per_image[key] == value).to_numpy()
    rows = per_image[mask]
    if rows.empty:
        raise ValueError(f"{name}={dict(cell)}: no rows in the per-image frame")
    cells = rows[list(CELL_COLUMNS)].drop_duplicates()
    if len(cells) > 1:
        raise ValueError(
            f"{name}={dict(cell)} matches {len(cells)} cells, e.g. "
            f"{cells.iloc[:3].to_dict('records')}; add keys so it names one cell"
        )
    series = rows.set_index(list(PAIR_KEYS))[metric]
    if series.index.duplicated().any():
        raise ValueError(f"{name}={dict(cell)}: an image and structure appears twice")
    return series.astype(float)


def compare(
    per_image: pd.DataFrame,
    a: Mapping[str, str],
    b: Mapping[str, str],
    *,
    test: str = "wilcoxon",
    alternative: str = "two-sided",
    metric: str = DICE,
) -> CompareResult:
    """Paired test of cell `a` against cell `b` over the images and structures both have.

    a, b: {"model": ..., "strategy": ..., "encoder": ..., "prompt": ...} (keys that the
    frame does not need to tell cells apart may be left out). alternative "greater"
    tests a > b. Pairs with a missing value on either side are dropped (logged).
    """
    require_columns(per_image, (*CELL_COLUMNS, *PAIR_KEYS, metric), "per-image frame")
    xa, xb = _select(per_image, a, metric, "a"), _select(per_image, b, metric, "b")
    result = paired_test(xa, xb, cell_label(a), cell_label(b), test=test, alternative=alternative)
    dropped = max(len(xa), len(xb)) - result.n
    if dropped:
        log.warning("compare %s vs %s: %d unpaired or missing value(s) dropped", result.a, result.b, dropped)
    return result


def paired_test(
    xa: pd.Series,
    xb: pd.Series,
    label_a: str = "a",
    label_b: str = "b",
    *,
    test: str = "wilcoxon",
    alternative: str = "two-sided",
) -> CompareResult:
    """Paired test of two series indexed by (image, structure); values are fractions."""
    if test not in TESTS:
        raise ValueError(f"test={test!r}; expected one of {TESTS}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; expected one of {ALTERNATIVES}")
    pairs = pd.concat({"a": xa, "b": xb}, axis=1, join="inner").dropna()
    if len(pairs) < 2:
        raise ValueError(
            f"compare {label_a} vs {label_b}: {len(pairs)} paired image-structure value(s); need at least 2"
        )
    diff = pairs["a"] - pairs["b"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences: scipy warns
        if test == "wilcoxon":
            if (diff == 0).all():  # no signed ranks at all: the test is undefined
                statistic, p_value = float("nan"), float("nan")
            else:
                res = stats.wilcoxon(pairs["a"], pairs["b"], alternative=alternative)
                statistic, p_value = float(res.statistic), float(res.pvalue)
        else:
            res = stats.ttest_rel(pairs["a"], pairs["b"], alternative=alternative)
            statistic, p_value = float(res.statistic), float(res.pvalue)
    return CompareResult(
        a=label_a,
        b=label_b,
        test=test,
        alternative=alternative,
        n=len(pairs),
        mean_a=float(pairs["a"].mean() * 100.0),
        mean_b=float(pairs["b"].mean() * 100.0),
        mean_diff=float(diff.mean() * 100.0),
        statistic=statistic,
        p_value=p_value,
    )


def compare_sources(
    ours: pd.DataFrame,
    theirs: pd.DataFrame,
    *,
    test: str = "wilcoxon",
    metric: str = DICE,
    correction: str | None = "holm",
) -> pd.DataFrame:
    """Every cell present in both frames: ours against theirs, paired on image and structure.

    One row per cell: the cell columns, n_ours, mean_ours, std_ours, n_theirs,
    mean_theirs, std_theirs (each over all its rows), then over the n_pairs
    image-structure pairs both have: mean_diff (ours - theirs, x 100), statistic and
    p_value (two-sided), and with correction "holm", p_holm over all cells.
    """
    if correction not in (None, "holm"):
        raise ValueError(f"correction={correction!r}; expected 'holm' or None")
    mine, other = dice_table(ours, metric), dice_table(theirs, metric)
    common = mine.merge(other, on=list(CELL_COLUMNS), suffixes=("_ours", "_theirs"))
    records = []
    for _, row in common.iterrows():
        cell = {c: row[c] for c in CELL_COLUMNS}
        result = paired_test(
            _select(ours, cell, metric, "ours"),
            _select(theirs, cell, metric, "theirs"),
            "ours " + cell_label(cell),
            "theirs " + cell_label(cell),
            test=test,
        )
        records.append(
            {
                **cell,
                "n_ours": row["n_ours"],
                "mean_ours": row["mean_ours"],
                "std_ours": row["std_ours"],
                "n_theirs": row["n_theirs"],
                "mean_theirs": row["mean_theirs"],
                "std_theirs": row["std_theirs"],
                "n_pairs": result.n,
                "mean_diff": result.mean_diff,
                "statistic": result.statistic,
                "p_value": result.p_value,
            }
        )
    columns = [*CELL_COLUMNS, "n_ours", "mean_ours", "std_ours", "n_theirs", "mean_theirs", "std_theirs",
               "n_pairs", "mean_diff", "statistic", "p_value"]
    out = pd.DataFrame.from_records(records, columns=columns)
    unpaired = out["n_pairs"] < out[["n_ours", "n_theirs"]].max(axis=1)
    if unpaired.any():
        log.info("compare_sources: %d of %d cells have images or structures on one side only", unpaired.sum(), len(out))
    if correction == "holm":
        out["p_holm"] = holm(out["p_value"].to_numpy())
    return out


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1; NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


def best_cell(table: pd.DataFrame, model: str, strategy: str, encoder: str) -> dict[str, str] | None:
    """The cell with the highest mean of `dice_table` rows for model, strategy and encoder."""
    rows = table[(table["model"] == model) & (table["strategy"] == strategy) & (table["encoder"] == encoder)]
    rows = rows.dropna(subset=["mean"])
    if rows.empty:
        return None
    row = rows.loc[rows["mean"].idxmax()]
    return {c: row[c] for c in CELL_COLUMNS}


def paper_comparisons(
    per_image: pd.DataFrame,
    *,
    test: str = "wilcoxon",
    encoder: str = "unfrozen",
    correction: str | None = "holm",
    metric: str = DICE,
) -> pd.DataFrame:
    """The paper's comparisons, per model, in one frame (one row per test).

    family "real vs synthetic": best real against best synthetic prompt, one-sided (real greater);
    family "PT-FT vs real": best synth-PT:real-FT against best real prompt, one-sided (PT-FT greater);
    family "frozen vs unfrozen": every cell present in both modes, two-sided.
    "Best" is the prompt with the highest mean Dice for that model, strategy and encoder
    (chosen on the test set, as the paper did). correction "holm" adds p_holm, adjusted
    within each family; None leaves it out.
    """
    if correction not in (None, "holm"):
        raise ValueError(f"correction={correction!r}; expected 'holm' or None")
    if encoder not in ENCODERS:
        raise ValueError(f"encoder={encoder!r}; expected one of {list(ENCODERS)}")
    table = dice_table(per_image, metric)
    plans: list[tuple[str, str, dict, dict, str]] = []
    for model in MODELS:
        real = best_cell(table, model, STRATEGY_REAL, encoder)
        synthetic = best_cell(table, model, STRATEGY_SYNTHETIC, encoder)
        finetune = best_cell(table, model, STRATEGY_FINETUNE, encoder)
        if real and synthetic:
            plans.append(("real vs synthetic", model, real, synthetic, "greater"))
        if finetune and real:
            plans.append(("PT-FT vs real", model, finetune, real, "greater"))
    both = table.groupby(["model", "strategy", "prompt"])["encoder"].nunique()
    in_both = set(both[both == len(ENCODERS)].index)
    for model, strategy, prompt in itertools.product(MODELS, STRATEGIES, PROMPTS):
        if (model, strategy, prompt) not in in_both:
            continue
        cell = {"model": model, "strategy": strategy, "prompt": prompt}
        plans.append(("frozen vs unfrozen", model, {**cell, "encoder": "frozen"}, {**cell, "encoder": "unfrozen"}, "two-sided"))
    records = []
    for family, model, a, b, alternative in plans:
        result = compare(per_image, a, b, test=test, alternative=alternative, metric=metric)
        records.append({"family": family, "model": model, **result.as_dict()})
    columns = ["family", "model", *CompareResult.__dataclass_fields__]
    out = pd.DataFrame.from_records(records, columns=columns)
    if correction == "holm":
        out["p_holm"] = np.nan
        for _, index in out.groupby("family").groups.items():
            out.loc[index, "p_holm"] = holm(out.loc[index, "p_value"].to_numpy())
    return out
