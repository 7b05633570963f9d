"""The paper's claims, each tested where its cells exist, with intervals and Holm correction.

    analysis.claims(per_image, trials, epochs)          # our sweep: best prompt chosen on validation
    analysis.claims(analysis.load_published())          # the authors' files: chosen on test, as the paper

Why validation and what "holds" means: docs/design.md, "Seeds, intervals and claims".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.convergence import epochs_to_best
from analysis.intervals import N_BOOT
from analysis.schema import CELL_KEYS, complete_variants, require_columns
from analysis.stats import TESTS, CompareResult, cell_label, compare_matrices, holm
from analysis.tables import arms, cell_matrices, dice_table, seed_matrix
from vlsm.axes import (
    BEST_VAL_DICE,
    DICE,
    ENCODERS,
    PROVENANCE,
    PROVENANCE_NONE,
    PROVENANCE_PROMPT,
    STRATEGY_FINETUNE,
    STRATEGY_MIXED,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    SYNTHETIC_SOURCE,
)
from vlsm.data.prompts import prompt_names
from vlsm.model_registry import model_names

__all__ = [
    "BEST", "BEST_PROMPT_CHOICES", "CLAIMS", "CLAIMS_COLUMNS", "CLAIM_CONVERGENCE",
    "CLAIM_FINETUNE", "CLAIM_PROVENANCE", "CLAIM_SYNTHETIC", "CLAIM_UNFROZEN", "DICE_UNIT",
    "EPOCH_UNIT", "NO_VALIDATION", "claims",
]

log = logging.getLogger(__name__)

CLAIM_SYNTHETIC = "synthetic alone is worse than real"
CLAIM_FINETUNE = "synth-PT:real-FT is better than real"
CLAIM_UNFROZEN = "unfrozen beats frozen"
CLAIM_CONVERGENCE = "synth-PT:real-FT converges faster"
CLAIM_PROVENANCE = "the provenance phrase helps"  # not the paper's: real+synthetic with vs without it
CLAIMS: tuple[str, ...] = (CLAIM_SYNTHETIC, CLAIM_FINETUNE, CLAIM_UNFROZEN, CLAIM_CONVERGENCE, CLAIM_PROVENANCE)
BEST_PROMPT_CHOICES = ("validation", "test")
NO_VALIDATION = "test (no validation results)"
BEST = "best"  # `comparison` of a row between the best prompts
DICE_UNIT, EPOCH_UNIT = "Dice x100", "epochs"
CLAIMS_COLUMNS: tuple[str, ...] = (
    "claim", "model", "encoder", SYNTHETIC_SOURCE, "comparison", "a", "b", "chosen_on", "unit", "n",
    "n_seeds_a", "n_seeds_b", "mean_diff", "ci_low", "ci_high", "test", "p_value", "p_holm", "holds",
    "verdict", "interval",
)


@dataclass
class _Data:
    """What every claim reads, computed once: each cell's seeds x pairs Dice and its means."""
    matrices: dict[tuple, pd.DataFrame]  # CELL_KEYS values -> seed_matrix of the cell's Dice
    table: pd.DataFrame  # dice_table without intervals, plus "val" (NaN where none)
    prompts: dict[tuple, pd.DataFrame]  # CELL_KEYS values but the prompt -> those rows of `table`
    best_prompt: str
    options: dict  # compare_matrices' test, n_boot, seed, level

    def has(self, cell: dict) -> bool:
        return _key(cell) in self.matrices


def _key(cell: dict) -> tuple:
    return tuple(cell[c] for c in CELL_KEYS)


def _validation(per_image: pd.DataFrame, trials: pd.DataFrame | None) -> pd.DataFrame:
    """Mean best_val_dice over seeds per cell, of the trials the per-image frame holds."""
    if trials is None:
        return pd.DataFrame(columns=[*CELL_KEYS, "val"])
    require_columns(trials, ("trial_id", *CELL_KEYS[:4], BEST_VAL_DICE), "trials frame")
    trials = complete_variants(trials)
    if "trial_id" in per_image:
        trials = trials[trials["trial_id"].isin(per_image["trial_id"])]
    return trials.groupby(list(CELL_KEYS))[BEST_VAL_DICE].mean().rename("val").reset_index()


def _pick(data: _Data, model: str, strategy: str, encoder: str, source: str, provenance: str
          ) -> tuple[dict | None, str]:
    """The best prompt's cell and what it was chosen on ("validation", "test" or NO_VALIDATION)."""
    rows = data.prompts.get((model, strategy, encoder, source, provenance))
    if rows is None:
        return None, ""
    if data.best_prompt == "validation" and rows["val"].notna().any():
        return _cell(rows.loc[rows["val"].idxmax()]), "validation"
    return _cell(rows.loc[rows["mean"].idxmax()]), ("test" if data.best_prompt == "test" else NO_VALIDATION)


def _cell(row: pd.Series) -> dict:
    return {c: row[c] for c in CELL_KEYS}


def _row(data: _Data, claim: str, where: dict, comparison: str, a: dict, b: dict, chosen_on: str) -> dict:
    """One claim row: a against b, one-sided (a greater), on the per-image Dice."""
    ma, mb = data.matrices[_key(a)], data.matrices[_key(b)]
    result = compare_matrices(ma, mb, cell_label(a), cell_label(b), alternative="greater", **data.options)
    return _record(claim, where, comparison, result, chosen_on, DICE_UNIT, "images")


def _record(claim: str, where: dict, comparison: str, result: CompareResult, chosen_on: str, unit: str,
            units: str) -> dict:
    one_seed = result.n_seeds_a == 1 and result.n_seeds_b == 1
    return {
        "claim": claim, **where, "comparison": comparison, "a": result.a, "b": result.b, "chosen_on": chosen_on,
        "unit": unit, "n": result.n, "n_seeds_a": result.n_seeds_a, "n_seeds_b": result.n_seeds_b,
        "mean_diff": result.mean_diff, "ci_low": result.ci_low, "ci_high": result.ci_high, "test": result.test,
        "p_value": result.p_value, "interval": f"{units} only (one seed)" if one_seed else f"seeds and {units}",
    }


def _sources(data: _Data, strategy: str, model: str, encoder: str) -> list[str]:
    rows = data.table[(data.table["model"] == model) & (data.table["encoder"] == encoder)]
    return list(dict.fromkeys(a[2] for a in arms(rows) if a[1] == strategy))


def _best_vs_best(data: _Data, claim: str, where: dict, a: tuple, b: tuple) -> list[dict]:
    """The row between the best prompts of two (strategy, encoder, source, provenance)."""
    (cell_a, on_a), (cell_b, on_b) = _pick(data, where["model"], *a), _pick(data, where["model"], *b)
    if cell_a is None or cell_b is None:
        return []
    chosen_on = on_a if on_a == on_b else f"{on_a} / {on_b}"
    return [_row(data, claim, where, BEST, cell_a, cell_b, chosen_on)]


def _per_prompt(data: _Data, claim: str, where: dict, a: dict, b: dict) -> list[dict]:
    """A row per prompt both cells of (a, b) have (a and b: cells without their prompt)."""
    rows = []
    for prompt in prompt_names():
        cell_a, cell_b = {**a, "prompt": prompt}, {**b, "prompt": prompt}
        if data.has(cell_a) and data.has(cell_b):
            rows.append(_row(data, claim, where, prompt, cell_a, cell_b, ""))
    return rows


def _dice_claims(data: _Data, model: str, encoder: str) -> list[dict]:
    """Claims 1, 2 and the provenance claim for one model and encoder mode."""
    rows: list[dict] = []
    real = (STRATEGY_REAL, encoder, "", "")
    for source in _sources(data, STRATEGY_SYNTHETIC, model, encoder):
        where = {"model": model, "encoder": encoder, SYNTHETIC_SOURCE: source}
        rows += _best_vs_best(data, CLAIM_SYNTHETIC, where, real, (STRATEGY_SYNTHETIC, encoder, source, ""))
    for source in _sources(data, STRATEGY_FINETUNE, model, encoder):
        where = {"model": model, "encoder": encoder, SYNTHETIC_SOURCE: source}
        base = {"model": model, "encoder": encoder}
        rows += _per_prompt(data, CLAIM_FINETUNE, where,
                            {**base, "strategy": STRATEGY_FINETUNE, SYNTHETIC_SOURCE: source, PROVENANCE: ""},
                            {**base, "strategy": STRATEGY_REAL, SYNTHETIC_SOURCE: "", PROVENANCE: ""})
        rows += _best_vs_best(data, CLAIM_FINETUNE, where, (STRATEGY_FINETUNE, encoder, source, ""), real)
    for source in _sources(data, STRATEGY_MIXED, model, encoder):
        where = {"model": model, "encoder": encoder, SYNTHETIC_SOURCE: source}
        mixed = {"model": model, "encoder": encoder, "strategy": STRATEGY_MIXED, SYNTHETIC_SOURCE: source}
        rows += _per_prompt(data, CLAIM_PROVENANCE, where, {**mixed, PROVENANCE: PROVENANCE_PROMPT},
                            {**mixed, PROVENANCE: PROVENANCE_NONE})
        rows += _best_vs_best(data, CLAIM_PROVENANCE, where, (STRATEGY_MIXED, encoder, source, PROVENANCE_PROMPT),
                              (STRATEGY_MIXED, encoder, source, PROVENANCE_NONE))
    return rows


def _unfrozen_claims(data: _Data, model: str) -> list[dict]:
    """Claim 3: per arm, the best unfrozen prompt against the best frozen one."""
    rows: list[dict] = []
    of_model = data.table[data.table["model"] == model]
    for _label, strategy, source, provenance in arms(of_model):
        where = {"model": model, "encoder": "unfrozen vs frozen", SYNTHETIC_SOURCE: source}
        rows += _best_vs_best(data, CLAIM_UNFROZEN, where, (strategy, "unfrozen", source, provenance),
                              (strategy, "frozen", source, provenance))
    return rows


def _convergence_claims(data: _Data, per_trial: pd.DataFrame, notes: list[str]) -> list[dict]:
    """Claim 4: epochs to the best validation Dice, real minus synth-PT:real-FT, paired by prompt."""
    rows: list[dict] = []
    for model in model_names():
        for encoder in ENCODERS:
            trials = per_trial[(per_trial["model"] == model) & (per_trial["encoder"] == encoder)]
            real = trials[trials["strategy"] == STRATEGY_REAL]
            for source in dict.fromkeys(trials.loc[trials["strategy"] == STRATEGY_FINETUNE, SYNTHETIC_SOURCE]):
                finetune = trials[(trials["strategy"] == STRATEGY_FINETUNE) & (trials[SYNTHETIC_SOURCE] == source)]
                if real.empty or finetune.empty:
                    continue
                where = {"model": model, "encoder": encoder, SYNTHETIC_SOURCE: source}
                a = {"model": model, "strategy": STRATEGY_REAL, "encoder": encoder}
                b = {**a, "strategy": STRATEGY_FINETUNE, SYNTHETIC_SOURCE: source}
                try:
                    result = compare_matrices(
                        seed_matrix(real, "epochs_to_best", units=("prompt",)),
                        seed_matrix(finetune, "epochs_to_best", units=("prompt",)),
                        cell_label(a), cell_label(b), alternative="greater", scale=1.0, **data.options)
                except ValueError as err:  # fewer than 2 prompts with both strategies
                    notes.append(f"{CLAIM_CONVERGENCE}, {model} {encoder} {source}: not tested ({err})")
                    continue
                rows.append(_record(CLAIM_CONVERGENCE, where, "prompts", result, "", EPOCH_UNIT, "prompts"))
    return rows


def _finish(rows: list[dict], alpha: float) -> pd.DataFrame:
    out = pd.DataFrame.from_records(rows, columns=[c for c in CLAIMS_COLUMNS if c not in ("p_holm", "holds", "verdict")])
    out["p_holm"] = np.nan
    for _, index in out.groupby("claim").groups.items():
        out.loc[index, "p_holm"] = holm(out.loc[index, "p_value"].to_numpy())
    out["holds"] = (out["ci_low"] > 0) & (out["p_holm"] < alpha)
    out["verdict"] = np.where(out["holds"], "holds", np.where(out["ci_high"] < 0, "opposite", "not shown"))
    rank = {c: i for i, c in enumerate(CLAIMS)}
    out = out.sort_values("claim", key=lambda c: c.map(rank), kind="stable").reset_index(drop=True)
    return out[list(CLAIMS_COLUMNS)]


def _claim_rows(data: _Data, frame: pd.DataFrame, trials: pd.DataFrame | None, epochs: pd.DataFrame | None,
                notes: list[str]) -> list[dict]:
    """The rows of every claim the data allows; notes gains the claims it cannot test."""
    rows: list[dict] = []
    for model in model_names():
        for encoder in ENCODERS:
            rows += _dice_claims(data, model, encoder)
        rows += _unfrozen_claims(data, model)
    if len(set(frame["encoder"])) < len(ENCODERS):
        notes.append(f"{CLAIM_UNFROZEN}: not tested (only {sorted(set(frame['encoder']))} encoders)")
    if trials is None or epochs is None:
        notes.append(f"{CLAIM_CONVERGENCE}: not tested (needs trials and epochs; the authors published no "
                     "per-epoch logs)")
        return rows
    per_trial = epochs_to_best(epochs, trials)
    if "trial_id" in frame:
        per_trial = per_trial[per_trial["trial_id"].isin(frame["trial_id"])]
    return rows + _convergence_claims(data, per_trial, notes)


def claims(per_image: pd.DataFrame, trials: pd.DataFrame | None = None, epochs: pd.DataFrame | None = None, *,
           best_prompt: str = "validation", test: str = "wilcoxon", alpha: float = 0.05, n_boot: int = N_BOOT,
           seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """CLAIMS_COLUMNS: one row per claim (and the provenance claim), model, encoder mode and
    synthetic source where the cells exist; a is claimed better, mean_diff = a - b.

    trials: for the validation Dice that chooses the best prompts; with epochs, for the
    convergence claim (left out with a note without them). comparison: a prompt, "best"
    or "prompts"; p_value one-sided; p_holm within the claim; verdict "holds", "not shown"
    or "opposite". `.attrs["notes"]`: claims not tested and why, what intervals cover.
    """
    if best_prompt not in BEST_PROMPT_CHOICES:
        raise ValueError(f"best_prompt={best_prompt!r}; expected one of {BEST_PROMPT_CHOICES}")
    if test not in TESTS:
        raise ValueError(f"test={test!r}; expected one of {TESTS}")
    require_columns(per_image, (*CELL_KEYS[:4], "image", "structure", DICE), "per-image frame")
    frame = complete_variants(per_image)
    table = dice_table(frame, n_boot=0).merge(_validation(frame, trials), on=list(CELL_KEYS), how="left")
    matrices = cell_matrices(frame, DICE)
    prompts = dict(iter(table.groupby([c for c in CELL_KEYS if c != "prompt"], sort=False)))
    data = _Data(matrices, table, prompts, best_prompt,
                 {"test": test, "n_boot": n_boot, "seed": seed, "level": level})
    notes: list[str] = []
    out = _finish(_claim_rows(data, frame, trials, epochs, notes), alpha)
    if best_prompt == "validation" and (out["chosen_on"] == NO_VALIDATION).any():
        notes.append("best prompts chosen on test Dice where no validation results exist, as the paper did")
    if (out["interval"].str.endswith("(one seed)")).any():
        notes.append("rows with one seed per cell: their intervals cover the images only, not the training run")
    out.attrs["notes"] = notes
    return out
