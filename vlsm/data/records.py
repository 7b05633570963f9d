"""What every reader returns: one record per 2-D echocardiogram (view x phase).

Records say where the pixels are and what is known about the patient; they never hold
pixels. `vlsm.data.io.read_image` / `read_label_map` turn a record into arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vlsm.data.synthetic_sources import SYNTHETIC_SOURCE_REGISTRY

VIEWS: tuple[str, ...] = ("2CH", "4CH")
PHASES: tuple[str, ...] = ("ED", "ES")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SEXES: tuple[str, ...] = ("M", "F")
QUALITIES: tuple[str, ...] = ("Good", "Medium", "Poor")

# Prompts of one (image, structure) in the authors' JSON shape:
# {"p0": "", "p1": ("... of the heart.", "... in the cardiac ultrasound."), ...}
PromptSet = Mapping[str, "str | tuple[str, str]"]


@dataclass(frozen=True)
class PatientInfo:
    """Metadata of one patient and view (image quality and the frames belong to a view), as
    CAMUS's Info_<view>.cfg gives it; unknown fields stay None."""

    sex: str | None = None  # "M" | "F"
    age: int | None = None  # years
    image_quality: str | None = None  # "Good" | "Medium" | "Poor"
    ef: float | None = None  # ejection fraction, % (cfg key EF, or LVef in 2019)
    ed_frame: int | None = None
    es_frame: int | None = None
    n_frames: int | None = None


@dataclass(frozen=True)
class EchoImage:
    """One 2-D echocardiogram (one view at one phase) and where its pixels live. mask_paths:
    one label map in its source's coding, or three binary masks (the authors' layout), or
    none (no published ground truth); view and phase are "" where a source does not say."""

    source: str  # reader: "camus2019" | "camus2023" | "sdm" | "diffecho" | "imagefolder" | ...
    patient: str  # "patient0001" (DiffEcho: "diffecho0007", not a CAMUS patient)
    view: str  # "2CH" | "4CH" | "" (unknown)
    phase: str  # "ED" | "ES" | "" (unknown)
    split: str  # "train" | "val" | "test"
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    info: PatientInfo = field(default_factory=PatientInfo)
    variant: int | None = None  # SDM: which of the synthetic images of one real image
    # The authors' layout carries its own prompts per structure (1, 2, 3).
    prompts: Mapping[int, PromptSet] | None = None
    # The prompt a generative model made this image from (DiffEcho's metadata.csv text,
    # an imagefolder's text column), e.g. "an ultrasound image of heart in two-chamber view".
    text: str | None = None

    @property
    def name(self) -> str:
        """Unique, file-name-safe id within a source: patient0001_2CH_ED[_v3]
        (an unknown view or phase is left out)."""
        base = "_".join(part for part in (self.patient, self.view, self.phase) if part)
        return base if self.variant is None else f"{base}_v{self.variant}"

    @property
    def synthetic(self) -> bool:
        """Whether a generator made it: a synthetic source's record, or one of the synthetic
        images of a real one (the authors' layout)."""
        return self.variant is not None or self.source in SYNTHETIC_SOURCE_REGISTRY
