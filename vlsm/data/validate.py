"""Dataset validation: every problem of a CAMUS and a synthetic folder, each naming its
file, before a sweep (docs/design.md, "Checking a dataset").

    python -m vlsm validate-data --camus-root data/CAMUS --sdm-root data/SDM
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlsm.data.camus import (
    DIR_NIFTI,
    DIR_SPLIT,
    DIR_TESTING,
    DIR_TRAINING,
    PAPER_VAL_PATIENTS,
    PATIENT_RE,
    SPLIT_FILES,
    SUFFIXES,
    broken_link,
    detect_camus_release,
    empty_split,
    load_camus,
    read_info_cfg,
    read_split_file,
)
from vlsm.data.problems import (
    ERROR,
    WARNING,
    Findings,
    Problem,
    check_pair,
    error_text,
    has_errors,
    progress_bar,
)
from vlsm.data.records import PHASES, VIEWS, EchoImage

__all__ = ["validate_camus", "validate_data"]

log = logging.getLogger(__name__)


# --- CAMUS ---------------------------------------------------------------------------


def _check_camus_patient(folder: Path, release: str, gt_required: bool) -> list[Problem]:
    patient = folder.name
    suffix = SUFFIXES[release]
    problems: list[Problem] = []
    for view in VIEWS:
        problems += read_info_cfg(folder / f"Info_{view}.cfg")[1]
        for phase in PHASES:
            image = folder / f"{patient}_{view}_{phase}{suffix}"
            mask = folder / f"{patient}_{view}_{phase}_gt{suffix}"
            if not image.is_file():
                problems.append(Problem(mask, f"mask without image: {image.name} is missing") if mask.is_file()
                                else Problem(image, f"image missing (and its mask {mask.name})"))
                continue
            if not mask.is_file() and gt_required:
                problems.append(Problem(image, f"image without mask: {mask.name} is missing"))
            problems += check_pair(EchoImage(f"camus{release}", patient, view, phase, "train", image,
                                             (mask,) if mask.is_file() else ()))
    return problems


def _patient_folders(folder: Path, problems: list[Problem]) -> list[Path]:
    """patientXXXX sub-folders; anything else that looks misplaced is a warning."""
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(folder.iterdir()):
        if PATIENT_RE.match(entry.name) and (why := broken_link(entry)):
            problems.append(Problem(entry, why))
        elif entry.is_dir() and PATIENT_RE.match(entry.name):
            out.append(entry)
        elif entry.is_dir() or entry.name.lower().startswith("patient"):
            problems.append(Problem(entry, "not a patientXXXX folder; ignored", WARNING))
    return out


def _check_camus_splits(root: Path, patients: set[str]) -> list[Problem]:
    """2023 database_split/: files present, ids well-formed, one split per patient."""
    problems: list[Problem] = []
    owner: dict[str, Path] = {}
    for split, name in SPLIT_FILES.items():
        path = root / DIR_SPLIT / name
        if not path.is_file():
            problems.append(Problem(path, "split file missing (the test patients of every split scheme)")
                            if split == "test" else
                            Problem(path, "split file missing (needed by split_scheme='official')", WARNING))
            continue
        patients_listed, bad_lines = read_split_file(path)
        problems += bad_lines
        for patient in patients_listed:
            if patient in owner and owner[patient] != path:
                problems.append(
                    Problem(path, f"{patient} is in two splits: also in {owner[patient].name}")
                )
            elif patient in owner:
                problems.append(Problem(path, f"{patient} listed twice", WARNING))
            owner.setdefault(patient, path)
            if patient not in patients:
                problems.append(Problem(path, f"{patient} is listed but has no patient folder"))
    if owner:
        unlisted = sorted(patients - set(owner))
        problems += [Problem(root / DIR_SPLIT, f"{p} is in no split file", WARNING) for p in unlisted]
    return problems


def validate_camus(root: Path, *, split_scheme: str = "paper", n_val: int | None = None,
                   progress: bool = True) -> list[Problem]:
    """Every problem of a CAMUS folder (2019 or 2023 release), each naming its file; an empty
    split of the one a sweep would use (`split_scheme`, `n_val`) too."""
    root = Path(root)
    try:
        release = detect_camus_release(root)
    except ValueError as err:
        return [Problem(root, error_text(err, root))]
    problems: list[Problem] = []
    jobs: list[tuple[Path, bool]] = []  # (patient folder, ground truth required)
    if release == "2019":
        for name in (DIR_TRAINING, DIR_TESTING):
            if not (root / name).is_dir():
                problems.append(Problem(root / name, "folder missing", WARNING))
            # 2019 test ids restart at patient0001, so the same id in both is expected.
            dirs = _patient_folders(root / name, problems)
            # An old download has no test ground truth at all (then there is no test
            # split with masks, a case the sweep names); once some test image has its
            # _gt file, every one must, or the test set shrinks without a word.
            gt_required = name == DIR_TRAINING or any(
                any(d.glob(f"*_gt{SUFFIXES[release]}")) for d in dirs
            )
            jobs += [(d, gt_required) for d in dirs]
    else:
        dirs = _patient_folders(root / DIR_NIFTI, problems)
        jobs += [(d, True) for d in dirs]
        problems += _check_camus_splits(root, {d.name for d in dirs})
    if not jobs:
        problems.append(Problem(root, f"no patientXXXX folders found ({release} release layout)"))
    for folder, gt_required in progress_bar(jobs, f"validate CAMUS {release}", progress):
        problems += _check_camus_patient(folder, release, gt_required)
    if not has_errors(problems):  # a last check: the reader loads what we passed
        n_val = PAPER_VAL_PATIENTS if n_val is None else n_val
        try:
            records = load_camus(root, split_scheme, n_val=n_val)
        except ValueError as err:
            problems.append(Problem(root, f"the CAMUS reader fails: {error_text(err, root)}"))
        else:
            why = empty_split(records, root, split_scheme, n_val)
            if why:
                problems.append(Problem(root, error_text(ValueError(why), root)))
    return problems


def _camus_test_patients(camus_root: Path) -> set[str]:
    """2023 release: the official test patients (2019 ids collide, so nothing there)."""
    try:
        if detect_camus_release(camus_root) != "2023":
            return set()
    except ValueError:
        return set()
    path = camus_root / DIR_SPLIT / SPLIT_FILES["test"]
    if not path.is_file():
        return set()
    return set(read_split_file(path)[0])


def validate_data(
    camus_root: Path | None,
    sdm_root: Path | None = None,
    *,
    synthetic_root: Path | None = None,
    synthetic_format: str = "sdm",
    split_scheme: str = "paper",
    n_val: int | None = None,
    progress: bool = True,
) -> Findings:
    """Problems of the CAMUS and/or synthetic folders given (at least one), CAMUS first, read
    as a sweep would (`split_scheme`, `n_val`); `codings` counts the label codings under each
    root. Synthetic images of CAMUS test patients are a warning: they leak the test set."""
    from vlsm.data.synthetic_sources import synthetic_source, validate_synthetic

    if camus_root is None and sdm_root is None and synthetic_root is None:
        raise ValueError("validate_data: give camus_root, sdm_root or both (or synthetic_root); got neither")
    sources = [("sdm", Path(sdm_root))] if sdm_root is not None else []
    if synthetic_root is not None:
        synthetic_source(synthetic_format)  # an unknown format fails before any work
        if (synthetic_format, Path(synthetic_root)) not in sources:
            sources.append((synthetic_format, Path(synthetic_root)))
    problems = Findings()
    if camus_root is not None:
        problems += validate_camus(Path(camus_root), split_scheme=split_scheme, n_val=n_val,
                                   progress=progress)
    for fmt, root in sources:
        problems.add(validate_synthetic(fmt, root, n_val=n_val, progress=progress))
    test = _camus_test_patients(Path(camus_root)) if camus_root is not None else set()
    for _, root in sources:  # the patients of the images checked (DiffEcho's are no CAMUS ids)
        for patient in sorted(problems.patients.get(root, set()) & test):
            problems.append(Problem(root, f"synthetic images of {patient}, a CAMUS test patient: the test set "
                                    "leaks into synthetic training", WARNING))
    n_errors = sum(p.severity == ERROR for p in problems)
    log.info("validation: %d error(s), %d warning(s)", n_errors, len(problems) - n_errors)
    return problems
