"""The synthetic sources a cell can train on: the synthetic-source axis as a registry, one
entry per format (sdm, diffecho, imagefolder) holding its reader, check, prompts, label
coding and phantom writer (docs/design.md, "Registries").

    load_synthetic("diffecho", Path("data/DiffEcho"), n_val=50)    # records, split train/val
    source_attributes("diffecho", Path("data/DiffEcho"))      # {"shape", "view", "phase"}: P0-P3
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsm.registry import Registry

__all__ = ["LABEL_CODINGS", "SYNTHETIC_SOURCE_REGISTRY", "SyntheticSource", "has_generator_text", "load_synthetic",
           "source_attributes", "source_names", "synthetic_source", "validate_synthetic"]

# How a source's masks code the labels (`vlsm.data.io`): SDM CAMUS's two codings, or labels
# 0-3 / matplotlib imsave's grey levels, detected per file.
LABEL_CODINGS: tuple[str, ...] = ("sdm", "grey")


@dataclass(frozen=True)
class SyntheticSource:
    """One value of the synthetic-source axis: how to read, check, prompt and fake one format."""

    name: str  # the axis value and the records' `source`: "diffecho"
    description: str  # one line, for messages
    # (root, camus_root | None, split_scheme, n_val) -> records with split train/val, synthetic
    load: Callable[[Path, Path | None, str, int | None], list]
    # (root, n_val, progress) -> vlsm.data.problems.Findings: problems and label codings
    validate: Callable[[Path, int | None, bool], Any]
    # (root | None for the phantom demo's, with a CAMUS root) -> the prompt ATTRIBUTES
    # (vlsm.data.prompts) its records have; reads no image
    attributes: Callable[[Path | None, bool], frozenset[str]]
    # root (None: the phantom demo's) -> whether its records carry the generator's prompt (EchoImage.text)
    generator_text: Callable[[Path | None], bool]
    # (root, phantom images (vlsm.data.phantom.PhantomImage), phantom params) -> the demo's files
    write_phantom: Callable[[Path, Sequence, dict], None]
    label_coding: str = "grey"  # one of LABEL_CODINGS

    def __post_init__(self) -> None:
        if self.label_coding not in LABEL_CODINGS:
            raise ValueError(f"synthetic source {self.name!r}: label_coding {self.label_coding!r}; "
                             f"expected one of {', '.join(LABEL_CODINGS)}")


SYNTHETIC_SOURCE_REGISTRY: Registry[SyntheticSource] = Registry(
    "synthetic source", modules=("vlsm.data.sdm", "vlsm.data.diffecho", "vlsm.data.imagefolder"))


def source_names() -> tuple[str, ...]:
    """The synthetic-source axis: ("sdm", "diffecho", "imagefolder") and any plugin's."""
    return SYNTHETIC_SOURCE_REGISTRY.names()


def synthetic_source(name: str) -> SyntheticSource:
    """The registry entry of a format; ValueError listing the known ones."""
    if name not in SYNTHETIC_SOURCE_REGISTRY:
        raise ValueError(f"synthetic format {name!r} not known; expected one of {', '.join(source_names())}")
    return SYNTHETIC_SOURCE_REGISTRY[name]


def load_synthetic(name: str, root: Path, camus_root: Path | None = None, split_scheme: str = "paper",
                   n_val: int | None = None) -> list:
    """The records of a synthetic source (split "train"/"val", source = name). camus_root
    gives SDM records their patients' metadata (read with split_scheme and n_val); n_val
    also counts the validating DiffEcho subjects or imagefolder patients (default 50)."""
    return synthetic_source(name).load(Path(root), camus_root, split_scheme, n_val)


def validate_synthetic(name: str, root: Path, *, n_val: int | None = None, progress: bool = True) -> Any:
    """Every problem of a synthetic source folder (Findings), each naming its file, and its codings."""
    return synthetic_source(name).validate(Path(root), n_val, progress)


def source_attributes(name: str, root: Path | None, *, with_camus: bool = False) -> frozenset[str]:
    """The prompt attributes (`vlsm.data.prompts.ATTRIBUTES`) the records of a source have,
    read with a CAMUS root or not (root None: the phantom demo's); reads at most a
    metadata.csv header, so that a sweep plan can say which cells a source skips."""
    return synthetic_source(name).attributes(None if root is None else Path(root), with_camus)


def has_generator_text(name: str, root: Path | None) -> bool:
    """Whether the records carry the generator's own prompt (for --prompt-source generator);
    root None: the phantom demo's."""
    return synthetic_source(name).generator_text(None if root is None else Path(root))
