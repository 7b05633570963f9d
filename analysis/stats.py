"""Paired tests between cells, as in the paper, with Holm correction and bootstrap intervals.

Two cells are paired on image + structure and compared with scipy's Wilcoxon signed-rank
test (the paper's; its defaults reproduce the paper's p-values) or a paired t-test, on
each cell's seed-averaged values; the interval of the difference counts the seeds too
(`analysis.intervals`; docs/design.md, "Seeds, intervals and claims").
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

from analysis.intervals import N_BOOT, bootstrap_interval
from analysis.schema import CELL_COLUMNS, CELL_KEYS, cell_values, complete_variants, require_columns
from analysis.sweep import check_cells
from analysis.tables import (
    ARM,
    arm_label,
    arms,
    cell_matrices,
    cell_rng_seed,
    dice_table,
    seed_matrix,
    sort_cells,
    with_arm,
)
from vlsm.axes import (
    DICE,
    ENCODERS,
    PROVENANCE,
    SEED,
    STRATEGY_FINETUNE,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    SYNTHETIC_SOURCE,
)
from vlsm.data.prompts import prompt_names
from vlsm.model_registry import model_names

__all__ = [
    "ALTERNATIVES", "FAMILIES", "TESTS", "CompareResult", "best_cell", "cell_label", "compare",
    "compare_matrices", "compare_sources", "difference_to_real", "holm",
    "paper_comparisons", "select_cell",
]

log = logging.getLogger(__name__)

TESTS = ("wilcoxon", "ttest")
ALTERNATIVES = ("two-sided", "greater", "less")
PAIR_KEYS = ("image", "structure")
FAMILIES = ("real vs synthetic", "PT-FT vs real", "frozen vs unfrozen")  # of `paper_comparisons`
_SELECT_KEYS = (*CELL_KEYS, SEED)  # what a cell given to compare may name


@dataclass(frozen=True)
class CompareResult:
    """A paired test of cell a against cell b; means and differences (a - b) x 100.

    n: image-structure pairs both cells have (for every seed); n_seeds_a, n_seeds_b: the
    seeds averaged per pair; ci_low, ci_high: the bootstrap interval of mean_diff.
    """
    a: str
    b: str
    test: str
    alternative: str
    n: int
    n_seeds_a: int
    n_seeds_b: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float


def cell_label(cell: Mapping[str, str]) -> str:
    """'CRIS real unfrozen P2', 'CRIS synthetic (diffecho) unfrozen P2' (the keys given, in grid order)."""
    arm = arm_label(cell.get("strategy", ""), cell.get(SYNTHETIC_SOURCE, ""), cell.get(PROVENANCE, ""))
    return " ".join(arm if column == "strategy" else str(cell[column]) for column in CELL_COLUMNS if column in cell)


def select_cell(per_image: pd.DataFrame, cell: Mapping[str, object], name: str = "cell") -> pd.DataFrame:
    """The rows (every seed) of the one cell that `cell` names: some of CELL_KEYS (those
    the frame needs to tell cells apart) and optionally seed, to keep one seed.
    per_image must have its variant columns (`complete_variants`).
    """
    unknown = sorted(set(cell) - set(_SELECT_KEYS))
    if unknown:
        raise ValueError(f"{name}={dict(cell)}: unknown key(s) {unknown}; expected keys from {list(_SELECT_KEYS)}")
    values = cell_values()
    bad = {c: v for c, v in cell.items() if c != SEED and v not in values[c]}
    if bad:  # check_cells' message, without building a frame for every comparison
        check_cells(pd.DataFrame({c: [v] for c, v in bad.items()}), f"{name}={dict(cell)}")
    mask = np.ones(len(per_image), dtype=bool)
    for key, value in cell.items():
        mask &= (per_image[key] == value).to_numpy()
    rows = per_image[mask]
    if rows.empty:
        raise ValueError(f"{name}={dict(cell)}: no rows in the per-image frame")
    cells = rows[list(CELL_KEYS)].drop_duplicates()
    if len(cells) > 1:
        raise ValueError(f"{name}={dict(cell)} matches {len(cells)} cells, e.g. "
                         f"{cells.iloc[:3].to_dict('records')}; add keys so it names one cell")
    return rows


def _test(xa: np.ndarray, xb: np.ndarray, test: str, alternative: str) -> tuple[float, float]:
    """(statistic, p-value) of the paired test; NaN where the differences are all zero."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences: scipy warns
        if test == "wilcoxon":
            if np.all(xa == xb):  # no signed ranks at all: the test is undefined
                return float("nan"), float("nan")
            res = stats.wilcoxon(xa, xb, alternative=alternative)
        else:
            res = stats.ttest_rel(xa, xb, alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def compare_matrices(ma: pd.DataFrame, mb: pd.DataFrame, label_a: str = "a", label_b: str = "b", *,
                     test: str = "wilcoxon", alternative: str = "two-sided", n_boot: int = N_BOOT,
                     seed: int = 0, level: float = 0.95, scale: float = 100.0) -> CompareResult:
    """Paired comparison of two cells given as (seeds x units) frames (`tables.seed_matrix`).

    Units every seed of both cells has are paired; the test runs on the seed-averaged
    values; the bootstrap is seeded by `seed` and the two labels. Means, differences and
    interval are multiplied by `scale` (100: Dice fractions to points).
    """
    if test not in TESTS:
        raise ValueError(f"test={test!r}; expected one of {TESTS}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; expected one of {ALTERNATIVES}")
    units = ma.columns[ma.notna().all(axis=0)].intersection(mb.columns[mb.notna().all(axis=0)], sort=False)
    if len(units) < 2:
        raise ValueError(
            f"compare {label_a} vs {label_b}: {len(units)} paired unit(s) with a value for every seed; need at least 2"
        )
    xa, xb = ma[units].to_numpy(), mb[units].to_numpy()  # (seeds, units)
    mean_a, mean_b = xa.mean(axis=0), xb.mean(axis=0)  # seed-averaged, per unit
    statistic, p_value = _test(mean_a, mean_b, test, alternative)
    low, high = bootstrap_interval([xa, xb], (1.0, -1.0), n_boot=n_boot, level=level,
                                   seed=cell_rng_seed(seed, f"{label_a} - {label_b}"))
    return CompareResult(
        a=label_a, b=label_b, test=test, alternative=alternative, n=len(units), n_seeds_a=xa.shape[0],
        n_seeds_b=xb.shape[0], mean_a=float(mean_a.mean() * scale), mean_b=float(mean_b.mean() * scale),
        mean_diff=float((mean_a - mean_b).mean() * scale), ci_low=low * scale, ci_high=high * scale,
        statistic=statistic, p_value=p_value,
    )


def compare(per_image: pd.DataFrame, a: Mapping[str, object], b: Mapping[str, object], *,
            test: str = "wilcoxon", alternative: str = "two-sided", metric: str = DICE, n_boot: int = N_BOOT,
            seed: int = 0, level: float = 0.95) -> CompareResult:
    """Paired test of cell `a` against cell `b` over the images and structures both have.

    a, b: {"model": ..., "strategy": ..., "encoder": ..., "prompt": ...}, plus
    synthetic_source / provenance where the frame has several, and seed to keep one
    (`select_cell`). alternative "greater" tests a > b. Pairs with a missing value on
    either side, or for any seed, are dropped (logged).
    """
    require_columns(per_image, (*CELL_COLUMNS, *PAIR_KEYS, metric), "per-image frame")
    frame = complete_variants(per_image)
    ma = seed_matrix(select_cell(frame, a, "a"), metric)
    mb = seed_matrix(select_cell(frame, b, "b"), metric)
    return _compare_logged(ma, mb, a, b, test=test, alternative=alternative, n_boot=n_boot, seed=seed,
                           level=level)


def _compare_logged(ma: pd.DataFrame, mb: pd.DataFrame, a: Mapping[str, object], b: Mapping[str, object],
                    **options) -> CompareResult:
    """`compare_matrices` of cells a and b (labelled by `cell_label`), logging the pairs it dropped."""
    result = compare_matrices(ma, mb, cell_label(a), cell_label(b), **options)
    dropped = max(ma.shape[1], mb.shape[1]) - result.n
    if dropped:
        log.warning("compare %s vs %s: %d unpaired or missing value(s) dropped", result.a, result.b, dropped)
    return result


def difference_to_real(per_image: pd.DataFrame, encoder: str = "unfrozen", *, metric: str = DICE,
                       n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Each arm's mean Dice minus real's (x 100) per model and prompt where both exist, with
    its interval and two-sided p_value (`compare_matrices`): Fig. 2's error bars.
    n_seeds: of the arm's cell."""
    frame = with_arm(per_image[per_image["encoder"] == encoder])
    records = []
    for model, prompt in itertools.product(model_names(), prompt_names()):
        cells = frame[(frame["model"] == model) & (frame["prompt"] == prompt)]
        real = cells[cells["strategy"] == STRATEGY_REAL]
        if real.empty:
            continue
        base = seed_matrix(real, metric)
        for label, strategy, source, provenance in arms(cells):
            if strategy == STRATEGY_REAL:
                continue
            rows = cells[cells[ARM] == label]
            result = compare_matrices(seed_matrix(rows, metric), base, f"{model} {label} {encoder} {prompt}",
                                      f"{model} real {encoder} {prompt}", n_boot=n_boot, seed=seed, level=level)
            records.append({"encoder": encoder, "model": model, ARM: label, "strategy": strategy,
                            SYNTHETIC_SOURCE: source, PROVENANCE: provenance, "prompt": prompt,
                            "n_seeds": result.n_seeds_a,
                            "diff": result.mean_diff, "ci_low": result.ci_low, "ci_high": result.ci_high,
                            "p_value": result.p_value})
    columns = ["encoder", "model", ARM, "strategy", SYNTHETIC_SOURCE, PROVENANCE, "prompt", "n_seeds", "diff",
               "ci_low", "ci_high", "p_value"]
    return pd.DataFrame.from_records(records, columns=columns)


def compare_sources(ours: pd.DataFrame, theirs: pd.DataFrame, *, test: str = "wilcoxon", metric: str = DICE,
                    correction: str | None = "holm") -> pd.DataFrame:
    """Every cell present in both frames: ours against theirs, paired on image and structure.

    n, mean, std of each side over all its rows (every seed); over the n_pairs pairs both
    have, mean_diff (ours - theirs, x 100, seeds averaged), statistic and two-sided
    p_value; with correction "holm", p_holm over all cells.
    """
    if correction not in (None, "holm"):
        raise ValueError(f"correction={correction!r}; expected 'holm' or None")
    ours, theirs = complete_variants(ours), complete_variants(theirs)
    mine, other = dice_table(ours, metric, n_boot=0), dice_table(theirs, metric, n_boot=0)
    common = mine.merge(other, on=list(CELL_KEYS), suffixes=("_ours", "_theirs"))
    mine_matrices, other_matrices = cell_matrices(ours, metric), cell_matrices(theirs, metric)
    sides = ["n_ours", "mean_ours", "std_ours", "n_theirs", "mean_theirs", "std_theirs"]
    records = []
    for _, row in common.iterrows():
        cell = {c: row[c] for c in CELL_KEYS}
        result = compare_matrices(mine_matrices[_key(cell)], other_matrices[_key(cell)], "ours " + cell_label(cell),
                                  "theirs " + cell_label(cell), test=test, n_boot=0)
        records.append({**cell, **{c: row[c] for c in sides}, "n_pairs": result.n, "mean_diff": result.mean_diff,
                        "statistic": result.statistic, "p_value": result.p_value})
    columns = [*CELL_KEYS, *sides, "n_pairs", "mean_diff", "statistic", "p_value"]
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


def best_cell(table: pd.DataFrame, model: str, strategy: str, encoder: str, *,
              synthetic_source: str | None = None, provenance: str | None = None, value: str = "mean"
              ) -> dict[str, str] | None:
    """The cell (CELL_KEYS) with the highest `value` among `table`'s rows for model, strategy,
    encoder and, where given, synthetic source and provenance; None when there is none.
    table: `dice_table(...)` (value "mean": chosen on the test set, as the paper did)."""
    rows = complete_variants(table)
    mask = (rows["model"] == model) & (rows["strategy"] == strategy) & (rows["encoder"] == encoder)
    if synthetic_source is not None:
        mask &= rows[SYNTHETIC_SOURCE] == synthetic_source
    if provenance is not None:
        mask &= rows[PROVENANCE] == provenance
    rows = rows[mask].dropna(subset=[value])
    if rows.empty:
        return None
    row = rows.loc[rows[value].idxmax()]
    return {c: row[c] for c in CELL_KEYS}


def _key(cell: Mapping[str, object]) -> tuple:
    return tuple(cell[c] for c in CELL_KEYS)


def _sources(table: pd.DataFrame, strategy: str) -> list[str]:
    """The synthetic sources of `strategy`'s cells in `table`, in the order of vlsm.axes."""
    return list(dict.fromkeys(a[2] for a in arms(table) if a[1] == strategy))


def _comparison_plans(table: pd.DataFrame, encoder: str) -> list[tuple[str, str, dict, dict, str]]:
    """(family, model, cell a, cell b, alternative) of every paper comparison the table allows."""
    plans: list[tuple[str, str, dict, dict, str]] = []
    for model in model_names():
        real = best_cell(table, model, STRATEGY_REAL, encoder)
        for source in _sources(table, STRATEGY_SYNTHETIC):
            synthetic = best_cell(table, model, STRATEGY_SYNTHETIC, encoder, synthetic_source=source)
            if real and synthetic:
                plans.append(("real vs synthetic", model, real, synthetic, "greater"))
        for source in _sources(table, STRATEGY_FINETUNE):
            finetune = best_cell(table, model, STRATEGY_FINETUNE, encoder, synthetic_source=source)
            if finetune and real:
                plans.append(("PT-FT vs real", model, finetune, real, "greater"))
    others = [c for c in CELL_KEYS if c != "encoder"]
    both = table.groupby(others)["encoder"].nunique()
    for key in sort_cells(both[both == len(ENCODERS)].reset_index()[others]).itertuples(index=False, name=None):
        cell = dict(zip(others, key, strict=True))
        plans.append(("frozen vs unfrozen", cell["model"], {**cell, "encoder": "frozen"},
                      {**cell, "encoder": "unfrozen"}, "two-sided"))
    return plans


def paper_comparisons(per_image: pd.DataFrame, *, test: str = "wilcoxon", encoder: str = "unfrozen",
                      correction: str | None = "holm", metric: str = DICE, n_boot: int = N_BOOT,
                      seed: int = 0, families: Sequence[str] = FAMILIES) -> pd.DataFrame:
    """The paper's comparisons, one row per test: family, model, then CompareResult's fields.

    "real vs synthetic": best real against best synthetic prompt, one-sided (real greater);
    "PT-FT vs real": best synth-PT:real-FT against best real, one-sided (PT-FT greater);
    "frozen vs unfrozen": every cell present in both modes, two-sided (whatever `encoder`).
    "Best" is chosen on the test set, as the paper did. correction "holm": p_holm within
    each family.
    """
    if correction not in (None, "holm"):
        raise ValueError(f"correction={correction!r}; expected 'holm' or None")
    if encoder not in ENCODERS:
        raise ValueError(f"encoder={encoder!r}; expected one of {list(ENCODERS)}")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"families {unknown}; expected some of {list(FAMILIES)}")
    per_image = complete_variants(per_image)
    plans = _comparison_plans(dice_table(per_image, metric, n_boot=0), encoder)
    matrices = cell_matrices(per_image, metric)  # each cell's once, for all the comparisons it is in
    records = []
    for family, model, a, b, alternative in plans:
        if family not in families:
            continue
        result = _compare_logged(matrices[_key(a)], matrices[_key(b)], a, b, test=test, alternative=alternative,
                                 n_boot=n_boot, seed=seed)
        records.append({"family": family, "model": model, **asdict(result)})
    columns = ["family", "model", *CompareResult.__dataclass_fields__]
    out = pd.DataFrame.from_records(records, columns=columns)
    if correction == "holm":
        out["p_holm"] = np.nan
        for _, index in out.groupby("family").groups.items():
            out.loc[index, "p_holm"] = holm(out.loc[index, "p_value"].to_numpy())
    return out
