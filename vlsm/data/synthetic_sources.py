"""The synthetic sources a cell can train on, by format name: reader, check and prompts.

    from vlsm.data.synthetic_sources import buildable_prompts, load_synthetic
    records = load_synthetic("diffecho", Path("data/DiffEcho"), n_val=50)
    buildable_prompts("diffecho", Path("data/DiffEcho"))   # ("P0", "P1", "P2", "P3")

One entry per name of `vlsm.axes.SYNTHETIC_SOURCES` (adding a format is one entry):

- "sdm": SDM CAMUS (`vlsm.data.sdm`), the paper's. Its patients are CAMUS patients, so
  with a CAMUS root the records get their sex and age (P0-P6), without one P0-P3;
- "diffecho": DiffEcho's generated images (`vlsm.data.diffecho`). Its subjects index a
  Kaggle repackaging of CAMUS, not CAMUS patients: P0-P3, and the generator's text;
- "imagefolder": any generator's images listed in a metadata.csv
  (`vlsm.data.imagefolder`): the prompts its columns can build, and its text column.

Every loader returns records with split "train" / "val", `source` = the format name and
`synthetic` True. `buildable_prompts` and `has_generator_text` read at most a
metadata.csv header, no image, so that a sweep plan can say which cells a source skips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlsm.axes import SYNTHETIC_PROMPTS, SYNTHETIC_SOURCES
from vlsm.data import diffecho, imagefolder
from vlsm.data.problems import Findings
from vlsm.data.records import EchoImage
from vlsm.data.validate_synthetic import validate_diffecho, validate_imagefolder, validate_sdm

__all__ = [
    "SYNTHETIC_SOURCE_REGISTRY",
    "SyntheticSource",
    "buildable_prompts",
    "has_generator_text",
    "load_synthetic",
    "synthetic_source",
    "validate_synthetic",
]

log = logging.getLogger(__name__)

_NO_PATIENT_PROMPTS: tuple[str, ...] = SYNTHETIC_PROMPTS[:4]  # P0-P3: view and phase only


@dataclass(frozen=True)
class SyntheticSource:
    """How to read, check and prompt one synthetic format."""

    name: str  # a value of vlsm.axes.SYNTHETIC_SOURCES
    description: str  # one line, for messages
    # (root, camus_root | None, split_scheme, n_val) -> records with split train/val
    load: Callable[[Path, Path | None, str, int | None], list[EchoImage]]
    # (root, n_val, progress) -> problems and label codings
    validate: Callable[[Path, int | None, bool], Findings]
    # (root, camus_root | None) -> the P-prompts its records can build (no image read)
    prompts: Callable[[Path, Path | None], tuple[str, ...]]
    # root -> whether its records carry the generator's prompt (EchoImage.text)
    generator_text: Callable[[Path], bool]


def _load_sdm(root: Path, camus_root: Path | None, split_scheme: str, n_val: int | None) -> list[EchoImage]:
    from vlsm.data.camus import load_camus
    from vlsm.data.sdm import load_sdm, with_camus_info

    records = load_sdm(root)
    if camus_root is None:
        log.warning(
            "%s: SDM images carry no patient metadata; without a CAMUS root only "
            "prompts P0-P3 can be built (give camus_root / --camus-root for P4-P6)",
            root,
        )
        return records
    kwargs = {} if n_val is None else {"n_val": n_val}
    return with_camus_info(records, load_camus(Path(camus_root), split_scheme=split_scheme, **kwargs))


SYNTHETIC_SOURCE_REGISTRY: dict[str, SyntheticSource] = {
    "sdm": SyntheticSource(
        name="sdm",
        description="SDM CAMUS (Zenodo 7921055): patientXXXX_<view>_<phase>_<training|validation>_<i>.png",
        load=_load_sdm,
        validate=lambda root, n_val, progress: validate_sdm(root, progress=progress),
        prompts=lambda root, camus_root: SYNTHETIC_PROMPTS if camus_root is not None else _NO_PATIENT_PROMPTS,
        generator_text=lambda root: False,
    ),
    "diffecho": SyntheticSource(
        name="diffecho",
        description="DiffEcho (github.com/Pooria90/DiffEcho): <mask stem>_generated_id<k>.png",
        load=lambda root, camus_root, split_scheme, n_val: diffecho.load_diffecho(root, n_val=n_val),
        validate=lambda root, n_val, progress: validate_diffecho(root, n_val=n_val, progress=progress),
        prompts=lambda root, camus_root: _NO_PATIENT_PROMPTS,  # no sex, age or quality
        generator_text=lambda root: True,  # metadata.csv's text, else data_generation.py's
    ),
    "imagefolder": SyntheticSource(
        name="imagefolder",
        description="imagefolder: a metadata.csv naming image, mask and optional split, view, phase, ...",
        load=lambda root, camus_root, split_scheme, n_val: imagefolder.load_imagefolder(root, n_val=n_val),
        validate=lambda root, n_val, progress: validate_imagefolder(root, n_val=n_val, progress=progress),
        prompts=lambda root, camus_root: imagefolder.buildable_prompts(root),
        generator_text=lambda root: "text" in imagefolder.read_imagefolder_header(root),
    ),
}
assert tuple(SYNTHETIC_SOURCE_REGISTRY) == SYNTHETIC_SOURCES, "one entry per vlsm.axes.SYNTHETIC_SOURCES"


def synthetic_source(name: str) -> SyntheticSource:
    """The registry entry of a format; ValueError listing the known ones."""
    try:
        return SYNTHETIC_SOURCE_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"synthetic format {name!r} not known; expected one of {', '.join(SYNTHETIC_SOURCE_REGISTRY)}"
        ) from None


def load_synthetic(
    name: str,
    root: Path,
    camus_root: Path | None = None,
    split_scheme: str = "paper",
    n_val: int | None = None,
) -> list[EchoImage]:
    """The records of a synthetic source (split "train"/"val", source = name, synthetic).

    camus_root gives SDM records their patients' metadata (read with split_scheme and
    n_val); the other formats ignore both (their patients are no CAMUS patients). n_val:
    DiffEcho subjects (default 50) or imagefolder patients without a split column
    (default 50) that validate.
    """
    return synthetic_source(name).load(Path(root), camus_root, split_scheme, n_val)


def validate_synthetic(name: str, root: Path, *, n_val: int | None = None, progress: bool = True) -> Findings:
    """Every problem of a synthetic source folder, each naming its file, and its codings."""
    return synthetic_source(name).validate(Path(root), n_val, progress)


def buildable_prompts(name: str, root: Path, camus_root: Path | None = None) -> tuple[str, ...]:
    """The prompts ("P0", ...) the records of a source can build; reads no image.

    sdm: P0-P6 with a camus_root, else P0-P3; diffecho: P0-P3; imagefolder: by the
    columns of its metadata.csv (no view: P0-P1; view: P0-P2; view and phase: P0-P3;
    + sex: P4; + age: P5-P6). None has P7 (no image quality).
    """
    return synthetic_source(name).prompts(Path(root), camus_root)


def has_generator_text(name: str, root: Path) -> bool:
    """Whether the records carry the generator's own prompt (for --prompt-source generator)."""
    return synthetic_source(name).generator_text(Path(root))
