"""The phantom echo generator and `vlsm demo-data`: pixels, anatomy, files, atomicity.

    .venv/bin/python -m pytest -q tests/test_phantom.py

Tiny images (64 x 56) and 6 patients keep every test well under a few seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vlsm.data import phantom, phantom_cli
from vlsm.data.camus import load_camus
from vlsm.data.io import read_image, read_label_map
from vlsm.data.phantom import (
    MANIFEST_NAME,
    make_patient_info,
    render_phantom,
    sample_anatomy,
    sector_mask,
    write_demo_data,
)
from vlsm.data.records import PHASES, QUALITIES, VIEWS, PatientInfo
from vlsm.data.sdm import load_sdm

SIZE = (64, 56)
TINY = dict(n_patients=6, n_test=2, n_val=1, sdm_per_image=1, size=SIZE)


def _patient(seed: int) -> tuple[phantom.Anatomy, dict[str, PatientInfo]]:
    rng = np.random.default_rng([seed, 0])
    infos = {"2CH": make_patient_info(rng, "2CH")}
    infos["4CH"] = make_patient_info(rng, "4CH", patient=infos["2CH"])
    return sample_anatomy(np.random.default_rng([seed, 1])), infos


def _render(seed: int, view: str, phase: str, size=SIZE, quality: str | None = "keep"):
    anatomy, infos = _patient(seed)
    info = infos[view]
    if quality != "keep":
        info = PatientInfo(image_quality=quality, ef=info.ef)
    return render_phantom(np.random.default_rng([seed, 2]), view, phase, info, size,
                          anatomy=anatomy)


def _centroid_row(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[0].mean())


# --- pixels ------------------------------------------------------------------------------


def test_render_is_deterministic_per_seed() -> None:
    info = PatientInfo(image_quality="Good", ef=55.0)
    a = render_phantom(np.random.default_rng(7), "2CH", "ED", info, SIZE)
    b = render_phantom(np.random.default_rng(7), "2CH", "ED", info, SIZE)
    c = render_phantom(np.random.default_rng(8), "2CH", "ED", info, SIZE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])  # a new anatomy, not just new speckle


@pytest.mark.parametrize("seed", range(12))
def test_every_image_holds_three_plausible_structures(seed: int) -> None:
    for view in VIEWS:
        for phase in PHASES:
            image, label = _render(seed, view, phase)
            assert image.shape == label.shape == SIZE
            assert image.dtype == label.dtype == np.uint8
            assert set(np.unique(label)) == {0, 1, 2, 3}, (seed, view, phase)
            lv, myo, la = label == 1, label == 2, label == 3
            # LA below the LV (apex at the top, atria at the far end of the sector).
            assert _centroid_row(la) > _centroid_row(lv) + 0.1 * SIZE[0]
            # The myocardium surrounds the LV: its cavity touches only MYO and LA.
            border = ndimage.binary_dilation(lv) & ~lv
            assert np.all(np.isin(label[border], (2, 3))), (seed, view, phase)
            assert np.count_nonzero(label[border] == 2) > np.count_nonzero(label[border] == 3)
            # ... and lies on both sides of it, and above it (the apex).
            rows, cols = np.nonzero(lv)
            mid = int(np.median(rows))
            myo_cols = np.nonzero(myo[mid])[0]
            assert myo_cols.min() < cols[rows == mid].min() < cols[rows == mid].max() < myo_cols.max()
            assert np.nonzero(myo)[0].min() < rows.min()
            # Relative sizes: the heart is a part of the image, the LV its largest cavity at ED.
            assert 0.02 < lv.mean() < 0.25 and 0.01 < myo.mean() < 0.2 and 0.01 < la.mean() < 0.15
            if phase == "ED":
                assert lv.sum() > la.sum()


@pytest.mark.parametrize("size", [(40, 40), (64, 56)])
def test_lv_touches_only_myocardium_and_atrium_over_many_hearts(size: tuple[int, int]) -> None:
    """The horseshoe closes around the LV on coarse, tilted pixel grids too."""
    for seed in range(60):
        anatomy = sample_anatomy(np.random.default_rng(seed))
        for view in VIEWS:
            info = PatientInfo(ef=float(np.random.default_rng(seed).uniform(20, 75)))
            _, label = render_phantom(np.random.default_rng(seed), view, "ED", info, size,
                                      anatomy=anatomy)
            lv = label == 1
            border = ndimage.binary_dilation(lv) & ~lv
            assert np.all(np.isin(label[border], (2, 3))), (size, seed, view)


@pytest.mark.parametrize("seed", range(6))
def test_lv_larger_at_ed_la_larger_at_es(seed: int) -> None:
    for view in VIEWS:
        _, ed = _render(seed, view, "ED")
        _, es = _render(seed, view, "ES")
        assert (ed == 1).sum() > 1.1 * (es == 1).sum()
        assert (es == 3).sum() > (ed == 3).sum()


def test_ef_sets_the_contraction() -> None:
    anatomy = sample_anatomy(np.random.default_rng(3))
    es_area = {}
    for ef in (30.0, 65.0):
        info = PatientInfo(image_quality="Good", ef=ef)
        _, label = render_phantom(np.random.default_rng(0), "2CH", "ES", info, (128, 112),
                                  anatomy=anatomy)
        es_area[ef] = (label == 1).sum()
    assert es_area[30.0] > 1.2 * es_area[65.0]


def test_sector_is_black_outside_and_lit_inside() -> None:
    cone = sector_mask(SIZE)
    assert 0.4 < cone.mean() < 0.9
    assert not cone[0, 0] and not cone[0, -1] and cone[SIZE[0] // 2, SIZE[1] // 2]
    for seed in range(4):
        for view in VIEWS:
            image, label = _render(seed, view, "ED")
            assert np.all(image[~cone] == 0)
            assert np.all(image[cone] >= 1)
            assert np.all(label[~cone] == 0)


def test_4ch_shows_unlabelled_right_heart_2ch_does_not() -> None:
    """Dark, unlabelled regions on the image left (RV, RA) exist in 4CH only."""
    size = (128, 112)
    cone = sector_mask(size)
    for seed in range(6):
        dark_left = {}
        for view in VIEWS:
            image, label = _render(seed, view, "ED", size, quality="Good")
            smooth = ndimage.uniform_filter(image.astype(float), 5)
            blood = np.median(smooth[label == 1])
            tissue = np.median(smooth[cone & (label == 0)])
            # away from blurred edges of the cone and of the labelled structures
            away = ndimage.binary_erosion(cone, iterations=4)
            away &= ~ndimage.binary_dilation(label > 0, iterations=4)
            dark = away & (smooth < blood + 0.3 * (tissue - blood))
            dark_left[view] = dark[:, : size[1] // 2].sum()
        assert dark_left["4CH"] > 2 * dark_left["2CH"] + 150, (seed, dark_left)


def test_image_quality_lowers_contrast() -> None:
    size = (128, 112)
    contrast = {}
    for quality in QUALITIES:
        values = []
        for seed in range(3):
            image, label = _render(seed, "2CH", "ED", size, quality=quality)
            values.append(image[label == 2].mean() - image[label == 1].mean())
        contrast[quality] = np.mean(values)
    assert contrast["Good"] > contrast["Medium"] > contrast["Poor"] > 5
    # SDM-like images (no quality attribute) render too.
    image, label = _render(0, "4CH", "ES", quality=None)
    assert image[label == 2].mean() > image[label == 1].mean()


def test_structures_are_visible_in_the_pixels() -> None:
    """Cavities dark, myocardium bright: what makes the phantom learnable."""
    for seed in range(4):
        image, label = _render(seed, "4CH", "ED", (128, 112), quality="Good")
        lv, myo, la = (image[label == k].mean() for k in (1, 2, 3))
        assert myo > 2 * lv and myo > 2 * la


def test_patient_info() -> None:
    rng = np.random.default_rng(0)
    infos = [make_patient_info(rng, "2CH") for _ in range(200)]
    assert {i.sex for i in infos} == {"M", "F"}
    assert {i.image_quality for i in infos} == set(QUALITIES)
    assert all(20 <= i.age <= 90 for i in infos) and len({i.age for i in infos}) > 30
    assert all(20.0 <= i.ef <= 75.0 for i in infos)
    assert all(1 == i.ed_frame < i.es_frame <= i.n_frames for i in infos)
    other = make_patient_info(rng, "4CH", patient=infos[0])
    assert (other.sex, other.age, other.ef) == (infos[0].sex, infos[0].age, infos[0].ef)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(view="3CH"), "view='3CH'"),
        (dict(phase="MD"), "phase='MD'"),
        (dict(size=(16, 56)), "at least 32"),
        (dict(info=PatientInfo(image_quality="Great")), "image_quality='Great'"),
    ],
)
def test_render_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = dict(view="2CH", phase="ED", info=PatientInfo(), size=SIZE) | kwargs
    with pytest.raises(ValueError, match=match):
        render_phantom(np.random.default_rng(0), **args)


# --- the dataset on disk -------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_2023(tmp_path_factory: pytest.TempPathFactory) -> phantom.DemoData:
    return write_demo_data(tmp_path_factory.mktemp("demo") / "d", seed=1, **TINY)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_demo_data_round_trip_2023(demo_2023: phantom.DemoData) -> None:
    d = demo_2023
    assert (d.train_patients, d.val_patients, d.test_patients) == (
        ("patient0002", "patient0003", "patient0004"), ("patient0001",),
        ("patient0005", "patient0006"))
    records = d.camus_records()
    assert load_camus(d.camus_root, "paper", n_val=1) == records
    by_split = {s: sorted({r.patient for r in records if r.split == s}) for s in ("train", "val", "test")}
    assert by_split == {"train": list(d.train_patients), "val": list(d.val_patients),
                        "test": list(d.test_patients)}
    assert len(records) == 6 * 4
    official = load_camus(d.camus_root, "official")
    assert {(r.patient, r.split) for r in official} == {(r.patient, r.split) for r in records}
    # Pixels and metadata survive the files exactly.
    anatomy = sample_anatomy(np.random.default_rng([1, 4, 1]))
    for rec in records[:4]:
        assert rec.info.sex in ("M", "F") and rec.info.image_quality in QUALITIES
    rec = next(r for r in records if r.patient == "patient0005" and r.view == "4CH"
               and r.phase == "ES")
    image, label = render_phantom(np.random.default_rng([1, 4, 2, 1, 1]), "4CH", "ES",
                                  rec.info, SIZE, anatomy=anatomy)
    assert np.array_equal(read_image(rec), image)
    assert np.array_equal(read_label_map(rec), label)

    sdm = d.synthetic_records("sdm")
    assert len(sdm) == (3 + 1) * 4 * 1
    assert {r.patient for r in sdm if r.split == "train"} == set(d.train_patients)
    assert {r.patient for r in sdm if r.split == "val"} == set(d.val_patients)
    for rec in sdm[:3]:
        image, label = read_image(rec), read_label_map(rec)
        assert image.shape == label.shape == (SIZE[0], SIZE[0])  # SDM images are square
        assert set(np.unique(label)) == {0, 1, 2, 3}


def test_demo_data_2019_layout_and_sector_coding(tmp_path: Path) -> None:
    d = write_demo_data(tmp_path / "d", seed=2, release="2019", sdm_coding="sector", **TINY)
    # The 2019 release numbers its test patients from patient0001 again, under testing/.
    assert d.test_patients == ("patient0001", "patient0002")
    assert sorted(p.name for p in (d.camus_root / "testing").iterdir()) == list(d.test_patients)
    records = load_camus(d.camus_root, n_val=1)
    assert {r.split for r in records} == {"train", "val", "test"}
    test = [r for r in records if r.split == "test"]
    assert len(test) == 8 and all(len(r.mask_paths) == 1 for r in test)
    sdm = load_sdm(d.sdm_root)
    assert len(sdm) == 4 * 4
    with Image.open(sdm[0].mask_paths[0]) as im:
        raw = np.asarray(im)
    assert set(np.unique(raw)) == {0, 1, 2, 3, 4}  # really written in the sector coding
    assert set(np.unique(read_label_map(sdm[0]))) == {0, 1, 2, 3}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path,
                                                     demo_2023: phantom.DemoData) -> None:
    again = write_demo_data(tmp_path / "again", seed=1, **TINY)
    assert _tree(again.root) == _tree(demo_2023.root)
    other = write_demo_data(tmp_path / "other", seed=3, **TINY)
    a, b = _tree(other.root), _tree(demo_2023.root)
    assert a.keys() == b.keys()
    assert a["camus/database_nifti/patient0002/patient0002_2CH_ED.nii.gz"] != \
        b["camus/database_nifti/patient0002/patient0002_2CH_ED.nii.gz"]


def test_second_call_rewrites_nothing_other_params_replace(tmp_path: Path) -> None:
    out = tmp_path / "d"
    write_demo_data(out, seed=0, **TINY)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    inode = out.stat().st_ino
    data = write_demo_data(out, seed=0, **TINY)
    assert data.root == out and out.stat().st_ino == inode
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    # Other parameters: the old phantom set is replaced as a whole.
    write_demo_data(out, seed=0, **(TINY | dict(n_patients=5)))
    assert len(load_camus(out / "camus", n_val=1)) == 5 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp or old folders left


def test_foreign_folder_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=f"{out}.*not a phantom dataset"):
        write_demo_data(out, **TINY)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_demo_data(empty, **TINY).camus_root.is_dir()


def test_killed_run_leaves_nothing_half_written(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import vlsm.data.sdm as sdm

    out = tmp_path / "d"
    calls = {"n": 0}
    real = sdm.write_sdm_image

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sdm, "write_sdm_image", failing)
    with pytest.raises(RuntimeError, match="killed"):
        write_demo_data(out, **TINY)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # A temp folder left by a process that died (SIGKILL: no cleanup) is removed next time.
    stale = tmp_path / f".d.tmp-999999999@{socket.gethostname()}-abc"
    (stale / "camus").mkdir(parents=True)
    write_demo_data(out, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert (out / MANIFEST_NAME).is_file()


def test_concurrent_writers_agree(tmp_path: Path) -> None:
    out = tmp_path / "d"
    errors: list[BaseException] = []

    def work() -> None:
        try:
            write_demo_data(out, seed=4, **TINY)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(load_camus(out / "camus", n_val=1)) == 6 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_patients=3, n_test=2, n_val=1), "no training patient"),
        (dict(n_test=0), "n_test=0"),
        (dict(release="2020"), "release='2020'"),
        (dict(sdm_coding="rgb"), "sdm_coding='rgb'"),
        (dict(seed=-1), "seed=-1"),
    ],
)
def test_demo_data_rejects_bad_options(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_demo_data(tmp_path / "d", **(TINY | kwargs))
    assert not (tmp_path / "d").exists()


# --- the command ----------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    phantom_cli.add_arguments(parser)
    return phantom_cli.run(parser.parse_args(argv))


def test_cli_writes_a_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--seed", "5", "--patients", "5", "--test-patients", "1",
            "--val-patients", "1", "--release", "2019", "--sdm-per-image", "1",
            "--sdm-coding", "sector", "--size", "48", "40"]
    with caplog.at_level("INFO", logger="vlsm.data.phantom_cli"):
        assert _cli(argv) == 0
    assert str(out) in caplog.text and "seed 5" in caplog.text
    records = load_camus(out / "camus", n_val=1)
    assert len(records) == 5 * 4 and read_image(records[0]).shape == (48, 40)
    assert len(load_sdm(out / "sdm")) == 4 * 4
    # Bad values exit with 2 and a message naming the option; nothing is written.
    caplog.clear()
    assert _cli(["--out", str(tmp_path / "bad"), "--test-patients", "0"]) == 2
    assert "--test-patients 0: expected an integer >= 1" in caplog.text
    assert not (tmp_path / "bad").exists()


def test_vlsm_demo_data_subcommand(tmp_path: Path) -> None:
    from vlsm.cli import main

    out = tmp_path / "demo"
    assert main(["demo-data", "--out", str(out), "--patients", "4", "--test-patients", "1",
                 "--val-patients", "1", "--sdm-per-image", "1", "--size", "40", "40"]) == 0
    assert (out / MANIFEST_NAME).is_file()
    assert os.listdir(out / "camus" / "database_split")


def test_demo_data_says_what_each_split_scheme_makes_of_its_patients(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # the sweep reads data with the paper split and 50 validation patients by default: a
    # small phantom then has no training images, which the announcement must say
    out = tmp_path / "demo"
    with caplog.at_level("INFO", logger="vlsm.data.phantom_cli"):
        assert _cli(["--out", str(out), "--patients", "8", "--test-patients", "2", "--val-patients", "2",
                     "--sdm-per-image", "1", "--size", "40", "40"]) == 0
    said = {line.strip().rsplit(": ", 1)[0].split(" (")[0]: line.rsplit(": ", 1)[1]
            for line in caplog.text.splitlines() if line.startswith("  ")}

    def counts(scheme: str, n_val: int) -> str:
        records = load_camus(out / "camus", scheme, n_val=n_val)
        return " / ".join(f"{len({r.patient for r in records if r.split == s})} {s}" for s in ("train", "val", "test"))

    assert said == {
        "official, the release's split files": counts("official", 2),
        "paper with 2 validation patients": counts("paper", 2),
        "paper with the default 50 validation patients": counts("paper", 50) + " (nothing to train on)",
    }
    assert said["official, the release's split files"] == "4 train / 2 val / 2 test"
    assert "data.val_patients=2; --n-val 2" in caplog.text
