"""The synthetic sources by name: the phantom writes each format, the registry reads and
prompts them, validate-data reports their problems and label codings, prepare caches them
with the generator's prompt."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlsm.data.cache import cache_key, open_split, prepare_dataset
from vlsm.data.io import write_png
from vlsm.data.phantom import MANIFEST_NAME, DemoData, write_demo_data
from vlsm.data.prompts import GENERATOR_PROMPT, buildable_prompts, generator_prompt
from vlsm.data.synthetic_sources import (
    SYNTHETIC_SOURCE_REGISTRY,
    has_generator_text,
    load_synthetic,
    source_attributes,
    source_names,
    synthetic_source,
)
from vlsm.data.validate import ERROR, WARNING, validate_data
from vlsm.data.validate_synthetic import validate_diffecho, validate_imagefolder

SIZE = (64, 56)
FORMATS = ("sdm", "diffecho", "imagefolder")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoData:
    """4 phantom patients (2 train, 1 val, 1 test), one image of each format per real image."""
    out = tmp_path_factory.mktemp("synthetic") / "demo"
    return write_demo_data(out, seed=0, n_patients=4, n_test=1, n_val=1, size=SIZE, sdm_per_image=1,
                           synthetic_formats=FORMATS)


def _copy(demo: DemoData, fmt: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo.synthetic_roots[fmt], tmp_path / fmt))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _errors(problems) -> dict[Path, str]:
    return {p.path: p.message for p in problems if p.severity == ERROR}


def test_the_default_phantom_is_unchanged_and_each_format_is_written(demo, tmp_path):
    default = write_demo_data(tmp_path / "default", seed=0, n_patients=4, n_test=1, n_val=1, size=SIZE,
                              sdm_per_image=1)
    assert default.synthetic_roots == {"sdm": default.sdm_root}
    assert "synthetic_formats" not in json.loads((default.root / MANIFEST_NAME).read_text())["params"]
    assert sorted(p.name for p in default.root.iterdir()) == ["camus", MANIFEST_NAME, "sdm"]
    for folder in ("camus", "sdm"):  # the other formats draw from rng streams of their own
        assert _tree(default.root / folder) == _tree(demo.root / folder), folder
    assert demo.synthetic_roots == {f: demo.root / f for f in FORMATS}
    root = demo.synthetic_roots["diffecho"]
    modes = {}
    for path in ("train_frames/ch2_ed_frame_1.png", "valid_masks/ch4_es_mask_0.png",
                 "generated_images/ch2_ed_mask_1_generated_id0.png", "generated_masks/ch2_ed_mask_1_mask_id0.png"):
        with Image.open(root / path) as im:
            modes[path.split("/")[0]] = im.mode
    assert modes == {"train_frames": "RGBA", "valid_masks": "RGBA", "generated_images": "RGB",
                     "generated_masks": "RGB"}
    assert (root / "metadata.csv").read_text().splitlines()[1] == (
        "./train_frames/ch2_ed_frame_1.png,./train_masks/ch2_ed_mask_1.png,"
        "an ultrasound image of heart in two-chamber view")
    header = (demo.synthetic_roots["imagefolder"] / "metadata.csv").read_text().splitlines()[0]
    assert header == "image,mask,split,view,phase,patient,text"
    with pytest.raises(ValueError, match="synthetic_formats='gan' is not one of"):
        write_demo_data(tmp_path / "bad", synthetic_formats=("gan",))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_with_train_and_val_and_checks_clean(demo, fmt):
    records = demo.synthetic_records(fmt)
    assert len(records) == (2 + 1) * 4  # train and val patients x views x phases, 1 each
    assert {r.split for r in records} == {"train", "val"}
    assert all(r.source == fmt and r.synthetic for r in records)
    patients = {r.patient for r in records if r.split == "val"}
    assert patients == ({"diffecho0000"} if fmt == "diffecho" else set(demo.val_patients))
    findings = validate_data(demo.camus_root, synthetic_root=demo.synthetic_roots[fmt], synthetic_format=fmt,
                             n_val=1, progress=False)
    assert findings == []
    coding = "grey" if fmt == "diffecho" else "labels"
    n_masks = len(records) + (len(records) if fmt == "diffecho" else 0)  # + real-derived masks
    assert findings.codings == {demo.synthetic_roots[fmt]: {coding: n_masks}}


def test_registry_prompts_and_generator_text(demo, tmp_path):
    assert source_names() == FORMATS and [s.name for s in SYNTHETIC_SOURCE_REGISTRY] == list(FORMATS)
    roots = demo.synthetic_roots

    def prompts(name: str, root, with_camus: bool = False) -> tuple[str, ...]:
        return buildable_prompts(source_attributes(name, root, with_camus=with_camus))

    p0_p3 = ("P0", "P1", "P2", "P3")
    assert prompts("sdm", roots["sdm"]) == p0_p3
    assert prompts("sdm", roots["sdm"], with_camus=True) == tuple(f"P{i}" for i in range(7))
    assert prompts("diffecho", roots["diffecho"]) == p0_p3
    assert prompts("imagefolder", roots["imagefolder"]) == p0_p3
    # the phantom demo's, before it is written: what write_demo_data gives each format
    assert [prompts(name, None, with_camus=True) for name in FORMATS] == [tuple(f"P{i}" for i in range(7)), p0_p3, p0_p3]
    assert [has_generator_text(name, None) for name in FORMATS] == [False, True, True]
    for header, expected in {"image,mask": ("P0", "P1"), "image,mask,view,text": ("P0", "P1", "P2"),
                            "mask,phase,image,view": p0_p3, "image,mask,view,phase,sex": (*p0_p3, "P4"),
                            "image,mask,view,phase,sex,age": tuple(f"P{i}" for i in range(7))}.items():
        (tmp_path / "metadata.csv").write_text(header + "\n")
        assert prompts("imagefolder", tmp_path) == expected, header
    assert has_generator_text("imagefolder", tmp_path) is False
    assert [has_generator_text(f, roots[f]) for f in FORMATS] == [False, True, True]
    with pytest.raises(ValueError, match="synthetic format 'gan' not known; expected one of sdm, diffecho, imagefolder"):
        synthetic_source("gan")
    sdm = load_synthetic("sdm", roots["sdm"], demo.camus_root, n_val=1)
    assert all(r.info.age is not None for r in sdm)  # with CAMUS, SDM patients get sex and age


def test_validate_diffecho_reports_every_problem(demo, tmp_path):
    root = _copy(demo, "diffecho", tmp_path)
    gen, masks = root / "generated_images", root / "generated_masks"
    (masks / "ch2_ed_mask_1_mask_id0.png").unlink()  # an image without its mask
    (gen / "ch2_es_mask_1_generated_id0.png").unlink()  # a mask without its image
    odd = masks / "ch4_ed_mask_1_mask_id0.png"
    levels = np.asarray(Image.open(odd))[..., 0].copy()
    levels[0, 0] = 60
    write_png(odd, levels, mode="RGB")  # an unknown grey level
    small = masks / "ch4_es_mask_2_mask_id0.png"
    write_png(small, np.asarray(Image.open(small))[:50, :, 0], mode="RGB")  # a size mismatch
    (root / "train_masks" / "ch2_ed_mask_2.png").unlink()  # a real-derived frame without mask
    shutil.move(root / "valid_frames" / "ch4_es_frame_0.png", root / "train_frames" / "ch4_es_frame_0.png")
    (root / "train_masks" / "ch4_es_mask_0.png").write_bytes((root / "valid_masks" / "ch4_es_mask_0.png").read_bytes())
    shutil.copy(gen / "ch2_ed_mask_2_generated_id0.png", gen / "generated_0.png")  # infer_controlnet.py's name
    findings = validate_diffecho(root, n_val=1, progress=False)
    errors = _errors(findings)
    assert errors.pop(gen / "ch2_ed_mask_1_generated_id0.png").startswith("generated image without mask: ch2_ed_mask_1_mask_id0.png")
    assert errors.pop(masks / "ch2_es_mask_1_mask_id0.png").startswith("mask without generated image")
    assert "unknown label level(s) [60]" in errors.pop(odd)
    assert "differs from its image" in errors.pop(small)
    assert errors.pop(root / "train_frames" / "ch2_ed_frame_2.png").startswith("frame without mask")
    assert "line 3: conditioning_image" in errors.pop(root / "metadata.csv")  # its row names the lost mask
    assert errors == {}
    warnings = [(p.path.name, p.message) for p in findings if p.severity == WARNING]
    assert warnings[0] == ("ch4_es_frame_0.png", "in train_frames/, but subject 0 is a val subject with n_val 1 "
                                                 "(the first n_val subjects validate)")
    assert warnings[1][0] == "generated_0.png" and warnings[1][1].startswith("not a DiffEcho name")
    assert len(warnings) == 2
    assert findings.codings[root]["grey"] > 0


def test_validate_imagefolder_reports_every_problem(demo, tmp_path):
    root = _copy(demo, "imagefolder", tmp_path)
    csv = root / "metadata.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].replace(",2CH,", ",3CH,")
    lines[3] = lines[3].replace("images/", "missing/", 1)
    lines[0] += ",quality"
    csv.write_text("\n".join(f"{line},x" if i else line for i, line in enumerate(lines)) + "\n")
    bad_mask = root / lines[4].split(",")[1]
    write_png(bad_mask, np.full(SIZE, 9, np.uint8))
    findings = validate_imagefolder(root, n_val=1, progress=False)
    errors = _errors(findings)
    assert errors.pop(csv).startswith("line 3: view '3CH'; expected 2CH or 4CH")
    assert errors.pop(root / lines[3].split(",")[0]).startswith("image listed on line 4 of metadata.csv not found")
    assert "unknown label level(s) [9]" in errors.pop(bad_mask)
    assert errors == {}
    assert [p.message.split(";")[0] for p in findings if p.severity == WARNING] == ["column(s) quality ignored"]
    csv.write_text("image\nimages/x.png\n")
    assert "missing column(s) mask" in _errors(validate_imagefolder(root, progress=False))[csv]


def test_an_empty_split_is_an_error(demo, tmp_path):
    root = _copy(demo, "diffecho", tmp_path)
    errors = _errors(validate_diffecho(root, progress=False))  # DiffEcho's 50: all 3 subjects validate
    assert errors[root].startswith("no training images: generated images of subjects < 50 validate")


def test_validate_and_prepare_commands_take_the_synthetic_options(demo, tmp_path, capsys):
    from vlsm.cli import main

    root = demo.synthetic_roots["diffecho"]
    argv = ["validate-data", "--synthetic-root", str(root), "--synthetic-format", "diffecho", "--n-val", "1",
            "--no-progress"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{root}: label codings: grey (grey levels 0/85/170/255") and "in 24 mask(s)" in lines[0]
    assert lines[-1] == f"OK: 0 error(s), 0 warning(s) in {root}"
    assert main([*argv[:5], "--no-progress"]) == 1  # n_val 50: no training subject
    capsys.readouterr()
    cache_dir = tmp_path / "cache"
    argv = ["prepare", "--synthetic-root", str(demo.synthetic_roots["imagefolder"]), "--synthetic-format",
            "imagefolder", "--n-val", "1", "--size", "32", "--cache-dir", str(cache_dir), "--no-progress"]
    assert main(argv) == 0
    printed = [line.split()[:3] for line in capsys.readouterr().out.splitlines()]
    assert printed == [["imagefolder", "train", "32"], ["imagefolder", "val", "32"]]


def test_the_cache_carries_the_generator_prompt_and_keys_on_its_text(demo, tmp_path):
    folders = prepare_dataset("diffecho", demo.synthetic_roots["diffecho"], 32, tmp_path, n_val=1, progress=False)
    train = open_split(folders["train"])
    assert train.synthetic and train.records_meta[0]["text"] == "an ultrasound image of heart in two-chamber view"
    item = train.items[0]  # LV of a 2CH image
    assert set(item.prompts) == {"p0", "p1", "p2", "p3", GENERATOR_PROMPT}
    assert item.prompts[GENERATOR_PROMPT] == "Left ventricular cavity in an ultrasound image of heart in two-chamber view."
    records = load_synthetic("diffecho", demo.synthetic_roots["diffecho"], n_val=1)
    other = [replace(records[0], text="an echo."), *records[1:]]
    assert cache_key(records, 32) != cache_key(other, 32)
    assert generator_prompt(3, " a heart. ") == "Left atrium cavity in a heart."
    with pytest.raises(ValueError, match="generator text"):
        generator_prompt(1, " . ")


def test_demo_data_command_writes_the_formats_asked_for(tmp_path):
    from vlsm.cli import main

    out = tmp_path / "d"
    argv = ["demo-data", "--out", str(out), "--patients", "3", "--test-patients", "1", "--val-patients", "1",
            "--size", "48", "40", "--sdm-per-image", "1", "--synthetic-format", "diffecho"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["camus", "diffecho", MANIFEST_NAME]
    assert len(load_synthetic("diffecho", out / "diffecho", n_val=1)) == 2 * 4


def test_synthetic_images_of_a_camus_test_patient_are_a_warning(demo, tmp_path):
    root = _copy(demo, "imagefolder", tmp_path)
    csv = root / "metadata.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace(f",{demo.val_patients[0]},", f",{demo.test_patients[0]},")
    csv.write_text("\n".join(lines) + "\n")
    findings = validate_data(demo.camus_root, synthetic_root=root, synthetic_format="imagefolder", n_val=1,
                             progress=False)
    assert [(p.path, p.severity) for p in findings] == [(root, WARNING)]
    assert f"{demo.test_patients[0]}, a CAMUS test patient" in findings[0].message
    assert findings.patients[root] == {*demo.train_patients, *demo.val_patients, demo.test_patients[0]}
