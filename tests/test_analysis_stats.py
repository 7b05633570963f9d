"""compare (paired tests), Holm correction and the paper's comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import (
    compare,
    compare_sources,
    difference_to_real,
    holm,
    load_sweep,
    paper_comparisons,
    write_example_exports,
)

IMAGES = [f"patient{p:04d}_{v}_ED" for p in range(1, 6) for v in ("2CH", "4CH")]


def _cell(model: str, strategy: str, encoder: str, prompt: str, values: np.ndarray) -> pd.DataFrame:
    keys = [(i, s) for i in IMAGES for s in ("LV", "MYO", "LA")]
    return pd.DataFrame({
        "model": model, "strategy": strategy, "encoder": encoder, "prompt": prompt,
        "image": [k[0] for k in keys], "structure": [k[1] for k in keys],
        "dice": values, "iou": values, "hausdorff": 1.0,
    })


@pytest.fixture()
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.7, 0.9, size=30)
    better = np.clip(base + rng.normal(0.02, 0.01, size=30), 0, 1)
    return pd.concat([
        _cell("CRIS", "real", "unfrozen", "P1", base),
        _cell("CRIS", "synth-PT:real-FT", "unfrozen", "P1", better),
        _cell("CRIS", "real", "frozen", "P1", base - 0.01),
    ], ignore_index=True)


def test_compare_matches_scipy_on_pairs(frame: pd.DataFrame) -> None:
    a = {"model": "CRIS", "strategy": "synth-PT:real-FT", "encoder": "unfrozen", "prompt": "P1"}
    b = {"model": "CRIS", "strategy": "real", "encoder": "unfrozen", "prompt": "P1"}
    xa = frame[frame["strategy"] == "synth-PT:real-FT"]["dice"].to_numpy()
    xb = frame[(frame["strategy"] == "real") & (frame["encoder"] == "unfrozen")]["dice"].to_numpy()
    # rows of b in another order: pairing must follow image + structure, not row position
    shuffled = frame.sample(frac=1.0, random_state=0)
    result = compare(shuffled, a, b, test="wilcoxon", alternative="greater")
    assert result.n == 30
    assert result.p_value == pytest.approx(stats.wilcoxon(xa, xb, alternative="greater").pvalue)
    assert result.mean_diff == pytest.approx((xa - xb).mean() * 100)
    assert result.mean_a == pytest.approx(xa.mean() * 100)
    assert result.a == "CRIS synth-PT:real-FT unfrozen P1"
    less = compare(frame, a, b, alternative="less")
    assert less.p_value > 0.99 > 0.01 > result.p_value
    t = compare(frame, a, b, test="ttest", alternative="two-sided")
    assert t.p_value == pytest.approx(stats.ttest_rel(xa, xb).pvalue)


def test_compare_pairs_only_common_images(frame: pd.DataFrame) -> None:
    a = {"strategy": "synth-PT:real-FT"}  # keys that already name one cell suffice
    b = {"strategy": "real", "encoder": "unfrozen"}
    trimmed = frame.drop(frame[(frame["strategy"] == "real") & (frame["image"] == IMAGES[0])].index)
    assert compare(trimmed, a, b).n == 27


def test_compare_errors(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="matches 2 cells"):
        compare(frame, {"strategy": "real"}, {"strategy": "synth-PT:real-FT"})
    with pytest.raises(ValueError, match=r"column 'strategy' has value\(s\) \['reel'\]"):
        compare(frame, {"strategy": "reel"}, {"strategy": "synth-PT:real-FT"})
    with pytest.raises(ValueError, match="no rows"):
        compare(frame, {"strategy": "synthetic"}, {"strategy": "synth-PT:real-FT"})
    with pytest.raises(ValueError, match="unknown key"):
        compare(frame, {"lr": "1"}, {"strategy": "synth-PT:real-FT"})
    with pytest.raises(ValueError, match="test='sign'"):
        compare(frame, {"strategy": "synth-PT:real-FT"}, {"encoder": "frozen"}, test="sign")
    same = compare(frame, {"strategy": "synth-PT:real-FT"}, {"strategy": "synth-PT:real-FT"})
    assert np.isnan(same.p_value) and same.mean_diff == 0.0


def test_holm_by_hand() -> None:
    # sorted p: 0.01*4=0.04, 0.02*3=0.06, 0.03*2=0.06, 0.5*1=0.5 (monotone step-down)
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1 and kept monotone
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_paper_comparisons_on_example(tmp_path: Path) -> None:
    write_example_exports(tmp_path, prompts=("P1", "P2"))
    per_image = load_sweep(tmp_path)
    tests = paper_comparisons(per_image)
    assert set(tests["family"]) == {"real vs synthetic", "PT-FT vs real", "frozen vs unfrozen"}
    assert len(tests) == 2 + 2 + 2 * 3 * 2  # per model: 2 paper tests; frozen vs unfrozen per cell
    head = tests[tests["family"] != "frozen vs unfrozen"]
    assert (head["alternative"] == "greater").all()
    assert (head["p_value"] < 1e-6).all()  # built-in effects are found
    assert (tests["p_holm"] >= tests["p_value"]).all()
    family = tests[tests["family"] == "frozen vs unfrozen"]
    assert family["p_holm"].to_numpy() == pytest.approx(holm(family["p_value"].to_numpy()))
    assert (family["mean_diff"] < 0).all()  # the example's frozen cells are 1 point worse
    assert "p_holm" not in paper_comparisons(per_image, correction=None).columns
    frozen_only = paper_comparisons(per_image, encoder="frozen")
    assert frozen_only[frozen_only["family"] == "real vs synthetic"]["a"].str.contains("frozen").all()


def test_compare_sources_pairs_ours_and_theirs(tmp_path: Path) -> None:
    write_example_exports(tmp_path, prompts=("P1",), encoders=("unfrozen",))
    ours = load_sweep(tmp_path)
    theirs = ours.copy()
    theirs["dice"] = (theirs["dice"] - 0.01).clip(0, 1)
    theirs = theirs[theirs["image"] != "patient0001_2CH_ED"]
    side = compare_sources(ours, theirs)
    assert len(side) == 2 * 3  # models x strategies
    assert (side["n_ours"] == 48).all() and (side["n_pairs"] == 45).all()
    assert side["mean_diff"].to_numpy() == pytest.approx(np.full(6, 1.0), abs=1e-6)
    assert (side["p_value"] < 1e-6).all()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("seeded")
    write_example_exports(out, prompts=("P1", "P2"), models=("CRIS",), encoders=("unfrozen",),
                          sources=("sdm", "diffecho"), seeds=(42, 43, 44), n_patients=2)
    return load_sweep(out)


def test_compare_on_seeded_cells_averages_the_seeds_per_pair(seeded: pd.DataFrame) -> None:
    a = {"model": "CRIS", "strategy": "synth-PT:real-FT", "encoder": "unfrozen", "prompt": "P1",
         "synthetic_source": "sdm"}
    b = {"model": "CRIS", "strategy": "real", "encoder": "unfrozen", "prompt": "P1"}
    result = compare(seeded, a, b, alternative="greater")
    assert (result.n, result.n_seeds_a, result.n_seeds_b) == (24, 3, 3)

    def averaged(cell: dict) -> pd.Series:  # by hand: each pair's mean over the seeds
        rows = seeded[np.logical_and.reduce([seeded[k] == v for k, v in cell.items()])]
        return rows.groupby(["image", "structure"])["dice"].mean()

    xa, xb = averaged(a), averaged(b).loc[averaged(a).index]
    assert result.p_value == pytest.approx(stats.wilcoxon(xa, xb, alternative="greater").pvalue)
    assert result.mean_diff == pytest.approx((xa - xb).mean() * 100)
    assert result.ci_low < result.mean_diff < result.ci_high
    assert compare(seeded, a, b, alternative="greater") == result  # the bootstrap is seeded
    assert compare(seeded, a, b, alternative="greater", seed=1).ci_low != result.ci_low
    # the source names the cell where there are two; a seed keeps one replicate
    with pytest.raises(ValueError, match="matches 2 cells"):
        compare(seeded, {k: v for k, v in a.items() if k != "synthetic_source"}, b)
    one = compare(seeded, {**a, "seed": 43}, {**b, "seed": 43})
    assert (one.n_seeds_a, one.n_seeds_b) == (1, 1)
    with pytest.raises(ValueError, match=r"'synthetic_source' has value\(s\) \['dalle'\]"):
        compare(seeded, {**a, "synthetic_source": "dalle"}, b)


def test_difference_to_real_and_paper_comparisons_per_source(seeded: pd.DataFrame) -> None:
    diff = difference_to_real(seeded, "unfrozen", n_boot=300)
    assert set(diff["arm"]) == {"synthetic", "synthetic (diffecho)", "synth-PT:real-FT",
                                "synth-PT:real-FT (diffecho)"}
    assert len(diff) == 4 * 2 and (diff["n_seeds"] == 3).all()
    assert ((diff["ci_low"] < diff["diff"]) & (diff["diff"] < diff["ci_high"])).all()
    row = diff[(diff["arm"] == "synthetic (diffecho)") & (diff["prompt"] == "P2")].iloc[0]
    result = compare(seeded, {"strategy": "synthetic", "synthetic_source": "diffecho", "prompt": "P2"},
                     {"strategy": "real", "prompt": "P2"}, n_boot=300)
    assert row["diff"] == pytest.approx(result.mean_diff) and row["p_value"] == pytest.approx(result.p_value)
    assert row["diff"] < -3  # synthetic alone is about 5 points worse in the example
    tests = paper_comparisons(seeded, n_boot=100)
    head = tests[tests["family"] != "frozen vs unfrozen"]
    assert sorted(head["b"][head["family"] == "real vs synthetic"].str.replace(r" P\d", "", regex=True)) == [
        "CRIS synthetic (diffecho) unfrozen", "CRIS synthetic unfrozen"]
    assert (head["n_seeds_a"] == 3).all() and (head["p_value"] < 1e-3).all()


def test_paper_comparisons_computes_only_the_families_asked_for(tmp_path: Path) -> None:
    write_example_exports(tmp_path, prompts=("P1", "P2"), models=("CRIS",), n_patients=1)  # both encoder modes
    per_image = load_sweep(tmp_path)
    everything = paper_comparisons(per_image, n_boot=50)
    assert set(everything["family"]) == {"real vs synthetic", "PT-FT vs real", "frozen vs unfrozen"}
    some = paper_comparisons(per_image, n_boot=50, families=["real vs synthetic", "PT-FT vs real"])
    expected = everything[everything["family"] != "frozen vs unfrozen"].reset_index(drop=True)
    pd.testing.assert_frame_equal(some, expected)  # the same rows, Holm within each family unchanged
    with pytest.raises(ValueError, match=r"families \['frozen'\]"):
        paper_comparisons(per_image, families=["frozen"])
