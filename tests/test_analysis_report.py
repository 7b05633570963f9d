"""`python -m analysis report`: one self-contained file with tables, tests, figures, convergence."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import load_sweep, write_example_exports
from analysis.__main__ import main
from vlsm.axes import STRUCTURES

_STRATEGY_DIRS = {"real": "camus", "synthetic": "sdm_camus", "synth-PT:real-FT": "pt_on_sdm_camus_ft_on_camus"}
_MODEL_DIRS = {"CRIS": "cris", "CLIPSeg": "clip_seg_bs_128"}


def _write_published(per_image: pd.DataFrame, root: Path) -> Path:
    """Our example rows, written the way the authors published theirs (x100, their file names)."""
    label = {v: k for k, v in STRUCTURES.items()}
    cells = per_image[per_image["encoder"] == "unfrozen"]
    for (model, strategy, prompt), rows in cells.groupby(["model", "strategy", "prompt"]):
        folder = root / f"{_STRATEGY_DIRS[strategy]}_metrics_reduce_lr" / _MODEL_DIRS[model] / prompt.lower()
        folder.mkdir(parents=True)
        pd.DataFrame({
            "filename": [f"/mnt/x/mask_{label[s]}/{i}_gt.png" for i, s in zip(rows["image"], rows["structure"], strict=True)],
            "iou": rows["iou"] * 100, "dice": (rows["dice"] - 0.02).clip(0, 1) * 100,
            "hausdorff_distance": rows["hausdorff"] * 100, "ones_dice_diff": 0.0, "zeros_dice_diff": 0.0,
        }).to_csv(folder / "metrics.csv", index=False)
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    write_example_exports(out, prompts=("P0", "P1", "P7"), n_patients=2)
    return out


def test_html_report_with_published(export: Path, tmp_path: Path) -> None:
    published = _write_published(load_sweep(export), tmp_path / "metrics")
    out = tmp_path / "report" / "sweep.html"
    assert main(["report", str(export), "--published", str(published), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for heading in ("Dice tables", "Paired tests", "Figures", "Convergence", "Ours beside the authors"):
        assert f">{heading}" in text
    assert "Table 2 layout: encoders unfrozen" in text and "Table 3 layout: encoders frozen" in text
    assert "<td>N/A</td>" in text  # synthetic P7
    assert "real vs synthetic" in text and "frozen vs unfrozen" in text
    # self-contained: every image is embedded, nothing is fetched
    images = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(images) == 5  # Fig. 2 x 2 encoders, Fig. 3, validation Dice x 2 encoders
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in text and "https://" not in text
    figures = sorted(p.name for p in (out.parent / "figures").iterdir())
    assert "encoder_difference.pdf" in figures and "strategy_difference_unfrozen.png" in figures
    # the side-by-side section: theirs = ours - 2 points, so mean_diff is 2.00 in every cell
    side = text.split("Ours beside the authors")[1]
    assert side.count("<tr>") == 1 + 2 * 8  # header + 2 models x (3 + 2 + 3) unfrozen cells
    assert side.count("<td>2.00</td>") == 2 * 8
    # the speed-up row of the example: real best at epoch 9, finetune at 3
    assert "<td>3.00x</td>" in text


def test_markdown_report_and_errors(export: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "r.md"
    assert main(["report", str(export), "--format", "md", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Sweep report")
    assert "| synthetic | CRIS |" in text and "](data:image/png;base64," in text
    assert "Ours beside" not in text
    # the claims first, then the per-cell tables with their intervals
    assert re.findall(r"^## (.+)$", text, re.MULTILINE)[:3] == ["Claims", "Dice tables", "Paired tests"]
    claims = text.split("## Claims")[1].split("\n## ")[0]
    assert "| synthetic alone is worse than real |" in claims and "| images only (one seed) |" in claims
    assert "Best prompts chosen on validation Dice" in claims
    assert "### Encoders unfrozen: means and intervals" in text
    assert re.search(r"\| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \|", text)  # a mean and its interval
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "trials.parquet" in caplog.text
    assert not list(tmp_path.glob("*.tmp"))


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; from analysis.__main__ import build_parser; build_parser(); import analysis; "
        "print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_report_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path, caplog) -> None:
    export = tmp_path / "sweep"
    write_example_exports(export, n_patients=1)
    (tmp_path / "a-file").write_text("x")
    assert main(["report", str(export), "--out", str(tmp_path / "a-file" / "report.html")]) == 2
    assert f"cannot write the report {tmp_path / 'a-file' / 'report.html'}" in caplog.text


def test_report_on_seeds_sources_and_real_plus_synthetic(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_example_exports(sweep, prompts=("P1", "P2"), models=("CRIS",), encoders=("unfrozen",), n_patients=1,
                          strategies=("real", "synthetic", "synth-PT:real-FT", "real+synthetic"),
                          sources=("sdm", "diffecho"), seeds=(42, 43, 44))
    out = tmp_path / "r.md"
    assert main(["report", str(sweep), "--format", "md", "--out", str(out), "--n-boot", "200",
                 "--best-prompt", "test"]) == 0
    text = out.read_text(encoding="utf-8")
    claims = text.split("## Claims")[1].split("\n## ")[0]
    for claim in ("synthetic alone is worse than real", "synth-PT:real-FT is better than real",
                  "synth-PT:real-FT converges faster", "the provenance phrase helps"):
        assert f"| {claim} |" in claims
    assert "| seeds and images |" in claims and "| 3/3 |" in claims and "| holds |" in claims
    assert "Best prompts chosen on test Dice, as the paper did" in claims
    assert re.search(r"\| \+\d+\.\d\d \[\+\d+\.\d\d, \+\d+\.\d\d\] epochs \|", claims)  # convergence, in epochs
    tables = text.split("## Dice tables")[1]
    for arm in ("synthetic (diffecho)", "synth-PT:real-FT (diffecho)", "real+synthetic (no provenance)",
                "real+synthetic (diffecho, no provenance)"):
        assert f"| {arm} |" in tables  # a column in the intervals table, a row in the paper's layout
    assert "3 seed(s) per cell" in tables
    assert len(re.findall(r"\]\(data:image/png;base64,", text)) == 2  # Fig. 2 (unfrozen), validation Dice


def test_example_export_writes_seeds_sources_and_real_plus_synthetic(tmp_path: Path) -> None:
    assert main(["example-export", str(tmp_path), "--seeds", "2", "--sources", "sdm", "diffecho", "--mixed"]) == 0
    trials = pd.read_parquet(tmp_path / "exports" / "trials.parquet")
    assert set(trials["seed"]) == {42, 43}
    assert set(trials["synthetic_source"]) == {"", "sdm", "diffecho"}
    assert set(trials.loc[trials["strategy"] == "real+synthetic", "provenance"]) == {"prompt", "none"}
