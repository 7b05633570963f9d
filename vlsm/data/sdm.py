"""SDM CAMUS (Stojanovski et al. 2023, Zenodo 7921055): reader and writer of its
synthetic 256 x 256 PNGs ``patientXXXX_{2CH|4CH}_{ED|ES}_{training|validation}_{i}.png``,
the folder scanned once for reader and validator (docs/design.md, "Data"). Label maps
come in two codings, detected per file (`vlsm.data.label_codings`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlsm.data.io import check_count, check_image_and_label_map, write_png
from vlsm.data.label_codings import CODING_LABELS, CODING_SECTOR, camus_to_sdm_labels
from vlsm.data.records import PHASES, VIEWS, EchoImage
from vlsm.data.synthetic_sources import SYNTHETIC_SOURCE_REGISTRY, SyntheticSource
from vlsm.data.tree import walk_files
from vlsm.registry import LazyFunction

if TYPE_CHECKING:
    from vlsm.data.phantom import PhantomImage

__all__ = ["SDM_SPLITS", "SdmFiles", "load_sdm", "scan_sdm", "sdm_record", "write_sdm_image", "with_camus_info"]

log = logging.getLogger(__name__)

SOURCE = "sdm"
SDM_SPLITS: dict[str, str] = {"training": "train", "validation": "val"}  # file token -> split
NAME_RE = re.compile(
    r"^(?P<patient>patient\d{4})_(?P<view>2CH|4CH)_(?P<phase>ED|ES)_"
    r"(?P<split>training|validation)_(?P<index>\d+)\.png$"
)
TEST_NAME_RE = re.compile(r"^patient\d{4}_(2CH|4CH)_(ED|ES)_testing(_\d+)?\.png$")
_LABEL_DIR_WORDS = ("annotation", "label", "mask")


def write_sdm_image(
    root: Path, patient: str, view: str, phase: str, split: str, index: int, image: np.ndarray,
    label_map: np.ndarray, coding: str = CODING_LABELS, *, cone: np.ndarray | None = None,
) -> None:
    """Write one synthetic image and its (H, W) CAMUS 0-3 label map in the authors' layout
    (<view>_<phase>/images/<split>/, annotations/ or, in the sector coding with `cone` or the
    image's non-zero pixels, sector_annotations/); split "training" | "validation"."""
    if not re.match(r"^patient\d{4}$", patient):
        raise ValueError(f"patient must look like 'patient0001', got {patient!r}")
    if view not in VIEWS or phase not in PHASES:
        raise ValueError(f"view/phase must be in {VIEWS}/{PHASES}, got {view!r}/{phase!r}")
    if split not in SDM_SPLITS:
        raise ValueError(f"split must be one of {tuple(SDM_SPLITS)}, got {split!r}")
    index = check_count("index", index)
    image = check_image_and_label_map(image, label_map)
    if coding == CODING_SECTOR and cone is None:
        cone = image > 0
    encoded = camus_to_sdm_labels(label_map, coding, cone)
    name = f"{patient}_{view}_{phase}_{split}_{index}.png"
    folder = Path(root) / f"{view}_{phase}"
    label_dir = "annotations" if coding == CODING_LABELS else "sector_annotations"
    write_png(folder / "images" / split / name, image)
    write_png(folder / label_dir / split / name, encoded)


def is_label_dir(name: str) -> bool:
    name = name.lower()
    return any(word in name for word in _LABEL_DIR_WORDS)


def find_label(image: Path, root: Path) -> tuple[Path | None, list[Path]]:
    """(the label map of `image` or None, the paths tried): the same relative path under the
    nearest sibling folder named annotation/label/mask, walking up to root; one without
    "sector" in its name first, then by name."""
    tried: list[Path] = []
    folder = image.parent
    while True:
        parent = folder.parent
        rel = image.relative_to(folder)
        entries = parent.iterdir() if parent.is_dir() else ()
        siblings = [s for s in entries if s.is_dir() and s != folder and is_label_dir(s.name)]
        for sibling in sorted(siblings, key=lambda s: ("sector" in s.name.lower(), s.name)):
            candidate = sibling / rel
            tried.append(candidate)
            if candidate.is_file():
                return candidate, tried
        if folder == root or root not in folder.parents:
            return None, tried
        folder = parent


@dataclass
class SdmFiles:
    """The PNGs under an SDM root, sorted out (what the reader and the validator both read)."""

    images: dict[str, Path] = field(default_factory=dict)  # file name -> the first image of that name
    label_maps: list[Path] = field(default_factory=list)  # PNGs under label-ish folders
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (image, the one it repeats)
    misnamed: list[Path] = field(default_factory=list)  # PNGs not named like SDM images
    test_images: int = 0  # real test images (*_testing.png), never read
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # links not followed (loops), and why


def scan_sdm(root: Path) -> SdmFiles:
    """Sort out the PNGs under root, at any depth, through links to folders (`walk_files`)."""
    tree = walk_files(Path(root))
    files = SdmFiles(skipped=tree.skipped)
    for path in (p for p in tree.files if p.name.endswith(".png")):
        if any(is_label_dir(part) for part in path.relative_to(root).parts[:-1]):
            files.label_maps.append(path)
        elif NAME_RE.match(path.name) is None:
            if TEST_NAME_RE.match(path.name):
                files.test_images += 1
            else:
                files.misnamed.append(path)
        elif path.name in files.images:
            files.duplicates.append((path, files.images[path.name]))
        else:
            files.images[path.name] = path
    return files


def sdm_record(image: Path, label: Path | None) -> EchoImage:
    """The record of an SDM image (its name matches NAME_RE) and its label map, if any."""
    match = NAME_RE.match(image.name)
    return EchoImage(source=SOURCE, patient=match["patient"], view=match["view"], phase=match["phase"],
                     split=SDM_SPLITS[match["split"]], image_path=image, mask_paths=() if label is None else (label,),
                     variant=int(match["index"]))


def load_sdm(root: Path) -> list[EchoImage]:
    """One record per synthetic image under root (any depth), sorted by split, patient, view,
    phase and variant (the trailing index), with no patient metadata (`with_camus_info`).
    ValueError when root is not a folder, holds no SDM image, or an image has no label map."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"SDM root {root} is not a folder")
    files = scan_sdm(root)
    for path, why in files.skipped:
        log.warning("%s: %s", path, why)
    for path, first in files.duplicates:
        log.warning("%s: duplicate of %s, skipped", path, first)
    if files.test_images:
        log.info("%s: ignored %d real test image(s) (*_testing.png)", root, files.test_images)
    if files.misnamed:
        log.info("%s: ignored %d PNG(s) not named like SDM images", root, len(files.misnamed))
    if not files.images:
        raise ValueError(
            f"SDM root {root}: no images named "
            "patientXXXX_{2CH|4CH}_{ED|ES}_{training|validation}_<index>.png found"
        )
    records = []
    for path in files.images.values():
        label, tried = find_label(path, root)
        if label is None:
            shown = ", ".join(str(t) for t in tried[:4]) or "no folder named *annotation*/*label*/*mask*"
            raise ValueError(
                f"{path}: no label map found; expected a file of the same name under a sibling "
                f"folder whose name contains {'/'.join(_LABEL_DIR_WORDS)} (tried: {shown})"
            )
        records.append(sdm_record(path, label))
    order = {"train": 0, "val": 1}
    records.sort(key=lambda r: (order[r.split], r.patient, r.view, r.phase, r.variant))
    log.info("SDM CAMUS at %s: train %d, val %d", root, sum(r.split == "train" for r in records),
             sum(r.split == "val" for r in records))
    return records


def with_camus_info(
    sdm_records: Iterable[EchoImage], camus_records: Iterable[EchoImage]
) -> list[EchoImage]:
    """SDM records with the PatientInfo of the same CAMUS patient and view, from non-test
    records only (SDM was made from training patients; 2019 test ids collide); records
    without a match keep their empty info."""
    infos = {(r.patient, r.view): r.info for r in camus_records if r.split != "test"}
    out, missing = [], 0
    for rec in sdm_records:
        info = infos.get((rec.patient, rec.view))
        if info is None:
            missing += 1
            out.append(rec)
        else:
            out.append(replace(rec, info=info))
    if missing:
        log.warning("%d SDM record(s) have no CAMUS training patient to take metadata from", missing)
    return out


# --- the synthetic-source entry (vlsm.data.synthetic_sources) ---------------------------


def _load_source(root: Path, camus_root: Path | None, split_scheme: str, n_val: int | None) -> list[EchoImage]:
    """SDM records; with a CAMUS root, their patients' metadata (P4-P6 need sex and age)."""
    from vlsm.data.camus import load_camus

    records = load_sdm(root)
    if camus_root is None:
        log.warning("%s: SDM images carry no patient metadata; without a CAMUS root only prompts P0-P3 "
                    "can be built (give camus_root / --camus-root for P4-P6)", root)
        return records
    kwargs = {} if n_val is None else {"n_val": n_val}
    return with_camus_info(records, load_camus(Path(camus_root), split_scheme=split_scheme, **kwargs))


def write_phantom(root: Path, images: Sequence[PhantomImage], params: dict) -> None:
    """The phantom demo's SDM CAMUS: params["sdm_per_image"] square images of each
    train/val image (rng stream 3), in the label coding params["sdm_coding"]."""
    from vlsm.data.phantom import sector_mask

    size = (params["size"][0], params["size"][0])  # SDM CAMUS images are square
    cone = sector_mask(size)  # (H, H) bool, for the "sector" label coding
    for img in images:
        split = "training" if img.split == "train" else "validation"
        for k in range(params["sdm_per_image"]):
            image, label = img.render(3, k, size)
            write_sdm_image(root, img.patient, img.view, img.phase, split, k, image, label,
                            coding=params["sdm_coding"], cone=cone)


SYNTHETIC_SOURCE_REGISTRY.register(SyntheticSource(
    name=SOURCE,
    description="SDM CAMUS (Zenodo 7921055): patientXXXX_<view>_<phase>_<training|validation>_<i>.png",
    load=_load_source,
    validate=lambda root, n_val, progress: LazyFunction("vlsm.data.validate_synthetic", "validate_sdm")(
        root, progress=progress),
    # its patients are CAMUS patients: with a CAMUS root they have sex and age
    attributes=lambda root, with_camus: frozenset({"shape", "view", "phase", *(("sex", "age") if with_camus else ())}),
    generator_text=lambda root: False,
    write_phantom=write_phantom,
    label_coding="sdm",
), module=__name__)
