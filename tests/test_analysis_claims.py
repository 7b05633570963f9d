"""analysis.claims: the paper's claims with intervals, on the authors' files and on seeded sweeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    claims,
    compare,
    dice_table,
    holm,
    load_published,
    load_sweep,
    write_example_exports,
)
from analysis.example import BEST_EPOCH
from analysis.paper_claims import (
    CLAIM_CONVERGENCE,
    CLAIM_FINETUNE,
    CLAIM_PROVENANCE,
    CLAIM_SYNTHETIC,
    CLAIM_UNFROZEN,
    CLAIMS,
    CLAIMS_COLUMNS,
    NO_VALIDATION,
)
from analysis.sweep import read_epochs, read_trials
from vlsm.axes import STRATEGY_MIXED
from vlsm.strategies import paper_strategies

REPO = Path(__file__).resolve().parents[1]
METRICS = REPO.parent / "shared" / "reference" / "synthetic-boost" / "metrics"
N_BOOT = 300  # enough for the checks here, fast


@pytest.fixture(scope="module")
def published_claims() -> pd.DataFrame:
    return claims(load_published(), n_boot=N_BOOT)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 seeds per cell, two synthetic sources, real+synthetic with and without provenance."""
    out = tmp_path_factory.mktemp("seeded")
    write_example_exports(out, prompts=("P1", "P2"), strategies=(*paper_strategies(), STRATEGY_MIXED),
                          sources=("sdm", "diffecho"), seeds=(42, 43, 44), n_patients=1)
    return out


@pytest.fixture(scope="module")
def seeded_claims(seeded: Path) -> pd.DataFrame:
    return claims(load_sweep(seeded), read_trials(seeded), read_epochs(seeded), n_boot=N_BOOT)


def _row(table: pd.DataFrame, **where: str) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        mask &= (table[column] == value).to_numpy()
    assert mask.sum() == 1, (where, mask.sum())
    return table[mask].iloc[0]


def test_claims_reproduce_the_papers_two_wilcoxon_tests(published_claims: pd.DataFrame) -> None:
    table = published_claims
    assert tuple(table.columns) == CLAIMS_COLUMNS
    # best real CRIS (P2) against best synthetic CRIS (P5): the paper's p = 8.8e-73
    worse = _row(table, claim=CLAIM_SYNTHETIC, model="CRIS", comparison="best")
    assert (worse["a"], worse["b"]) == ("CRIS real unfrozen P2", "CRIS synthetic unfrozen P5")
    assert worse["p_value"] == pytest.approx(8.8e-73, rel=0.01)
    assert worse["chosen_on"] == NO_VALIDATION  # the authors published no validation results
    # synth-PT:real-FT CRIS P2 against real CRIS P2: the paper's p = 8.3e-6, +0.36 points
    better = _row(table, claim=CLAIM_FINETUNE, model="CRIS", comparison="P2")
    assert better["p_value"] == pytest.approx(8.3e-6, rel=0.01)
    assert better["mean_diff"] == pytest.approx(0.358, abs=0.001)
    # beside them, our own intervals, over the images only: one run per cell was published
    for row in (worse, better):
        assert row["ci_low"] > 0 and row["ci_low"] < row["mean_diff"] < row["ci_high"]
        assert row["interval"] == "images only (one seed)" and row["holds"]
    assert (table["n"] == 600).all() and (table["n_seeds_a"] == 1).all()
    assert _row(table, claim=CLAIM_FINETUNE, model="CRIS", comparison="best")["a"] == "CRIS synth-PT:real-FT unfrozen P2"
    # per prompt, P0-P7, and the best prompts, for both models: 2 x (1 + 9) rows
    assert len(table) == 2 * (1 + 9)
    notes = " | ".join(table.attrs["notes"])
    for said in ("cover the images only", "chosen on test Dice", f"{CLAIM_CONVERGENCE}: not tested",
                 f"{CLAIM_UNFROZEN}: not tested"):
        assert said in notes


def test_claims_on_the_authors_folder_equal_those_on_the_bundle(published_claims: pd.DataFrame) -> None:
    if not METRICS.is_dir():
        pytest.skip(f"the authors' metrics folder is not at {METRICS}; the bundled copy is tested instead")
    theirs = claims(load_published(METRICS), n_boot=N_BOOT)
    pd.testing.assert_frame_equal(theirs, published_claims)


def test_claims_on_seeded_cells(seeded: Path, seeded_claims: pd.DataFrame) -> None:
    table = seeded_claims
    assert set(table["claim"]) == set(CLAIMS)
    assert list(dict.fromkeys(table["claim"])) == list(CLAIMS)  # in the order of the paper's claims
    dice_rows = table[table["claim"] != CLAIM_CONVERGENCE]
    assert (dice_rows["interval"] == "seeds and images").all()
    assert (table[["n_seeds_a", "n_seeds_b"]] == 3).all().all()
    # each synthetic source has its claims
    for claim in (CLAIM_SYNTHETIC, CLAIM_FINETUNE, CLAIM_PROVENANCE):
        assert set(table.loc[table["claim"] == claim, "synthetic_source"]) == {"sdm", "diffecho"}
    # a row is compare() of its two cells: seed-averaged pairs, the same interval
    per_image = load_sweep(seeded)
    row = _row(table, claim=CLAIM_FINETUNE, model="CRIS", encoder="frozen", synthetic_source="diffecho",
               comparison="P1")
    assert (row["a"], row["b"]) == ("CRIS synth-PT:real-FT (diffecho) frozen P1", "CRIS real frozen P1")
    cell = {"model": "CRIS", "encoder": "frozen", "prompt": "P1"}
    result = compare(per_image, {**cell, "strategy": "synth-PT:real-FT", "synthetic_source": "diffecho"},
                     {**cell, "strategy": "real"}, alternative="greater", n_boot=N_BOOT)
    assert (row["mean_diff"], row["ci_low"], row["ci_high"], row["p_value"]) == pytest.approx(
        (result.mean_diff, result.ci_low, result.ci_high, result.p_value))
    # Holm within each claim, and the verdict
    for _, rows in table.groupby("claim"):
        assert rows["p_holm"].to_numpy() == pytest.approx(holm(rows["p_value"].to_numpy()))
    assert (table["holds"] == ((table["ci_low"] > 0) & (table["p_holm"] < 0.05))).all()
    assert (table.loc[table["holds"], "verdict"] == "holds").all()
    # the example's built-in effects: synthetic alone is 5 points worse, everywhere
    assert table.loc[table["claim"] == CLAIM_SYNTHETIC, "holds"].all()
    provenance = table[table["claim"] == CLAIM_PROVENANCE]
    assert provenance["a"].str.contains("real+synthetic", regex=False).all() and provenance["b"].str.contains("no provenance").all()
    unfrozen = table[table["claim"] == CLAIM_UNFROZEN]
    assert (unfrozen["encoder"] == "unfrozen vs frozen").all()
    assert unfrozen["a"].str.contains(" unfrozen ").all() and unfrozen["b"].str.contains(" frozen ").all()
    assert len(unfrozen) == 2 * 9  # per model, every arm: real, 2 x (synthetic, PT-FT), 4 x real+synthetic
    # convergence: epochs to the best validation Dice, real minus finetune, over the 2 prompts
    convergence = table[table["claim"] == CLAIM_CONVERGENCE]
    assert len(convergence) == 2 * 2 * 2  # models x encoders x sources
    assert (convergence["unit"] == "epochs").all() and (convergence["n"] == 2).all()
    assert convergence["mean_diff"].to_numpy() == pytest.approx(BEST_EPOCH["real"] - BEST_EPOCH["synth-PT:real-FT"])
    assert (convergence["interval"] == "seeds and prompts").all()
    assert table.attrs["notes"] == []


def test_the_best_prompt_is_chosen_on_validation_unless_told(seeded: Path, seeded_claims: pd.DataFrame) -> None:
    per_image, trials, epochs = load_sweep(seeded), read_trials(seeded), read_epochs(seeded)
    per_image = per_image[per_image["model"] == "CRIS"]
    test_table = dice_table(per_image, n_boot=0).set_index(["model", "strategy", "encoder", "prompt"]).sort_index()
    real = test_table.loc[("CRIS", "real", "unfrozen"), "mean"]
    best_on_test, worst_on_test = real.idxmax(), real.idxmin()
    # make the test set's worst real prompt the best on validation
    forced = trials.copy()
    chosen = (forced["model"] == "CRIS") & (forced["strategy"] == "real") & (forced["encoder"] == "unfrozen")
    forced.loc[chosen & (forced["prompt"] == worst_on_test), "best_val_dice"] = 0.99
    on_validation = claims(per_image, forced, epochs, n_boot=50)
    on_test = claims(per_image, forced, epochs, best_prompt="test", n_boot=50)
    where = {"claim": CLAIM_FINETUNE, "model": "CRIS", "encoder": "unfrozen", "synthetic_source": "sdm",
             "comparison": "best"}
    row = _row(on_validation, **where)
    assert row["b"] == f"CRIS real unfrozen {worst_on_test}" and row["chosen_on"] == "validation"
    row = _row(on_test, **where)
    assert row["b"] == f"CRIS real unfrozen {best_on_test}" and row["chosen_on"] == "test"
    assert set(on_validation.loc[on_validation["comparison"] == "best", "chosen_on"]) == {"validation"}
    assert set(on_validation.loc[on_validation["comparison"] != "best", "chosen_on"]) == {""}
    # without trials there is no validation Dice: the test set chooses, and the table says so
    alone = claims(per_image, n_boot=50)
    assert set(alone.loc[alone["comparison"] == "best", "chosen_on"]) == {NO_VALIDATION}
    assert CLAIM_CONVERGENCE not in set(alone["claim"])
    assert any(note.startswith(f"{CLAIM_CONVERGENCE}: not tested") for note in alone.attrs["notes"])


def test_one_seed_intervals_cover_the_images_only(tmp_path: Path) -> None:
    write_example_exports(tmp_path, prompts=("P1", "P2"), models=("CRIS",), n_patients=1)
    table = claims(load_sweep(tmp_path), read_trials(tmp_path), read_epochs(tmp_path), n_boot=50)
    dice_rows = table[table["unit"] == "Dice x100"]
    assert (dice_rows["interval"] == "images only (one seed)").all()
    assert (table.loc[table["claim"] == CLAIM_CONVERGENCE, "interval"] == "prompts only (one seed)").all()
    assert any("cover the images only" in note for note in table.attrs["notes"])
    assert CLAIM_PROVENANCE not in set(table["claim"])  # no real+synthetic cells


def test_bad_arguments() -> None:
    frame = load_published()
    with pytest.raises(ValueError, match="best_prompt='val'"):
        claims(frame, best_prompt="val")
    with pytest.raises(ValueError, match="test='sign'"):
        claims(frame, test="sign")
    with pytest.raises(ValueError, match="missing column"):
        claims(frame.drop(columns=["dice"]))


def test_analysis_claims_stays_the_function_once_its_module_is_imported() -> None:
    # Its module has another name (paper_claims): importing it, as analysis.report does,
    # sets no attribute `claims` on the package that would hide the function.
    import importlib

    import analysis

    module = importlib.import_module("analysis.paper_claims")
    importlib.import_module("analysis.report")
    assert analysis.claims is module.claims and callable(analysis.claims)
    # no public name is also the name of a submodule (importing it would hide the name)
    assert all(module != f"analysis.{name}" for name, module in analysis._EXPORTS.items())
