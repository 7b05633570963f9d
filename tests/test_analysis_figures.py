"""Fig. 2 / Fig. 3 data and drawings, and PNG + PDF output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    dice_table,
    difference_to_real,
    encoder_difference,
    encoder_difference_figure,
    figure_png,
    save_figure,
    strategy_difference,
    strategy_difference_figure,
)


def _table(rows: list[tuple[str, str, str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["model", "strategy", "encoder", "prompt", "mean"])
    return frame.assign(n=10, std=1.0)


TABLE = _table([
    ("CRIS", "real", "unfrozen", "P0", 40.0),
    ("CRIS", "real", "unfrozen", "P1", 90.0),
    ("CRIS", "real", "unfrozen", "P7", 91.0),
    ("CRIS", "synthetic", "unfrozen", "P1", 85.0),
    ("CRIS", "synth-PT:real-FT", "unfrozen", "P0", 41.0),
    ("CRIS", "synth-PT:real-FT", "unfrozen", "P1", 91.5),
    ("CRIS", "synth-PT:real-FT", "unfrozen", "P7", 90.0),
    ("CLIPSeg", "real", "unfrozen", "P1", 88.0),
    ("CLIPSeg", "synthetic", "unfrozen", "P1", 84.0),
    ("CRIS", "real", "frozen", "P1", 88.0),
    ("CRIS", "synthetic", "frozen", "P1", 86.0),
])


def test_strategy_difference_values() -> None:
    diff = strategy_difference(TABLE).set_index(["model", "strategy", "prompt"])["diff"]
    assert diff[("CRIS", "synthetic", "P1")] == pytest.approx(-5.0)
    assert diff[("CRIS", "synth-PT:real-FT", "P1")] == pytest.approx(1.5)
    assert diff[("CRIS", "synth-PT:real-FT", "P7")] == pytest.approx(-1.0)
    assert np.isnan(diff[("CRIS", "synthetic", "P0")])  # synthetic P0 not run
    assert diff[("CLIPSeg", "synthetic", "P1")] == pytest.approx(-4.0)


def test_strategy_difference_figure_draws_the_differences() -> None:
    fig = strategy_difference_figure(TABLE)
    clipseg, cris = fig.axes
    assert (clipseg.get_title(), cris.get_title()) == ("CLIPSeg", "CRIS")
    lines = {line.get_label(): line for line in cris.lines if not line.get_label().startswith("_")}
    assert set(lines) == {"synthetic", "synth-PT:real-FT"}
    finetune = lines["synth-PT:real-FT"]
    assert list(finetune.get_xdata()) == [0, 1, 7]  # positions of P0, P1, P7
    assert list(finetune.get_ydata()) == pytest.approx([1.0, 1.5, -1.0])
    assert list(lines["synthetic"].get_ydata()) == pytest.approx([-5.0])
    assert [t.get_text() for t in cris.get_xticklabels()] == [f"P{i}" for i in range(8)]


def test_encoder_difference_and_figure() -> None:
    diff = encoder_difference(TABLE).set_index(["model", "strategy", "prompt"])["diff"]
    assert diff[("CRIS", "real", "P1")] == pytest.approx(-2.0)
    assert diff[("CRIS", "synthetic", "P1")] == pytest.approx(1.0)
    fig = encoder_difference_figure(TABLE)
    (cris,) = fig.axes
    ys = {line.get_label(): list(line.get_ydata()) for line in cris.lines if not line.get_label().startswith("_")}
    assert ys == {"real": pytest.approx([-2.0]), "synthetic": pytest.approx([1.0])}
    with pytest.raises(ValueError, match="needs both encoder modes"):
        encoder_difference(TABLE[TABLE["encoder"] == "unfrozen"])
    with pytest.raises(ValueError, match="no 'real' cells"):
        strategy_difference(TABLE[TABLE["strategy"] != "real"])


def test_save_png_and_pdf(tmp_path: Path) -> None:
    per_image = pd.DataFrame({
        "model": "CRIS", "strategy": ["real", "real", "synthetic", "synthetic"], "encoder": "unfrozen",
        "prompt": "P1", "image": ["a", "b", "a", "b"], "structure": "LV", "dice": [0.9, 0.8, 0.7, 0.6],
        "iou": 0.5, "hausdorff": 1.0,
    })
    fig = strategy_difference_figure(dice_table(per_image))
    paths = save_figure(fig, tmp_path / "sub" / "fig2")
    assert [p.name for p in paths] == ["fig2.png", "fig2.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert figure_png(fig)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="svgz"):
        save_figure(fig, tmp_path / "x", formats=("svgz",))


def test_fig2_draws_each_arms_interval_as_error_bars() -> None:
    rows = []
    for strategy, source, provenance, level in (("real", "", "", 0.80), ("synthetic", "sdm", "", 0.70),
                                                ("synthetic", "diffecho", "", 0.65),
                                                ("real+synthetic", "sdm", "none", 0.82)):
        for seed in (42, 43):
            for i in range(6):
                dice = level + 0.01 * i + 0.002 * seed
                rows.append(("CRIS", strategy, "unfrozen", "P1", source, provenance, seed, f"img{i}", "LV",
                             dice, dice, 1.0))
    per_image = pd.DataFrame(rows, columns=["model", "strategy", "encoder", "prompt", "synthetic_source",
                                            "provenance", "seed", "image", "structure", "dice", "iou", "hausdorff"])
    diff = difference_to_real(per_image, n_boot=200)
    fig = strategy_difference_figure(diff)
    (cris,) = fig.axes
    bars = {c.get_label(): c for c in cris.containers}
    assert set(bars) == {"synthetic", "synthetic (diffecho)", "real+synthetic (no provenance)"}
    data_line, _caps, (segments,) = bars["synthetic (diffecho)"].lines
    row = diff[diff["arm"] == "synthetic (diffecho)"].iloc[0]
    assert list(data_line.get_xdata()) == [1] and list(data_line.get_ydata()) == pytest.approx([row["diff"]])
    assert row["diff"] == pytest.approx(-15.0)
    (low, high) = segments.get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((row["ci_low"], row["ci_high"]))
    assert fig.get_suptitle() == "Dice difference to real (unfrozen encoders) (95% intervals)"
    # from a dice table, the same figure has lines and no error bars
    plain = strategy_difference_figure(dice_table(per_image, n_boot=0))
    assert not plain.axes[0].containers and len(plain.axes[0].lines) == 3 + 1  # 3 arms + the zero line
