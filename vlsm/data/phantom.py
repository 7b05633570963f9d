"""Phantom apical echocardiograms: a CAMUS + SDM look-alike dataset drawn from a seed and
written through the real writers, so that the demo and the tests need no download
(docs/design.md, "The phantom", says what an image shows).

    python -m vlsm demo-data --out demo_data    # write_demo_data(Path("demo_data"), seed=0)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from vlsm.atomic import atomic_folder
from vlsm.axes import SOURCE_SDM
from vlsm.data.records import PHASES, QUALITIES, SEXES, VIEWS, EchoImage, PatientInfo
from vlsm.data.synthetic_sources import SYNTHETIC_SOURCE_REGISTRY, load_synthetic, source_names

__all__ = ["Anatomy", "DemoData", "GENERATOR_VERSION", "MANIFEST_NAME", "PhantomImage", "make_patient_info",
           "render_phantom", "sample_anatomy", "sector_mask", "write_demo_data"]

log = logging.getLogger(__name__)

# Bump when the pixels or the layout change, so that cached demo folders are rewritten.
GENERATOR_VERSION = 1
MANIFEST_NAME = "phantom_manifest.json"
RELEASES: tuple[str, ...] = ("2019", "2023")
SDM_CODINGS: tuple[str, ...] = ("labels", "sector")
MIN_SIZE = 32  # below this the myocardium is thinner than a pixel

# Sector: origin slightly above the top row, on the vertical centre line.
_SECTOR_ORIGIN_Y = -0.03  # in H
_SECTOR_HALF_ANGLE = math.radians(40.0)
_SECTOR_DEPTH = 1.0  # radius of the far arc, in H (measured from the origin)
_DEPTH_MM = 150.0  # imaging depth that one image height stands for


# --- anatomy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Patient-level heart geometry at end-diastole, in units of the image height.

    The heart frame has its origin at the outer (epicardial) LV apex; u runs down the
    long axis towards the mitral plane, v to the image right. Both views and both
    phases of a patient share one Anatomy, so ED/ES and 2CH/4CH stay consistent.
    """

    apex_y: float  # depth of the outer LV apex below the top row
    apex_x: float  # lateral offset of the apex from the sector axis (2CH)
    tilt_2ch: float  # long-axis tilt from vertical, degrees (< 0: base to the right)
    tilt_4ch: float
    lv_a: float  # LV cavity semi-axis along the long axis
    lv_b: float  # LV cavity semi-axis across (eccentricity = lv_b / lv_a)
    base_cut: float  # mitral plane at u = apex wall + lv_a * (1 + base_cut)
    wall: float  # lateral/septal wall thickness
    apex_wall: float  # apical wall thickness
    la_a: float  # LA semi-axis along the long axis
    la_b: float  # LA semi-axis across
    la_shift: float  # lateral offset of the LA centre from the long axis
    rv_scale: float  # right-heart size relative to the left (4CH)
    myo_gain: float  # echogenicity of the myocardium
    tissue_gain: float  # echogenicity of the surrounding tissue


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's heart: size, eccentricity, walls, tilt, atrium."""
    scale = rng.uniform(0.88, 1.1)
    lv_a = 0.22 * scale * rng.uniform(0.93, 1.07)
    lv_b = lv_a * rng.uniform(0.4, 0.52)
    base_cut = rng.uniform(0.66, 0.8)
    wall = 0.045 * scale * rng.uniform(0.85, 1.25)
    la_shift = rng.uniform(-0.015, 0.015)
    # The LA must cover the LV's mitral opening (half-width lv_b*sqrt(1-t^2)) so that
    # the LV cavity touches only myocardium and atrium; its top half-width is 0.87*la_b.
    opening = lv_b * math.sqrt(1.0 - base_cut**2)
    la_b = max(0.1 * scale * rng.uniform(0.9, 1.15), (opening + abs(la_shift) + 0.015) / 0.866)
    return Anatomy(
        apex_y=rng.uniform(0.1, 0.14),
        apex_x=rng.uniform(-0.025, 0.025),
        tilt_2ch=float(np.clip(rng.normal(0.0, 3.0), -7.0, 7.0)),
        tilt_4ch=float(np.clip(rng.normal(-5.0, 3.0), -11.0, 1.0)),
        lv_a=lv_a,
        lv_b=lv_b,
        base_cut=base_cut,
        wall=wall,
        apex_wall=wall * rng.uniform(0.7, 0.95),
        la_a=0.11 * scale * rng.uniform(0.85, 1.15),
        la_b=la_b,
        la_shift=la_shift,
        rv_scale=rng.uniform(0.85, 1.15),
        myo_gain=rng.uniform(0.6, 0.85),
        tissue_gain=rng.uniform(0.2, 0.3),
    )


def make_patient_info(
    rng: np.random.Generator, view: str, *, patient: PatientInfo | None = None
) -> PatientInfo:
    """Metadata of one patient and view, as CAMUS's Info_<view>.cfg would hold it. Sex, age
    (20-90) and EF belong to the patient (pass the other view's info as `patient` to keep
    them); image quality and the ED/ES frames are drawn per view."""
    _check_choice("view", view, VIEWS)
    if patient is None:
        sex = str(rng.choice(SEXES))
        age = int(rng.integers(20, 91))
        # CAMUS holds normal and impaired hearts: EF roughly 20-75 %.
        ef = float(np.round(np.clip(rng.normal(52.0, 11.0), 20.0, 75.0), 1))
    else:
        sex, age, ef = patient.sex, patient.age, patient.ef
    quality = str(rng.choice(QUALITIES, p=(0.4, 0.4, 0.2)))
    n_frames = int(rng.integers(14, 31))
    es_frame = int(rng.integers(max(2, n_frames // 2), n_frames + 1))
    return PatientInfo(
        sex=sex,
        age=age,
        image_quality=quality,
        ef=ef,
        ed_frame=1,
        es_frame=es_frame,
        n_frames=n_frames,
    )


# --- rendering --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    """Acquisition look: what image quality changes."""

    contrast: float  # 1 = full dynamic range of the tissue classes
    haze: float  # near-field clutter filling the cavities
    dropout: float  # amplitude of wall dropout (0 = none)
    noise: float  # additive electronic noise
    blur: float  # final blur, in pixels at H = 256
    attenuation: float  # depth attenuation left after time-gain compensation


_QUALITY_STYLES: dict[str, _Style] = {
    "Good": _Style(contrast=1.0, haze=0.02, dropout=0.15, noise=0.02, blur=0.6, attenuation=0.3),
    "Medium": _Style(contrast=0.8, haze=0.08, dropout=0.35, noise=0.05, blur=0.9, attenuation=0.5),
    "Poor": _Style(contrast=0.65, haze=0.16, dropout=0.55, noise=0.09, blur=1.3, attenuation=0.7),
}


def _style_for(rng: np.random.Generator, quality: str | None) -> _Style:
    if quality is None:  # SDM-like images: no quality attribute, a continuum of looks
        good, poor = asdict(_QUALITY_STYLES["Good"]), asdict(_QUALITY_STYLES["Poor"])
        q = rng.uniform(0.0, 0.7)  # mostly clean, never the worst
        return _Style(**{k: (1.0 - q) * good[k] + q * poor[k] for k in good})
    _check_choice("image_quality", quality, QUALITIES)
    base = _QUALITY_STYLES[quality]
    jitter = rng.uniform(0.9, 1.1, size=6)
    return _Style(*(v * j for v, j in zip(asdict(base).values(), jitter, strict=True)))


@lru_cache(maxsize=8)
def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of H: y down from the top, x from the centre."""
    h, w = size
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    x = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / h
    yy, xx = np.meshgrid(y, x, indexing="ij")  # (H, W) each
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


@lru_cache(maxsize=8)
def _polar(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = _grid(size)
    dy = yy - _SECTOR_ORIGIN_Y
    radius = np.hypot(dy, xx)  # (H, W), in H
    angle = np.arctan2(xx, dy)  # 0 on the axis, + to the right
    radius.setflags(write=False)
    angle.setflags(write=False)
    return radius, angle


def sector_mask(size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the imaging cone. Every phantom image is 0 exactly outside it."""
    size = _check_size(size)
    radius, angle = _polar(size)
    return (np.abs(angle) <= _SECTOR_HALF_ANGLE) & (radius <= _SECTOR_DEPTH)


@lru_cache(maxsize=32)
def _blend(n: int, cells: int) -> np.ndarray:
    """(n, cells + 3) row-normalised Gaussian weights: coarse nodes -> n pixels."""
    nodes = (np.arange(cells + 3) - 1.0) / cells  # one node beyond each edge
    pixels = (np.arange(n) + 0.5) / n
    weights = np.exp(-0.5 * ((pixels[:, None] - nodes[None, :]) * cells / 0.7) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights.astype(np.float32)


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-std random field varying over about H / cells (a few matmuls)."""
    h, w = size
    cells_x = max(2, round(cells * w / h))
    coarse = rng.standard_normal((cells + 3, cells_x + 3), dtype=np.float32)
    field = _blend(h, cells) @ coarse @ _blend(w, cells_x).T  # (H, W)
    field -= field.mean()
    return field / (field.std() + 1e-6)


def _ellipse(u: np.ndarray, v: np.ndarray, uc: float, vc: float, a: float, b: float) -> np.ndarray:
    return ((u - uc) / a) ** 2 + ((v - vc) / b) ** 2 <= 1.0


def _phase_geometry(anatomy: Anatomy, phase: str, ef: float | None) -> dict[str, float]:
    """Cavity and wall sizes at ED or ES. ES shrinks the LV by the ejection fraction."""
    a, b, wall, apex_wall = anatomy.lv_a, anatomy.lv_b, anatomy.wall, anatomy.apex_wall
    la_a, la_b = anatomy.la_a, anatomy.la_b
    if phase == "ES":
        ef_frac = 0.55 if ef is None else float(np.clip(ef / 100.0, 0.1, 0.8))
        area_ratio = (1.0 - ef_frac) ** (2.0 / 3.0)  # 2-D area from volume ~ area^(3/2)
        a *= area_ratio**0.35  # the long axis shortens less than the short axis
        b *= area_ratio**0.65
        thicken = 1.0 + 0.6 * (1.0 - area_ratio)
        wall *= thicken
        apex_wall *= thicken
        la_a *= 1.2
        la_b *= 1.15
    centre = apex_wall + a
    return {
        "a": a, "b": b, "wall": wall, "apex_wall": apex_wall, "centre": centre,
        "base": centre + a * anatomy.base_cut, "la_a": la_a, "la_b": la_b,
    }


@dataclass(frozen=True)
class _Regions:
    """(H, W) bool masks of one view and phase: what the label map and the look are made of.

    Pure geometry (no RNG), so that the label map and the echogenicity agree pixel for pixel.
    """

    lv: np.ndarray  # label 1
    myo: np.ndarray  # label 2
    la: np.ndarray  # label 3
    sheath: np.ndarray  # pericardium: bright, not labelled
    walls: np.ndarray  # LA wall (4CH: and the RV/RA walls), not labelled
    dark: np.ndarray  # every cavity: LV, LA (4CH: and RV, RA)
    valve: np.ndarray  # closed mitral leaflets


def _heart_frame(
    anatomy: Anatomy, four: bool, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(u, v), each (H, W): origin at the outer LV apex, u down the long axis, v to the right."""
    yy, xx = _grid(size)
    tilt = math.radians(anatomy.tilt_4ch if four else anatomy.tilt_2ch)
    apex_x = anatomy.apex_x + (0.015 if four else 0.0)  # 4CH: LV right, RV left
    dy, dx = yy - anatomy.apex_y, xx - apex_x
    c, s = math.cos(tilt), math.sin(tilt)
    u = c * dy - s * dx  # (H, W)
    v = s * dy + c * dx
    return u, v


def _right_heart(
    u: np.ndarray, v: np.ndarray, anatomy: Anatomy, g: dict[str, float], phase: str,
    la: np.ndarray, la_wall: np.ndarray, outer: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """4CH right ventricle and atrium: (cavities, walls), each (H, W) bool; never labelled."""
    above_base = u <= g["base"]
    rv_b = 0.6 * anatomy.lv_b * anatomy.rv_scale * (0.8 if phase == "ES" else 1.0)
    rv_v = -(g["b"] + g["wall"] + 0.012 + 0.9 * rv_b)
    rv_a = 0.42 * g["base"] * anatomy.rv_scale
    rv_u = g["base"] - 0.95 * rv_a
    keep_out = _ellipse(u, v, g["centre"], 0.0, g["a"] + g["apex_wall"] + 0.012,
                        g["b"] + g["wall"] + 0.012)
    rv = _ellipse(u, v, rv_u, rv_v, rv_a, rv_b) & above_base & ~keep_out
    rv_wall = (_ellipse(u, v, rv_u, rv_v, rv_a + 0.02, rv_b + 0.02) & above_base
               & ~rv & ~outer)
    ra_a, ra_b = 0.9 * g["la_a"] * anatomy.rv_scale, 0.8 * g["la_b"] * anatomy.rv_scale
    ra_v = min(rv_v, anatomy.la_shift - g["la_b"] - 0.02 - ra_b)
    ra_u = g["base"] + 0.65 * ra_a
    ra = _ellipse(u, v, ra_u, ra_v, ra_a, ra_b) & ~above_base & ~la & ~la_wall
    ra_wall = _ellipse(u, v, ra_u, ra_v, ra_a + 0.015, ra_b + 0.015) & ~above_base & ~ra & ~la
    return rv | ra, rv_wall | ra_wall


def _heart_regions(
    anatomy: Anatomy, view: str, phase: str, g: dict[str, float], size: tuple[int, int]
) -> _Regions:
    """The heart's regions in the image, from the anatomy and the phase geometry g."""
    u, v = _heart_frame(anatomy, view == "4CH", size)
    above_base = u <= g["base"]

    lv = _ellipse(u, v, g["centre"], 0.0, g["a"], g["b"]) & above_base
    outer = _ellipse(u, v, g["centre"], 0.0, g["a"] + g["apex_wall"], g["b"] + g["wall"])
    la_centre = g["base"] + 0.5 * g["la_a"]  # top of the LA at the mitral plane
    la = _ellipse(u, v, la_centre, anatomy.la_shift, g["la_a"], g["la_b"]) & ~above_base
    # The basal myocardium reaches a little past the mitral plane beside the LA (about a
    # pixel), so that on a tilted pixel grid the LV still touches only MYO and LA.
    annulus = u <= g["base"] + 0.015 + 1.0 / size[0]
    myo = outer & annulus & ~lv & ~la
    # Pericardium: a bright sheath a little outside the epicardium, not labelled.
    sheath_in = _ellipse(u, v, g["centre"], 0.0, g["a"] + g["apex_wall"] + 0.012,
                         g["b"] + g["wall"] + 0.012)
    sheath_out = _ellipse(u, v, g["centre"], 0.0, g["a"] + g["apex_wall"] + 0.03,
                          g["b"] + g["wall"] + 0.03)
    sheath = sheath_out & ~sheath_in & (u <= g["base"] + 0.02)
    la_wall = _ellipse(u, v, la_centre, anatomy.la_shift, g["la_a"] + 0.018,
                       g["la_b"] + 0.018) & ~la & ~above_base

    # Closed mitral leaflets (both ED and ES): a faint line across the opening.
    opening = g["b"] * math.sqrt(1.0 - anatomy.base_cut**2)
    valve = (np.abs(u - g["base"] - 0.004) <= 0.006) & (np.abs(v) <= opening)
    dark = lv | la
    walls = la_wall
    if view == "4CH":
        right_dark, right_walls = _right_heart(u, v, anatomy, g, phase, la, la_wall, outer)
        dark = dark | right_dark
        walls = walls | right_walls
    return _Regions(lv=lv, myo=myo, la=la, sheath=sheath, walls=walls, dark=dark, valve=valve)


def _label_map(regions: _Regions, cone: np.ndarray) -> np.ndarray:
    """(H, W) uint8 CAMUS labels (0 background, 1 LV, 2 MYO, 3 LA), 0 outside the cone."""
    label = np.zeros(cone.shape, np.uint8)  # (H, W)
    label[regions.lv] = 1
    label[regions.myo] = 2
    label[regions.la] = 3
    label[~cone] = 0
    return label


def _echogenicity(
    rng: np.random.Generator, anatomy: Anatomy, regions: _Regions, style: _Style,
    size: tuple[int, int],
) -> np.ndarray:
    """(H, W) float32 linear amplitude before speckle: tissue classes, dropout, haze, depth.

    Draws 4 smooth fields and 1 scalar from rng, in a fixed order.
    """
    px = size[0] / 256.0  # pixel sizes below are given for H = 256
    # Tissue texture; the floor keeps it from faking extra chambers.
    tissue = anatomy.tissue_gain * np.clip(1.0 + 0.3 * _smooth_field(rng, size, 6), 0.5, None)
    echo = tissue.astype(np.float32)  # (H, W)
    echo[regions.sheath] = 0.75 + 0.1 * rng.standard_normal()
    echo[regions.walls] = 0.5
    myo_texture = anatomy.myo_gain * (1.0 + 0.2 * _smooth_field(rng, size, 10))
    echo[regions.myo] = myo_texture[regions.myo]
    echo[regions.dark] = 0.03
    echo[regions.valve] = 0.3
    radius, _ = _polar(size)
    # Dropout: patches where the signal fades (a poor acoustic window), walls included.
    fade = np.clip(_smooth_field(rng, size, 5), 0.0, None) * style.dropout
    echo *= np.clip(1.0 - fade, 0.15, 1.0)
    echo = ndimage.gaussian_filter(echo, sigma=1.0 * px)  # soft anatomical edges
    # Near-field clutter (haze), strongest at the top, fills the cavities.
    echo += style.haze * np.exp(-radius / 0.35) * (1.0 + 0.5 * _smooth_field(rng, size, 8))
    echo *= np.exp(-style.attenuation * radius)
    return style.contrast * echo + (1.0 - style.contrast) * 0.25


def _scan(
    rng: np.random.Generator, echo: np.ndarray, style: _Style, cone: np.ndarray
) -> np.ndarray:
    """The displayed (H, W) uint8 image: speckle, electronic noise, log compression, blur.

    0 exactly outside the cone and >= 1 inside. Draws 3 (H, W) normal fields from rng.
    """
    size = echo.shape
    px = size[0] / 256.0  # pixel sizes below are given for H = 256
    # Speckle: magnitude of a correlated complex Gaussian (Rayleigh), mean 1.
    sigma = (max(0.5, 0.8 * px), max(0.7, 1.8 * px))  # (rows, cols): laterally elongated
    re = ndimage.gaussian_filter(rng.standard_normal(size, dtype=np.float32), sigma)
    im = ndimage.gaussian_filter(rng.standard_normal(size, dtype=np.float32), sigma)
    speckle = np.hypot(re, im)
    speckle /= speckle.mean() + 1e-6
    amplitude = echo * speckle + style.noise * np.abs(rng.standard_normal(size, dtype=np.float32))
    # Log compression as scanners display it.
    display = np.log1p(12.0 * np.clip(amplitude, 0.0, None)) / np.log1p(12.0)
    display = ndimage.gaussian_filter(display, sigma=style.blur * px)
    image = np.clip(np.rint(display * 255.0), 1, 255).astype(np.uint8)
    image[~cone] = 0
    return image


def render_phantom(
    rng: np.random.Generator, view: str, phase: str, info: PatientInfo,
    size: tuple[int, int] = (256, 224), *, anatomy: Anatomy | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(image, label map), each (H, W) uint8, apex at the top: the image 0 outside the sector
    and >= 1 inside, labels 0-3. `anatomy` (`sample_anatomy`; None: drawn from rng first)
    fixes the heart; info.ef sets the ES contraction, info.image_quality the look (None: a
    continuum of looks, as SDM's)."""
    _check_choice("view", view, VIEWS)
    _check_choice("phase", phase, PHASES)
    size = _check_size(size)
    # rng order (the same seed must give the same bytes): anatomy, style, echogenicity, scan
    if anatomy is None:
        anatomy = sample_anatomy(rng)
    style = _style_for(rng, info.image_quality)
    regions = _heart_regions(anatomy, view, phase, _phase_geometry(anatomy, phase, info.ef), size)
    cone = sector_mask(size)
    label = _label_map(regions, cone)
    echo = _echogenicity(rng, anatomy, regions, style, size)
    return _scan(rng, echo, style, cone), label


# --- validation helpers ------------------------------------------------------------------


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(n) for n in size)
    except (TypeError, ValueError):
        raise ValueError(f"size={size!r}: expected two integers (H, W)") from None
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"size={size!r}: H and W must be at least {MIN_SIZE} pixels")
    return h, w


# --- the demo dataset ---------------------------------------------------------------------


@dataclass(frozen=True)
class DemoData:
    """A phantom dataset on disk: CAMUS under camus_root, each synthetic format asked for
    under synthetic_roots[format] (root/<format>; "sdm" is sdm_root), sdm_per_image images
    of every train and val image. The last n_test patients test; of the others the first
    n_val validate. In the 2019 layout test ids restart at patient0001 (as the release's)."""

    root: Path
    camus_root: Path
    sdm_root: Path
    release: str
    seed: int
    n_patients: int
    n_test: int
    n_val: int
    sdm_per_image: int
    sdm_coding: str
    size: tuple[int, int]
    train_patients: tuple[str, ...]
    val_patients: tuple[str, ...]
    test_patients: tuple[str, ...]
    synthetic_roots: dict[str, Path] = field(default_factory=dict, hash=False)

    def camus_records(self, split_scheme: str = "paper") -> list[EchoImage]:
        """`vlsm.data.camus.load_camus` on camus_root with this dataset's n_val."""
        from vlsm.data.camus import load_camus

        return load_camus(self.camus_root, split_scheme, n_val=self.n_val)

    def synthetic_records(self, fmt: str) -> list[EchoImage]:
        """`load_synthetic` on synthetic_roots[fmt] with this n_val (SDM with CAMUS metadata)."""
        if fmt not in self.synthetic_roots:
            raise ValueError(
                f"{self.root}: no {fmt!r} data written; it holds {', '.join(self.synthetic_roots)}"
            )
        camus = self.camus_root if fmt == SOURCE_SDM else None
        return load_synthetic(fmt, self.synthetic_roots[fmt], camus, n_val=self.n_val)


@dataclass(frozen=True)
class PhantomImage:
    """One train/val image of a phantom patient, of which each synthetic format writes
    synthetic images (its `write_phantom`): the patient's anatomy with synthetic looks."""

    index: int  # patient index: DiffEcho's subject, the rng streams
    patient: str
    split: str  # "train" | "val"
    view: str
    phase: str
    vi: int  # view and phase indices, for the rng streams
    pi: int
    anatomy: Anatomy
    info: PatientInfo  # synthetic: the patient's EF, no image quality
    image: np.ndarray  # (H, W) uint8: the real phantom image
    label: np.ndarray  # (H, W) uint8: its CAMUS label map
    seed: int

    def render(self, stream: int, k: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic image k of this one at size, from rng stream `stream` (one per format):
        (image, label map) as `render_phantom` returns them."""
        rng = np.random.default_rng([self.seed, self.index, stream, self.vi, self.pi, k])
        return render_phantom(rng, self.view, self.phase, self.info, size, anatomy=self.anatomy)


def _patient_ids(n_patients: int, n_test: int, n_val: int, release: str) -> list[tuple[str, str]]:
    """(patient id, split) for patient index 0..n-1, in the release's numbering."""
    n_rest = n_patients - n_test
    ids: list[tuple[str, str]] = []
    for i in range(n_patients):
        split = "val" if i < n_val else "train" if i < n_rest else "test"
        number = i - n_rest + 1 if (split == "test" and release == "2019") else i + 1
        ids.append((f"patient{number:04d}", split))
    return ids


def _params(seed: int, n_patients: int, n_test: int, n_val: int, release: str,
            sdm_per_image: int, sdm_coding: str, size: tuple[int, int],
            synthetic_formats: Sequence[str] = (SOURCE_SDM,)) -> dict:
    for name, value, low in (("seed", seed, 0), ("n_patients", n_patients, 3),
                             ("n_test", n_test, 1), ("n_val", n_val, 1),
                             ("sdm_per_image", sdm_per_image, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
    if n_test + n_val >= n_patients:
        raise ValueError(
            f"n_patients={n_patients} leaves no training patient after n_test={n_test} and "
            f"n_val={n_val}; expected n_patients > n_test + n_val"
        )
    release = str(release)
    _check_choice("release", release, RELEASES)
    _check_choice("sdm_coding", sdm_coding, SDM_CODINGS)
    h, w = _check_size(size)
    if isinstance(synthetic_formats, str) or not synthetic_formats:
        raise ValueError(f"synthetic_formats={synthetic_formats!r}: expected a non-empty sequence "
                         f"of {list(source_names())}")
    for fmt in synthetic_formats:
        _check_choice("synthetic_formats", fmt, source_names())
    params = {
        "seed": int(seed), "n_patients": int(n_patients), "n_test": int(n_test),
        "n_val": int(n_val), "release": release, "sdm_per_image": int(sdm_per_image),
        "sdm_coding": sdm_coding, "size": [h, w],
    }
    formats = [f for f in source_names() if f in synthetic_formats]
    if formats != [SOURCE_SDM]:  # the default leaves the manifest (and every byte) as it was
        params["synthetic_formats"] = formats
    return params


def _formats(params: dict) -> list[str]:
    return params.get("synthetic_formats", [SOURCE_SDM])


def _demo_data(out: Path, params: dict) -> DemoData:
    ids = _patient_ids(params["n_patients"], params["n_test"], params["n_val"], params["release"])
    fields = {k: params[k] for k in ("release", "seed", "n_patients", "n_test", "n_val", "sdm_per_image",
                                     "sdm_coding")}
    patients = {f"{split}_patients": tuple(p for p, s in ids if s == split) for split in ("train", "val", "test")}
    return DemoData(root=out, camus_root=out / "camus", sdm_root=out / "sdm", size=tuple(params["size"]),
                    synthetic_roots={fmt: out / fmt for fmt in _formats(params)}, **fields, **patients)


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _matches(manifest: dict | None, params: dict) -> bool:
    return (manifest is not None and manifest.get("version") == GENERATOR_VERSION
            and manifest.get("params") == params)


def _write_dataset(tmp: Path, params: dict) -> None:
    """Every file of the dataset into tmp (a fresh folder): CAMUS, then each synthetic
    format through its registry entry's `write_phantom`; the manifest last."""
    from vlsm.data.camus import write_camus_split_files

    ids = _patient_ids(params["n_patients"], params["n_test"], params["n_val"], params["release"])
    others = [image for i, (patient, split) in enumerate(ids)
              for image in _write_patient(tmp / "camus", params, i, patient, split)]
    if params["release"] == "2023":
        write_camus_split_files(tmp / "camus", {s: [p for p, ps in ids if ps == s] for s in ("train", "val", "test")})
    for fmt in _formats(params):
        SYNTHETIC_SOURCE_REGISTRY[fmt].write_phantom(tmp / fmt, others, params)
    manifest = {"generator": __name__, "version": GENERATOR_VERSION, "params": params}
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _write_patient(camus: Path, params: dict, i: int, patient: str, split: str) -> list[PhantomImage]:
    """Patient i's four CAMUS images (rng streams 0-2); the train and val ones returned as
    the images the synthetic formats make synthetic images of."""
    from vlsm.data.camus import write_camus_patient

    seed, size = params["seed"], tuple(params["size"])
    meta_rng = np.random.default_rng([seed, i, 0])
    infos = {VIEWS[0]: make_patient_info(meta_rng, VIEWS[0])}
    for view in VIEWS[1:]:
        infos[view] = make_patient_info(meta_rng, view, patient=infos[VIEWS[0]])
    anatomy = sample_anatomy(np.random.default_rng([seed, i, 1]))
    images, labels, others = {}, {}, []
    for vi, view in enumerate(VIEWS):
        for pi, phase in enumerate(PHASES):
            rng = np.random.default_rng([seed, i, 2, vi, pi])
            images[view, phase], labels[view, phase] = render_phantom(rng, view, phase, infos[view], size,
                                                                      anatomy=anatomy)
            if split != "test":  # synthetic looks on the real patient's anatomy, no image quality
                others.append(PhantomImage(i, patient, split, view, phase, vi, pi, anatomy,
                                           PatientInfo(ef=infos[view].ef), images[view, phase],
                                           labels[view, phase], seed))
    spacing = (_DEPTH_MM / size[0], _DEPTH_MM / size[0])  # (row, col) mm
    write_camus_patient(camus, params["release"], patient, images, labels, infos, spacing=spacing,
                        testing=split == "test")
    return others


def write_demo_data(
    out: Path, *, seed: int = 0, n_patients: int = 20, n_test: int = 4, n_val: int = 4,
    release: str = "2023", sdm_per_image: int = 2, sdm_coding: str = "labels",
    size: tuple[int, int] = (256, 224), synthetic_formats: Sequence[str] = (SOURCE_SDM,),
) -> DemoData:
    """Write a phantom CAMUS (out/camus) and, for each of synthetic_formats, out/<format>
    as its tool writes it (docs/data.md); size is the CAMUS (H, W), SDM's is (H, H).

    The same arguments give the same bytes, written atomically. Out holding the same
    dataset (its manifest) is kept, another phantom dataset replaced; any other
    non-empty folder is a ValueError.
    """
    out = Path(out)
    params = _params(seed, n_patients, n_test, n_val, release, sdm_per_image, sdm_coding,
                     size, synthetic_formats)
    data = _demo_data(out, params)
    manifest = _read_manifest(out)
    if _matches(manifest, params):
        log.debug("%s already holds this phantom dataset (seed %d); not rewritten", out, seed)
        return data
    if out.is_file() or (out.is_dir() and manifest is None and any(out.iterdir())):
        raise ValueError(
            f"{out}: exists and is not a phantom dataset (no {MANIFEST_NAME}); "
            "expected a new or empty folder, or one written by `vlsm demo-data`"
        )
    with atomic_folder(out, replace=True) as tmp:  # an older phantom set goes as a whole
        _write_dataset(tmp, params)
    log.debug("wrote phantom dataset to %s: CAMUS %s (%d train, %d val, %d test patients)", out,
              params["release"], len(data.train_patients), len(data.val_patients), len(data.test_patients))
    return data
