"""Hostile inputs: a dataset's own files naming paths outside it, link loops, images that
declare a size no echo has, names with spaces and non-ASCII, HTML in what the report and
the notebooks show (docs/faults.md, "Hostile inputs"). Each is refused naming the file
before any trial runs, or handled.
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlsm.data.io import read_itk, read_png, write_itk, write_png
from vlsm.data.problems import ERROR, WARNING, check_pair
from vlsm.data.records import EchoImage

_HOSTILE_NAME = "Ärzte 🫀 <img src=x onerror=alert(1)> & \"q\" 'x'"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom: CAMUS 2023 and the SDM, DiffEcho and imagefolder layouts (about 1 s)."""
    from vlsm.data.phantom import write_demo_data

    out = tmp_path_factory.mktemp("phantom") / "data"
    write_demo_data(out, n_patients=4, n_test=1, n_val=1, size=(64, 56), sdm_per_image=1,
                    synthetic_formats=("sdm", "diffecho", "imagefolder"))
    return out


def _copy(phantom: Path, fmt: str, to: Path) -> Path:
    shutil.copytree(phantom / fmt, to, symlinks=True)
    return to


def _rewrite_csv(path: Path, line: int, column: str, value: str) -> None:
    """Set one cell of a CSV (line 2 = the first row under the header)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    rows[line - 1][rows[0].index(column)] = value
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


# --- paths that lead out of the dataset folder -------------------------------------------


@pytest.mark.parametrize("written", ["../outside.png", "ABSOLUTE"])
def test_a_metadata_csv_path_leading_out_of_the_imagefolder_is_refused(phantom: Path, tmp_path: Path,
                                                                      written: str) -> None:
    from vlsm.data.imagefolder import load_imagefolder
    from vlsm.data.validate_synthetic import validate_imagefolder

    root = _copy(phantom, "imagefolder", tmp_path / "gen")
    outside = tmp_path / "outside.png"  # a real image: only the path is wrong
    shutil.copy(root / "images" / "patient0001_2CH_ED_0.png", outside)
    written = str(outside) if written == "ABSOLUTE" else written
    _rewrite_csv(root / "metadata.csv", 3, "image", written)
    with pytest.raises(ValueError, match=rf"metadata\.csv: line 3: image '{written}'; expected .*stays inside"):
        load_imagefolder(root, n_val=1)
    errors = [p for p in validate_imagefolder(root, n_val=1, progress=False) if p.severity == ERROR]
    assert [p.path for p in errors] == [root / "metadata.csv"]
    assert "line 3" in errors[0].message and written in errors[0].message


def test_a_diffecho_metadata_path_leading_out_is_refused(phantom: Path, tmp_path: Path) -> None:
    from vlsm.data.diffecho import load_diffecho
    from vlsm.data.validate_synthetic import validate_diffecho

    root = _copy(phantom, "diffecho", tmp_path / "diffecho")
    _rewrite_csv(root / "metadata.csv", 2, "conditioning_image", "../../../etc/passwd")
    with pytest.raises(ValueError, match=r"metadata\.csv: line 2: conditioning_image .*etc/passwd.* leads out"):
        load_diffecho(root, n_val=1)
    errors = [p for p in validate_diffecho(root, n_val=1, progress=False) if p.severity == ERROR]
    assert errors and all(p.path == root / "metadata.csv" for p in errors)
    assert any("line 2" in p.message and "leads out" in p.message for p in errors)


def test_an_absolute_mask_name_in_the_authors_json_is_refused_as_leading_out(tmp_path: Path) -> None:
    import json

    from vlsm.data.synthetic_boost import load_synthetic_boost

    base = tmp_path / "camus"
    write_png(base / "images" / "train" / "patient0001_2CH_ED.png", np.full((16, 16), 80, np.uint8))
    secret = tmp_path / "mask_1" / "x_gt.png"
    write_png(secret, np.full((16, 16), 255, np.uint8))
    entry = {"img_name": "patient0001_2CH_ED.png", "mask_name": str(secret), "prompts": {"p0": ""}}
    (base / "anns").mkdir()
    (base / "anns" / "train.json").write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=r"train\.json entry 0: mask_name .* points outside .*absolute"):
        load_synthetic_boost(base)


def test_an_mhd_whose_data_file_leads_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    header = tmp_path / "patient0001" / "patient0001_2CH_ED.mhd"
    write_itk(header, np.full((16, 16), 9, np.uint8))
    (header.with_suffix(".raw")).rename(tmp_path / "elsewhere.raw")
    text = header.read_text().replace("ElementDataFile = patient0001_2CH_ED.raw", "ElementDataFile = ../elsewhere.raw")
    header.write_text(text)
    with pytest.raises(ValueError, match=r"patient0001_2CH_ED\.mhd: ElementDataFile '\.\./elsewhere\.raw' leads out"):
        read_itk(header)


# --- links: a folder linked in from elsewhere, loops ---------------------------------------


def test_a_linked_in_folder_is_read_and_link_loops_are_skipped_with_a_warning(phantom: Path, tmp_path: Path) -> None:
    from vlsm.data.diffecho import load_diffecho
    from vlsm.data.sdm import load_sdm
    from vlsm.data.validate_synthetic import validate_diffecho, validate_sdm

    expected = len(load_sdm(phantom / "sdm"))
    root = _copy(phantom, "sdm", tmp_path / "sdm")
    shared = tmp_path / "shared-volume"
    shutil.move(root / "4CH_ES", shared)  # as on a cluster: the data lives on a shared volume
    (root / "4CH_ES").symlink_to(shared)
    (root / "2CH_ED" / "images" / "up").symlink_to("../..")  # a loop back to the root
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")  # two links to each other
    assert len(load_sdm(root)) == expected  # no hang, no RecursionError, nothing lost, nothing twice
    findings = validate_sdm(root, progress=False)
    assert not [p for p in findings if p.severity == ERROR]
    warned = {p.path.name for p in findings if p.severity == WARNING and "not followed" in p.message}
    assert warned == {"up", "a", "b"}
    diffecho = _copy(phantom, "diffecho", tmp_path / "diffecho")
    (diffecho / "generated_images" / "loop").symlink_to("..")
    assert len(load_diffecho(diffecho, n_val=1)) == len(load_diffecho(phantom / "diffecho", n_val=1))
    assert any(p.path.name == "loop" for p in validate_diffecho(diffecho, n_val=1, progress=False))


def test_a_camus_patient_link_that_loops_is_an_error_naming_it(phantom: Path, tmp_path: Path) -> None:
    from vlsm.data.camus import load_camus
    from vlsm.data.validate import validate_camus

    root = _copy(phantom, "camus", tmp_path / "camus")
    loop = root / "database_nifti" / "patient0009"
    loop.symlink_to("patient0009")
    with pytest.raises(ValueError, match=r"patient0009: a symbolic link that loops"):
        load_camus(root, n_val=1)
    errors = [p for p in validate_camus(root, n_val=1, progress=False) if p.severity == ERROR]
    assert [p.path for p in errors] == [loop]


# --- declared sizes: decompression bombs, degenerate images --------------------------------


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A small PNG whose IHDR declares width x height (its CRC fixed): what a bomb's header says."""
    write_png(path, np.zeros((8, 8), np.uint8))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _mhd_declaring(path: Path, dims: str) -> Path:
    write_itk(path, np.zeros((8, 8), np.uint8))
    path.write_text(path.read_text().replace("DimSize = 8 8", f"DimSize = {dims}"))
    return path


def _nifti_declaring(path: Path, width: int, height: int) -> Path:
    write_itk(path, np.zeros((8, 8), np.uint8))
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[42:46] = struct.pack("<hh", width, height)  # dim[1], dim[2]
    path.write_bytes(gzip.compress(bytes(data)))
    return path


@pytest.mark.parametrize("make", [
    lambda d: _png_declaring(d / "bomb.png", 20000, 20000),
    lambda d: _png_declaring(d / "bomb.png", 10000, 10000),  # where Pillow only warns, and decodes
    lambda d: _mhd_declaring(d / "bomb.mhd", "20000 20000 1"),
    lambda d: _nifti_declaring(d / "bomb.nii.gz", 20000, 20000),
], ids=["png-20000", "png-10000", "mhd", "nii.gz"])
def test_an_image_declaring_a_huge_size_is_refused_before_decoding(tmp_path: Path, monkeypatch, make) -> None:
    import SimpleITK
    from PIL import Image

    from vlsm.data.declared_size import ImageSizeError

    path = make(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("decoded a file the header check should have refused")
    monkeypatch.setattr(Image, "open", never)
    monkeypatch.setattr(SimpleITK, "ReadImage", never)
    with pytest.raises(ImageSizeError, match=r"declares \d+ x \d+.* above the limit of 16777216.*VLSM_MAX_IMAGE_PIXELS"):
        read_png(path) if path.suffix == ".png" else read_itk(path)
    # validate-data (and the sweep's data check) names the file, its declared size and the limit
    problems = check_pair(EchoImage("sdm", "patient0001", "2CH", "ED", "train", path))
    assert [p.path for p in problems] == [path] and "above the limit" in problems[0].message


@pytest.mark.parametrize("shape", [(1, 1), (1, 64), (64, 1), (0, 0)], ids=["1x1", "one-row", "one-column", "empty"])
def test_a_degenerate_image_is_refused_naming_the_file(tmp_path: Path, shape: tuple[int, int]) -> None:
    from vlsm.data.declared_size import ImageSizeError

    if shape == (0, 0):
        path = _png_declaring(tmp_path / "empty.png", 0, 0)
    else:
        path = tmp_path / "tiny.png"
        write_png(path, np.zeros(shape, np.uint8))
    with pytest.raises(ImageSizeError, match=rf"{path.name}: declares .*at least 8 pixels a side"):
        read_png(path)
    mhd = _mhd_declaring(tmp_path / "tiny.mhd", "1 1 1")
    with pytest.raises(ImageSizeError, match=r"tiny\.mhd: declares 1 x 1 x 1 .*at least 8 pixels"):
        read_itk(mhd)


def test_the_size_limit_is_a_setting(phantom: Path, monkeypatch) -> None:
    from vlsm.data.declared_size import MAX_PIXELS_ENV, ImageSizeError

    image = next((phantom / "imagefolder" / "images").glob("*.png"))  # 64 x 56
    assert read_png(image).shape == (64, 56)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageSizeError, match=r"declares 56 x 64 pixels \(W x H\), 3584 in all, above the limit of 1000"):
        read_png(image)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=r"VLSM_MAX_IMAGE_PIXELS='lots': expected a whole number"):
        read_png(image)


# --- names with spaces and non-ASCII --------------------------------------------------------


def test_names_with_spaces_and_non_ascii_work_through_the_readers_and_the_cache(phantom: Path, tmp_path: Path) -> None:
    from vlsm.data.cache import open_split, prepare_records
    from vlsm.data.imagefolder import load_imagefolder
    from vlsm.data.sdm import load_sdm
    from vlsm.data.validate_synthetic import validate_imagefolder

    base = tmp_path / _HOSTILE_NAME
    root = _copy(phantom, "imagefolder", base / "gen 1")
    (root / "images").rename(root / "Bilder ü")
    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):  # "patient 0001 ❤ <b>.png": spaces, emoji, markup
        name = f"Bilder ü/{row['patient'].replace('patient', 'patient ')} ❤ <b> {i}.png"
        os.rename(root / row["image"].replace("images/", "Bilder ü/"), root / name)
        row["image"] = name
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert not [p for p in validate_imagefolder(root, n_val=1, progress=False) if p.severity == ERROR]
    records = load_imagefolder(root, n_val=1)
    assert [r.name for r in records] == [r.name for r in load_imagefolder(phantom / "imagefolder", n_val=1)]
    paths = prepare_records(records, 32, tmp_path / "cache ü", name="imagefolder", progress=False, workers=1)
    reference = prepare_records(load_imagefolder(phantom / "imagefolder", n_val=1), 32, tmp_path / "cache",
                                name="imagefolder", progress=False, workers=1)
    for split, folder in paths.items():  # the same pixels and cache key: only the paths differ
        assert folder.name == reference[split].name
        assert np.array_equal(open_split(folder).images, open_split(reference[split]).images)
    sdm = _copy(phantom, "sdm", base / "SDM Ärzte")
    assert len(load_sdm(sdm)) == len(load_sdm(phantom / "sdm"))


# --- HTML and Markdown in the report, the tables and the figures -----------------------------


def test_the_report_document_escapes_names_in_html_and_markdown(tmp_path: Path) -> None:
    from analysis.report import _Document

    doc = _Document(title=f"Sweep report: /runs/{_HOSTILE_NAME}", figures_dir=tmp_path)
    doc.heading(f"Encoders {_HOSTILE_NAME}")
    doc.text(f"Generated from /runs/{_HOSTILE_NAME} [a](javascript:alert(1))")
    doc.frame(pd.DataFrame({"arm": [f"synthetic ({_HOSTILE_NAME}) | x"], "trials": ["3"]}), {"trials": str})
    page, markdown = doc.html(), doc.markdown()
    for text in (page, markdown):
        assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt; &amp;" in text
        assert "Ärzte 🫀" in text
    assert "](javascript:" not in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| synthetic")]
    assert table[0].count(" | ") == 1  # the '|' in the name stays inside its cell


def test_table_cells_are_escaped_and_only_marked_cells_are_bold() -> None:
    from analysis.markup import Markup
    from analysis.tables import render_rows

    body = [["<b>x</b><img src=x onerror=alert(1)>", Markup("<b>62.10</b>")]]
    page = render_rows(["arm", "P1"], body, "html")
    assert "<img" not in page and "<td>&lt;b&gt;x&lt;/b&gt;&lt;img" in page and "<td><b>62.10</b></td>" in page
    markdown = render_rows(["arm | x", "P1"], [["a|b <script>", "1"]], "markdown")
    assert "<script>" not in markdown and markdown.splitlines()[0] == "| arm \\| x | P1 |"


def test_a_figure_shows_names_with_dollars_and_underscores_as_written() -> None:
    from analysis.figures import figure_png, strategy_difference_figure

    diff = pd.DataFrame({"encoder": "unfrozen", "model": "CLIPSeg", "arm": "synthetic ($5 a_b$)", "strategy": "synthetic",
                         "synthetic_source": "$5 a_b$", "provenance": "prompt", "prompt": ["P0", "P1"],
                         "diff": [1.0, 2.0], "ci_low": [0.0, 1.0], "ci_high": [2.0, 3.0]})
    fig = strategy_difference_figure(diff, "unfrozen")
    assert figure_png(fig)
    # as written, not as mathtext (which would set "5 a" in italics and b as a subscript)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [r"synthetic (\$5 a_b\$)"]


@pytest.mark.slow  # about 8 s: an example export and two reports with their figures
def test_a_report_on_a_sweep_folder_named_with_html_and_non_ascii(tmp_path: Path) -> None:
    from analysis import write_example_exports
    from analysis.report import build_report

    sweep = tmp_path / _HOSTILE_NAME
    write_example_exports(sweep, prompts=("P1",), n_patients=1)
    for fmt in ("html", "md"):
        text = build_report(sweep, fmt=fmt, n_boot=0).read_text(encoding="utf-8")
        assert "<img src=x" not in text and "Ärzte 🫀 &lt;img src=x onerror=alert(1)&gt; &amp;" in text
