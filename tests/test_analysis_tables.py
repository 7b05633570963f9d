"""dice_table numbers and the paper-layout renderers, on hand-made per-image frames."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from analysis import dice_table, render_table


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
