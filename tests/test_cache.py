"""The preprocessing cache: content, read-only memory maps, reuse, rebuild, atomicity."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from damage import damage

from vlsm import atomic, integrity
from vlsm.axes import EVAL_SIZE
from vlsm.data import cache
from vlsm.data.cache import CacheItem, cache_key, open_split, prepare_dataset, prepare_split
from vlsm.data.io import write_itk, write_png
from vlsm.data.phantom import DemoData, write_demo_data
from vlsm.data.records import EchoImage, PatientInfo

H, W = 64, 56  # tiny, non-square: a transposed array would be caught
SIZE = 32
INFO = PatientInfo(sex="F", age=56, image_quality="Good")


def _label_map(shift: int = 0) -> np.ndarray:
    """(H, W) map: LV (1) top-left block, MYO (2) ring-ish block, LA (3) bottom."""
    lab = np.zeros((H, W), np.uint8)
    lab[8 + shift : 28 + shift, 10:30] = 1
    lab[8:28, 30:40] = 2
    lab[40:60, 12:44] = 3
    return lab


def _image(value_top: int = 10, value_bottom: int = 200) -> np.ndarray:
    """(H, W) uint8: dark top half, bright bottom half."""
    img = np.full((H, W), value_top, np.uint8)
    img[H // 2 :] = value_bottom
    return img


def _write_records(root: Path, n: int = 2, suffix: str = ".nii.gz") -> list[EchoImage]:
    """n CAMUS-like images (ED and ES of 2CH) with label maps, as records."""
    records = []
    for i in range(n):
        phase = ("ED", "ES")[i % 2]
        patient = f"patient{i // 2 + 1:04d}"
        folder = root / patient
        img_path = folder / f"{patient}_2CH_{phase}{suffix}"
        gt_path = folder / f"{patient}_2CH_{phase}_gt{suffix}"
        write_itk(img_path, _image(), (0.3, 0.3))
        write_itk(gt_path, _label_map(shift=i % 3), (0.3, 0.3))
        records.append(
            EchoImage(
                source="camus2023",
                patient=patient,
                view="2CH",
                phase=phase,
                split="train",
                image_path=img_path,
                mask_paths=(gt_path,),
                info=INFO,
            )
        )
    return records


@pytest.fixture
def records(tmp_path: Path) -> list[EchoImage]:
    return _write_records(tmp_path / "data", n=2)


def _prepare(records, cache_dir: Path, **kw) -> Path:
    return prepare_split(records, "train", SIZE, cache_dir, name="camus", progress=False, **kw)


def test_prepared_split_shapes_values_read_only_memmap(records, tmp_path):
    folder = _prepare(records, tmp_path / "cache")
    assert folder.parent == tmp_path / "cache"
    assert folder.name.startswith(f"camus-train-{SIZE}-")
    split = open_split(folder)
    assert (split.size, split.split, split.source) == (SIZE, "train", "camus2023")
    assert split.images.shape == (2, SIZE, SIZE) and split.images.dtype == np.uint8
    assert split.labels.shape == (2, SIZE, SIZE) and split.labels.dtype == np.uint8
    assert split.eval_labels.shape == (2, EVAL_SIZE, EVAL_SIZE)
    for array in (split.images, split.labels, split.eval_labels):
        assert isinstance(array, np.memmap)
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0, 0, 0] = 1
    for file in folder.iterdir():
        assert not file.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), file
        assert file.stat().st_mode & stat.S_IROTH, file
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    # orientation and intensity kept: dark top, bright bottom (a transpose would not be)
    assert split.images[0, :12].max() <= 12 and split.images[0, -12:].min() >= 198
    # labels resized with nearest: only the original values, every structure present
    assert set(np.unique(split.labels)) == {0, 1, 2, 3}
    assert set(np.unique(split.eval_labels)) == {0, 1, 2, 3}
    # eval labels = nearest resize of the original map: LA occupies rows 40-59 of 64
    la_rows = np.flatnonzero((split.eval_labels[0] == 3).any(axis=1))
    assert abs(la_rows[0] - 40 * EVAL_SIZE / H) <= 8 and abs(la_rows[-1] - 60 * EVAL_SIZE / H) <= 8
    # items: one per (image, structure), prompts built from the metadata
    assert len(split) == 6
    assert split.names == [r.name for r in records]
    assert [(it.image_index, it.structure) for it in split.items] == [
        (i, s) for i in range(2) for s in (1, 2, 3)
    ]
    first = split.items[0]
    assert isinstance(first, CacheItem) and first.name == "patient0001_2CH_ED_LV"
    assert first.prompts["p0"] == ""
    assert first.prompts["p1"] == (
        "Left ventricular cavity of the heart.",
        "Left ventricular cavity in the cardiac ultrasound.",
    )
    assert "fifty-six-year-old female with good image quality" in first.prompts["p6"][0]
    assert " shape " in first.prompts["p7"][0]
    meta = split.records_meta[1]
    assert meta["patient"] == "patient0001" and meta["phase"] == "ES" and meta["age"] == 56


def test_second_prepare_reuses_without_rebuilding(records, tmp_path, monkeypatch):
    folder = _prepare(records, tmp_path / "cache")
    mtime = (folder / "images.npy").stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("cache was rebuilt")

    monkeypatch.setattr(cache, "_build", no_build)
    assert _prepare(records, tmp_path / "cache") == folder
    assert (folder / "images.npy").stat().st_mtime_ns == mtime
    assert len(list((tmp_path / "cache").glob("camus-*"))) == 1


def test_changed_pixels_rebuild(records, tmp_path):
    old = _prepare(records, tmp_path / "cache")
    changed = _image()
    changed[0, 0] = 77  # one pixel
    write_itk(records[1].image_path, changed, (0.3, 0.3))
    new = _prepare(records, tmp_path / "cache")
    assert new != old and old.is_dir()
    assert open_split(new).images[1, 0, 0] != open_split(old).images[1, 0, 0]


def test_changed_mhd_raw_changes_key(tmp_path):
    recs = _write_records(tmp_path / "data", n=1, suffix=".mhd")
    before = cache_key(recs, SIZE)
    changed = _label_map()
    changed[0, 0] = 3
    write_itk(recs[0].mask_paths[0], changed, (0.3, 0.3))  # header identical, .raw differs
    assert cache_key(recs, SIZE) != before


def test_key_depends_on_size_metadata_and_order(records):
    key = cache_key(records, SIZE)
    assert cache_key(records, SIZE) == key
    assert cache_key(records, SIZE + 1) != key
    assert cache_key(records[::-1], SIZE) != key
    older = [records[0].__class__(**{**records[0].__dict__, "info": PatientInfo(age=57)})]
    assert cache_key(older, SIZE) != cache_key(records[:1], SIZE)


def test_crash_mid_build_leaves_nothing_and_retry_succeeds(records, tmp_path, monkeypatch):
    import vlsm.data.io as io

    real = io.read_label_map
    calls = {"n": 0}

    def crash_on_second(rec):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(rec)

    monkeypatch.setattr(io, "read_label_map", crash_on_second)
    cache_dir = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _prepare(records, cache_dir)
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(io, "read_label_map", real)
    folder = _prepare(records, cache_dir)
    assert open_split(folder).labels.shape == (2, SIZE, SIZE)


def test_tmp_folder_of_killed_build_is_removed(records, tmp_path):
    cache_dir = tmp_path / "cache"
    final = cache.cache_folder_name("camus", "train", SIZE, cache_key(records, SIZE))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    host = __import__("socket").gethostname()
    stale = cache_dir / f".{final}.tmp-{int(dead.stdout)}@{host}-abc123"
    elsewhere = cache_dir / f".{final}.tmp-{int(dead.stdout)}@other-{host}-abc123"  # another host's
    for folder in (stale, elsewhere):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"half")
    _prepare(records, cache_dir)
    assert not stale.exists() and elsewhere.exists()


def test_concurrent_prepares_of_one_key_build_once(records, tmp_path, monkeypatch):
    builds = []
    real_build = cache._build

    def counting_build(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(cache, "_build", counting_build)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(_prepare(records, tmp_path / "c")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert len(builds) == 1
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 1


def test_pickle_sends_the_path_not_the_arrays(records, tmp_path):
    split = open_split(_prepare(records, tmp_path / "cache"))
    data = pickle.dumps(split)
    assert len(data) < 2000  # the eval labels alone are 512 KiB
    again = pickle.loads(data)
    assert isinstance(again.eval_labels, np.memmap) and len(again) == len(split)
    np.testing.assert_array_equal(again.images, split.images)


def test_authors_prompts_are_used_verbatim(tmp_path):
    rec = _write_records(tmp_path / "data", n=1)[0]
    own = {s: {"p0": "", "p1": [f"S{s} a.", f"S{s} b."]} for s in (1, 2, 3)}
    rec = EchoImage(**{**rec.__dict__, "prompts": own})
    split = open_split(_prepare([rec], tmp_path / "cache"))
    assert [it.prompts for it in split.items] == [
        {"p0": "", "p1": (f"S{s} a.", f"S{s} b.")} for s in (1, 2, 3)
    ]


def test_missing_metadata_drops_only_the_prompts_that_need_it(tmp_path):
    rec = _write_records(tmp_path / "data", n=1)[0]
    rec = EchoImage(**{**rec.__dict__, "info": PatientInfo(sex="M")})  # no age, no quality
    folder = _prepare([rec], tmp_path / "cache")
    item = open_split(folder).items[0]
    assert set(item.prompts) == {"p0", "p1", "p2", "p3", "p4"}
    counts = json.loads((folder / "meta.json").read_text())["prompt_counts"]
    assert counts["p4"] == 3 and "p5" not in counts


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"split": "val"}, "belongs to split 'val'"),
        ({"mask_paths": ()}, "no ground-truth mask"),
    ],
)
def test_prepare_split_rejects_bad_records(records, tmp_path, change, match):
    bad = [records[0], EchoImage(**{**records[1].__dict__, **change})]
    with pytest.raises(ValueError, match=match):
        _prepare(bad, tmp_path / "cache")
    with pytest.raises(ValueError, match="size must be a positive int"):
        prepare_split(records, "train", 0, tmp_path / "cache", name="camus")


def test_image_mask_size_mismatch_names_the_file(records, tmp_path):
    write_itk(records[1].mask_paths[0], np.zeros((H, W + 2), np.uint8), (0.3, 0.3))
    with pytest.raises(ValueError, match=r"patient0001_2CH_ES\.nii\.gz.*differs"):
        _prepare(records, tmp_path / "cache")
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir())


def test_open_split_rejects_other_folders_and_versions(records, tmp_path):
    with pytest.raises(ValueError, match="not a prepared cache folder"):
        open_split(tmp_path)
    folder = _prepare(records, tmp_path / "cache")
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["cache_version"] = -1
    os.chmod(meta_path, 0o644)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="cache_version -1"):
        open_split(folder)


def test_png_records_at_input_size_are_copied_exactly(tmp_path):
    """The authors' 512 px PNGs: eval labels equal the masks, no resampling at 512."""
    img = np.arange(EVAL_SIZE * EVAL_SIZE, dtype=np.uint32).reshape(EVAL_SIZE, EVAL_SIZE) % 251
    masks = []
    for s in (1, 2, 3):
        m = np.zeros((EVAL_SIZE, EVAL_SIZE), np.uint8)
        m[100 * s : 100 * s + 60, 50:300] = 255
        write_png(tmp_path / f"mask_{s}" / "p_2CH_ED_gt.png", m)
        masks.append(tmp_path / f"mask_{s}" / "p_2CH_ED_gt.png")
    write_png(tmp_path / "images" / "p_2CH_ED.png", img.astype(np.uint8))
    rec = EchoImage(
        source="synthetic-boost",
        patient="patient0001",
        view="2CH",
        phase="ED",
        split="test",
        image_path=tmp_path / "images" / "p_2CH_ED.png",
        mask_paths=tuple(masks),
        prompts={s: {"p0": ""} for s in (1, 2, 3)},
    )
    split = open_split(
        prepare_split([rec], "test", EVAL_SIZE, tmp_path / "c", name="sb", progress=False)
    )
    np.testing.assert_array_equal(split.images[0], img.astype(np.uint8))
    assert (split.eval_labels[0] == 2).sum() == 60 * 250
    np.testing.assert_array_equal(split.labels[0], split.eval_labels[0])


def test_prepare_dataset_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown kind 'kaggle'"):
        prepare_dataset("kaggle", tmp_path, SIZE, tmp_path / "cache")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoData:
    """5 tiny phantom patients: 3 train, 1 val, 1 test (2023 layout)."""
    out = tmp_path_factory.mktemp("phantom") / "demo"
    return write_demo_data(out, seed=0, n_patients=5, n_test=1, n_val=1, size=(H, W))


@pytest.fixture(scope="module")
def phantom_caches(demo, tmp_path_factory) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """(cache dir, CAMUS caches, SDM caches with CAMUS metadata) of the phantom set."""
    cache_dir = tmp_path_factory.mktemp("phantom_cache")
    camus = prepare_dataset("camus", demo.camus_root, SIZE, cache_dir, n_val=1, progress=False)
    sdm = prepare_dataset(
        "sdm", demo.sdm_root, SIZE, cache_dir, n_val=1, camus_root=demo.camus_root, progress=False
    )
    return cache_dir, camus, sdm


def test_prepare_dataset_camus_from_phantom(phantom_caches):
    _, camus, _ = phantom_caches
    assert set(camus) == {"train", "val", "test"}
    n_images = {s: open_split(f).images.shape[0] for s, f in camus.items()}
    assert n_images == {"train": 3 * 4, "val": 4, "test": 4}  # patients x 2 views x 2 phases
    for split_name, folder in camus.items():
        split = open_split(folder)
        assert split.split == split_name and len(split) == 3 * n_images[split_name]
        assert {m["split"] for m in split.records_meta} == {split_name}
        assert all(set(it.prompts) == {f"p{i}" for i in range(8)} for it in split.items)


def test_prepare_dataset_sdm_from_phantom(demo, phantom_caches, tmp_path):
    _, _, sdm = phantom_caches
    assert set(sdm) == {"train", "val"}
    train = open_split(sdm["train"])
    assert train.images.shape[0] == 3 * 4 * demo.sdm_per_image
    # synthetic: P0-P6 (P6 = shape), metadata from the CAMUS patient
    assert all(set(it.prompts) == {f"p{i}" for i in range(7)} for it in train.items)
    assert train.records_meta[0]["age"] is not None
    alone = prepare_dataset("sdm", demo.sdm_root, SIZE, tmp_path / "c", progress=False)["val"]
    assert set(open_split(alone).items[0].prompts) == {"p0", "p1", "p2", "p3"}  # no sex/age


def test_real_items_carry_synthetic_style_prompts_for_synthetic_models(phantom_caches):
    # Models trained on SDM are tested on real images with the prompts they learned:
    # P6 = P5 + shape (no image quality), as in the authors' sdm task files.
    _, camus, sdm = phantom_caches
    test, train = open_split(camus["test"]), open_split(sdm["train"])
    assert not test.synthetic and train.synthetic
    assert all(it.synthetic_prompts is None for it in train.items)
    for item in test.items:
        real_p6, synthetic_p6 = item.prompts["p6"][0], item.synthetic_prompts["p6"][0]
        assert "image quality" in real_p6 and "image quality" not in synthetic_p6
        assert " shape " in synthetic_p6 and set(item.synthetic_prompts) == {f"p{i}" for i in range(7)}
        assert item.synthetic_prompts["p5"] == item.prompts["p5"]


def test_prepare_cli_reuses_what_the_api_built(demo, phantom_caches, tmp_path, capsys):
    from vlsm.cli import main

    cache_dir, camus, sdm = phantom_caches
    argv = ["prepare", "--camus-root", str(demo.camus_root), "--sdm-root", str(demo.sdm_root)]
    argv += ["--n-val", "1", "--size", str(SIZE), "--cache-dir", str(cache_dir), "--no-progress"]
    assert main(argv) == 0
    lines = [tuple(line.split()) for line in capsys.readouterr().out.splitlines()]
    expected = [("camus", s, str(SIZE), str(f)) for s, f in camus.items()]
    expected += [("sdm", s, str(SIZE), str(f)) for s, f in sdm.items()]
    assert lines == expected
    assert main(["prepare", "--sdm-root", str(tmp_path / "nope"), "--cache-dir", "x"]) == 2
    assert main(["prepare", "--cache-dir", "x"]) == 2
    assert main(["prepare", "--camus-root", str(tmp_path), "--cache-dir", "x"]) == 1


def test_authors_layout_cache_matches_raw_camus_cache(demo, tmp_path):
    """Exported to the authors' layout and read back, CAMUS gives the same cache content."""
    from vlsm.data.synthetic_boost import export_synthetic_boost

    export_synthetic_boost(demo.camus_root, tmp_path / "sb", "official")
    raw = prepare_dataset("camus", demo.camus_root, SIZE, tmp_path / "cache", "official", progress=False)
    sb = prepare_dataset(
        "synthetic-boost", tmp_path / "sb", SIZE, tmp_path / "cache", progress=False
    )
    assert set(sb) == set(raw) == {"train", "val", "test"}
    assert all(p.name.startswith("synthetic-boost-camus-") for p in sb.values())
    a, b = open_split(raw["test"]), open_split(sb["test"])
    assert a.names == b.names and [it.name for it in a.items] == [it.name for it in b.items]
    assert [it.prompts for it in a.items] == [it.prompts for it in b.items]
    np.testing.assert_array_equal(a.eval_labels, b.eval_labels)


def test_worker_processes_give_the_same_cache(tmp_path):
    recs = _write_records(tmp_path / "data", n=3)
    serial = open_split(_prepare(recs, tmp_path / "a", workers=1))
    parallel = open_split(_prepare(recs, tmp_path / "b", workers=2))
    for name in ("images", "labels", "eval_labels"):
        np.testing.assert_array_equal(getattr(serial, name), getattr(parallel, name))
    assert serial.items == parallel.items and serial.names == parallel.names


def test_worker_failure_leaves_no_cache(records, tmp_path):
    write_itk(records[1].mask_paths[0], np.zeros((H, W + 2), np.uint8), (0.3, 0.3))
    with pytest.raises(ValueError, match="differs from its mask"):
        _prepare(records, tmp_path / "cache", workers=2)
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir())


def test_losing_the_rename_race_keeps_the_winner(records, tmp_path, monkeypatch):
    """Without a working lock (e.g. NFS), a build that finds the folder taken discards its own."""
    import contextlib

    cache_dir = tmp_path / "cache"
    winner = _prepare(records, tmp_path / "other")  # what the other process built
    final = cache_dir / winner.name
    real_build = cache._build

    def build_while_other_finishes(folder, *args, **kwargs):
        real_build(folder, *args, **kwargs)
        shutil.copytree(winner, final)  # the other process renames first

    monkeypatch.setattr(atomic, "_locked", lambda path: contextlib.nullcontext())
    monkeypatch.setattr(cache, "_build", build_while_other_finishes)
    assert _prepare(records, cache_dir) == final
    assert [p.name for p in cache_dir.iterdir() if p.is_dir()] == [final.name]
    assert open_split(final).images.shape == (2, SIZE, SIZE)


# Modules that cache.py reaches (imports, lazy ones too) whose code does not decide a
# cached value, with the reason; every other one must be part of the key.
_NOT_SHAPING = {
    "vlsm.atomic": "writes files, decides no value",
    "vlsm.integrity": "checksums of the written files, decides no value",
    "vlsm.data.remote_cache": "where a node's copies are, for an error message; decides no value",
    "vlsm.registry": "looks entries up; the plugin modules it imports are in the key (code_digest)",
    "vlsm.model_registry": "model names for vlsm.axes, no cached value",
    "vlsm.data.camus": "reads records; the key hashes the records' files and metadata",
    "vlsm.data.synthetic_boost": "reads records; the key hashes the records' files and metadata",
    "vlsm.data.diffecho": "reads records; the key hashes the records' files and metadata",
    "vlsm.data.imagefolder": "reads records; the key hashes the records' files and metadata",
    "vlsm.data.synthetic_sources": "picks a format's reader; decides no value",
    "vlsm.data.validate_synthetic": "checks files (a registry entry's validator), decides no value",
    "vlsm.data.problems": "describes problems found by the checks, decides no value",
    "vlsm.data.declared_size": "refuses a file by its declared size before decoding, decides no value",
}


def _reached_from(module: str) -> set[str]:
    """vlsm modules that `module` imports, transitively, lazy imports included (from the AST)."""
    import ast
    import importlib.util

    def named(base: str, name: str) -> str:  # `from vlsm.data import io` names a module
        try:
            return f"{base}.{name}" if importlib.util.find_spec(f"{base}.{name}") else base
        except ModuleNotFoundError:
            return base

    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(Path(importlib.util.find_spec(name).origin).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlsm"):
                todo += [named(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.startswith("vlsm")]
    return seen - {"vlsm", "vlsm.data", "vlsm.models"}  # package faces hold no code that is cached


def test_the_key_covers_every_module_that_shapes_cached_values() -> None:
    reached = _reached_from("vlsm.data.cache")
    assert {"vlsm.axes", "vlsm.data.prompts", "vlsm.data.label_codings"} <= reached
    uncovered = sorted(reached - set(cache._CODE_MODULES) - set(_NOT_SHAPING))
    assert not uncovered, f"modules that shape cached values but are outside the cache key: {uncovered}"


@pytest.mark.parametrize("module_name", cache._CODE_MODULES)
def test_a_change_in_a_module_that_shapes_cached_values_rebuilds(records, tmp_path, monkeypatch, module_name) -> None:
    # e.g. renaming a structure in vlsm/axes.py changes every prompt: the old cache must
    # not be served. A changed copy of the module's source stands in for the edit.
    import importlib

    module = importlib.import_module(module_name)
    first = _prepare(records, tmp_path / "cache")
    changed = tmp_path / "src" / Path(module.__file__).name
    changed.parent.mkdir(exist_ok=True)
    changed.write_text(Path(module.__file__).read_text() + "\n# an edit\n")
    monkeypatch.setattr(module, "__file__", str(changed))
    second = _prepare(records, tmp_path / "cache")
    assert second != first and second.is_dir() and first.is_dir()


# --- corruption at rest (docs/faults.md, "Caches and feature stores") --------------------


def _contents(folder: Path) -> dict[str, bytes]:
    """What a cache holds, but meta.json's build time (and the checksum that covers it)."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "meta.json"}
    meta = json.loads((folder / "meta.json").read_text())
    return {**files, "meta": {k: v for k, v in meta.items() if k not in ("created", "checksum")}}


def _meta_value_offset(folder: Path) -> int:
    """A byte inside meta.json's split name: flipping it keeps the file valid JSON."""
    return (folder / "meta.json").read_bytes().index(b'"split": "train"') + len(b'"split": "t')


@pytest.mark.parametrize(("name", "how", "problem"), [
    ("images.npy", "truncate", r"\d+ bytes, \d+ when it was written"),
    ("images.npy", "flip", "its sha256 differs"),
    ("eval_labels.npy", "flip", "its sha256 differs"),
    ("items.json", "flip", "its sha256 differs"),
    ("meta.json", "truncate", "not valid JSON"),
    ("meta.json", "flip", "its content does not match its checksum"),
])
def test_a_damaged_cache_file_is_found_and_rebuilt_to_the_same_bytes(records, tmp_path, caplog, name, how,
                                                                      problem):
    folder = _prepare(records, tmp_path / "cache")
    clean = _contents(folder)
    damage(folder / name, how, at=_meta_value_offset(folder) if name == "meta.json" and how == "flip" else None)
    with pytest.raises(integrity.CorruptFile, match=rf"^{re.escape(str(folder / name))}: {problem}") as err:
        open_split(folder)  # a trial (or any command) reading it stops with one line
    assert "\n" not in str(err.value) and "run `vlsm prepare` or the sweep's command again" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="vlsm.data.cache"):
        assert _prepare(records, tmp_path / "cache") == folder  # the data phase rebuilds it
    assert f"rebuilding cache {folder} from its records: {name}: " in caplog.text
    assert _contents(folder) == clean
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [folder.name]  # the damaged one is gone
    np.testing.assert_array_equal(open_split(folder).images, np.frombuffer(clean["images.npy"][128:], np.uint8)
                                  .reshape(2, SIZE, SIZE))


def test_a_reader_keeps_the_folder_it_opened_while_a_rebuild_replaces_it(records, tmp_path):
    # trials on this node that have the cache memory-mapped go on reading the old files (a
    # rename and an unlink; nothing truncates them); the next open gets the rebuilt folder
    folder = _prepare(records, tmp_path / "cache")
    reader = open_split(folder)
    old_inode = (folder / "images.npy").stat().st_ino
    damage(folder / "items.json", "flip")
    _prepare(records, tmp_path / "cache")
    assert (folder / "images.npy").stat().st_ino != old_inode  # a new folder
    np.testing.assert_array_equal(reader.images, open_split(folder).images)
    np.testing.assert_array_equal(reader.eval_labels, open_split(folder).eval_labels)


def test_verifying_once_per_file_version_gives_what_verifying_always_gives(records, tmp_path, monkeypatch):
    # VLSM_VERIFY=once (the default) hashes a file version once (its build counts) and later
    # compares sizes and a stamp of each file's times and inode; "always" hashes every open
    hashed = []
    real = integrity.file_digest
    monkeypatch.setattr(integrity, "file_digest", lambda path, *a: (hashed.append(Path(path).name), real(path, *a))[1])
    folder = _prepare(records, tmp_path / "cache")
    assert sorted(hashed) == ["eval_labels.npy", "images.npy", "items.json", "labels.npy"]  # the build's
    opened = {}
    for mode in ("once", "always"):
        monkeypatch.setenv(integrity.VERIFY_ENV, mode)
        hashed.clear()
        opened[mode] = open_split(folder)
        assert len(hashed) == (0 if mode == "once" else 4), mode
    for array in ("images", "labels", "eval_labels"):
        np.testing.assert_array_equal(getattr(opened["once"], array), getattr(opened["always"], array))
    assert opened["once"].items == opened["always"].items
    damage(folder / "labels.npy", "flip")  # a write: new times, so "once" hashes it again
    for mode in ("once", "always"):
        monkeypatch.setenv(integrity.VERIFY_ENV, mode)
        with pytest.raises(integrity.CorruptFile, match=r"labels\.npy: its sha256 differs"):
            open_split(folder)
    monkeypatch.setenv(integrity.VERIFY_ENV, "sometimes")
    with pytest.raises(ValueError, match="VLSM_VERIFY='sometimes': expected one of once, always"):
        open_split(folder)


def test_files_hashed_in_threads_give_the_digests_of_one_thread(records, tmp_path):
    folder = _prepare(records, tmp_path / "cache")
    names = ["images.npy", "labels.npy", "eval_labels.npy", "items.json"]
    assert integrity.manifest(folder, names, workers=4) == integrity.manifest(folder, names, workers=1)
    assert integrity.manifest(folder, names, workers=1)["files"]["images.npy"]["digest"] == hashlib.sha256(
        (folder / "images.npy").read_bytes()).hexdigest()


def test_a_damaged_cache_of_another_user_is_not_replaced(records, tmp_path, monkeypatch):
    folder = _prepare(records, tmp_path / "cache")
    damage(folder / "images.npy", "flip")
    monkeypatch.setattr(atomic, "_ours", lambda path: False)
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: damaged, and another user's \(not deleted\)"):
        _prepare(records, tmp_path / "cache")
    with pytest.raises(integrity.CorruptFile, match="images.npy"):
        open_split(folder)  # still there, still refused


def test_a_damaged_copy_downloaded_from_shared_storage_is_fetched_again(records, tmp_path, monkeypatch, caplog):
    # a trial has the folder, not the dataset: this node's copy of a published cache is
    # downloaded again; a published copy that is itself damaged is named with what fixes it
    from vlsm.data import remote_cache
    from vlsm.trial_data import open_cache

    clean = _prepare(records, tmp_path / "cache")
    uri = remote_cache.publish(clean, (tmp_path / "bucket").as_uri())
    monkeypatch.setattr(remote_cache, "LOCAL_ROOT", tmp_path / "node")
    local = open_cache(uri, "train_cache").root
    damage(local / "labels.npy", "flip")
    with caplog.at_level("WARNING"):
        again = open_cache(uri, "train_cache")
    assert "this node's copy is damaged (labels.npy" in caplog.text
    assert again.root == local and (local / "labels.npy").read_bytes() == (clean / "labels.npy").read_bytes()

    published = tmp_path / "bucket" / "cache" / clean.name / "labels.npy"
    damage(published, "flip")
    damage(local / "labels.npy", "flip")
    with pytest.raises(integrity.CorruptFile, match=r"cache/.*/labels\.npy: .*in the copy on shared storage; "
                       "delete that folder on the storage"):
        open_cache(uri, "train_cache")
