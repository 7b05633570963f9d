"""The authors' published per-image files reproduce the paper's Table 2 and Wilcoxon tests.

The paper's tests run on the copy bundled with the package (analysis/published_data/,
CC-BY 4.0, see the README there), so they run in any clone; the bundle is checked against
the authors' folder itself when ../shared/reference is present.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    compare,
    dice_table,
    load_published,
    paper_comparisons,
    render_table,
    write_example_exports,
)
from analysis.__main__ import build_parser, main
from analysis.published import BUNDLE, BUNDLE_COLUMNS, write_bundle

REPO = Path(__file__).resolve().parents[1]
METRICS = REPO.parent / "shared" / "reference" / "synthetic-boost" / "metrics"
BUNDLED = Path(str(resources.files("analysis") / BUNDLE))  # where the installed package has it

# The paper's Table 2 (encoders unfrozen) as printed: "mean std" per prompt P0..P7.
PAPER_TABLE_2 = {
    ("synthetic", "CLIPSeg"): "45.69 13.18|84.24 11.95|84.87 10.85|85.27 9.66|84.38 11.0|83.18 12.79|83.32 12.51|",
    ("synthetic", "CRIS"): "42.29 17.54|84.72 11.85|84.72 10.53|85.48 10.19|85.12 11.15|85.84 10.01|84.35 13.28|",
    ("real", "CLIPSeg"): "46.52 13.3|88.53 7.24|88.81 7.16|88.77 7.2|88.58 7.67|88.27 7.39|88.45 7.49|88.16 7.95",
    ("real", "CRIS"): "46.46 13.08|91.00 6.34|91.03 6.18|89.9 7.61|90.94 6.62|90.87 6.36|90.79 7.09|90.99 6.25",
    ("synth-PT:real-FT", "CLIPSeg"): "46.26 13.23|88.56 7.49|89.44 6.91|89.8 6.82|88.68 7.51|88.55 7.44|89.36 6.81|89.53 6.64",
    ("synth-PT:real-FT", "CRIS"): "41.09 18.64|91.26 6.08|91.39 5.94|91.12 6.27|91.04 7.17|91.23 6.36|91.11 6.79|91.08 6.6",
}


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    return load_published()  # the bundled copy


@pytest.fixture(scope="module")
def authors_folder() -> Path:
    if not METRICS.is_dir():
        pytest.skip(f"the authors' metrics folder is not at {METRICS}; the bundled copy is used")
    return METRICS


def test_bundle_is_small_packaged_and_attributed() -> None:
    assert BUNDLED.stat().st_size < 700_000  # 46 CSV files, 5.1 MB as text
    raw = pd.read_parquet(BUNDLED)
    assert tuple(raw.columns) == BUNDLE_COLUMNS
    assert len(raw) == 46 * 600
    assert raw.groupby(["strategy_folder", "model_folder", "prompt_folder"]).size().eq(600).all()
    assert set(raw["model_folder"]) == {"cris", "clip_seg_bs_128"}  # the unpublished clip_seg is left out
    assert raw["filename"].str.fullmatch(r"mask_[123]/patient\d{4}_(2CH|4CH)_(ED|ES)_gt\.png").all()
    metrics = ["iou", "dice", "hausdorff_distance", "ones_dice_diff", "zeros_dice_diff"]
    assert (raw[metrics].dtypes == "float64").all()  # as published: x100, float64
    assert raw["dice"].max() > 98  # x100
    # shipped with the package: pyproject's package data covers every file of the folder
    section = (REPO / "pyproject.toml").read_text().split("\n[tool.setuptools.package-data]\n")[1].split("\n[")[0]
    globs = json.loads(re.search(r"^analysis = (\[.*\])$", section, re.MULTILINE)[1])
    folder = BUNDLED.parent
    shipped = {p for g in globs for p in folder.parent.glob(g) if p.is_file()}
    assert {p for p in folder.iterdir() if p.is_file()} <= shipped
    readme = (folder / "README.md").read_text(encoding="utf-8")
    for fact in ("Adhikari", "Synthetic Boost", "10.1007/978-3-031-44521-7_9", "naamiinepal/synthetic-boost",
                 "532d3dc", "CC-BY 4.0", "Parquet", "mask_<k>/<file>"):
        assert fact in readme, fact


def test_bundle_equals_the_authors_folder(authors_folder: Path, published: pd.DataFrame, tmp_path: Path) -> None:
    theirs = load_published(authors_folder)
    pd.testing.assert_frame_equal(published, theirs, check_exact=True)
    for column in ("dice", "iou", "hausdorff"):  # bit for bit, not only equal as numbers
        assert np.array_equal(published[column].to_numpy().view(np.uint64), theirs[column].to_numpy().view(np.uint64))
    rebuilt = pd.read_parquet(write_bundle(authors_folder, tmp_path / "bundle.parquet"))
    pd.testing.assert_frame_equal(rebuilt, pd.read_parquet(BUNDLED), check_exact=True)
    # and the metric values are the numbers of the CSV text, e.g. the first row of one file
    csv = authors_folder / "camus_metrics_reduce_lr/cris/p1/metrics.csv"
    first = csv.read_text().splitlines()[1].split(",")
    row = rebuilt[(rebuilt["strategy_folder"] == "camus_metrics_reduce_lr") & (rebuilt["model_folder"] == "cris")
                  & (rebuilt["prompt_folder"] == "p1")].iloc[0]
    assert first[0].endswith("/" + row["filename"])
    assert [row[c] for c in BUNDLE_COLUMNS[4:]] == [float(v) for v in first[1:]]


def test_report_published_without_a_path_uses_the_bundle(tmp_path: Path) -> None:
    assert build_parser().parse_args(["report", "runs/x", "--published"]).published is True
    assert build_parser().parse_args(["report", "runs/x", "--published", "m"]).published == Path("m")
    assert build_parser().parse_args(["report", "runs/x"]).published is None
    export = tmp_path / "sweep"
    write_example_exports(export, prompts=("P1", "P7"), n_patients=2)
    out = tmp_path / "r.md"
    assert main(["report", str(export), "--published", "--format", "md", "--out", str(out)]) == 0
    side = out.read_text(encoding="utf-8").split("Ours beside the authors")[1]
    assert f"analysis/{BUNDLE}" in side and "532d3dc" in side and "CC-BY 4.0" in side
    # 2 models x (real P1, P7; synthetic P1; synth-PT:real-FT P1, P7): 2 patients x 4 images x 3 structures each
    rows = [line for line in side.splitlines() if re.match(r"\| (CRIS|CLIPSeg) ", line)]
    assert len(rows) == 2 * 5, rows
    cells = {tuple(c.strip() for c in line.strip("|").split("|")[:4]): line for line in rows}
    # n_ours | mean | std | n_theirs | mean | std | n_pairs
    assert all(re.search(r"\| 24 \| [\d.]+ \| [\d.]+ \| 600 \| [\d.]+ \| [\d.]+ \| 24 \|", line) for line in rows), rows
    # theirs are the paper's Table 2 cells
    assert "| 600 | 91.00 | 6.34 | 24 |" in cells[("CRIS", "real", "unfrozen", "P1")]
    assert "| 600 | 88.53 | 7.24 | 24 |" in cells[("CLIPSeg", "real", "unfrozen", "P1")]


def test_schema_and_units(published: pd.DataFrame) -> None:
    assert list(published.columns) == [
        "model", "strategy", "encoder", "prompt", "synthetic_source", "provenance", "seed",
        "image", "structure", "dice", "iou", "hausdorff",
    ]
    # one run per cell: the paper's seed, SDM's synthetic images, no provenance phrase
    assert set(published["seed"]) == {42} and set(published["provenance"]) == {""}
    real = published["strategy"] == "real"
    assert set(published.loc[real, "synthetic_source"]) == {""}
    assert set(published.loc[~real, "synthetic_source"]) == {"sdm"}
    # 2 models x (8 + 7 + 8) prompts, 200 images x 3 structures each; clip_seg is skipped
    assert len(published) == 46 * 600
    assert set(published["encoder"]) == {"unfrozen"}
    assert set(published["structure"]) == {"LV", "MYO", "LA"}
    assert published["image"].str.fullmatch(r"patient\d{4}_(2CH|4CH)_(ED|ES)").all()
    assert published["dice"].between(0, 1).all() and published["iou"].between(0, 1).all()
    assert published.loc[published["prompt"] == "P7", "strategy"].ne("synthetic").all()
    row = published[
        (published["model"] == "CRIS") & (published["strategy"] == "real") & (published["prompt"] == "P1")
        & (published["image"] == "patient0001_2CH_ED") & (published["structure"] == "LV")
    ]
    assert row["dice"].item() == pytest.approx(0.950593)
    assert row["hausdorff"].item() == pytest.approx(8.0)  # 800.0 in the file: x100 like the rest


def test_dice_table_reproduces_paper_table_2(published: pd.DataFrame) -> None:
    table = dice_table(published).set_index(["strategy", "model", "encoder", "prompt"])
    assert (table["n"] == 600).all()
    cri = table.loc[("real", "CRIS", "unfrozen", "P1")]
    assert f"{cri['mean']:.2f} +- {cri['std']:.1f}" == "91.00 +- 6.3"
    clip = table.loc[("real", "CLIPSeg", "unfrozen", "P1")]
    assert f"{clip['mean']:.2f} +- {clip['std']:.1f}" == "88.53 +- 7.2"
    checked = 0
    for (strategy, model), row in PAPER_TABLE_2.items():
        for i, cell in enumerate(row.split("|")):
            if not cell:
                assert (strategy, model, "unfrozen", f"P{i}") not in table.index
                continue
            mean_text, std_text = cell.split()
            got = table.loc[(strategy, model, "unfrozen", f"P{i}")]
            assert round(got["mean"], _decimals(mean_text)) == pytest.approx(float(mean_text)), (strategy, model, i)
            assert round(got["std"], _decimals(std_text)) == pytest.approx(float(std_text)), (strategy, model, i)
            checked += 1
    assert checked == 46


def test_rendered_table_bolds_the_papers_best(published: pd.DataFrame) -> None:
    markdown = render_table(dice_table(published), "markdown", encoder="unfrozen")
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in markdown.splitlines()[2:]}
    assert "**46.52 ± 13.30**" in lines[("real", "CLIPSeg")]
    assert lines[("synth-PT:real-FT", "CRIS")].count("**") == 2 * 7  # P1-P7 best, as in the paper
    assert lines[("synthetic", "CRIS")].rstrip().endswith("| N/A |")


def test_compare_reproduces_papers_wilcoxon_tests(published: pd.DataFrame) -> None:
    cris = {"model": "CRIS", "encoder": "unfrozen"}
    real_vs_synthetic = compare(
        published, {**cris, "strategy": "real", "prompt": "P2"}, {**cris, "strategy": "synthetic", "prompt": "P5"},
        test="wilcoxon", alternative="greater",
    )
    assert real_vs_synthetic.n == 600
    assert real_vs_synthetic.mean_diff == pytest.approx(5.19, abs=0.005)  # paper: -5.19 (synthetic - real)
    assert real_vs_synthetic.p_value == pytest.approx(8.8e-73, rel=0.01)  # paper: 8.8e-73
    finetune_vs_real = compare(
        published, {**cris, "strategy": "synth-PT:real-FT", "prompt": "P2"}, {**cris, "strategy": "real", "prompt": "P2"},
        test="wilcoxon", alternative="greater",
    )
    assert finetune_vs_real.p_value == pytest.approx(8.3e-6, rel=0.01)  # paper: 8.3e-6
    assert finetune_vs_real.mean_diff == pytest.approx(0.358, abs=0.001)  # paper prints +0.34
    # the opposite one-sided hypothesis is rejected by nothing
    assert compare(
        published, {**cris, "strategy": "synthetic", "prompt": "P5"}, {**cris, "strategy": "real", "prompt": "P2"},
        alternative="greater",
    ).p_value > 0.99


def test_paper_comparisons_pick_the_papers_cells(published: pd.DataFrame) -> None:
    tests = paper_comparisons(published).set_index(["family", "model"])
    assert tests.loc[("real vs synthetic", "CRIS"), "a"] == "CRIS real unfrozen P2"
    assert tests.loc[("real vs synthetic", "CRIS"), "b"] == "CRIS synthetic unfrozen P5"
    assert tests.loc[("PT-FT vs real", "CRIS"), "a"] == "CRIS synth-PT:real-FT unfrozen P2"
    assert tests.loc[("PT-FT vs real", "CRIS"), "p_value"] == pytest.approx(8.3e-6, rel=0.01)
    assert "frozen vs unfrozen" not in tests.index.get_level_values("family")  # nothing frozen was published


def _write_csv(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("filename,iou,dice,hausdorff_distance,ones_dice_diff,zeros_dice_diff\n" + "\n".join(rows) + "\n")


def test_small_tree_and_its_errors(tmp_path: Path) -> None:
    row = "/x/p1/mask_{k}/patient0001_2CH_ED_gt.png,80.0,{d},150.0,0,0"
    _write_csv(tmp_path / "metrics/camus_metrics_reduce_lr/cris/p1/metrics.csv",
               [row.format(k=1, d=90.0), row.format(k=3, d=70.0)])
    _write_csv(tmp_path / "metrics/camus_metrics_reduce_lr/clip_seg/p1/metrics.csv", [row.format(k=1, d=10.0)])
    frame = load_published(tmp_path)  # the folder above metrics/ is accepted too
    assert frame["model"].tolist() == ["CRIS", "CRIS"]
    assert frame["structure"].tolist() == ["LV", "LA"]
    assert frame["dice"].tolist() == pytest.approx([0.9, 0.7])
    assert frame["hausdorff"].tolist() == pytest.approx([1.5, 1.5])

    bad = tmp_path / "metrics/camus_metrics_reduce_lr/cris/p2/metrics.csv"
    _write_csv(bad, ["/x/p2/mask_1/other_name.png,80.0,90.0,1.0,0,0"])
    with pytest.raises(ValueError, match=r"p2/metrics\.csv.*patientXXXX"):
        load_published(tmp_path)
    _write_csv(bad, [row.format(k=1, d=90.0), row.format(k=1, d=91.0)])
    with pytest.raises(ValueError, match="appears twice"):
        load_published(tmp_path)
    with pytest.raises(ValueError, match="not the authors' metrics tree"):
        load_published(tmp_path / "metrics" / "camus_metrics_reduce_lr")
