"""CAMUS readers and writers for both public releases (2019: training/, testing/, .mhd;
2023: database_nifti/, database_split/), their Info_<view>.cfg and split files parsed
once for reader and validator (docs/design.md, "Data").
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vlsm.atomic import write_text_atomic
from vlsm.data.io import write_itk
from vlsm.data.problems import ERROR, WARNING, Problem
from vlsm.data.records import PHASES, QUALITIES, SEXES, SPLITS, VIEWS, EchoImage, PatientInfo

__all__ = ["RELEASES", "SPLIT_SCHEMES", "PAPER_VAL_PATIENTS", "empty_split", "SPLIT_FILES", "detect_camus_release",
           "parse_info_cfg", "read_info_cfg", "format_info_cfg", "load_camus", "read_camus_split_files",
           "read_split_file", "write_camus_patient", "write_camus_split_files"]

log = logging.getLogger(__name__)

RELEASE_2019 = "2019"
RELEASE_2023 = "2023"
RELEASES: tuple[str, ...] = (RELEASE_2019, RELEASE_2023)
SOURCES: dict[str, str] = {RELEASE_2019: "camus2019", RELEASE_2023: "camus2023"}
SPLIT_SCHEMES: tuple[str, ...] = ("paper", "official")
PAPER_VAL_PATIENTS = 50  # paper: the first 50 non-test patients validate
# 2019 folders and the 2023 data / split folders
DIR_TRAINING, DIR_TESTING = "training", "testing"
DIR_NIFTI, DIR_SPLIT = "database_nifti", "database_split"
SPLIT_FILES: dict[str, str] = {
    "train": "subgroup_training.txt",
    "val": "subgroup_validation.txt",
    "test": "subgroup_testing.txt",
}
SUFFIXES = {RELEASE_2019: ".mhd", RELEASE_2023: ".nii.gz"}
PATIENT_RE = re.compile(r"^patient\d{4}$")
# cfg key of the ejection fraction per release (2019 also carries LVedv/LVesv)
_EF_KEY = {RELEASE_2019: "LVef", RELEASE_2023: "EF"}
_CFG_REQUIRED = ("Sex", "Age", "ImageQuality")  # prompts P4-P6 need them
_CFG_FRAMES = ("ED", "ES", "NbFrame")
_CFG_NUMBERS = ("EF", "LVef", "LVedv", "LVesv", "FrameRate")
_CFG_FIELDS = {"ED": "ed_frame", "ES": "es_frame", "NbFrame": "n_frames", "Sex": "sex", "Age": "age",
               "ImageQuality": "image_quality"}  # PatientInfo's field of each key (EF/LVef: ef)


# --- release detection ----------------------------------------------------------------


def detect_camus_release(root: Path) -> str:
    """'2019' when root holds training/ (and/or testing/), '2023' when it holds database_nifti/;
    ValueError naming root and the folders expected when neither (or both) is found."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"CAMUS root {root} is not a folder")
    has_2023 = (root / DIR_NIFTI).is_dir()
    has_2019 = (root / DIR_TRAINING).is_dir() or (root / DIR_TESTING).is_dir()
    if has_2023 and has_2019:
        raise ValueError(
            f"CAMUS root {root} holds both the 2019 release ({DIR_TRAINING}/, {DIR_TESTING}/) "
            f"and the 2023 release ({DIR_NIFTI}/); point to a folder with only one of them"
        )
    if has_2023:
        return RELEASE_2023
    if has_2019:
        return RELEASE_2019
    hint = ""
    nested = [p.name for p in root.iterdir() if p.is_dir() and (p / DIR_NIFTI).is_dir()]
    if nested:
        hint = f" (found {DIR_NIFTI}/ inside {root / nested[0]}; use that folder as root)"
    raise ValueError(
        f"CAMUS root {root}: expected {DIR_TRAINING}/ and {DIR_TESTING}/ (2019 release) or "
        f"{DIR_NIFTI}/ and {DIR_SPLIT}/ (2023 release){hint}"
    )


# --- Info_<view>.cfg ------------------------------------------------------------------


def parse_info_cfg(path: Path) -> PatientInfo:
    """A CAMUS Info_<view>.cfg as a PatientInfo (`read_info_cfg`); ValueError naming the
    file and line of its first error."""
    info, problems = read_info_cfg(path)
    errors = [p for p in problems if p.severity == ERROR]
    if errors:
        raise ValueError(str(errors[0]))
    return info


def read_info_cfg(path: Path) -> tuple[PatientInfo, list[Problem]]:
    """A CAMUS Info_<view>.cfg (`Key: value` lines) as its PatientInfo, with every problem:
    Sex, Age, ImageQuality are required (P4-P6 need them); EF (2023) wins over LVef (2019);
    LVedv, LVesv, FrameRate must be numbers, other keys are ignored; a missing ED, ES or
    NbFrame, or a key given twice, is a warning."""
    path = Path(path)
    if not path.is_file():
        return PatientInfo(), [Problem(path, "CAMUS info file not found (the view's sex, age, image quality and ED/ES frames)")]
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return PatientInfo(), [Problem(path, f"unreadable Info cfg: {err}")]
    problems: list[Problem] = []
    seen: set[str] = set()
    values: dict[str, object] = {}  # key -> its valid value
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        key, sep, value = (part.strip() for part in raw.strip().partition(":"))
        if not sep or not key or not value:
            problems.append(Problem(path, f"line {lineno}: expected a `Key: value` line, got {raw!r}"))
            continue
        if key in seen:
            problems.append(Problem(path, f"line {lineno}: {key} given twice", WARNING))
        seen.add(key)
        parsed, reason = _cfg_value(key, value)
        if reason:
            problems.append(Problem(path, f"line {lineno}: {reason}"))
        elif parsed is not None:
            values[key] = parsed
    problems += [Problem(path, f"missing field {k} (prompts P4-P6 need it)") for k in _CFG_REQUIRED if k not in seen]
    problems += [Problem(path, f"missing field {k}", WARNING) for k in _CFG_FRAMES if k not in seen]
    for key in ("ED", "ES"):
        if key in values and "NbFrame" in values and values[key] > values["NbFrame"]:
            problems.append(Problem(path, f"{key} frame {values[key]} is beyond NbFrame {values['NbFrame']}"))
    fields = {_CFG_FIELDS[k]: v for k, v in values.items() if k in _CFG_FIELDS}
    return PatientInfo(**fields, ef=values.get("EF", values.get("LVef"))), problems


def _cfg_value(key: str, value: str) -> tuple[object, str | None]:
    """The value of cfg key `key` (None for a key we ignore), or why it is invalid."""
    if key in _CFG_FRAMES:
        if value.isdigit() and int(value) >= 1:
            return int(value), None
        return None, f"{key} must be a frame number >= 1, got {value!r}"
    if key == "Age":
        if value.isdigit() and int(value) <= 150:
            return int(value), None
        return None, f"Age must be a whole number of years 0-150, got {value!r}"
    if key == "Sex":
        if value.upper() in SEXES:
            return value.upper(), None
        return None, f"Sex must be one of {', '.join(SEXES)}, got {value!r}"
    if key == "ImageQuality":
        if value.capitalize() in QUALITIES:
            return value.capitalize(), None
        return None, f"ImageQuality must be one of {', '.join(QUALITIES)}, got {value!r}"
    if key in _CFG_NUMBERS:
        try:
            return float(value), None
        except ValueError:
            return None, f"{key} must be a number, got {value!r}"
    return None, None


def format_info_cfg(info: PatientInfo, release: str) -> str:
    """The text of an Info_<view>.cfg for `info` in the release's key order, None fields left
    out, the ejection fraction as LVef (2019) or EF (2023)."""
    _check_release(release)
    rows = [
        ("ED", info.ed_frame),
        ("ES", info.es_frame),
        ("NbFrame", info.n_frames),
        ("Sex", info.sex),
        ("Age", info.age),
        ("ImageQuality", info.image_quality),
        (_EF_KEY[release], None if info.ef is None else repr(float(info.ef))),
    ]
    return "".join(f"{key}: {value}\n" for key, value in rows if value is not None)


# --- reading a release ----------------------------------------------------------------


def _check_release(release: str) -> None:
    if release not in RELEASES:
        raise ValueError(f"CAMUS release must be one of {RELEASES}, got {release!r}")


def broken_link(path: Path) -> str | None:
    """Why a symbolic link leads to nothing (it loops, or its target is gone), else None."""
    if not path.is_symlink() or path.exists():
        return None
    try:
        path.stat()
    except OSError as err:
        what = "loops (to itself or through other links)" if err.errno == errno.ELOOP else "points nowhere"
        return f"a symbolic link that {what} (to {os.readlink(path)!r}); expected a patient folder"
    return None


def _patient_dirs(folder: Path) -> list[Path]:
    """The patientXXXX folders (links to folders too); ValueError for one whose link leads nowhere."""
    if not folder.is_dir():
        return []
    dirs = []
    for path in sorted(p for p in folder.iterdir() if PATIENT_RE.match(p.name)):
        why = broken_link(path)
        if why:
            raise ValueError(f"{path}: {why}")
        if path.is_dir():
            dirs.append(path)
    return dirs


def read_camus_split_files(root: Path) -> dict[str, list[str]]:
    """The 2023 release's database_split/subgroup_*.txt files that exist, as {"train"|"val"|
    "test": [patient, ...]}; a line that is not a patient id is a ValueError naming it."""
    splits: dict[str, list[str]] = {}
    for split, name in SPLIT_FILES.items():
        path = Path(root) / DIR_SPLIT / name
        if path.is_file():
            splits[split], problems = read_split_file(path)
            if problems:
                raise ValueError(str(problems[0]))
    return splits


def read_split_file(path: Path) -> tuple[list[str], list[Problem]]:
    """The patient ids of one subgroup_*.txt (blank lines skipped) and a problem per line
    that is not one."""
    patients: list[str] = []
    problems: list[Problem] = []
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
        line = raw.strip()
        if PATIENT_RE.match(line):
            patients.append(line)
        elif line:
            problems.append(Problem(path, f"line {lineno}: expected a patient id like patient0001, got {raw!r}"))
    return patients, problems


def _assign_paper(candidates: list[str], test: set[str], n_val: int) -> dict[str, str]:
    """patient -> split for the paper scheme (test given; first n_val others validate)."""
    others = sorted(p for p in candidates if p not in test)
    val = set(others[:n_val])
    return {p: ("test" if p in test else "val" if p in val else "train") for p in candidates}


def _gt_path(image: Path, release: str) -> Path:
    """patient0001_2CH_ED.mhd -> patient0001_2CH_ED_gt.mhd (beside it)."""
    suffix = SUFFIXES[release]
    return image.with_name(f"{image.name[: -len(suffix)]}_gt{suffix}")


def _check_ground_truth(records: list[EchoImage], release: str) -> None:
    """Each split has ground truth for every image or for none: caches keep labelled images
    only, so a few missing _gt files would silently shrink the split (and every Dice). A split
    with none (an old 2019 download's test set) stays unlabelled; callers name that case."""
    for split in SPLITS:
        in_split = [r for r in records if r.split == split]
        missing = [_gt_path(r.image_path, release) for r in in_split if not r.mask_paths]
        if missing and len(missing) < len(in_split):
            listing = ", ".join(p.name for p in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(
                f"{missing[0]}: ground-truth file not found, though other {split} images have "
                f"theirs; {len(missing)} of {len(in_split)} {split} images lack ground truth "
                f"({listing}) and would silently leave the {split} set; restore the missing "
                "file(s) from the release"
            )
        if missing and split != "test":
            log.warning(
                "%s: none of the %d %s images has ground truth",
                missing[0].parent.parent, len(in_split), split,
            )


def _records_for_patient(patient_dir: Path, release: str, split: str) -> list[EchoImage]:
    patient = patient_dir.name
    suffix = SUFFIXES[release]
    records = []
    for view in VIEWS:
        info = parse_info_cfg(patient_dir / f"Info_{view}.cfg")
        for phase in PHASES:
            image = patient_dir / f"{patient}_{view}_{phase}{suffix}"
            if not image.is_file():
                raise ValueError(
                    f"{image}: CAMUS image not found (expected {patient}_{view}_{phase}{suffix} "
                    f"in {patient_dir})"
                )
            gt = _gt_path(image, release)
            masks: tuple[Path, ...] = (gt,) if gt.is_file() else ()
            records.append(EchoImage(source=SOURCES[release], patient=patient, view=view, phase=phase,
                                     split=split, image_path=image, mask_paths=masks, info=info))
    return records


def _patients_2019(root: Path, split_scheme: str, n_val: int) -> list[tuple[Path, str]]:
    """(patient folder, split) of the 2019 release: every patient under testing/ tests."""
    if split_scheme == "official":
        raise ValueError(
            f"CAMUS root {root} is the 2019 release, which has no official validation "
            "split (database_split/ came with the 2023 release); use split_scheme='paper'"
        )
    train_dirs = _patient_dirs(root / DIR_TRAINING)
    splits = _assign_paper([d.name for d in train_dirs], set(), n_val)
    return [(d, splits[d.name]) for d in train_dirs] + [(d, "test") for d in _patient_dirs(root / DIR_TESTING)]


def _patients_2023(root: Path, split_scheme: str, n_val: int) -> list[tuple[Path, str]]:
    """(patient folder, split) of the 2023 release, from its split files."""
    dirs = {d.name: d for d in _patient_dirs(root / DIR_NIFTI)}
    files = read_camus_split_files(root)
    needed = ["test"] if split_scheme == "paper" else list(SPLIT_FILES)
    for split in needed:
        if split not in files:
            raise ValueError(
                f"{root / DIR_SPLIT / SPLIT_FILES[split]}: split file not found; the "
                f"'{split_scheme}' split of the 2023 release needs "
                f"{', '.join(SPLIT_FILES[s] for s in needed)} in {root / DIR_SPLIT}"
            )
    listed = {p: s for s in needed for p in files[s]}
    missing = sorted(p for p in listed if p not in dirs)
    if missing:
        raise ValueError(
            f"{root / DIR_SPLIT}: patients {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"are listed in the split files but have no folder in {root / DIR_NIFTI}"
        )
    if split_scheme == "paper":
        splits = _assign_paper(sorted(dirs), set(files["test"]), n_val)
    else:
        splits = listed
        unlisted = sorted(set(dirs) - set(listed))
        if unlisted:
            log.warning("%s: %d patient(s) in no split file are left out (e.g. %s)",
                        root / DIR_SPLIT, len(unlisted), unlisted[0])
    return [(dirs[p], s) for p, s in sorted(splits.items())]


def load_camus(
    root: Path, split_scheme: str = "paper", *, n_val: int = PAPER_VAL_PATIENTS
) -> list[EchoImage]:
    """One record per patient x view x phase of a CAMUS release (detected), sorted by split,
    patient, view, phase. "paper": the official test patients test, of the others (by id) the
    first n_val validate; "official" (2023 only): the subgroup_*.txt files. 2019 test ids
    reuse patient0001-0050 (a record is (split, name)). ValueError naming the file or folder
    for anything missing or malformed (docs/data.md, "CAMUS")."""
    root = Path(root)
    if split_scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split_scheme must be one of {SPLIT_SCHEMES}, got {split_scheme!r}")
    if n_val < 0:
        raise ValueError(f"n_val must be >= 0, got {n_val}")
    release = detect_camus_release(root)
    split_of = _patients_2019 if release == RELEASE_2019 else _patients_2023
    jobs = split_of(root, split_scheme, n_val)  # (patient folder, split)
    if not jobs:
        raise ValueError(f"CAMUS root {root}: no patientXXXX folders found")
    records = [r for d, s in jobs for r in _records_for_patient(d, release, s)]
    _check_ground_truth(records, release)
    order = {"train": 0, "val": 1, "test": 2}
    records.sort(key=lambda r: (order[r.split], r.patient, r.view, r.phase))
    log.info("CAMUS %s at %s: %s", release, root, ", ".join(f"{s} {sum(r.split == s for r in records)}" for s in order))
    return records


def empty_split(records: list[EchoImage], root: Path, split_scheme: str = "paper",
                n_val: int = PAPER_VAL_PATIENTS) -> str | None:
    """Why a split a sweep needs (train, val, test) holds no image, worded for what
    happened; None when every one has images."""
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    empty = [s for s, n in counts.items() if n == 0]
    if not empty:
        return None
    patients = {s: len({r.patient for r in records if r.split == s}) for s in counts}
    if split_scheme == "paper" and set(empty) & {"train", "val"}:
        others = patients["train"] + patients["val"]
        return (f"CAMUS at {root}: the paper split leaves no {' and no '.join(s for s in empty if s != 'test')} "
                f"images: of the {others} patients outside the test set the first {n_val} validate and the rest "
                f"train; give fewer validation patients than {others} (data.val_patients in a sweep, --n-val "
                f"for vlsm prepare and validate-data) or a dataset with more patients")
    where = (f"{DIR_SPLIT}/{SPLIT_FILES[empty[0]]} lists no patient found here" if split_scheme == "official"
             else "no test patients were found")
    return f"CAMUS at {root}: the {split_scheme} split has no {empty[0]} images ({where})"


# --- writing a release ----------------------------------------------------------------


def _check_key(key: tuple[str, str], what: str) -> None:
    if not (isinstance(key, tuple) and len(key) == 2 and key[0] in VIEWS and key[1] in PHASES):
        raise ValueError(
            f"{what} key must be (view, phase) with view in {VIEWS} and phase in {PHASES}, "
            f"got {key!r}"
        )


def write_camus_patient(
    root: Path, release: str, patient: str, images: Mapping[tuple[str, str], np.ndarray],
    label_maps: Mapping[tuple[str, str], np.ndarray | None], infos: Mapping[str, PatientInfo],
    spacing: tuple[float, float] = (0.3, 0.3), testing: bool = False,
) -> None:
    """Write one patient as the release lays it out, atomically: (H, W) uint8 images and 0-3
    label maps keyed by (view, phase) (a None or absent map writes no _gt file), infos by view
    as Info_<view>.cfg; spacing (row, col) mm; testing puts a 2019 patient under testing/."""
    _check_release(release)
    if not PATIENT_RE.match(patient):
        raise ValueError(f"patient must look like 'patient0001', got {patient!r}")
    root = Path(root)
    if release == RELEASE_2019:
        folder = root / (DIR_TESTING if testing else DIR_TRAINING) / patient
    else:
        folder = root / DIR_NIFTI / patient
    for key in label_maps:
        _check_key(key, "label_maps")
        if key not in images:
            raise ValueError(f"label_maps has {key!r} but images has no such image")
    for key, image in images.items():
        _check_key(key, "images")
        _write_image_pair(folder, f"{patient}_{key[0]}_{key[1]}", release, image, label_maps.get(key), spacing)
    for view, info in infos.items():
        if view not in VIEWS:
            raise ValueError(f"infos key must be a view in {VIEWS}, got {view!r}")
        write_text_atomic(folder / f"Info_{view}.cfg", format_info_cfg(info, release))


def _write_image_pair(folder: Path, name: str, release: str, image: np.ndarray, label: np.ndarray | None,
                      spacing: tuple[float, float]) -> None:
    """One (H, W) uint8 image `name` and, unless None, its label map (`name`_gt)."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image {name}: expected a (H, W) uint8 array, got {image.dtype} {image.shape}")
    z = release == RELEASE_2019  # the 2019 .mhd files are W x H x 1 volumes
    write_itk(folder / f"{name}{SUFFIXES[release]}", image, spacing, singleton_z=z)
    if label is None:
        return
    label = np.asarray(label)
    if label.shape != image.shape:
        raise ValueError(f"label map {name}: shape {label.shape} differs from the image's {image.shape}")
    bad = sorted({int(v) for v in np.unique(label)} - {0, 1, 2, 3})
    if bad:
        raise ValueError(f"label map {name}: values {bad} outside 0-3")
    write_itk(folder / f"{name}_gt{SUFFIXES[release]}", label.astype(np.uint8), spacing, singleton_z=z)


def write_camus_split_files(root: Path, splits: Mapping[str, list[str]]) -> None:
    """Write the 2023 release's database_split/subgroup_*.txt from {"train" | "val" | "test":
    patient ids}; a patient may be in one split only."""
    unknown = sorted(set(splits) - set(SPLIT_FILES))
    if unknown:
        raise ValueError(f"splits keys must be in {tuple(SPLIT_FILES)}, got {unknown}")
    owner: dict[str, str] = {}
    for split, patients in splits.items():
        for p in patients:
            if not PATIENT_RE.match(p):
                raise ValueError(f"splits[{split!r}]: {p!r} is not a patient id like 'patient0001'")
            if p in owner:
                raise ValueError(f"{p} is in both splits {owner[p]!r} and {split!r}")
            owner[p] = split
    for split, patients in splits.items():
        text = "".join(f"{p}\n" for p in patients)
        write_text_atomic(Path(root) / DIR_SPLIT / SPLIT_FILES[split], text)
