"""SDM CAMUS: writer + reader in both label codings, coding detection, layouts, errors."""

from __future__ import annotations

import numpy as np
import pytest

from vlsm.data.camus import load_camus, write_camus_patient
from vlsm.data.io import read_image, read_label_map, read_png, write_png
from vlsm.data.label_codings import (
    SdmCodingError,
    camus_to_sdm_labels,
    detect_sdm_coding,
    sdm_to_camus_labels,
)
from vlsm.data.records import PHASES, VIEWS, PatientInfo
from vlsm.data.sdm import load_sdm, with_camus_info, write_sdm_image

H, W = 40, 56


@pytest.mark.parametrize("coding", ["labels", "sector"])
def test_write_load_round_trip(tmp_path, make_image, make_label_map, coding):
    labels = make_label_map(H, W)
    for patient, split in (("patient0001", "validation"), ("patient0051", "training")):
        for index in range(2):
            write_sdm_image(
                tmp_path,
                patient,
                "4CH",
                "ES",
                split,
                index,
                make_image(H, W, seed=index),
                labels,
                coding,
            )
    label_dir = "annotations" if coding == "labels" else "sector_annotations"
    name = "patient0051_4CH_ES_training_1.png"
    assert (tmp_path / "4CH_ES" / "images" / "training" / name).is_file()
    assert (tmp_path / "4CH_ES" / label_dir / "training" / name).is_file()

    records = load_sdm(tmp_path)
    assert [(r.split, r.patient, r.variant) for r in records] == [
        ("train", "patient0051", 0),
        ("train", "patient0051", 1),
        ("val", "patient0001", 0),
        ("val", "patient0001", 1),
    ]
    for rec in records:
        assert (rec.source, rec.view, rec.phase, rec.synthetic) == ("sdm", "4CH", "ES", True)
        assert rec.name == f"{rec.patient}_4CH_ES_v{rec.variant}"
        assert rec.mask_paths[0].parent.parent.name == label_dir
        np.testing.assert_array_equal(read_image(rec), make_image(H, W, seed=rec.variant))
        on_disk = read_png(rec.mask_paths[0])  # (H, W) as coded in the file
        assert detect_sdm_coding(on_disk, rec.mask_paths[0]) == coding
        np.testing.assert_array_equal(read_label_map(rec), labels)  # (H, W) in 0-3


def test_sector_coding_values(make_label_map, make_cone):
    labels, cone = make_label_map(H, W), make_cone(H, W)
    sector = camus_to_sdm_labels(labels, "sector", cone)
    # 0 outside cone, 1 LV, 2 inside cone, 3 MYO, 4 LA (echo_from_noise's augment script)
    assert set(np.unique(sector[~cone])) == {0}
    np.testing.assert_array_equal(sector == 1, labels == 1)
    np.testing.assert_array_equal(sector == 3, labels == 2)
    np.testing.assert_array_equal(sector == 4, labels == 3)
    np.testing.assert_array_equal(sector == 2, cone & (labels == 0))
    np.testing.assert_array_equal(sdm_to_camus_labels(sector, "sector"), labels)
    np.testing.assert_array_equal(
        sdm_to_camus_labels(np.array([[0, 1, 2, 3, 4]]), "sector"), [[0, 1, 0, 2, 3]]
    )
    with pytest.raises(ValueError, match=r"\[4\] are not in the 'labels' coding"):
        sdm_to_camus_labels(sector, "labels")
    with pytest.raises(ValueError, match="coding must be one of"):
        sdm_to_camus_labels(labels, "rgb")


def test_detect_coding(make_label_map, make_cone, tmp_path):
    labels, cone = make_label_map(H, W), make_cone(H, W)
    sector = camus_to_sdm_labels(labels, "sector", cone)
    assert detect_sdm_coding(labels) == "labels"
    assert detect_sdm_coding(sector) == "sector"
    tight = camus_to_sdm_labels(labels, "sector", np.zeros((H, W), bool))  # no cone background
    assert detect_sdm_coding(tight) == "sector"  # LA coded 4 decides
    no_la = sector.copy()
    no_la[no_la == 4] = 2  # a sector map without LA has no 4: the big cone decides
    assert detect_sdm_coding(no_la) == "sector"
    assert detect_sdm_coding(np.where(labels == 2, 0, labels)) == "labels"  # no 2 at all
    bad = labels.copy()
    bad[0, 0] = 7
    where = tmp_path / "x.png"
    with pytest.raises(ValueError, match=r"x\.png: unknown label value\(s\) \[7\]"):
        detect_sdm_coding(bad, where)
    only_02 = np.where(labels == 2, 2, 0).astype(np.uint8)
    with pytest.raises(SdmCodingError, match=r"x\.png: ambiguous"):
        detect_sdm_coding(only_02, where)
    # myocardium dominating a tiny heart: neither a big cone nor a plain heart
    mixed = np.zeros((H, W), np.uint8)
    mixed[:5, :5], mixed[0, 0] = 2, 1
    with pytest.raises(SdmCodingError, match="ambiguous"):
        detect_sdm_coding(mixed)


def test_tolerant_layouts_and_test_files_ignored(tmp_path, make_image, make_label_map, make_cone):
    labels, cone = make_label_map(H, W), make_cone(H, W)
    name = "patient0060_2CH_ED_training_3.png"
    # SDM inference output: samples/ + labels/ (sector coding)
    write_png(tmp_path / "a" / "samples" / name, make_image(H, W))
    write_png(tmp_path / "a" / "labels" / name, camus_to_sdm_labels(labels, "sector", cone))
    # images/ + masks/, one level deeper, labels coding
    name2 = "patient0002_2CH_ES_validation_0.png"
    write_png(tmp_path / "b" / "images" / "validation" / name2, make_image(H, W))
    write_png(tmp_path / "b" / "masks" / "validation" / name2, labels)
    # real test images and unrelated PNGs are not SDM records
    write_png(tmp_path / "b" / "images" / "testing" / "patient0001_2CH_ED_testing.png", labels)
    write_png(tmp_path / "b" / "preview.png", labels)
    records = load_sdm(tmp_path)
    assert [r.image_path.name for r in records] == [name, name2]
    assert [r.mask_paths[0] for r in records] == [
        tmp_path / "a" / "labels" / name,
        tmp_path / "b" / "masks" / "validation" / name2,
    ]
    for rec in records:
        np.testing.assert_array_equal(read_label_map(rec), labels)


def test_label_folder_preference(tmp_path, make_image, make_label_map):
    labels = make_label_map(H, W)
    write_sdm_image(tmp_path, "patient0070", "2CH", "ED", "training", 0, make_image(H, W), labels)
    write_sdm_image(
        tmp_path, "patient0070", "2CH", "ED", "training", 0, make_image(H, W), labels, "sector"
    )
    (rec,) = load_sdm(tmp_path)
    assert rec.mask_paths[0].parent.parent.name == "annotations"  # not sector_annotations


def test_errors(tmp_path, make_image, make_label_map):
    with pytest.raises(ValueError, match="is not a folder"):
        load_sdm(tmp_path / "nope")
    with pytest.raises(ValueError, match="no images named"):
        load_sdm(tmp_path)
    orphan = tmp_path / "images" / "training" / "patient0099_4CH_ED_training_0.png"
    write_png(orphan, make_image(H, W))
    (tmp_path / "annotations").mkdir()
    with pytest.raises(ValueError, match=r"patient0099_4CH_ED_training_0\.png: no label map found"):
        load_sdm(tmp_path)
    img, lab = make_image(H, W), make_label_map(H, W)
    with pytest.raises(ValueError, match="split must be one of"):
        write_sdm_image(tmp_path, "patient0001", "2CH", "ED", "train", 0, img, lab)
    with pytest.raises(ValueError, match="index must be"):
        write_sdm_image(tmp_path, "patient0001", "2CH", "ED", "training", -1, img, lab)
    with pytest.raises(ValueError, match="differs from image"):
        write_sdm_image(tmp_path, "patient0001", "2CH", "ED", "training", 0, img, lab[:10])


def test_with_camus_info(tmp_path, make_image, make_label_map):
    info = PatientInfo(sex="M", age=61, image_quality="Good", ef=48.0)
    images = {(v, p): make_image(8, 12) for v in VIEWS for p in PHASES}
    write_camus_patient(tmp_path / "c", "2019", "patient0001", images, {}, {v: info for v in VIEWS})
    test_info = PatientInfo(sex="F", age=30, image_quality="Poor")
    write_camus_patient(
        tmp_path / "c",
        "2019",
        "patient0001",
        images,
        {},
        {v: test_info for v in VIEWS},
        testing=True,
    )
    write_sdm_image(
        tmp_path / "s",
        "patient0001",
        "2CH",
        "ED",
        "validation",
        0,
        make_image(H, W),
        make_label_map(H, W),
    )
    write_sdm_image(
        tmp_path / "s",
        "patient0002",
        "2CH",
        "ED",
        "validation",
        0,
        make_image(H, W),
        make_label_map(H, W),
    )
    camus = load_camus(tmp_path / "c", n_val=1)
    with_info = with_camus_info(load_sdm(tmp_path / "s"), camus)
    assert [r.info for r in with_info] == [info, PatientInfo()]  # training info, not test
