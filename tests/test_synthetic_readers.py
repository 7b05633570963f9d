"""DiffEcho and imagefolder readers on files written the way their tools write them:
matplotlib's imsave(cmap="gray") RGBA frames and masks, diffusers' RGB images and masks,
pandas' metadata.csv; the grey-spread label coding; our writers reproduce those pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlsm.data import diffecho
from vlsm.data.diffecho import (
    GENERATION_PROMPTS,
    load_diffecho,
    write_diffecho_frame,
    write_diffecho_generated,
)
from vlsm.data.imagefolder import (
    load_imagefolder,
    write_imagefolder_metadata,
    write_imagefolder_pair,
)
from vlsm.data.io import decode_label_map, read_image, read_label_map, write_png
from vlsm.data.label_codings import (
    detect_grey_coding,
    grey_levels,
    grey_to_camus_labels,
    spread_to_grey,
)
from vlsm.data.records import EchoImage

H, W = 40, 56


@pytest.fixture(scope="module")
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _rec(path: Path, source: str = "diffecho") -> EchoImage:
    return EchoImage(source, "diffecho0001", "2CH", "ED", "train", path, (path,))


# --- the grey-spread coding ----------------------------------------------------------


def test_spread_to_grey_gives_the_pixels_of_matplotlib_imsave(plt, tmp_path, make_image, make_label_map):
    rng = np.random.default_rng(0)
    no_la = make_label_map(H, W)
    no_la[no_la == 3] = 0
    arrays = {
        "image": make_image(H, W),
        "labels": make_label_map(H, W),
        "labels without LA": no_la,
        "narrow uint8": rng.integers(37, 61, (H, W)).astype(np.uint8),
        "float32 frame": rng.random((H, W)).astype(np.float32),
        "int16": rng.integers(-300, 3000, (H, W)).astype(np.int16),
        "constant": np.full((H, W), 3, np.uint8),
    }
    for name, array in arrays.items():
        theirs = tmp_path / f"{name}-mpl.png"
        plt.imsave(theirs, array, cmap="gray")  # what DiffEcho's image_saver.py calls
        ours = tmp_path / f"{name}-ours.png"
        write_png(ours, spread_to_grey(array), mode="RGBA")
        with Image.open(theirs) as im:
            assert im.mode == "RGBA", name
        np.testing.assert_array_equal(_pixels(ours), _pixels(theirs), err_msg=name)
    assert grey_levels(3) == (0, 85, 170, 255) and grey_levels(2) == (0, 128, 255)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_grey_masks_in_any_png_mode_decode_to_labels(tmp_path, make_label_map, mode):
    labels = make_label_map(H, W)
    path = tmp_path / "mask.png"
    write_png(path, spread_to_grey(labels), mode=mode)
    decoded, coding = decode_label_map(_rec(path))
    assert coding == "grey"
    np.testing.assert_array_equal(decoded, labels)
    write_png(path, labels, mode=mode)  # plain labels 0-3 are the "labels" coding
    assert decode_label_map(_rec(path))[1] == "labels"
    np.testing.assert_array_equal(read_label_map(_rec(path, "imagefolder")), labels)


def test_grey_coding_without_la_and_its_errors(tmp_path, make_label_map):
    labels = make_label_map(H, W)
    labels[labels == 3] = 0  # 0/128/255: LV and MYO only
    spread = spread_to_grey(labels)
    assert set(np.unique(spread)) == {0, 128, 255} and detect_grey_coding(spread) == "grey"
    np.testing.assert_array_equal(grey_to_camus_labels(spread), labels)
    path = tmp_path / "one.png"
    write_png(path, spread_to_grey((labels == 1).astype(np.uint8)), mode="RGBA")  # 0/255
    with pytest.raises(ValueError, match=rf"{path}: ambiguous grey label map: levels 0 and 255"):
        read_label_map(_rec(path))
    odd = spread_to_grey(make_label_map(H, W))
    odd[0, 0] = 7
    write_png(path, odd, mode="RGB")
    with pytest.raises(ValueError, match=rf"{path}: unknown label level\(s\) \[7\].*0/85/170/255"):
        read_label_map(_rec(path))
    colour = np.stack([spread_to_grey(make_label_map(H, W))] * 3, axis=-1)
    colour[5, 5] = (255, 0, 0)
    Image.fromarray(colour).save(path)
    with pytest.raises(ValueError, match=rf"{path}: colour label map"):
        read_label_map(_rec(path))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_images_in_any_png_mode_read_as_grey_uint8(tmp_path, make_image, mode):
    path = tmp_path / "image.png"
    write_png(path, make_image(H, W), mode=mode)
    image = read_image(_rec(path))
    assert image.dtype == np.uint8 and image.shape == (H, W)
    np.testing.assert_array_equal(image, make_image(H, W))


# --- DiffEcho --------------------------------------------------------------------------


def _write_like_diffecho(root: Path, plt, make_image, make_label_map) -> dict[str, np.ndarray]:
    """A DiffEcho folder as its scripts write it; returns mask stem -> its labels (0-3).

    image_saver.py: imsave(cmap="gray") frames and masks; meta_data_generator.py: pandas
    metadata.csv of the training frames; data_generation.py: for each mask of a folder,
    the mask saved again by load_image (RGB) and a generated RGB image, 2 per mask here.
    """
    labels: dict[str, np.ndarray] = {}
    for subject in (3, 50, 51):  # 3 validates (the first 50 subjects), 50 and 51 train
        split = "valid" if subject < 50 else "train"
        for n, token in enumerate(("ch2_ed", "ch4_es")):
            lab = np.roll(make_label_map(H, W), subject + n, axis=1)
            labels[f"{token}_mask_{subject}"] = lab
            for folder, name, array in (("frames", "frame", make_image(H, W, seed=subject)), ("masks", "mask", lab)):
                (root / f"{split}_{folder}").mkdir(parents=True, exist_ok=True)
                plt.imsave(root / f"{split}_{folder}" / f"{token}_{name}_{subject}.png", array, cmap="gray")
    frames, masks = sorted((root / "train_frames").iterdir()), sorted((root / "train_masks").iterdir())
    rows = [
        {"image": f"./train_frames/{f.name}", "conditioning_image": f"./train_masks/{m.name}",
         "text": f"an ultrasound image of heart in {'two' if f.name[:3] == 'ch2' else 'four'}-chamber view"}
        for f, m in zip(frames, masks, strict=True)
    ]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", sep=",", index=False)
    for split in ("train", "valid"):
        out_images, out_masks = root / "synthetic" / split / "images", root / "synthetic" / split / "masks"
        out_images.mkdir(parents=True)
        out_masks.mkdir(parents=True)
        for mask in sorted((root / f"{split}_masks").iterdir()):
            for i in range(2):
                control = Image.open(mask).convert("RGB")  # diffusers.utils.load_image
                control.save(out_masks / f"{mask.stem}_mask_id{i}.png")
                grey = make_image(H, W, seed=i)
                tinted = np.stack([grey, grey, np.clip(grey.astype(int) + 9, 0, 255).astype(np.uint8)], -1)
                Image.fromarray(tinted).save(out_images / f"{mask.stem}_generated_id{i}.png")
    return labels


def test_load_diffecho_on_files_its_tools_wrote(tmp_path, plt, make_image, make_label_map):
    labels = _write_like_diffecho(tmp_path, plt, make_image, make_label_map)
    records = load_diffecho(tmp_path)
    assert len(records) == 3 * 2 * 2
    assert [(r.split, r.patient, r.view, r.phase, r.variant) for r in records[:4]] == [
        ("train", "diffecho0050", "2CH", "ED", 0), ("train", "diffecho0050", "2CH", "ED", 1),
        ("train", "diffecho0050", "4CH", "ES", 0), ("train", "diffecho0050", "4CH", "ES", 1),
    ]
    assert {r.patient for r in records if r.split == "val"} == {"diffecho0003"}
    for rec in records:
        assert rec.source == "diffecho" and rec.synthetic and rec.info.sex is None and rec.info.age is None
        stem = rec.image_path.name.split("_generated_id")[0]
        decoded, coding = decode_label_map(rec)
        assert coding == "grey"
        np.testing.assert_array_equal(decoded, labels[stem])
        with Image.open(rec.image_path) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(read_image(rec), np.asarray(im.convert("L")))
    # text: the metadata.csv row of its mask (training masks), else data_generation.py's prompt
    train = next(r for r in records if r.patient == "diffecho0051" and r.view == "4CH")
    assert train.text == "an ultrasound image of heart in four-chamber view"
    val = next(r for r in records if r.split == "val" and r.view == "2CH")
    assert val.text == GENERATION_PROMPTS["2CH"]
    assert {r.split for r in load_diffecho(tmp_path, n_val=51)} == {"train", "val"}
    assert {r.patient for r in load_diffecho(tmp_path, n_val=51) if r.split == "train"} == {"diffecho0051"}


def test_load_diffecho_errors_name_the_file(tmp_path, plt, make_image, make_label_map):
    _write_like_diffecho(tmp_path, plt, make_image, make_label_map)
    mask = tmp_path / "synthetic" / "train" / "masks" / "ch2_ed_mask_50_mask_id1.png"
    mask.unlink()
    image = mask.parent.parent / "images" / "ch2_ed_mask_50_generated_id1.png"
    with pytest.raises(ValueError, match=rf"{image}: no mask found; expected {mask.name}"):
        load_diffecho(tmp_path)
    only_real = tmp_path / "real"
    (only_real / "train_frames").mkdir(parents=True)
    plt.imsave(only_real / "train_frames" / "ch2_ed_frame_60.png", make_image(H, W), cmap="gray")
    with pytest.raises(ValueError, match="no generated images.*real-derived frames"):
        load_diffecho(only_real)
    with pytest.raises(ValueError, match="is not a folder"):
        load_diffecho(tmp_path / "nope")


def test_diffecho_writers_reproduce_its_tools_pixels(tmp_path, plt, make_image, make_label_map):
    image, labels = make_image(H, W), make_label_map(H, W)
    frame, mask = write_diffecho_frame(tmp_path / "ours", "val", 7, "4CH", "ES", image, labels)
    assert (frame.relative_to(tmp_path / "ours"), mask.name) == (Path("valid_frames/ch4_es_frame_7.png"), "ch4_es_mask_7.png")
    plt.imsave(tmp_path / "frame.png", image, cmap="gray")
    plt.imsave(tmp_path / "mask.png", labels, cmap="gray")
    np.testing.assert_array_equal(_pixels(frame), _pixels(tmp_path / "frame.png"))
    np.testing.assert_array_equal(_pixels(mask), _pixels(tmp_path / "mask.png"))
    out, gen_mask = write_diffecho_generated(tmp_path / "ours", 7, "4CH", "ES", 2, image, labels)
    assert (out.name, gen_mask.name) == ("ch4_es_mask_7_generated_id2.png", "ch4_es_mask_7_mask_id2.png")
    with Image.open(tmp_path / "mask.png") as im:
        np.testing.assert_array_equal(_pixels(gen_mask), np.asarray(im.convert("RGB")))  # load_image
    with Image.open(out) as im:
        assert im.mode == "RGB"
    with pytest.raises(ValueError, match="view/phase must be in"):
        write_diffecho_frame(tmp_path, "train", 1, "3CH", "ED", image, labels)
    with pytest.raises(ValueError, match="split must be one of"):
        write_diffecho_frame(tmp_path, "test", 1, "2CH", "ED", image, labels)
    assert diffecho.diffecho_patient(7) == "diffecho0007"


# --- imagefolder -----------------------------------------------------------------------


def _imagefolder(root: Path, plt, make_image, make_label_map, *, split: bool = True) -> None:
    rows = []
    for i, (patient, view, phase) in enumerate(
        [("p1", "2CH", "ED"), ("p1", "2CH", "ED"), ("p2", "4ch", "es"), ("p3", "2CH", "ES")]
    ):
        name = f"img{i}"
        _, mask_rel = write_imagefolder_pair(root, name, make_image(H, W, seed=i), make_label_map(H, W))
        if i % 2:  # a generator's mask as matplotlib writes it: RGBA grey levels
            plt.imsave(root / mask_rel, make_label_map(H, W), cmap="gray")
        row = {"image": f"images/{name}.png", "mask": mask_rel, "view": view, "phase": phase,
               "patient": patient, "text": f"echo {i}."}
        if split:
            row["split"] = "val" if patient == "p3" else "train"
        rows.append(row)
    write_imagefolder_metadata(root, rows)


def test_load_imagefolder(tmp_path, plt, make_image, make_label_map):
    _imagefolder(tmp_path, plt, make_image, make_label_map)
    assert (tmp_path / "metadata.csv").read_text().splitlines()[0] == "image,mask,split,view,phase,patient,text"
    records = load_imagefolder(tmp_path)
    assert [(r.patient, r.view, r.phase, r.split, r.variant) for r in records] == [
        ("p1", "2CH", "ED", "train", 0), ("p1", "2CH", "ED", "train", 1),
        ("p2", "4CH", "ES", "train", 0), ("p3", "2CH", "ES", "val", 0),
    ]
    assert [r.text for r in records] == [f"echo {i}." for i in range(4)]
    assert all(r.source == "imagefolder" and r.synthetic for r in records)
    assert [decode_label_map(r)[1] for r in records] == ["labels", "grey", "labels", "grey"]
    for rec in records:
        np.testing.assert_array_equal(read_label_map(rec), make_label_map(H, W))
    # No split column: the first n_val patients (file order) validate.
    _imagefolder(tmp_path / "nosplit", plt, make_image, make_label_map, split=False)
    by_patient = {r.patient: r.split for r in load_imagefolder(tmp_path / "nosplit", n_val=2)}
    assert by_patient == {"p1": "val", "p2": "val", "p3": "train"}


def test_imagefolder_minimal_columns_and_errors(tmp_path, make_image, make_label_map):
    write_imagefolder_pair(tmp_path, "a", make_image(H, W), make_label_map(H, W))
    csv = tmp_path / "metadata.csv"
    csv.write_text("image,mask,split\nimages/a.png,masks/a.png,train\nimages/a.png,masks/a.png,val\n")
    records = load_imagefolder(tmp_path)
    assert [(r.patient, r.view, r.phase, r.name) for r in records] == [
        ("imagefolder0001", "", "", "imagefolder0001_v0"), ("imagefolder0002", "", "", "imagefolder0002_v0")]
    cases = {
        "image,split\nimages/a.png,train\n": rf"{csv}: missing column\(s\) mask; expected image, mask",
        "image,mask,view\nimages/a.png,masks/a.png,A3C\n": rf"{csv}: line 2: view 'A3C'; expected 2CH or 4CH",
        "image,mask,phase\nimages/a.png,masks/a.png,ED\nimages/a.png,masks/a.png,\n": rf"{csv}: line 3: phase ''",
        "image,mask,split\nimages/a.png,masks/a.png,test\n": rf"{csv}: line 2: split 'test'; expected train or val",
        "image,mask\nimages/b.png,masks/a.png\n": rf"{csv}: line 2: image {tmp_path / 'images/b.png'} not found",
        "image,mask,age\nimages/a.png,masks/a.png,old\n": rf"{csv}: line 2: age 'old'",
    }
    for text, match in cases.items():
        csv.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_imagefolder(tmp_path)
    csv.unlink()
    with pytest.raises(ValueError, match=rf"{csv}: not found"):
        load_imagefolder(tmp_path)
