"""Checks of the synthetic sources (SDM CAMUS, DiffEcho, imagefolder): every problem, each
naming its file, and the label codings found (docs/design.md, "Checking a dataset").
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from vlsm.data.problems import (
    WARNING,
    Findings,
    Problem,
    check_pair,
    error_text,
    has_errors,
    progress_bar,
)
from vlsm.data.records import EchoImage

if TYPE_CHECKING:
    from vlsm.data.diffecho import DiffEchoFiles

__all__ = ["validate_diffecho", "validate_imagefolder", "validate_sdm"]


def _check_all(records: list[EchoImage], root: Path, desc: str, progress: bool, findings: Findings) -> None:
    """check_pair on every record, counting the codings and noting the patients under root."""
    counts = findings.codings.setdefault(root, Counter())
    findings.patients.setdefault(root, set()).update(rec.patient for rec in records)
    for rec in progress_bar(records, desc, progress):
        findings.extend(check_pair(rec, counts))


def _check_splits(findings: Findings, root: Path, what: str, load, how: str) -> None:
    """The reader's last word once nothing else is wrong: it loads, and trains and validates."""
    if has_errors(findings):
        return
    try:
        records = load()
    except ValueError as err:
        findings.append(Problem(root, f"the {what} reader fails: {error_text(err, root)}"))
        return
    for split, name in (("train", "training"), ("val", "validation")):
        if not any(r.split == split for r in records):
            findings.append(Problem(root, f"no {name} images: {how}"))


# --- SDM CAMUS -------------------------------------------------------------------------


def validate_sdm(root: Path, *, progress: bool = True) -> Findings:
    """Every problem of an SDM CAMUS folder, each naming its file (layout: `vlsm.data.sdm`)."""
    from vlsm.data import sdm as sdm_reader

    root = Path(root)
    if not root.is_dir():
        return Findings([Problem(root, "SDM root folder not found")])
    problems = Findings(codings={root: Counter()})
    files = sdm_reader.scan_sdm(root)
    problems += [Problem(path, why, WARNING) for path, why in files.skipped]
    problems += [Problem(path, "not named patientXXXX_{2CH|4CH}_{ED|ES}_{training|validation}_<i>.png; ignored",
                         WARNING) for path in files.misnamed]
    problems += [Problem(path, f"duplicate of {first}; ignored", WARNING) for path, first in files.duplicates]
    if not files.images:
        problems.append(Problem(root, "no SDM images found (expected folders of "
                                      "patientXXXX_<view>_<phase>_<training|validation>_<i>.png)"))
    records = []
    for path in files.images.values():
        label, _ = sdm_reader.find_label(path, root)
        if label is None:
            problems.append(Problem(path, "image without label map (no file of this name in a sibling "
                                          "annotations/labels/masks folder)"))
        records.append(sdm_reader.sdm_record(path, label))
    _check_all(records, root, "validate SDM", progress, problems)
    for label in files.label_maps:
        if sdm_reader.NAME_RE.match(label.name) and label.name not in files.images:
            problems.append(Problem(label, "label map without image"))
    return problems


# --- DiffEcho --------------------------------------------------------------------------


def _check_diffecho_metadata(found: DiffEchoFiles, findings: Findings) -> None:
    from vlsm.data.diffecho import read_diffecho_metadata

    for path in found.metadata:
        try:
            rows = read_diffecho_metadata(path, found.root)
        except (ValueError, OSError, UnicodeDecodeError) as err:
            findings.append(Problem(path, error_text(err, path)))
            continue
        for row in rows:
            for column, file in (("image", row.image), ("conditioning_image", row.conditioning_image)):
                if not file.is_file():
                    findings.append(Problem(path, f"line {row.line}: {column} {file} not found"))
            if not row.text:
                findings.append(Problem(path, f"line {row.line}: empty text; expected the prompt"))


def _diffecho_generated(found: DiffEchoFiles, n_val: int, findings: Findings) -> list[EchoImage]:
    """Records of the generated images whose mask is there; the others as problems."""
    from vlsm.data import diffecho

    pairs, lonely, orphans = diffecho.generated_pairs(found)
    for path in lonely:
        mask_name = diffecho.generated_mask_name(path.name)
        findings.append(Problem(path, f"generated image without mask: {mask_name} not found under {found.root}"))
    for path in orphans:
        image_name = path.name.replace("_mask_id", "_generated_id")
        findings.append(Problem(path, f"mask without generated image: {image_name} not found under {found.root}"))
    return [diffecho.generated_record(path, mask, n_val) for path, mask in pairs]


def _diffecho_frames(found: DiffEchoFiles, n_val: int, findings: Findings) -> list[EchoImage]:
    """Records of the real-derived frames whose mask is there; the others as problems."""
    from vlsm.data import diffecho

    records = []
    folder_splits = {folder: split for split, folder in diffecho.FRAME_DIRS.items()}
    for frame, mask in found.frames.items():
        rec = diffecho.frame_record(frame, mask, n_val)
        subject = int(diffecho.FRAME_RE.match(frame.name)["subject"])
        if folder_splits.get(frame.parent.name, rec.split) != rec.split:
            findings.append(Problem(frame, f"in {frame.parent.name}/, but subject {subject} is a {rec.split} "
                                    f"subject with n_val {n_val} (the first n_val subjects validate)", WARNING))
        if not mask.is_file():
            findings.append(Problem(frame, f"frame without mask: {mask} is missing"))
            continue
        records.append(rec)
    findings += [Problem(path, "not a DiffEcho name (<mask stem>_generated_id<k>.png, ..._mask_id<k>.png, "
                         "ch<2|4>_<ed|es>_frame_<i>.png, ch<2|4>_<ed|es>_mask_<i>.png); ignored", WARNING)
                 for path in found.other_pngs]
    return records


def validate_diffecho(root: Path, *, n_val: int | None = None, progress: bool = True) -> Findings:
    """Every problem of a DiffEcho folder, each naming its file: generated images and masks,
    real-derived frames and masks, metadata.csv; subjects below n_val (default 50) validate."""
    from vlsm.data import diffecho

    root = Path(root)
    if not root.is_dir():
        return Findings([Problem(root, "DiffEcho root folder not found")])
    n_val = diffecho.DIFFECHO_VAL_SUBJECTS if n_val is None else n_val
    found = diffecho.scan_diffecho(root)
    findings = Findings(codings={root: Counter()})
    findings += [Problem(path, why, WARNING) for path, why in found.skipped]
    for ignored, kept in found.duplicates:
        findings.append(Problem(ignored, f"duplicate of {kept}; ignored", WARNING))
    if not found.generated:
        findings.append(Problem(root, "no generated images found (expected data_generation.py's "
                                "ch{2|4}_{ed|es}_mask_<i>_generated_id<k>.png with ..._mask_id<k>.png masks)"))
    _check_diffecho_metadata(found, findings)
    records = _diffecho_generated(found, n_val, findings) + _diffecho_frames(found, n_val, findings)
    _check_all(records, root, "validate DiffEcho", progress, findings)
    _check_splits(findings, root, "DiffEcho", lambda: diffecho.load_diffecho(root, n_val=n_val),
                  f"generated images of subjects < {n_val} validate, the others train (--n-val)")
    return findings


# --- imagefolder -----------------------------------------------------------------------


def validate_imagefolder(root: Path, *, n_val: int | None = None, progress: bool = True) -> Findings:
    """Every problem of an imagefolder, each naming its file: metadata.csv's columns and cells,
    the files it lists, their pixels; without a split column the first n_val (50) validate."""
    from vlsm.data import imagefolder
    from vlsm.data.camus import PAPER_VAL_PATIENTS

    root = Path(root)
    if not root.is_dir():
        return Findings([Problem(root, "imagefolder root folder not found")])
    csv_path = root / imagefolder.METADATA_NAME
    try:
        header, rows = imagefolder.read_imagefolder_rows(root)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        return Findings([Problem(csv_path, error_text(err, csv_path))])
    findings = Findings(codings={root: Counter()})
    ignored = [c for c in header if c not in imagefolder.COLUMNS]
    if ignored:
        findings.append(Problem(csv_path, f"column(s) {', '.join(ignored)} ignored; known: "
                                          f"{', '.join(imagefolder.COLUMNS)}", WARNING))
    if not rows:
        findings.append(Problem(csv_path, "no rows; expected one per image"))
    records, seen = [], {}
    for row in rows:
        try:
            fields = imagefolder.row_fields(root, row)
        except ValueError as err:
            findings.append(Problem(csv_path, error_text(err, csv_path)))
            continue
        if row.image in seen:
            again = f"line {row.line}: image {row.image} also on line {seen[row.image]}"
            findings.append(Problem(csv_path, again, WARNING))
        seen.setdefault(row.image, row.line)
        missing = imagefolder.missing_files(row)
        for column, path in missing:
            findings.append(Problem(path, f"{column} listed on line {row.line} of {csv_path.name} not found"))
        if not missing:
            records.append(imagefolder.row_record(row, fields, fields["split"] or "train"))
    _check_all(records, root, "validate imagefolder", progress, findings)
    first = PAPER_VAL_PATIENTS if n_val is None else n_val
    how = ("no row has this split in its split column" if "split" in header
           else f"without a split column the first {first} patients validate (--n-val)")
    _check_splits(findings, root, "imagefolder", lambda: imagefolder.load_imagefolder(root, n_val=n_val), how)
    return findings

