"""The authors' PNG + JSON layout: reading it (with reference entries) and writing it from raw CAMUS.

The reference entries come from the authors' task files as bundled in
tests/fixtures/synthetic_boost_tasks.json.xz (CC-BY 4.0, see the README there), so these
tests run in any clone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from reference_tasks import age_of, bundled_tasks

from vlsm.axes import EVAL_SIZE
from vlsm.data.prompts import build_prompts
from vlsm.data.records import PatientInfo
from vlsm.data.synthetic_boost import export_synthetic_boost, load_synthetic_boost

_META = re.compile(
    r"(?P<view>two|four)-chamber view of the heart at end of the \w+ cycle of a (?P<age>[a-z-]+)"
    r"-year-old (?P<sex>male|female)(?: with (?P<quality>\w+) image quality)?\.$"
)


def _reference(rel: str) -> list[dict]:
    return bundled_tasks()[rel]


def _entries_of(entries: list[dict], img_name: str) -> list[dict]:
    found = sorted((e for e in entries if e["img_name"] == img_name), key=lambda e: e["mask_name"])
    assert len(found) == 3, img_name
    return found


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_layout(base: Path, entries: list[dict], split: str, image_dir: str, mask_dir: str) -> None:
    for e in entries:
        _png(base / image_dir / e["img_name"], np.full((16, 16), 80, np.uint8))
        _png(base / mask_dir / e["mask_name"], np.full((16, 16), 255, np.uint8))
    ann = base / "anns" / f"{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(ann.read_text()) if ann.is_file() else []
    ann.write_text(json.dumps(old + entries))


# --- reading ---------------------------------------------------------------------------


def test_load_camus_layout_with_reference_entries(tmp_path: Path) -> None:
    val = _entries_of(_reference("camus/val.json"), "patient0001_2CH_ED.png")
    test = _entries_of(_reference("camus/test.json"), "patient0001_4CH_ES.png")
    base = tmp_path / "camus"
    _write_layout(base, val, "val", "images/train", "masks/train")  # theirs: val lives in train/
    _write_layout(base, test, "test", "images/test", "masks/test")

    records = load_synthetic_boost(tmp_path)  # the data_root holding camus/ works too
    assert [(r.split, r.name) for r in records] == [
        ("val", "patient0001_2CH_ED"),
        ("test", "patient0001_4CH_ES"),
    ]
    rec_val, rec_test = records
    assert rec_val.source == "synthetic-boost" and not rec_val.synthetic
    assert rec_val.image_path == base / "images/train/patient0001_2CH_ED.png"
    assert rec_val.mask_paths == tuple(
        base / f"masks/train/mask_{k}/patient0001_2CH_ED_gt.png" for k in (1, 2, 3)
    )
    assert rec_test.mask_paths[2] == base / "masks/test/mask_3/patient0001_4CH_ES_gt.png"
    assert (rec_test.view, rec_test.phase, rec_test.patient) == ("4CH", "ES", "patient0001")
    assert rec_val.info == PatientInfo(sex="F", age=56, image_quality="Good")
    assert rec_test.info.sex == "M" and rec_test.info.age == 73
    for k, entry in zip((1, 2, 3), test, strict=True):
        got = build_prompts(rec_test, k)  # verbatim, the VQA shapes included
        assert {key: v if isinstance(v, str) else list(v) for key, v in got.items()} == entry["prompts"]
    assert load_synthetic_boost(base, "camus") == records


def test_load_sdm_layout(tmp_path: Path) -> None:
    entries = _entries_of(_reference("sdm/val.json"), "patient0001_2CH_ES_validation_1.png")
    assert entries[0]["mask_name"] == "mask_1/validation/patient0001_2CH_ES_validation_1.png"
    _write_layout(tmp_path, entries, "val", "images/val", "masks")
    (rec,) = load_synthetic_boost(tmp_path, dataset="sdm")
    assert (rec.split, rec.patient, rec.view, rec.phase, rec.variant) == (
        "val", "patient0001", "2CH", "ES", 1,
    )
    assert rec.synthetic and rec.name == "patient0001_2CH_ES_v1"
    assert rec.mask_paths[1] == tmp_path / "masks/mask_2/validation/patient0001_2CH_ES_validation_1.png"
    assert set(rec.prompts[1]) == {f"p{i}" for i in range(7)}
    assert rec.info == PatientInfo(sex="F", age=56, image_quality=None)


def _tiny_entries() -> list[dict]:
    return [
        {"img_name": "patient0009_2CH_ED.png", "mask_name": f"mask_{k}/patient0009_2CH_ED_gt.png",
         "prompts": {"p0": "", "p1": [f"S{k} of the heart.", f"S{k} in the cardiac ultrasound."]}}
        for k in (1, 2, 3)
    ]


def test_load_errors_name_file_and_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="anns"):
        load_synthetic_boost(tmp_path)
    with pytest.raises(ValueError, match="dataset"):
        load_synthetic_boost(tmp_path, dataset="echonet")

    entries = _tiny_entries()
    _write_layout(tmp_path, entries[:2], "train", "images/train", "masks/train")
    with pytest.raises(ValueError, match=r"train\.json entry 0: .*structure\(s\) \[3\]"):
        load_synthetic_boost(tmp_path)

    ann = tmp_path / "anns" / "train.json"
    ann.write_text(json.dumps(entries))  # mask_3 file was never written
    with pytest.raises(FileNotFoundError, match=r"train\.json entry 2: mask file .*mask_3"):
        load_synthetic_boost(tmp_path)

    bad = [*entries[:2], {**entries[2], "mask_name": "mask_7/x_gt.png"}]
    ann.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"train\.json entry 2: mask_name 'mask_7/x_gt.png'"):
        load_synthetic_boost(tmp_path)

    ann.write_text(json.dumps([*entries[:2], entries[0]]))
    with pytest.raises(ValueError, match=r"entry 2: .*already given by entry 0"):
        load_synthetic_boost(tmp_path)

    ann.write_text(json.dumps([{**entries[0], "img_name": "heart.png"}]))
    with pytest.raises(ValueError, match=r"entry 0: img_name 'heart.png'"):
        load_synthetic_boost(tmp_path)


# --- writing ---------------------------------------------------------------------------


def _infos_from_reference(entries: list[dict], patient: str) -> dict[str, PatientInfo]:
    """Info per view, as the reference P6 sentences of that patient state it."""
    infos = {}
    for e in entries:
        if e["img_name"].startswith(patient + "_"):
            m = _META.search(e["prompts"]["p6"][0])
            view = "2CH" if m["view"] == "two" else "4CH"
            infos[view] = PatientInfo(
                sex="M" if m["sex"] == "male" else "F",
                age=age_of(m["age"]),
                image_quality=m["quality"].capitalize(),
                ef=55.0,
                ed_frame=1,
                es_frame=12,
                n_frames=20,
            )
    assert set(infos) == {"2CH", "4CH"}, patient
    return infos


def _label_map(h: int, w: int, shift: int) -> np.ndarray:
    """(h, w) uint8 0-3: an LV ellipse, a myocardium band around it, an LA below."""
    y, x = np.mgrid[0:h, 0:w].astype(float)
    cx = w / 2 + shift
    lv = ((x - cx) / (w * 0.16)) ** 2 + ((y - h * 0.38) / (h * 0.24)) ** 2 <= 1
    outer = ((x - cx) / (w * 0.24)) ** 2 + ((y - h * 0.36) / (h * 0.31)) ** 2 <= 1
    la = ((x - cx) / (w * 0.15)) ** 2 + ((y - h * 0.8) / (h * 0.11)) ** 2 <= 1
    out = np.zeros((h, w), np.uint8)
    out[outer & (y < h * 0.62)] = 2
    out[lv] = 1
    out[la] = 3
    return out


def _write_patient(
    root: Path, release: str, patient: str, infos, testing=False, seed=0, drop: int | None = None
) -> None:
    from vlsm.data.camus import write_camus_patient

    rng = np.random.default_rng(seed)
    h, w = 70, 54  # non-square, like real CAMUS
    keys = [(v, p) for v in ("2CH", "4CH") for p in ("ED", "ES")]
    images = {k: rng.integers(0, 256, (h, w), dtype=np.uint8) for k in keys}
    labels = {k: _label_map(h, w, i) for i, k in enumerate(keys)}
    if drop is not None:
        for label in labels.values():
            label[label == drop] = 0
    write_camus_patient(root, release, patient, images, labels, infos, testing=testing)


def test_export_camus2019_paper_matches_reference_and_round_trips(tmp_path: Path) -> None:
    ref_val, ref_test = _reference("camus/val.json"), _reference("camus/test.json")
    raw, out = tmp_path / "raw", tmp_path / "sb" / "camus"
    # 2019 ids: training patient0001 (-> val) and testing patient0001 (-> test) differ.
    _write_patient(raw, "2019", "patient0001", _infos_from_reference(ref_val, "patient0001"))
    _write_patient(raw, "2019", "patient0001", _infos_from_reference(ref_test, "patient0001"),
                   testing=True, seed=1)
    export_synthetic_boost(raw, out)

    assert sorted(p.name for p in (out / "anns").iterdir()) == ["test.json", "val.json"]
    assert not [p for p in out.parent.iterdir() if p.name != "camus"]  # no temp folder left
    from PIL import Image

    for split, folder, ref in (("val", "train", ref_val), ("test", "test", ref_test)):
        entries = json.loads((out / "anns" / f"{split}.json").read_text())
        assert len(entries) == 12  # 4 images x 3 structures
        for e in entries:
            with Image.open(out / "images" / folder / e["img_name"]) as im:
                assert im.size == (EVAL_SIZE, EVAL_SIZE) and im.mode == "L"
            mask = np.asarray(Image.open(out / "masks" / folder / e["mask_name"]))
            assert mask.shape == (EVAL_SIZE, EVAL_SIZE)
            assert set(np.unique(mask).tolist()) == {0, 255}
            (theirs,) = [r for r in ref if (r["img_name"], r["mask_name"]) == (e["img_name"], e["mask_name"])]
            for key in (f"p{i}" for i in range(7)):
                assert e["prompts"][key] == theirs["prompts"][key], (split, e["mask_name"], key)
            assert re.search(r" of (circle|oval|triangle|square|rectangle) shape in ", e["prompts"]["p7"][0])

    records = load_synthetic_boost(out)
    assert [(r.split, r.name) for r in records] == [
        (s, f"patient0001_{v}_{p}") for s in ("val", "test") for v in ("2CH", "4CH") for p in ("ED", "ES")
    ]
    by_key = {(s, e["img_name"], e["mask_name"]): e["prompts"]
              for s in ("val", "test") for e in json.loads((out / "anns" / f"{s}.json").read_text())}
    for rec in records:
        assert len(rec.mask_paths) == 3 and all(p.is_file() for p in rec.mask_paths)
        for k in (1, 2, 3):
            saved = by_key[(rec.split, f"{rec.name}.png", f"mask_{k}/{rec.name}_gt.png")]
            assert {key: list(v) if isinstance(v, tuple) else v for key, v in rec.prompts[k].items()} == saved
    # the masks read back combine to the resized label map
    from vlsm.data.io import read_label_map

    labels = read_label_map(records[0])
    assert labels.shape == (EVAL_SIZE, EVAL_SIZE) and set(np.unique(labels).tolist()) == {0, 1, 2, 3}


def test_export_official_split_cli_and_atomicity(tmp_path: Path) -> None:
    from vlsm.data import synthetic_boost_cli
    from vlsm.data.camus import write_camus_split_files

    info = {v: PatientInfo(sex="F", age=61, image_quality="Medium", ef=50.0) for v in ("2CH", "4CH")}
    raw, out = tmp_path / "raw", tmp_path / "out"
    for i, patient in enumerate(("patient0003", "patient0004", "patient0005")):
        _write_patient(raw, "2023", patient, info, seed=i)
    write_camus_split_files(raw, {"train": ["patient0003"], "val": ["patient0004"], "test": ["patient0005"]})

    parser = argparse.ArgumentParser()
    synthetic_boost_cli.add_arguments(parser)
    args = parser.parse_args(["--camus-root", str(raw), "--out", str(out), "--split-scheme", "official"])
    assert synthetic_boost_cli.run(args) == 0
    records = load_synthetic_boost(out)
    assert [(r.split, r.patient) for r in records][::4] == [
        ("train", "patient0003"), ("val", "patient0004"), ("test", "patient0005"),
    ]
    assert records[0].image_path.parent == records[4].image_path.parent == out / "images" / "train"
    assert records[8].image_path.parent == out / "images" / "test"
    assert records[0].info == PatientInfo(sex="F", age=61, image_quality="Medium")

    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert synthetic_boost_cli.run(args) == 2  # out is not empty: refused, untouched
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before

    # a failure half-way (an image without a left atrium) leaves no folder behind
    _write_patient(raw, "2023", "patient0006", info, seed=5, drop=3)
    write_camus_split_files(raw, {"train": ["patient0003", "patient0006"], "test": ["patient0005"],
                                  "val": ["patient0004"]})
    with pytest.raises(ValueError, match=r"structure 3 .*patient0006_2CH_ED"):
        export_synthetic_boost(raw, tmp_path / "out2", "official")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]

    args.overwrite = True
    write_camus_split_files(raw, {"train": ["patient0003"], "val": ["patient0004"], "test": ["patient0005"]})
    assert synthetic_boost_cli.run(args) == 0  # --overwrite replaces the whole folder
    assert len(load_synthetic_boost(out)) == 12


# --- what an export may replace ----------------------------------------------------------


def _tree(folder: Path) -> list[Path]:
    """Every path under folder, relative to it (symlinks listed, not followed)."""
    found = []
    for where, dirs, files in os.walk(folder):
        found += [(Path(where) / name).relative_to(folder) for name in (*dirs, *files)]
    return sorted(found)


def _raw_2023(raw: Path, drop_la_patient: bool = False) -> None:
    """Three 2023 patients with the official split (a fourth without an LA if asked)."""
    from vlsm.data.camus import write_camus_split_files

    info = {v: PatientInfo(sex="F", age=61, image_quality="Medium", ef=50.0) for v in ("2CH", "4CH")}
    for i, patient in enumerate(("patient0003", "patient0004", "patient0005")):
        _write_patient(raw, "2023", patient, info, seed=i)
    train = ["patient0003"]
    if drop_la_patient:
        _write_patient(raw, "2023", "patient0006", info, seed=5, drop=3)
        train.append("patient0006")
    write_camus_split_files(raw, {"train": train, "val": ["patient0004"], "test": ["patient0005"]})


def _cli(raw: Path, out: Path, *extra: str) -> int:
    from vlsm.data import synthetic_boost_cli

    parser = argparse.ArgumentParser()
    synthetic_boost_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--camus-root", str(raw), "--out", str(out), "--split-scheme", "official", *extra]
    )
    return synthetic_boost_cli.run(args)


def test_overwrite_never_touches_the_source(tmp_path: Path, caplog) -> None:
    raw = tmp_path / "data" / "raw"
    _raw_2023(raw)
    before = _tree(tmp_path)
    (tmp_path / "link").symlink_to(raw)
    targets = {
        "the source itself": raw,
        "a symlink to the source": tmp_path / "link",
        "a folder inside the source": raw / "database_nifti" / "export",
        "a folder holding the source": tmp_path / "data",
    }
    for why, out in targets.items():
        caplog.clear()
        assert _cli(raw, out, "--overwrite") == 2, why
        assert _tree(tmp_path) == sorted([*before, Path("link")]), why  # nothing added or removed
        assert str(out) in caplog.text and "--camus-root" in caplog.text, why
    with pytest.raises(ValueError, match=r"raw: --out is the --camus-root folder"):
        export_synthetic_boost(raw, raw, "official", overwrite=True)


def test_overwrite_replaces_only_an_earlier_export(tmp_path: Path, caplog) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    _raw_2023(raw)
    unrelated = tmp_path / "thesis"
    unrelated.mkdir()
    (unrelated / "chapter1.tex").write_text("precious")
    assert _cli(raw, unrelated, "--overwrite") == 2
    assert (unrelated / "chapter1.tex").read_text() == "precious"
    assert "thesis" in caplog.text and ".vlsm-export.json" in caplog.text

    assert _cli(raw, out) == 0
    marker = json.loads((out / ".vlsm-export.json").read_text())
    assert marker["tool"] == "vlsm export-synthetic-boost"
    assert marker["source"] == str(raw.resolve())
    first = _tree(out)
    assert _cli(raw, out) == 2  # an earlier export, but no --overwrite
    assert _cli(raw, out, "--overwrite") == 0
    assert _tree(out) == first and len(load_synthetic_boost(out)) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw", "thesis"]  # no trash left

    # a file the export did not write: the folder is no longer provably ours
    (out / "notes.txt").write_text("mine")
    assert _cli(raw, out, "--overwrite") == 2
    assert (out / "notes.txt").read_text() == "mine" and "notes.txt" in caplog.text
    (out / "notes.txt").unlink()

    # an export that fails half way leaves the earlier one as it was
    stamp = (out / ".vlsm-export.json").read_text()
    _raw_2023(raw, drop_la_patient=True)
    assert _cli(raw, out, "--overwrite") == 2
    assert _tree(out) == first and (out / ".vlsm-export.json").read_text() == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw", "thesis"]


# --- reading: paths stay inside the dataset ------------------------------------------------


@pytest.mark.parametrize("escape", ["mask_1/../../x.png", "mask_1/../../../../x.png"])
def test_mask_name_may_not_leave_the_dataset(tmp_path: Path, escape: str) -> None:
    base = tmp_path / "camus"
    entries = _tiny_entries()
    _write_layout(base, entries, "train", "images/train", "masks/train")
    _png(base / "masks" / "x.png", np.full((16, 16), 255, np.uint8))
    _png(tmp_path / "x.png", np.full((16, 16), 255, np.uint8))
    assert len(load_synthetic_boost(base)) == 1
    (base / "anns" / "train.json").write_text(json.dumps([{**entries[0], "mask_name": escape}, *entries[1:]]))
    with pytest.raises(ValueError, match=r"train\.json entry 0: mask_name .*outside"):
        load_synthetic_boost(base)
