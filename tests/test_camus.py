"""CAMUS (2019 .mhd and 2023 .nii.gz) writers and readers, pixel I/O and splits.

Tiny non-square images (H != W, varying per patient) are written with our writers in
the releases' layouts, then read back through the public readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlsm.data.camus import (
    detect_camus_release,
    format_info_cfg,
    load_camus,
    parse_info_cfg,
    write_camus_patient,
    write_camus_split_files,
)
from vlsm.data.io import (
    read_image,
    read_itk,
    read_label_map,
    write_itk,
    write_png,
)
from vlsm.data.records import PHASES, VIEWS, EchoImage, PatientInfo

SPACING = (0.25, 0.5)  # (row, col) mm, deliberately different
INFO = PatientInfo(
    sex="F", age=56, image_quality="Medium", ef=57.5, ed_frame=1, es_frame=14, n_frames=18
)


def _size(i: int) -> tuple[int, int]:
    """Per-patient (H, W): non-square and different for every patient."""
    return 40 + 2 * (i % 3), 56 + 4 * (i % 2)


def _write_patient(root: Path, release: str, i: int, make_image, make_label_map, **kw) -> None:
    h, w = _size(i)
    images = {(v, p): make_image(h, w, seed=i) for v in VIEWS for p in PHASES}
    labels = kw.pop("labels", None)
    if labels is None:
        labels = {k: make_label_map(h, w) for k in images}
    infos = {v: INFO for v in VIEWS}
    write_camus_patient(root, release, f"patient{i:04d}", images, labels, infos, SPACING, **kw)


@pytest.fixture
def camus2019(tmp_path, make_image, make_label_map) -> Path:
    """5 training patients, 2 test patients without ground truth (numbered 0001-0002)."""
    root = tmp_path / "camus2019"
    for i in range(1, 6):
        _write_patient(root, "2019", i, make_image, make_label_map)
    for i in range(1, 3):
        none = {(v, p): None for v in VIEWS for p in PHASES}
        _write_patient(root, "2019", i, make_image, make_label_map, labels=none, testing=True)
    return root


@pytest.fixture
def camus2023(tmp_path, make_image, make_label_map) -> Path:
    """8 patients; official split: train 1-4, val 5-6, test 7-8."""
    root = tmp_path / "camus2023"
    for i in range(1, 9):
        _write_patient(root, "2023", i, make_image, make_label_map)
    names = [f"patient{i:04d}" for i in range(1, 9)]
    write_camus_split_files(root, {"train": names[:4], "val": names[4:6], "test": names[6:]})
    return root


# --- pixel I/O ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.mhd", "a.nii.gz", "a.png"])
def test_pixel_round_trip_keeps_h_w(tmp_path, name):
    array = np.arange(40 * 56, dtype=np.uint32).reshape(40, 56).astype(np.uint8)  # (H, W)
    path = tmp_path / name
    if name.endswith(".png"):
        write_png(path, array)
    else:
        write_itk(path, array, SPACING)
    rec = EchoImage("t", "patient0001", "2CH", "ED", "train", path)
    back = read_image(rec)
    assert back.shape == (40, 56) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, array)
    if not name.endswith(".png"):
        assert read_itk(path)[1] == pytest.approx(SPACING, rel=1e-6)
    # nothing but the target files is left in the folder (atomic writes clean up)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["a.mhd", "a.raw"] if name == "a.mhd" else [name])


def test_read_itk_squeezes_singleton_z(tmp_path):
    array = np.random.default_rng(0).integers(0, 255, (30, 44)).astype(np.uint8)
    write_itk(tmp_path / "v.mhd", array, (0.3, 0.6), singleton_z=True)
    assert "NDims = 3" in (tmp_path / "v.mhd").read_text()
    back, spacing = read_itk(tmp_path / "v.mhd")
    assert back.shape == (30, 44)
    np.testing.assert_array_equal(back, array)
    assert spacing == pytest.approx((0.3, 0.6))


def test_writers_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        write_png(tmp_path / "x.png", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match=r"x\.png.*\.mhd"):
        write_itk(tmp_path / "x.png", np.zeros((2, 3), np.uint8))


# --- release detection and Info cfg ---------------------------------------------------


def test_detect_release(camus2019, camus2023, tmp_path):
    assert detect_camus_release(camus2019) == "2019"
    assert detect_camus_release(camus2023) == "2023"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty.*training/.*database_nifti/"):
        detect_camus_release(empty)
    (camus2023 / "training").mkdir()
    with pytest.raises(ValueError, match="both"):
        detect_camus_release(camus2023)


def test_info_cfg_2019_lvef_and_2023_ef(tmp_path):
    p2019 = tmp_path / "Info_2CH.cfg"
    p2019.write_text(
        "ED: 1\nES: 14\nNbFrame: 18\nSex: F\nAge: 56\nImageQuality: Medium\n"
        "LVedv: 90.5\nLVesv: 40.2\nLVef: 55.6\n"
    )
    info = parse_info_cfg(p2019)
    assert info == PatientInfo("F", 56, "Medium", 55.6, 1, 14, 18)
    p2023 = tmp_path / "Info_4CH.cfg"
    p2023.write_text(
        "ED: 2\nES: 12\nNbFrame: 20\nSex: M\nAge: 71\nImageQuality: Poor\nEF: 38\nFrameRate: 50\n"
    )
    assert parse_info_cfg(p2023) == PatientInfo("M", 71, "Poor", 38.0, 2, 12, 20)
    assert "LVef: 57.5" in format_info_cfg(INFO, "2019")
    assert "EF: 57.5" in format_info_cfg(INFO, "2023")
    assert "LVef" not in format_info_cfg(INFO, "2023")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("Sex: F\nAge 56\nImageQuality: Good\n", r"Info\.cfg: line 2: expected a `Key: value`"),
        ("Age: 56\nImageQuality: Good\n", r"Info\.cfg: missing field Sex \(prompts P4-P6"),
        ("Sex: X\nAge: 56\nImageQuality: Good\n", r"Info\.cfg: line 1: Sex must be one of M, F, got 'X'"),
        ("Sex: F\nAge: old\nImageQuality: Good\n", r"Info\.cfg: line 2: Age must be a whole number"),
        ("Sex: F\nAge: 5\nImageQuality: Great\n", r"Info\.cfg: line 3: ImageQuality must be one of"),
        ("Sex: F\nAge: 5\nImageQuality: Good\nES: 9\nNbFrame: 8\n", r"Info\.cfg: ES frame 9 is beyond NbFrame 8"),
    ],
)
def test_info_cfg_errors_name_file_and_line(tmp_path, text, pattern):
    path = tmp_path / "Info.cfg"
    path.write_text(text)
    with pytest.raises(ValueError, match=pattern):
        parse_info_cfg(path)


def test_missing_info_cfg(tmp_path):
    with pytest.raises(ValueError, match=r"Info_2CH\.cfg: CAMUS info file not found"):
        parse_info_cfg(tmp_path / "Info_2CH.cfg")


# --- 2019 release ---------------------------------------------------------------------


def test_load_2019_layout_splits_pixels(camus2019, make_label_map):
    patient_dir = camus2019 / "training" / "patient0001"
    assert sorted(p.name for p in patient_dir.iterdir()) == sorted(
        [
            f"patient0001_{v}_{p}{gt}.{ext}"
            for v in VIEWS
            for p in PHASES
            for gt in ("", "_gt")
            for ext in ("mhd", "raw")
        ]
        + ["Info_2CH.cfg", "Info_4CH.cfg"]
    )
    assert "LVef: 57.5" in (patient_dir / "Info_2CH.cfg").read_text()
    assert not list((camus2019 / "testing" / "patient0001").glob("*_gt.mhd"))

    records = load_camus(camus2019, n_val=2)
    assert len(records) == 7 * 4
    by_split = {
        s: sorted({r.patient for r in records if r.split == s}) for s in ("train", "val", "test")
    }
    assert by_split == {
        "train": ["patient0003", "patient0004", "patient0005"],
        "val": ["patient0001", "patient0002"],
        "test": ["patient0001", "patient0002"],
    }
    assert {r.source for r in records} == {"camus2019"}
    for rec in records:
        assert rec.info == INFO
        i = int(rec.patient[-4:])
        image = read_image(rec)
        assert image.shape == _size(i) and image.dtype == np.uint8
        assert read_itk(rec.image_path)[1] == pytest.approx(SPACING)
        if rec.split == "test":
            assert rec.mask_paths == ()
            assert rec.image_path.parent.parent.name == "testing"
            with pytest.raises(ValueError, match="no ground-truth mask"):
                read_label_map(rec)
        else:
            np.testing.assert_array_equal(read_label_map(rec), make_label_map(*_size(i)))


def test_2019_has_no_official_split(camus2019):
    with pytest.raises(ValueError, match="2019 release.*split_scheme='paper'"):
        load_camus(camus2019, "official")
    with pytest.raises(ValueError, match="split_scheme must be one of"):
        load_camus(camus2019, "random")


def test_paper_split_default_50_val(tmp_path, make_image, make_label_map):
    """The paper rule with its real size: of 53 non-test patients, 0001-0050 validate."""
    root = tmp_path / "c"
    for i in range(1, 54):
        h, w = 8, 12
        images = {("2CH", p): make_image(h, w) for p in PHASES} | {
            ("4CH", p): make_image(h, w) for p in PHASES
        }
        write_camus_patient(root, "2019", f"patient{i:04d}", images, {}, {v: INFO for v in VIEWS})
    records = load_camus(root)
    val = {r.patient for r in records if r.split == "val"}
    train = {r.patient for r in records if r.split == "train"}
    assert val == {f"patient{i:04d}" for i in range(1, 51)}
    assert train == {"patient0051", "patient0052", "patient0053"}


# --- 2023 release ---------------------------------------------------------------------


def test_load_2023_paper_and_official(camus2023, make_label_map):
    patient_dir = camus2023 / "database_nifti" / "patient0007"
    assert (patient_dir / "patient0007_4CH_ES_gt.nii.gz").is_file()
    assert "EF: 57.5" in (patient_dir / "Info_4CH.cfg").read_text()
    assert (camus2023 / "database_split" / "subgroup_testing.txt").read_text() == (
        "patient0007\npatient0008\n"
    )

    def splits(records):
        return {
            s: sorted({int(r.patient[-4:]) for r in records if r.split == s})
            for s in ("train", "val", "test")
        }

    paper = load_camus(camus2023, n_val=3)
    assert splits(paper) == {"train": [4, 5, 6], "val": [1, 2, 3], "test": [7, 8]}
    official = load_camus(camus2023, "official")
    assert splits(official) == {"train": [1, 2, 3, 4], "val": [5, 6], "test": [7, 8]}
    assert {r.source for r in official} == {"camus2023"}
    for rec in official:
        i = int(rec.patient[-4:])
        assert read_image(rec).shape == _size(i)
        np.testing.assert_array_equal(read_label_map(rec), make_label_map(*_size(i)))
        assert read_itk(rec.image_path)[1] == pytest.approx(SPACING, rel=1e-6)
        assert rec.info.ef == 57.5


def test_2023_split_file_errors(camus2023):
    (camus2023 / "database_split" / "subgroup_validation.txt").unlink()
    assert load_camus(camus2023, n_val=1)  # paper needs only the test list
    with pytest.raises(ValueError, match=r"subgroup_validation\.txt: split file not found"):
        load_camus(camus2023, "official")
    write_camus_split_files(camus2023, {"test": ["patient0007", "patient0099"]})
    with pytest.raises(ValueError, match=r"patient0099.*no folder"):
        load_camus(camus2023)
    (camus2023 / "database_split" / "subgroup_testing.txt").write_text("patient7\n")
    with pytest.raises(ValueError, match=r"subgroup_testing\.txt: line 1: expected a patient id"):
        load_camus(camus2023)
    with pytest.raises(ValueError, match="both splits"):
        write_camus_split_files(camus2023, {"train": ["patient0001"], "test": ["patient0001"]})


def test_missing_files_are_named(camus2023):
    (camus2023 / "database_nifti" / "patient0002" / "patient0002_4CH_ES.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"patient0002_4CH_ES\.nii\.gz: CAMUS image not found"):
        load_camus(camus2023)
    (camus2023 / "database_nifti" / "patient0001" / "Info_2CH.cfg").unlink()
    with pytest.raises(ValueError, match=r"patient0001/Info_2CH\.cfg: CAMUS info file not found"):
        load_camus(camus2023)


def test_unknown_label_value_is_named(camus2023):
    gt = camus2023 / "database_nifti" / "patient0001" / "patient0001_2CH_ED_gt.nii.gz"
    bad = np.zeros(_size(1), np.uint8)
    bad[3, 4] = 7
    write_itk(gt, bad)
    rec = next(
        r for r in load_camus(camus2023) if r.patient == "patient0001" and r.name.endswith("2CH_ED")
    )
    with pytest.raises(
        ValueError, match=r"patient0001_2CH_ED_gt\.nii\.gz: unknown label value\(s\) \[7\]"
    ):
        read_label_map(rec)


def test_writer_validates(tmp_path, make_image):
    img = make_image(10, 14)
    with pytest.raises(ValueError, match="release must be one of"):
        write_camus_patient(tmp_path, "2020", "patient0001", {}, {}, {})
    with pytest.raises(ValueError, match="patient must look like"):
        write_camus_patient(tmp_path, "2019", "p1", {}, {}, {})
    with pytest.raises(ValueError, match="view, phase"):
        write_camus_patient(tmp_path, "2019", "patient0001", {("3CH", "ED"): img}, {}, {})
    with pytest.raises(ValueError, match=r"values \[5\] outside 0-3"):
        write_camus_patient(
            tmp_path,
            "2019",
            "patient0001",
            {("2CH", "ED"): img},
            {("2CH", "ED"): np.full(img.shape, 5, np.uint8)},
            {},
        )
    with pytest.raises(ValueError, match="shape"):
        write_camus_patient(
            tmp_path,
            "2019",
            "patient0001",
            {("2CH", "ED"): img},
            {("2CH", "ED"): np.zeros((3, 3), np.uint8)},
            {},
        )


# --- the authors' three binary masks --------------------------------------------------


def test_three_binary_masks_combine(tmp_path, make_image, make_label_map):
    labels = make_label_map(40, 56)
    paths = []
    for k in (1, 2, 3):
        paths.append(tmp_path / f"mask_{k}" / "patient0001_2CH_ED_gt.png")
        write_png(paths[-1], np.where(labels == k, 255, 0).astype(np.uint8))
    write_png(tmp_path / "img.png", make_image(40, 56))
    rec = EchoImage(
        "synthetic-boost", "patient0001", "2CH", "ED", "test", tmp_path / "img.png", tuple(paths)
    )
    np.testing.assert_array_equal(read_label_map(rec), labels)
    write_png(paths[2], np.where(labels > 0, 255, 0).astype(np.uint8))  # LA mask covers all
    with pytest.raises(ValueError, match=r"mask_3/patient0001_2CH_ED_gt\.png: .*overlaps"):
        read_label_map(rec)
    rec2 = EchoImage(
        "x", "patient0001", "2CH", "ED", "test", tmp_path / "img.png", tuple(paths[:2])
    )
    with pytest.raises(ValueError, match="2 mask paths"):
        read_label_map(rec2)


# --- partial ground truth and truncated files ------------------------------------------


def test_partial_test_ground_truth_is_an_error(tmp_path, make_image, make_label_map):
    """A 2019 test patient missing one _gt file must not silently leave the test set."""
    root = tmp_path / "c"
    for i in range(1, 4):
        _write_patient(root, "2019", i, make_image, make_label_map)
        _write_patient(root, "2019", i, make_image, make_label_map, testing=True)
    assert sum(r.split == "test" and bool(r.mask_paths) for r in load_camus(root, n_val=1)) == 12
    gt = root / "testing" / "patient0002" / "patient0002_4CH_ES_gt.mhd"
    gt.unlink()
    gt.with_suffix(".raw").unlink()
    with pytest.raises(ValueError, match=r"testing/patient0002/patient0002_4CH_ES_gt\.mhd.*test"):
        load_camus(root, n_val=1)


def test_partial_train_ground_truth_is_an_error(camus2023):
    gt = camus2023 / "database_nifti" / "patient0003" / "patient0003_2CH_ED_gt.nii.gz"
    gt.unlink()
    with pytest.raises(ValueError, match=r"patient0003_2CH_ED_gt\.nii\.gz.*train"):
        load_camus(camus2023, "official")


def _cut(path: Path, keep: int) -> None:
    """Keep only the first `keep` bytes of path (a negative keep drops that many)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize(
    ("name", "data_file"),
    [("a.mhd", "a.raw"), ("a.nii", "a.nii"), ("a.nii.gz", "a.nii.gz")],
)
def test_read_itk_refuses_truncated_files(tmp_path, name, data_file):
    """SimpleITK zero-fills what is missing; read_itk must refuse instead."""
    array = np.arange(40 * 56, dtype=np.uint32).reshape(40, 56).astype(np.uint8)  # (H, W)
    write_itk(tmp_path / name, array, SPACING, singleton_z=name.endswith(".mhd"))
    read_itk(tmp_path / name)  # complete: fine
    _cut(tmp_path / data_file, -300)
    with pytest.raises(ValueError, match=rf"{data_file}: truncated: expected (at least )?\d+ bytes.*found \d+"):
        read_itk(tmp_path / name)


def test_read_itk_refuses_a_short_payload_in_a_whole_gzip_stream(tmp_path):
    import gzip

    array = np.full((40, 56), 7, np.uint8)
    write_itk(tmp_path / "a.nii.gz", array)
    data = gzip.decompress((tmp_path / "a.nii.gz").read_bytes())
    (tmp_path / "a.nii.gz").write_bytes(gzip.compress(data[:-100]))  # a valid stream, too short
    with pytest.raises(ValueError, match=r"a\.nii\.gz: truncated: expected at least 2592 bytes.*found 2492"):
        read_itk(tmp_path / "a.nii.gz")
