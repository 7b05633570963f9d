"""The Synthetic Boost authors' preprocessed layout (512 x 512 PNG + JSON prompts), read
and written (docs/design.md, "Data").
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from vlsm.atomic import atomic_folder, write_json_atomic
from vlsm.axes import EVAL_SIZE, STRUCTURES
from vlsm.data.records import SPLITS, EchoImage, PatientInfo

__all__ = ["DATASETS", "export_synthetic_boost", "load_synthetic_boost"]

log = logging.getLogger(__name__)

SOURCE = "synthetic-boost"
EXPORT_TOOL = "vlsm export-synthetic-boost"  # named in the marker of every export folder
MARKER_NAME = ".vlsm-export.json"  # what makes a folder an export that --overwrite may replace
# dataset -> its folder name under the authors' data_root
DATASETS: dict[str, str] = {"camus": "camus", "sdm": "sdm_camus"}
# (dataset, split) -> (image folders to look in, mask folder), relative to the dataset folder;
# an export of real CAMUS writes each split into the first image folder of its "camus" row.
_DIRS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("camus", "train"): (("images/train",), "masks/train"),
    ("camus", "val"): (("images/train", "images/val"), "masks/train"),  # theirs: val images live in train/
    ("camus", "test"): (("images/test",), "masks/test"),
    **{("sdm", split): ((f"images/{split}",), "masks") for split in SPLITS},
}

_NAME = re.compile(
    r"^(?P<patient>patient\d{4})_(?P<view>2CH|4CH)_(?P<phase>ED|ES)"
    r"(?:_(?:training|validation|testing))?(?:_(?P<variant>\d+))?(?:_gt)?\.png$"
)
_MASK_DIR = re.compile(r"^mask_(\d)$")
_META = re.compile(
    r" of an? (?P<age>[a-z-]+)-year-old (?P<sex>male|female)"
    r"(?: with (?P<quality>good|medium|poor) image quality)?\.$"
)


# --- reading ---------------------------------------------------------------------------


def _dataset_dir(root: Path, dataset: str) -> Path:
    if dataset not in DATASETS:
        raise ValueError(f"dataset: got {dataset!r}; expected one of {', '.join(DATASETS)}")
    for candidate in (root, root / DATASETS[dataset]):
        if (candidate / "anns").is_dir():
            return candidate
    raise ValueError(
        f"{root}: not a Synthetic Boost layout; expected {root}/anns/ (or "
        f"{root}/{DATASETS[dataset]}/anns/) holding train.json, val.json or test.json"
    )


def _metadata_from_prompts(prompts: dict) -> PatientInfo:
    """Sex, age and image quality as the longest prompt states them (None if absent)."""
    from vlsm.data.prompts import age_in_words

    sentences = [v[0] for v in prompts.values() if isinstance(v, list | tuple) and v]
    if not sentences:
        return PatientInfo()
    m = _META.search(max(sentences, key=len))
    if m is None:
        return PatientInfo()
    ages = {age_in_words(a): a for a in range(0, 151)}
    return PatientInfo(
        sex="M" if m["sex"] == "male" else "F",
        age=ages.get(m["age"]),
        image_quality=m["quality"].capitalize() if m["quality"] else None,
    )


def _find(folders: list[Path], rel: str) -> Path | None:
    for folder in folders:
        if (folder / rel).is_file():
            return folder / rel
    return None


def _load_split(base: Path, dataset: str, split: str, ann: Path) -> list[EchoImage]:
    try:
        entries = json.loads(ann.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{ann}: not valid JSON ({err})") from err
    if not isinstance(entries, list):
        raise ValueError(f"{ann}: expected a JSON list of entries, got {type(entries).__name__}")
    image_dirs = [base / d for d in _DIRS[dataset, split][0]]
    mask_dir = base / _DIRS[dataset, split][1]
    # img_name -> {structure: (entry index, mask path, prompts)}
    groups: dict[str, dict[int, tuple[int, Path, dict]]] = defaultdict(dict)
    for i, entry in enumerate(entries):
        img_name, structure, mask_path, prompts = _read_entry(entry, f"{ann} entry {i}", mask_dir)
        if structure in groups[img_name]:
            first = groups[img_name][structure][0]
            raise ValueError(f"{ann} entry {i}: {img_name} structure {structure} already given by entry {first}")
        groups[img_name][structure] = (i, mask_path, prompts)
    return [_record(img_name, by_structure, split, ann, image_dirs) for img_name, by_structure in groups.items()]


def _read_entry(entry: object, where: str, mask_dir: Path) -> tuple[str, int, Path, dict]:
    """(img_name, structure, mask path, prompts) of one JSON entry, checked."""
    if not isinstance(entry, dict) or not {"img_name", "mask_name", "prompts"} <= entry.keys():
        raise ValueError(f"{where}: expected an object with img_name, mask_name and prompts")
    img_name, mask_name, prompts = entry["img_name"], entry["mask_name"], entry["prompts"]
    if not _NAME.match(str(img_name)):
        raise ValueError(f"{where}: img_name {img_name!r}; expected patientXXXX_<2CH|4CH>_<ED|ES>[...].png")
    if str(mask_name).startswith(("/", "\\")) or ".." in re.split(r"[/\\]", str(mask_name)):  # img_name: _NAME has no "/"
        raise ValueError(
            f"{where}: mask_name {mask_name!r} points outside its mask folder {mask_dir} "
            "(an absolute path or a '..' part); expected a path below it, like mask_1/<name>_gt.png"
        )
    m = _MASK_DIR.match(str(mask_name).split("/")[0])
    structure = int(m.group(1)) if m else None
    if structure not in STRUCTURES:
        raise ValueError(f"{where}: mask_name {mask_name!r}; expected it to start with mask_1/, mask_2/ or mask_3/")
    if not isinstance(prompts, dict) or "p0" not in prompts:
        raise ValueError(f"{where}: prompts must be an object with keys p0, p1, ...")
    mask_path = mask_dir / mask_name
    if not mask_path.is_file():
        raise FileNotFoundError(f"{where}: mask file {mask_path} not found")
    return img_name, structure, mask_path, prompts


def _record(img_name: str, by_structure: dict[int, tuple[int, Path, dict]], split: str, ann: Path,
            image_dirs: list[Path]) -> EchoImage:
    """The record of one image from its three entries (one per structure)."""
    first = min(i for i, _, _ in by_structure.values())
    missing = sorted(set(STRUCTURES) - set(by_structure))
    if missing:
        raise ValueError(
            f"{ann} entry {first}: {img_name} has no entry for structure(s) {missing}; "
            "expected one entry per structure (mask_1, mask_2, mask_3)"
        )
    image_path = _find(image_dirs, img_name)
    if image_path is None:
        raise FileNotFoundError(
            f"{ann} entry {first}: image {img_name} not found in {', '.join(str(d) for d in image_dirs)}"
        )
    m = _NAME.match(img_name)
    prompts = {k: by_structure[k][2] for k in sorted(STRUCTURES)}
    return EchoImage(
        source=SOURCE, patient=m["patient"], view=m["view"], phase=m["phase"], split=split, image_path=image_path,
        mask_paths=tuple(by_structure[k][1] for k in sorted(STRUCTURES)), info=_metadata_from_prompts(prompts[1]),
        variant=int(m["variant"]) if m["variant"] is not None else None,
        prompts={k: {key: v if isinstance(v, str) else tuple(v) for key, v in p.items()} for k, p in prompts.items()},
    )


def load_synthetic_boost(root: Path, dataset: str = "camus") -> list[EchoImage]:
    """Records of the authors' layout (root: the dataset folder holding anns/, or their
    data_root holding camus/ or sdm_camus/), one per image in split then name order, with
    the three binary masks, the JSON prompts per structure and the sex, age and quality
    they state. ValueError / FileNotFoundError naming the JSON file and entry."""
    base = _dataset_dir(Path(root), dataset)
    records: list[EchoImage] = []
    for split in SPLITS:
        ann = base / "anns" / f"{split}.json"
        if ann.is_file():
            records += sorted(_load_split(base, dataset, split, ann), key=lambda r: r.name)
    if not records:
        raise ValueError(f"{base / 'anns'}: none of train.json, val.json, test.json found")
    log.info("%s: %d images from the Synthetic Boost layout (%s)", base, len(records), dataset)
    return records


# --- writing ---------------------------------------------------------------------------


def _export_record(rec: EchoImage, tmp: Path) -> list[dict]:
    """Write one image and its three masks under tmp; return its three JSON entries."""
    from vlsm.data.io import read_image, read_label_map, resize, write_png
    from vlsm.data.prompts import build_prompts
    from vlsm.data.shapes import classify_shape

    image_dirs, mask_dir = _DIRS["camus", rec.split]
    image_dir = image_dirs[0]
    image = resize(read_image(rec), EVAL_SIZE, nearest=False)  # (512, 512) uint8
    labels = resize(read_label_map(rec), EVAL_SIZE, nearest=True)  # (512, 512) uint8 in 0..3
    write_png(tmp / image_dir / f"{rec.name}.png", image)
    entries = []
    for k in sorted(STRUCTURES):
        mask = (labels == k).astype(np.uint8) * 255  # (512, 512) 0/255
        if not mask.any():
            raise ValueError(
                f"{rec.mask_paths[0]}: structure {k} ({STRUCTURES[k]}) is absent after resizing "
                f"{rec.name} to {EVAL_SIZE} x {EVAL_SIZE}; every image needs all three structures"
            )
        mask_name = f"mask_{k}/{rec.name}_gt.png"
        write_png(tmp / mask_dir / mask_name, mask)
        prompts = build_prompts(rec, k, classify_shape(mask))
        entries.append({"img_name": f"{rec.name}.png", "mask_name": mask_name,
                        "prompts": {key: v if isinstance(v, str) else list(v) for key, v in prompts.items()}})
    return entries


def export_synthetic_boost(
    camus_root: Path, out: Path, split_scheme: str = "paper", *, overwrite: bool = False
) -> None:
    """Write raw CAMUS in the authors' camus layout at `out`, atomically: 512 x 512 images
    (bilinear) and 0/255 masks (nearest), prompts p0-p7 (P7's shape on the 512 x 512 mask),
    the splits of `load_camus`; images without ground truth skipped. `overwrite` replaces
    only an earlier export (its marker), never the source; ValueError naming `out` (or the
    image whose metadata a prompt lacks) otherwise."""
    from tqdm import tqdm

    from vlsm.data.camus import load_camus

    out = Path(out)
    old = _check_out(out, Path(camus_root), overwrite=overwrite)
    records = load_camus(Path(camus_root), split_scheme)
    usable = [r for r in records if r.mask_paths]
    if len(usable) < len(records):
        log.warning("%s: skipping %d images without ground truth (e.g. 2019 test patients)", camus_root,
                    len(records) - len(usable))
    if not usable:
        raise ValueError(f"{camus_root}: no CAMUS image with a ground-truth mask to export")

    anns: dict[str, list[dict]] = {split: [] for split in SPLITS}
    with atomic_folder(out, replace=True, remove_old=lambda folder: _remove_export(folder, old)) as tmp:
        for rec in tqdm(sorted(usable, key=lambda r: (r.split, r.name)), desc="export", disable=None):
            anns[rec.split] += _export_record(rec, tmp)
        (tmp / "anns").mkdir()
        for split, entries in anns.items():
            if entries:
                (tmp / "anns" / f"{split}.json").write_text(json.dumps(entries, indent=2) + "\n")
        _mark(tmp, out, old, Path(camus_root), split_scheme)
    log.info("%s: wrote %s", out, ", ".join(f"{len(v) // 3} {k}" for k, v in anns.items() if v))


# --- where an export may go ------------------------------------------------------------
#
# Why: `--overwrite` once replaced whatever `--out` named, the raw dataset included; now
# only a folder carrying our marker and nothing it does not list (docs/data.md).


def _read_marker(folder: Path) -> dict | None:
    """The folder's export marker, or None when it has none we wrote (or it is unusable)."""
    try:
        marker = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("tool") != EXPORT_TOOL:
        return None
    files = marker.get("files")
    if not isinstance(files, list) or not all(_inside(f) for f in files):
        return None  # a list that could name files outside the folder is not ours
    return marker


def _inside(rel: object) -> bool:
    """A relative path that stays below its folder ('a/b.png', not '../x' or '/x')."""
    if not isinstance(rel, str) or not rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in rel


def _entries(folder: Path) -> tuple[set[str], set[str]]:
    """(files and symlinks, real sub-folders) below folder as relative POSIX paths."""
    files: set[str] = set()
    dirs: set[str] = set()
    for where, subdirs, names in os.walk(folder):
        rel = Path(where).relative_to(folder)
        for name in subdirs:
            (files if os.path.islink(Path(where) / name) else dirs).add((rel / name).as_posix())
        files.update((rel / name).as_posix() for name in names)
    return files, dirs


def _parents(files: list[str]) -> set[str]:
    return {p.as_posix() for f in files for p in PurePosixPath(f).parents if p.parts}


def _foreign(folder: Path, marker: dict) -> list[str]:
    """What lies in folder that the marker does not list (sorted)."""
    files, dirs = _entries(folder)
    listed = set(marker["files"]) | {MARKER_NAME}
    return sorted((files - listed) | (dirs - _parents(marker["files"])))


def _check_out(out: Path, source: Path, *, overwrite: bool) -> dict | None:
    """The marker of the earlier export at `out` the export is to replace (None: out absent
    or empty); ValueError naming out and why it may not be written."""
    out, src = Path(out), Path(source).resolve()
    target = out.resolve()
    for refused, why in (
        (target == src, f"is the --camus-root folder {src}; an export never replaces its source; choose another --out"),
        (src in target.parents, f"lies inside the --camus-root folder {src}; write the export outside the raw dataset"),
        (target in src.parents,
         f"holds the --camus-root folder {src}; replacing it would delete the source; choose another --out"),
    ):
        if refused:
            raise ValueError(f"{out}: --out {why}")
    if out.is_symlink():
        raise ValueError(f"{out}: --out is a symbolic link; give the folder's own path")
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"{out}: --out is a file; expected a new folder, an empty one or an earlier export")
    if not any(out.iterdir()):
        return None
    marker = _read_marker(out)
    if marker is None:
        raise ValueError(
            f"{out}: holds files and is not an export of ours (no {MARKER_NAME}); "
            "--overwrite only replaces an earlier export: choose a new --out"
        )
    if not overwrite:
        raise ValueError(
            f"{out}: already holds an export (of {marker.get('source')}, "
            f"{marker.get('created')}); pass --overwrite to replace it, or choose a new --out"
        )
    foreign = _foreign(out, marker)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise ValueError(
            f"{out}: holds files the export did not write ({', '.join(foreign[:5])}{more}); "
            "--overwrite would delete them: move them out or choose a new --out"
        )
    return marker


def _mark(tmp: Path, out: Path, old: dict | None, source: Path, split_scheme: str) -> None:
    """Mark the finished folder tmp as ours; refuse to replace an earlier export `old`
    (from `_check_out`) that changed while the export ran."""
    from vlsm import __version__

    files, _ = _entries(tmp)
    marker = {"tool": EXPORT_TOOL, "version": __version__, "source": str(Path(source).resolve()),
              "split_scheme": split_scheme, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "files": sorted(files)}
    write_json_atomic(tmp / MARKER_NAME, marker, indent=None)
    again = _read_marker(out) if old is not None else None  # the export took a while: is out still the same?
    if old is not None and (again is None or again != old or _foreign(out, again)):
        raise ValueError(
            f"{out}: changed while the export ran (its {MARKER_NAME} or files differ); "
            "nothing was replaced; run the export again"
        )


def _remove_export(folder: Path, marker: dict | None) -> None:
    """Delete the files the marker lists, then folders left empty; nothing else (an empty
    folder without a marker goes too)."""
    files = marker["files"] if marker else []
    for rel in (*files, MARKER_NAME):
        path = folder / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    for rel in sorted(_parents(files), key=lambda p: -len(PurePosixPath(p).parts)):
        try:
            (folder / rel).rmdir()
        except OSError:  # not empty (or gone): leave it
            pass
    try:
        folder.rmdir()
    except OSError:
        log.warning("%s: kept; it holds files the earlier export did not write", folder)
