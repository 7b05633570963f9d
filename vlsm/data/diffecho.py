"""DiffEcho (github.com/Pooria90/DiffEcho) synthetic echocardiograms: reader and writer of
its files as its scripts lay them out (docs/design.md, "Data"); one record per generated
image, patients "diffecho<i>" (a subject, not a CAMUS patient), text from metadata.csv.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlsm.atomic import write_text_atomic
from vlsm.data.io import check_count, check_image_and_label_map, write_png
from vlsm.data.label_codings import spread_to_grey
from vlsm.data.records import PHASES, VIEWS, EchoImage
from vlsm.data.synthetic_sources import SYNTHETIC_SOURCE_REGISTRY, SyntheticSource
from vlsm.data.tree import leads_out, walk_files
from vlsm.registry import LazyFunction

if TYPE_CHECKING:
    from vlsm.data.phantom import PhantomImage

__all__ = ["DIFFECHO_VAL_SUBJECTS", "GENERATION_PROMPTS", "METADATA_COLUMNS", "DiffEchoFiles", "diffecho_patient",
           "frame_record", "generated_mask_name", "generated_pairs", "generated_record", "load_diffecho",
           "read_diffecho_metadata", "scan_diffecho", "write_diffecho_frame", "write_diffecho_generated",
           "write_diffecho_metadata"]

log = logging.getLogger(__name__)

SOURCE = "diffecho"
DIFFECHO_VAL_SUBJECTS = 50  # image_saver.py: the first 50 subjects validate
METADATA_NAME = "metadata.csv"
METADATA_COLUMNS: tuple[str, ...] = ("image", "conditioning_image", "text")
# data_generation.py's prompt per view, the text of generated images whose mask has no
# metadata.csv row (meta_data_generator.py lists the training frames only).
GENERATION_PROMPTS: dict[str, str] = {
    "2CH": "an ultrasound image of heart in two-chamber view",
    "4CH": "an ultrasound image of heart in four-chamber view",
}
# Folder names of real-derived data (image_saver.py) and of our generated data (the
# generator's are the user's choice); splits by folder prefix.
FRAME_DIRS: dict[str, str] = {"train": "train_frames", "val": "valid_frames"}
MASK_DIRS: dict[str, str] = {"train": "train_masks", "val": "valid_masks"}
GENERATED_DIR, GENERATED_MASK_DIR = "generated_images", "generated_masks"

_STEM = r"(?P<stem>ch(?P<view>[24])_(?P<phase>ed|es)_mask_(?P<subject>\d+))"
GENERATED_RE = re.compile(rf"^{_STEM}_generated_id(?P<k>\d+)\.png$")
GENERATED_MASK_RE = re.compile(rf"^{_STEM}_mask_id(?P<k>\d+)\.png$")
FRAME_RE = re.compile(r"^ch(?P<view>[24])_(?P<phase>ed|es)_frame_(?P<subject>\d+)\.png$")
MASK_RE = re.compile(rf"^{_STEM}\.png$")


def diffecho_patient(subject: int) -> str:
    """Subject index -> record patient id: 7 -> "diffecho0007" (not a CAMUS patient)."""
    return f"{SOURCE}{int(subject):04d}"


def _view_phase(match: re.Match) -> tuple[str, str]:
    return f"{match['view']}CH", match["phase"].upper()


def _token(view: str, phase: str) -> str:
    if view not in VIEWS or phase not in PHASES:
        raise ValueError(f"view/phase must be in {VIEWS}/{PHASES}, got {view!r}/{phase!r}")
    return f"ch{view[0]}_{phase.lower()}"


# --- finding files ---------------------------------------------------------------------


@dataclass
class DiffEchoFiles:
    """The DiffEcho files under a root, by kind; file name -> path (first one found)."""

    root: Path
    generated: dict[str, Path] = field(default_factory=dict)  # *_generated_id<k>.png
    generated_masks: dict[str, Path] = field(default_factory=dict)  # *_mask_id<k>.png
    frames: dict[Path, Path] = field(default_factory=dict)  # real-derived frame -> its mask path
    metadata: list[Path] = field(default_factory=list)  # metadata.csv files
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (ignored, kept)
    other_pngs: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # links not followed (loops), and why


def _frame_mask(frame: Path, match: re.Match) -> Path:
    """train_frames/ch2_ed_frame_7.png -> train_masks/ch2_ed_mask_7.png (image_saver.py)."""
    folder = frame.parent
    masks = folder.with_name(folder.name.replace("frames", "masks"))
    return masks / f"ch{match['view']}_{match['phase']}_mask_{match['subject']}.png"


def scan_diffecho(root: Path) -> DiffEchoFiles:
    """One walk of root: every DiffEcho file by kind (hidden folders skipped), through
    links to folders (`walk_files`)."""
    root = Path(root)
    tree = walk_files(root)
    found = DiffEchoFiles(root, skipped=tree.skipped)
    for path in tree.files:
        rel = path.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or not path.is_file():
            continue
        name = path.name
        if name == METADATA_NAME:
            found.metadata.append(path)
        elif not name.lower().endswith(".png"):
            continue
        elif GENERATED_RE.match(name) or GENERATED_MASK_RE.match(name):
            kind = found.generated if GENERATED_RE.match(name) else found.generated_masks
            if name in kind:
                found.duplicates.append((path, kind[name]))
            else:
                kind[name] = path
        elif match := FRAME_RE.match(name):
            found.frames[path] = _frame_mask(path, match)
        elif MASK_RE.match(name):
            continue  # a real-derived mask, reached from its frame (frames[frame])
        else:
            found.other_pngs.append(path)
    return found


# --- metadata.csv ----------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataRow:
    """One row of a DiffEcho metadata.csv, its paths resolved against the csv's folder."""

    path: Path  # the metadata.csv
    line: int  # 2 for the first row under the header
    image: Path
    conditioning_image: Path
    text: str


def read_diffecho_metadata(path: Path, root: Path | None = None) -> list[MetadataRow]:
    """The rows of one metadata.csv; ValueError naming the file for missing columns, and
    (given the DiffEcho root) naming the line of a path that leads out of root."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = tuple(reader.fieldnames or ())
        missing = [c for c in METADATA_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; a DiffEcho metadata.csv has "
                f"{', '.join(METADATA_COLUMNS)} (got {', '.join(columns) or 'no header'})"
            )
        rows = [MetadataRow(path, reader.line_num, path.parent / (row["image"] or "").strip(),
                            path.parent / (row["conditioning_image"] or "").strip(), (row["text"] or "").strip())
                for row in reader]
    for row in rows if root is not None else ():
        for column in ("image", "conditioning_image"):
            if leads_out(root, getattr(row, column)):  # "../x.png", "/data/x.png"
                raise ValueError(
                    f"{path}: line {row.line}: {column} {str(getattr(row, column))!r} leads out of the DiffEcho "
                    f"root {root}; expected a path inside it, like ./{FRAME_DIRS['train']}/<name>.png (an absolute "
                    "path or '..' leading out is refused; a symbolic link inside the root may point anywhere)"
                )
    return rows


def _texts(metadata: list[Path], root: Path) -> dict[str, str]:
    """Mask stem ("ch2_ed_mask_7") -> the generator's text, from every metadata.csv under root."""
    texts: dict[str, str] = {}
    for path in metadata:
        for row in read_diffecho_metadata(path, root):
            stem = row.conditioning_image.stem
            if row.text and texts.setdefault(stem, row.text) != row.text:
                log.warning("%s line %d: a second text for %s; keeping the first", path, row.line, stem)
    return texts


# --- reading ---------------------------------------------------------------------------


def _val_subjects(n_val: int | None) -> int:
    if n_val is None:
        return DIFFECHO_VAL_SUBJECTS
    return check_count("n_val", n_val, " (validation subjects)")


def generated_mask_name(name: str) -> str:
    """ch2_ed_mask_7_generated_id3.png -> ch2_ed_mask_7_mask_id3.png, the mask it was made from."""
    match = GENERATED_RE.match(name)
    if match is None:
        raise ValueError(f"{name}: not a generated image name (<mask stem>_generated_id<k>.png)")
    return f"{match['stem']}_mask_id{match['k']}.png"


def generated_pairs(found: DiffEchoFiles) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """(image, mask) of each generated image whose mask was found, the generated images
    without one, and the masks (``*_mask_id<k>.png``) without a generated image."""
    pairs, lonely = [], []
    for name, path in found.generated.items():
        mask = found.generated_masks.get(generated_mask_name(name))
        if mask is None:
            lonely.append(path)
        else:
            pairs.append((path, mask))
    used = {mask for _, mask in pairs}
    return pairs, lonely, [mask for mask in found.generated_masks.values() if mask not in used]


def generated_record(image: Path, mask: Path, n_val: int, texts: dict[str, str] | None = None) -> EchoImage:
    """The record of one generated image: subjects < n_val validate; text from texts (mask
    stem -> metadata.csv text), else the view's generation prompt; None without texts."""
    match = GENERATED_RE.match(image.name)
    if match is None:
        raise ValueError(f"{image}: not a generated image name (<mask stem>_generated_id<k>.png)")
    text = None if texts is None else texts.get(match["stem"], GENERATION_PROMPTS[_view_phase(match)[0]])
    return _record(match, image, mask, n_val, variant=int(match["k"]), text=text)


def frame_record(frame: Path, mask: Path, n_val: int) -> EchoImage:
    """The record of one real-derived frame (checked by validate-data, never trained on)."""
    match = FRAME_RE.match(frame.name)
    if match is None:
        raise ValueError(f"{frame}: not a frame name (ch<2|4>_<ed|es>_frame_<i>.png)")
    return _record(match, frame, mask, n_val)


def _record(match: re.Match, image: Path, mask: Path, n_val: int, **extra) -> EchoImage:
    """A record of subject match["subject"]: the first n_val subjects validate."""
    view, phase = _view_phase(match)
    subject = int(match["subject"])
    return EchoImage(source=SOURCE, patient=diffecho_patient(subject), view=view, phase=phase,
                     split="val" if subject < n_val else "train", image_path=image, mask_paths=(mask,), **extra)


def load_diffecho(root: Path, *, n_val: int | None = None) -> list[EchoImage]:
    """One record per generated image under root, sorted by split, patient, view, phase and
    variant k: subjects < n_val (default DiffEcho's 50) validate. ValueError when root is not
    a folder, holds no generated image, or a generated image has no mask."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"DiffEcho root {root} is not a folder")
    n_val = _val_subjects(n_val)
    found = scan_diffecho(root)
    for path, why in found.skipped:
        log.warning("%s: %s", path, why)
    for ignored, kept in found.duplicates:
        log.warning("%s: duplicate of %s, skipped", ignored, kept)
    if not found.generated:
        raise ValueError(
            f"DiffEcho root {root}: no generated images named "
            "ch{2|4}_{ed|es}_mask_<i>_generated_id<k>.png found"
            + (" (only real-derived frames, which are CAMUS images: give them as --camus-root data)"
               if found.frames else "")
        )
    pairs, lonely, _ = generated_pairs(found)
    if lonely:
        raise ValueError(
            f"{lonely[0]}: no mask found; expected {generated_mask_name(lonely[0].name)} (data_generation.py "
            f"saves the conditioning mask beside every generated image) somewhere under {root}"
        )
    texts = _texts(found.metadata, root)
    records = [generated_record(path, mask, n_val, texts) for path, mask in pairs]
    order = {"train": 0, "val": 1}
    records.sort(key=lambda r: (order[r.split], r.patient, r.view, r.phase, r.variant))
    log.info("DiffEcho at %s: train %d, val %d generated images (subjects < %d validate)",
             root, sum(r.split == "train" for r in records), sum(r.split == "val" for r in records), n_val)
    return records


# --- writing ---------------------------------------------------------------------------


def write_diffecho_frame(
    root: Path, split: str, subject: int, view: str, phase: str,
    image: np.ndarray, label_map: np.ndarray,
) -> tuple[Path, Path]:
    """Write one real-derived frame and its (H, W) CAMUS 0-3 mask as image_saver.py does
    (split "train" | "val": train_ or valid_ folders; RGBA `spread_to_grey`, as imsave);
    return their paths."""
    if split not in FRAME_DIRS:
        raise ValueError(f"split must be one of {tuple(FRAME_DIRS)}, got {split!r}")
    token, subject = _token(view, phase), check_count("subject", subject)
    image = check_image_and_label_map(image, label_map, uint8=False)  # any numbers: spread to grey
    frame = Path(root) / FRAME_DIRS[split] / f"{token}_frame_{subject}.png"
    mask = Path(root) / MASK_DIRS[split] / f"{token}_mask_{subject}.png"
    write_png(frame, spread_to_grey(image), mode="RGBA")
    write_png(mask, spread_to_grey(label_map), mode="RGBA")
    return frame, mask


def write_diffecho_generated(
    root: Path, subject: int, view: str, phase: str, k: int,
    image: np.ndarray, label_map: np.ndarray,
) -> tuple[Path, Path]:
    """Write one generated (H, W) uint8 image (RGB) and its mask (RGB grey levels, as
    diffusers' load_image reads an imsave PNG) as data_generation.py does; return their paths."""
    token, subject, k = _token(view, phase), check_count("subject", subject), check_count("k", k)
    image = check_image_and_label_map(image, label_map)
    stem = f"{token}_mask_{subject}"
    out = Path(root) / GENERATED_DIR / f"{stem}_generated_id{k}.png"
    mask = Path(root) / GENERATED_MASK_DIR / f"{stem}_mask_id{k}.png"
    write_png(out, image, mode="RGB")
    write_png(mask, spread_to_grey(label_map), mode="RGB")
    return out, mask


def write_diffecho_metadata(root: Path) -> Path:
    """Write root/metadata.csv as meta_data_generator.py does: one row per training frame
    (sorted by name) with its mask and the prompt of its view."""
    root = Path(root)
    frames = sorted((root / FRAME_DIRS["train"]).glob("*.png"))
    lines = [",".join(METADATA_COLUMNS)]
    for frame in frames:
        match = FRAME_RE.match(frame.name)
        if match is None:
            continue
        view, _ = _view_phase(match)
        mask = _frame_mask(frame, match)
        lines.append(
            f"./{FRAME_DIRS['train']}/{frame.name},./{MASK_DIRS['train']}/{mask.name},"
            f"{GENERATION_PROMPTS[view]}"
        )
    path = root / METADATA_NAME
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


# --- the synthetic-source entry (vlsm.data.synthetic_sources) ---------------------------


def write_phantom(root: Path, images: Sequence[PhantomImage], params: dict) -> None:
    """The phantom demo's DiffEcho folder: each train/val image as a real-derived frame
    (subject = patient index), params["sdm_per_image"] generated images of its mask (rng
    stream 4), and the metadata.csv."""
    for img in images:
        write_diffecho_frame(root, img.split, img.index, img.view, img.phase, img.image, img.label)
        for k in range(params["sdm_per_image"]):
            out, mask = img.render(4, k, img.image.shape)
            write_diffecho_generated(root, img.index, img.view, img.phase, k, out, mask)
    write_diffecho_metadata(root)


SYNTHETIC_SOURCE_REGISTRY.register(SyntheticSource(
    name=SOURCE,
    description="DiffEcho (github.com/Pooria90/DiffEcho): <mask stem>_generated_id<k>.png",
    load=lambda root, camus_root, split_scheme, n_val: load_diffecho(root, n_val=n_val),
    validate=lambda root, n_val, progress: LazyFunction("vlsm.data.validate_synthetic", "validate_diffecho")(
        root, n_val=n_val, progress=progress),
    # its subjects index a Kaggle repackaging of CAMUS, not CAMUS patients: no sex, age or quality
    attributes=lambda root, with_camus: frozenset({"shape", "view", "phase"}),
    generator_text=lambda root: True,  # metadata.csv's text, else data_generation.py's
    write_phantom=write_phantom,
), module=__name__)
