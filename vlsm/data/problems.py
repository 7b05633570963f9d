"""What a dataset check finds: `Problem` (one defect, naming its file), `Findings`, and the
check of one image and its label map every check runs, through `vlsm.data.io` so that
what passes is what the cache reads (docs/design.md, "Checking a dataset").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlsm.axes import STRUCTURES
from vlsm.data.records import EchoImage

__all__ = ["ERROR", "WARNING", "Findings", "Problem", "check_pair", "error_text", "has_errors", "progress_bar"]

ERROR, WARNING = "error", "warning"
_SEVERITIES = (ERROR, WARNING)


@dataclass(frozen=True)
class Problem:
    """One defect of a dataset: the file it is in and what is wrong with it."""

    path: Path
    message: str
    severity: str = ERROR  # "error" (the sweep refuses to start) or "warning"

    def __post_init__(self) -> None:
        if self.severity not in _SEVERITIES:
            raise ValueError(f"Problem.severity: got {self.severity!r}; expected one of {_SEVERITIES}")

    def __str__(self) -> str:
        prefix = "" if self.severity == ERROR else f"{self.severity}: "
        return f"{self.path}: {prefix}{self.message}"


class Findings(list):
    """The problems of a check (a plain list of `Problem`), and what it read under each root:
    codings[root] counts the label maps of each coding, patients[root] the images' patients."""

    def __init__(self, problems: Iterable[Problem] = (), codings: dict[Path, Counter] | None = None):
        super().__init__(problems)
        self.codings: dict[Path, Counter] = dict(codings or {})
        self.patients: dict[Path, set[str]] = {}

    def add(self, other: Findings | Iterable[Problem]) -> None:
        """Append other's problems and merge its codings and patients."""
        self.extend(other)
        for root, counts in getattr(other, "codings", {}).items():
            self.codings.setdefault(root, Counter()).update(counts)
        for root, patients in getattr(other, "patients", {}).items():
            self.patients.setdefault(root, set()).update(patients)


def has_errors(problems: Iterable[Problem]) -> bool:
    return any(p.severity == ERROR for p in problems)


def error_text(err: BaseException, *paths: Path) -> str:
    """The exception's text without a leading '<path>:' that our Problem shows anyway."""
    text = str(err).strip() or type(err).__name__
    for path in paths:
        for prefix in (f"{path}: ", f"{path}:"):
            if text.startswith(prefix):
                return text[len(prefix) :].strip()
    return text


def progress_bar(items: list, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="file", disable=not progress, leave=False)


def check_pair(rec: EchoImage, codings: Counter | None = None) -> list[Problem]:
    """What is wrong with the record's image and (if any) label map; codings, when given,
    counts the map's label coding."""
    from vlsm.data.declared_size import ImageSizeError
    from vlsm.data.io import decode_label_map, read_image
    from vlsm.data.itk_size import TruncatedFileError

    problems: list[Problem] = []
    image_path = Path(rec.image_path)
    image = labels = None
    try:
        image = read_image(rec)  # (H, W) uint8
    except (TruncatedFileError, ImageSizeError) as err:  # named by the file cut short (a .mhd's .raw)
        problems.append(Problem(err.path, error_text(err, err.path)))
    except Exception as err:  # any decoder failure is a finding, not a crash
        problems.append(Problem(image_path, f"unreadable image: {error_text(err, image_path)}"))
    if not rec.mask_paths:
        return problems
    mask_path = Path(rec.mask_paths[0])
    try:
        labels, coding = decode_label_map(rec)  # (H, W) uint8 in 0..3
    except (TruncatedFileError, ImageSizeError) as err:
        problems.append(Problem(err.path, error_text(err, err.path)))
    except Exception as err:
        text = error_text(err, mask_path, image_path)
        if "label" not in text:
            text = f"unreadable mask: {text}"
        problems.append(Problem(mask_path, text))
    if labels is None:
        return problems
    if codings is not None:
        codings[coding] += 1
    if image is not None and image.shape != labels.shape:
        problems.append(Problem(mask_path, f"mask size {labels.shape[0]} x {labels.shape[1]} (H x W) differs from "
                                f"its image {image_path.name}, {image.shape[0]} x {image.shape[1]}"))
    present = {int(v) for v in np.unique(labels)}
    absent = [f"{STRUCTURES[s]} ({s})" for s in sorted(STRUCTURES) if s not in present]
    if absent:
        problems.append(Problem(mask_path, f"structure(s) {', '.join(absent)} absent from the mask"))
    return problems
