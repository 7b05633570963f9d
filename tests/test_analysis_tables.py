"""dice_table numbers and the paper-layout renderers, on hand-made per-image frames."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from analysis import dice_table, render_intervals, render_table
from analysis.tables import arm_label


def _frame(cells: dict[tuple[str, str, str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (model, strategy, encoder, prompt), values in cells.items():
        for i, dice in enumerate(values):
            rows.append((model, strategy, encoder, prompt, f"patient{i + 1:04d}_2CH_ED", "LV", dice, dice, 1.0))
    return pd.DataFrame(rows, columns=["model", "strategy", "encoder", "prompt", "image", "structure",
                                       "dice", "iou", "hausdorff"])


CELLS = {
    ("CRIS", "real", "unfrozen", "P1"): [0.90, 0.80, 0.70],
    ("CRIS", "real", "unfrozen", "P7"): [0.50, 0.60, 0.70],
    ("CRIS", "synthetic", "unfrozen", "P1"): [0.95, 0.93, 0.97],
    ("CLIPSeg", "real", "unfrozen", "P1"): [0.10, 0.20, 0.30],
    ("CRIS", "real", "frozen", "P1"): [0.40, 0.40, 0.40],
}


def test_dice_table_numbers_and_order() -> None:
    table = dice_table(_frame(CELLS))
    assert list(table.columns) == ["model", "strategy", "encoder", "prompt", "synthetic_source", "provenance",
                                   "n", "mean", "std", "n_seeds", "seed_mean", "seed_std", "ci_low", "ci_high"]
    # axes order: CLIPSeg before CRIS; real, synthetic; frozen before unfrozen; P1 before P7
    assert [tuple(r) for r in table[["model", "strategy", "encoder", "prompt"]].itertuples(index=False)] == [
        ("CLIPSeg", "real", "unfrozen", "P1"),
        ("CRIS", "real", "frozen", "P1"),
        ("CRIS", "real", "unfrozen", "P1"),
        ("CRIS", "real", "unfrozen", "P7"),
        ("CRIS", "synthetic", "unfrozen", "P1"),
    ]
    row = table.iloc[2]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(80.0)
    assert row["std"] == pytest.approx(10.0)  # sample std (ddof=1) of 90, 80, 70
    assert table.iloc[1]["std"] == pytest.approx(0.0)


def test_markdown_layout_bold_na_and_missing() -> None:
    text = render_table(dice_table(_frame(CELLS)), "markdown", encoder="unfrozen")
    lines = text.splitlines()
    assert lines[0] == "| strategy | model | P0 | P1 | P2 | P3 | P4 | P5 | P6 | P7 |"
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")[2:]]
            for line in lines[2:]}
    # paper row order: synthetic, real, synth-PT:real-FT; each with both models present
    assert list(rows) == [("synthetic", "CLIPSeg"), ("synthetic", "CRIS"), ("real", "CLIPSeg"), ("real", "CRIS"),
                          ("synth-PT:real-FT", "CLIPSeg"), ("synth-PT:real-FT", "CRIS")]
    assert rows[("synthetic", "CRIS")][1] == "**95.00 ± 2.00**"  # best of P1
    assert rows[("real", "CRIS")][1] == "80.00 ± 10.00"
    assert rows[("real", "CRIS")][7] == "**60.00 ± 10.00**"  # the only P7 cell is the best
    assert rows[("synthetic", "CRIS")][7] == "N/A"  # cannot exist
    assert rows[("synthetic", "CLIPSeg")][7] == "N/A"
    assert rows[("real", "CRIS")][0] == "–"  # could exist, not run
    assert rows[("synth-PT:real-FT", "CRIS")][1] == "–"


def test_frozen_table_and_decimals() -> None:
    text = render_table(dice_table(_frame(CELLS)), "markdown", encoder="frozen", decimals=(1, 0))
    assert "| real | CRIS | – | **40.0 ± 0** |" in text
    with pytest.raises(ValueError, match="no cells with encoder 'frozen'"):
        render_table(dice_table(_frame({k: v for k, v in CELLS.items() if k[2] == "unfrozen"})), encoder="frozen")


def test_latex_csv_html() -> None:
    table = dice_table(_frame(CELLS))
    latex = render_table(table, "latex", caption="Dice")
    assert r"\begin{tabular}{l|l|cccccccc}" in latex
    assert r"\textbf{95.00 $\pm$ 2.00}" in latex
    assert r"\caption{Dice}" in latex
    assert latex.count(r"\hline") == 3  # under the header and between the 3 strategy blocks
    csv = pd.read_csv(io.StringIO(render_table(table, "csv")), keep_default_na=False)
    assert list(csv.columns) == ["strategy", "model", *[f"P{i}" for i in range(8)]]
    assert csv.set_index(["strategy", "model"]).loc[("real", "CLIPSeg"), "P1"] == "20.00 ± 10.00"
    assert csv.set_index(["strategy", "model"]).loc[("synthetic", "CRIS"), "P7"] == "N/A"
    html = render_table(table, "html")
    assert "<b>95.00 ± 2.00</b>" in html and html.count("<tr>") == 7


def test_bad_arguments() -> None:
    table = dice_table(_frame(CELLS))
    with pytest.raises(ValueError, match="fmt='docx'"):
        render_table(table, "docx")
    with pytest.raises(ValueError, match="encoder='half'"):
        render_table(table, encoder="half")
    with pytest.raises(ValueError, match="missing column"):
        dice_table(_frame(CELLS).drop(columns=["prompt"]))


def _seeded(cells: dict[tuple[str, str, str, str, int], list[float]]) -> pd.DataFrame:
    """Hand-made rows with a seed: (model, strategy, encoder, prompt, seed) -> Dice per image."""
    rows = []
    for (model, strategy, encoder, prompt, seed), values in cells.items():
        for i, dice in enumerate(values):
            rows.append((model, strategy, encoder, prompt, seed, f"patient{i + 1:04d}_2CH_ED", "LV", dice, dice, 1.0))
    return pd.DataFrame(rows, columns=["model", "strategy", "encoder", "prompt", "seed", "image", "structure",
                                       "dice", "iou", "hausdorff"])


SEEDED = {
    ("CRIS", "real", "unfrozen", "P1", 1): [0.90, 0.80, 0.70, 0.60],
    ("CRIS", "real", "unfrozen", "P1", 2): [0.92, 0.82, 0.72, 0.62],
    ("CRIS", "real", "unfrozen", "P1", 3): [0.94, 0.84, 0.74, 0.64],
    ("CRIS", "synthetic", "unfrozen", "P1", 1): [0.5, 0.6, 0.7, 0.8],
}


def test_dice_table_over_seeds() -> None:
    table = dice_table(_seeded(SEEDED), n_boot=500).set_index("strategy")
    real, synthetic = table.loc["real"], table.loc["synthetic"]
    assert real["n"] == 12 and real["n_seeds"] == 3
    assert real["seed_mean"] == pytest.approx(77.0)  # per-seed means 75, 77, 79
    assert real["seed_std"] == pytest.approx(2.0)  # between-seed sample std
    assert real["mean"] == pytest.approx(77.0)
    assert real["ci_low"] < real["seed_mean"] < real["ci_high"]
    assert 60.0 <= real["ci_low"] and real["ci_high"] <= 94.0  # inside the range of the data
    assert synthetic["n_seeds"] == 1 and np.isnan(synthetic["seed_std"])
    assert synthetic["ci_low"] < synthetic["seed_mean"] < synthetic["ci_high"]
    # reproducible, and a cell's interval does not depend on the other cells in the table
    again = dice_table(_seeded(SEEDED), n_boot=500).set_index("strategy")
    assert (again.loc["real", "ci_low"], again.loc["real", "ci_high"]) == (real["ci_low"], real["ci_high"])
    alone = dice_table(_seeded({k: v for k, v in SEEDED.items() if k[1] == "real"}), n_boot=500).iloc[0]
    assert (alone["ci_low"], alone["ci_high"]) == (real["ci_low"], real["ci_high"])
    assert dice_table(_seeded(SEEDED), n_boot=0)[["ci_low", "ci_high"]].isna().all().all()
    # frames without a seed column are one seed, the paper's: 42
    assert (dice_table(_frame(CELLS))["n_seeds"] == 1).all()


def _arms_frame() -> pd.DataFrame:
    frame = _frame({
        ("CRIS", "real", "unfrozen", "P1"): [0.90, 0.80],
        ("CRIS", "real", "unfrozen", "P7"): [0.85, 0.85],
        ("CRIS", "synthetic", "unfrozen", "P1"): [0.70, 0.60],
        ("CRIS", "synth-PT:real-FT", "unfrozen", "P1"): [0.95, 0.85],
        ("CRIS", "real+synthetic", "unfrozen", "P1"): [0.92, 0.82],
    })
    frame["synthetic_source"] = frame["strategy"].map({"real": ""}).fillna("sdm")
    frame["provenance"] = frame["strategy"].map({"real+synthetic": "prompt"}).fillna("")
    diffecho = frame[frame["strategy"] == "synthetic"].assign(synthetic_source="diffecho", dice=0.5)
    no_phrase = frame[frame["strategy"] == "real+synthetic"].assign(provenance="none", dice=0.8)
    return pd.concat([frame, diffecho, no_phrase], ignore_index=True)


def test_arms_label_the_source_and_provenance_where_not_the_defaults() -> None:
    assert arm_label("real") == "real" and arm_label("synthetic", "sdm") == "synthetic"
    assert arm_label("synthetic", "diffecho") == "synthetic (diffecho)"
    assert arm_label("real+synthetic", "sdm", "prompt") == "real+synthetic"
    assert arm_label("real+synthetic", "sdm", "none") == "real+synthetic (no provenance)"
    assert arm_label("real+synthetic", "diffecho", "none") == "real+synthetic (diffecho, no provenance)"
    table = dice_table(_arms_frame(), n_boot=200)
    text = render_table(table, "markdown", encoder="unfrozen")
    rows = [line.split("|")[1].strip() for line in text.splitlines()[2:]]
    assert rows == ["synthetic", "synthetic (diffecho)", "real", "synth-PT:real-FT", "real+synthetic",
                    "real+synthetic (no provenance)"]
    mixed = next(line for line in text.splitlines() if line.startswith("| real+synthetic (no provenance) |"))
    assert "80.00 ± 0.00" in mixed and mixed.rstrip().endswith("| N/A |")  # real+synthetic has no P7
    assert "| synthetic (diffecho) | CRIS | – | 50.00 ± 0.00 |" in text


def test_render_intervals_has_a_column_per_arm() -> None:
    table = dice_table(_arms_frame(), n_boot=200)
    text = render_intervals(table, "markdown", encoder="unfrozen")
    lines = text.splitlines()
    assert lines[0] == ("| model | prompt | real | synthetic | synthetic (diffecho) | synth-PT:real-FT | "
                        "real+synthetic | real+synthetic (no provenance) |")
    row = table[(table["strategy"] == "real") & (table["prompt"] == "P1")].iloc[0]
    p1 = [c.strip() for c in lines[2].strip("|").split("|")]
    assert p1[:3] == ["CRIS", "P1", f"{row['seed_mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"]
    p7 = [c.strip() for c in lines[3].strip("|").split("|")]
    assert p7[1] == "P7" and p7[3] == "N/A" and p7[5] == "–" and p7[6] == "N/A"
    csv = pd.read_csv(io.StringIO(render_intervals(table, "csv")), keep_default_na=False)
    assert list(csv.columns)[2:] == [c.strip() for c in lines[0].strip("|").split("|")][2:]
    assert "<th>real+synthetic (no provenance)</th>" in render_intervals(table, "html")
    with pytest.raises(ValueError, match="fmt='latex'"):
        render_intervals(table, "latex")
