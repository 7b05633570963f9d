"""imagefolder: any generator's images listed in a root/metadata.csv, reader and writer
(docs/design.md, "Data"; the columns in docs/data.md):

    image,mask,split,view,phase,patient,text
    images/a.png,masks/a.png,train,2CH,ED,patient0051,an ultrasound image of ...
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlsm.atomic import write_text_atomic
from vlsm.data.camus import PAPER_VAL_PATIENTS
from vlsm.data.io import check_count, check_image_and_label_map, write_png
from vlsm.data.records import PHASES, SEXES, VIEWS, EchoImage, PatientInfo
from vlsm.data.synthetic_sources import SYNTHETIC_SOURCE_REGISTRY, SyntheticSource
from vlsm.data.tree import leads_out
from vlsm.registry import LazyFunction

if TYPE_CHECKING:
    from vlsm.data.phantom import PhantomImage

__all__ = ["COLUMNS", "METADATA_NAME", "REQUIRED_COLUMNS", "ImagefolderRow", "buildable_prompts", "load_imagefolder",
           "missing_files", "read_imagefolder_header", "read_imagefolder_rows", "row_fields", "row_record",
           "write_imagefolder_metadata", "write_imagefolder_pair"]

log = logging.getLogger(__name__)

SOURCE = "imagefolder"
METADATA_NAME = "metadata.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("image", "mask")
COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, "split", "view", "phase", "patient", "text", "sex", "age")
_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
_PATIENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# prompt -> the columns it needs beyond image and mask (prompts are cumulative)
_PROMPT_COLUMNS: dict[str, tuple[str, ...]] = {
    "P0": (), "P1": (), "P2": ("view",), "P3": ("view", "phase"),
    "P4": ("view", "phase", "sex"), "P5": ("view", "phase", "sex", "age"),
    "P6": ("view", "phase", "sex", "age"),  # synthetic P6: P5 + the mask's shape
}


def read_imagefolder_header(root: Path) -> tuple[str, ...]:
    """The columns of root/metadata.csv (its first line only); ValueError when absent."""
    path = Path(root) / METADATA_NAME
    if not path.is_file():
        raise ValueError(f"{path}: not found; an imagefolder root holds a metadata.csv naming image and mask")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    return tuple(column.strip() for column in header)


def buildable_prompts(root: Path) -> tuple[str, ...]:
    """The prompts P0-P6 that the metadata columns of root can build (reads the header only)."""
    columns = set(read_imagefolder_header(root))
    return tuple(p for p, needs in _PROMPT_COLUMNS.items() if set(needs) <= columns)


@dataclass(frozen=True)
class ImagefolderRow:
    """One row of metadata.csv, paths resolved against root; "" where a column is absent."""

    line: int  # line number in metadata.csv (2 = first row)
    image: Path
    mask: Path
    values: Mapping[str, str]  # column -> stripped cell, for the optional columns present
    paths: Mapping[str, str] = field(default_factory=dict)  # "image", "mask" -> the cell as written


def read_imagefolder_rows(root: Path) -> tuple[tuple[str, ...], list[ImagefolderRow]]:
    """(header, rows) of root/metadata.csv, the header's columns as written (unknown ones
    too); ValueError naming the file when image or mask is not a column."""
    root = Path(root)
    path = root / METADATA_NAME
    columns = read_imagefolder_header(root)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)} "
            f"and optionally {', '.join(COLUMNS[2:])} (got {', '.join(columns) or 'no header'})"
        )
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or ()]
        for raw in reader:
            cells = {k: (v or "").strip() for k, v in raw.items() if k in COLUMNS}
            rows.append(ImagefolderRow(reader.line_num, root / cells["image"], root / cells["mask"],
                                       {c: cells[c] for c in COLUMNS[2:] if c in cells},
                                       {c: cells[c] for c in REQUIRED_COLUMNS}))
    return columns, rows


def _row_error(root: Path, row: ImagefolderRow, column: str, value: str, expected: str) -> ValueError:
    return ValueError(
        f"{Path(root) / METADATA_NAME}: line {row.line}: {column} {value!r}; expected {expected}"
    )


def row_fields(root: Path, row: ImagefolderRow) -> dict:
    """A row's record fields (split may be None: decided by n_val); ValueError naming the
    file, line and column for an empty or unknown cell."""
    values = row.values
    for column in ("image", "mask"):
        if getattr(row, column) == Path(root):  # an empty cell
            raise _row_error(root, row, column, "", "a path relative to the root")
        if leads_out(root, getattr(row, column)):  # "../x.png", "/data/x.png"
            raise _row_error(root, row, column, row.paths.get(column, str(getattr(row, column))),
                             f"a path relative to the root that stays inside it ({root}); an absolute path or "
                             "'..' leading out is refused (a symbolic link inside the root may point anywhere)")
    for column, value in values.items():
        if not value:
            raise _row_error(root, row, column, value,
                             "a value: a column present must be filled in every row")
    split = values.get("split")
    if split is not None and split.lower() not in _SPLITS:
        raise _row_error(root, row, "split", split, "train or val")
    view, phase, sex = (values.get(c, "").upper() for c in ("view", "phase", "sex"))
    for column, value, allowed in (("view", view, VIEWS), ("phase", phase, PHASES), ("sex", sex, SEXES)):
        if column in values and value not in allowed:
            raise _row_error(root, row, column, values[column], " or ".join(allowed))
    age = values.get("age")
    if age is not None and not (age.isdigit() and int(age) <= 150):
        raise _row_error(root, row, "age", age, "a whole number of years 0-150")
    patient = values.get("patient")
    if patient is not None and not _PATIENT_RE.match(patient):
        raise _row_error(root, row, "patient", patient, "a file-name-safe id (letters, digits, . _ -)")
    return {
        "patient": patient or f"{SOURCE}{row.line - 1:04d}",
        "view": view,
        "phase": phase,
        "split": _SPLITS[split.lower()] if split else None,
        "info": PatientInfo(sex=sex or None, age=int(age) if age else None),
        "text": values.get("text"),
    }


def missing_files(row: ImagefolderRow) -> list[tuple[str, Path]]:
    """(column, path) of the row's image and mask files that are not there."""
    return [(column, path) for column, path in (("image", row.image), ("mask", row.mask)) if not path.is_file()]


def row_record(row: ImagefolderRow, fields: dict, split: str, variant: int | None = None) -> EchoImage:
    """The record of a row, from its `row_fields`, in split."""
    return EchoImage(source=SOURCE, patient=fields["patient"], view=fields["view"], phase=fields["phase"],
                     split=split, image_path=row.image, mask_paths=(row.mask,), info=fields["info"],
                     variant=variant, text=fields["text"])


def load_imagefolder(root: Path, *, n_val: int | None = None) -> list[EchoImage]:
    """One record per row of root/metadata.csv, in file order: split from its column, else
    the first n_val patients (default 50) validate; variant 0, 1, ... per patient, view and
    phase. ValueError naming the file and line for a bad cell or a missing file."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"imagefolder root {root} is not a folder")
    n_val = PAPER_VAL_PATIENTS if n_val is None else check_count("n_val", n_val, " (validation patients)")
    _, rows = read_imagefolder_rows(root)
    if not rows:
        raise ValueError(f"{root / METADATA_NAME}: no rows; expected one per image")
    patients: list[str] = []  # in order of first appearance
    variants: dict[tuple[str, str, str], int] = {}
    records = []
    for row in rows:
        fields = row_fields(root, row)
        if missing := missing_files(row):
            column, path = missing[0]
            raise ValueError(f"{root / METADATA_NAME}: line {row.line}: {column} {path} not found")
        patient = fields["patient"]
        if patient not in patients:
            patients.append(patient)
        split = fields["split"] or ("val" if patients.index(patient) < n_val else "train")
        key = (patient, fields["view"], fields["phase"])
        variants[key] = variants.get(key, -1) + 1
        records.append(row_record(row, fields, split, variants[key]))
    log.info("imagefolder at %s: train %d, val %d images", root, sum(r.split == "train" for r in records),
             sum(r.split == "val" for r in records))
    return records


# --- writing ---------------------------------------------------------------------------


def write_imagefolder_pair(
    root: Path, name: str, image: np.ndarray, label_map: np.ndarray, *,
    image_mode: str = "L", mask_levels: np.ndarray | None = None, mask_mode: str = "L",
) -> tuple[str, str]:
    """Write images/<name>.png and masks/<name>.png (the (H, W) CAMUS 0-3 label_map, or
    mask_levels when given, e.g. a grey mask) under root; return their relative paths."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name {name!r} must be a non-empty file-name-safe string")
    image = check_image_and_label_map(image, label_map, uint8=False)  # write_png checks the values
    image_rel, mask_rel = f"images/{name}.png", f"masks/{name}.png"
    write_png(Path(root) / image_rel, image, mode=image_mode)
    write_png(Path(root) / mask_rel, label_map if mask_levels is None else mask_levels, mode=mask_mode)
    return image_rel, mask_rel


def write_imagefolder_metadata(root: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    """Write root/metadata.csv: one line per row (column -> value), the columns in COLUMNS
    order that any row has; image and mask are required."""
    if not rows:
        raise ValueError("write_imagefolder_metadata: no rows")
    unknown = sorted({c for row in rows for c in row} - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; expected some of {', '.join(COLUMNS)}")
    columns = [c for c in COLUMNS if any(c in row for row in rows)]
    for i, row in enumerate(rows):
        missing = [c for c in (*REQUIRED_COLUMNS, *columns) if row.get(c) in (None, "")]
        if missing:
            raise ValueError(f"row {i}: no value for {', '.join(dict.fromkeys(missing))}")
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[row[c] for c in columns] for row in rows])
    path = Path(root) / METADATA_NAME
    write_text_atomic(path, text.getvalue())
    return path


# --- the synthetic-source entry (vlsm.data.synthetic_sources) ---------------------------

_VIEW_TEXT = {"2CH": "two-chamber", "4CH": "four-chamber"}
_PHASE_TEXT = {"ED": "end-diastole", "ES": "end-systole"}
_ATTRIBUTE_COLUMNS = ("view", "phase", "sex", "age")  # the prompt attributes a column gives


def write_phantom(root: Path, images: Sequence[PhantomImage], params: dict) -> None:
    """The phantom demo's imagefolder: params["sdm_per_image"] images of each train/val
    image (rng stream 5) and a metadata.csv naming their split, view, phase, patient and text."""
    rows = []
    for img in images:
        for k in range(params["sdm_per_image"]):
            out, mask = img.render(5, k, img.image.shape)
            image_rel, mask_rel = write_imagefolder_pair(root, f"{img.patient}_{img.view}_{img.phase}_{k}", out, mask)
            text = f"a synthetic echocardiogram in {_VIEW_TEXT[img.view]} view at {_PHASE_TEXT[img.phase]}"
            rows.append({"image": image_rel, "mask": mask_rel, "split": img.split, "view": img.view,
                         "phase": img.phase, "patient": img.patient, "text": text})
    write_imagefolder_metadata(root, rows)


def _attributes(root: Path | None, with_camus: bool) -> frozenset[str]:
    """The mask's shape and what the columns of root/metadata.csv give (the phantom's: view, phase)."""
    columns = set(read_imagefolder_header(root)) if root is not None else {"view", "phase"}
    return frozenset({"shape", *(c for c in _ATTRIBUTE_COLUMNS if c in columns)})


SYNTHETIC_SOURCE_REGISTRY.register(SyntheticSource(
    name=SOURCE,
    description="imagefolder: a metadata.csv naming image, mask and optional split, view, phase, ...",
    load=lambda root, camus_root, split_scheme, n_val: load_imagefolder(root, n_val=n_val),
    validate=lambda root, n_val, progress: LazyFunction("vlsm.data.validate_synthetic", "validate_imagefolder")(
        root, n_val=n_val, progress=progress),
    attributes=_attributes,
    generator_text=lambda root: root is None or "text" in read_imagefolder_header(root),  # the phantom's has text
    write_phantom=write_phantom,
), module=__name__)
