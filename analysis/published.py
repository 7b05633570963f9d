"""Read the Synthetic Boost authors' published per-image metrics as our per-image frame.

Their tree (naamiinepal/synthetic-boost `metrics/`, CC-BY 4.0) is
`<strategy>_metrics_reduce_lr/<model>/p<N>/metrics.csv`, filenames ending in
`mask_<k>/patientXXXX_<2CH|4CH>_<ED|ES>_gt.png`. A copy ships as one Parquet table
(`BUNDLE`; its README says what was changed), read the same, bit for bit (docs/analysis.md).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pandas as pd

from analysis.schema import PER_IMAGE_COLUMNS, complete_variants, require_columns
from vlsm.atomic import atomic_path
from vlsm.axes import STRATEGY_FINETUNE, STRATEGY_REAL, STRATEGY_SYNTHETIC, STRUCTURES

__all__ = [
    "BUNDLE", "BUNDLE_COLUMNS", "PUBLISHED_MODELS", "PUBLISHED_STRATEGIES", "load_published",
    "write_bundle",
]

log = logging.getLogger(__name__)

PUBLISHED_STRATEGIES: dict[str, str] = {
    "camus_metrics_reduce_lr": STRATEGY_REAL,
    "sdm_camus_metrics_reduce_lr": STRATEGY_SYNTHETIC,
    "pt_on_sdm_camus_ft_on_camus_metrics_reduce_lr": STRATEGY_FINETUNE,
}
# None: in the tree but not the paper's (clip_seg is an unpublished variant): skipped.
PUBLISHED_MODELS: dict[str, str | None] = {
    "clip_seg_bs_128": "CLIPSeg",
    "cris": "CRIS",
    "clip_seg": None,
}
PUBLISHED_ENCODER = "unfrozen"
_SCALE = 100.0  # every published value is x100, Hausdorff too (670.8204 = 100 * sqrt(45) pixels)
_CSV_COLUMNS = ("filename", "iou", "dice", "hausdorff_distance")
_METRIC_COLUMNS = ("iou", "dice", "hausdorff_distance", "ones_dice_diff", "zeros_dice_diff")
_FILENAME = re.compile(r"mask_(?P<k>\d)/(?P<image>patient\d{4}_(?:2CH|4CH)_(?:ED|ES))(?:_gt)?\.png$")
_TAIL = re.compile(r"(mask_\d/[^/]+)$")
_PROMPT_DIR = re.compile(r"^p(?P<n>\d)$")

BUNDLE = "published_data/synthetic_boost_metrics.parquet"  # package data, relative to analysis/
_FOLDER_COLUMNS = ("strategy_folder", "model_folder", "prompt_folder")
BUNDLE_COLUMNS: tuple[str, ...] = (*_FOLDER_COLUMNS, "filename", *_METRIC_COLUMNS)


def _metrics_root(path: Path) -> Path:
    """Accept the metrics folder itself or the folder above it (the repository root)."""
    if any((path / name).is_dir() for name in PUBLISHED_STRATEGIES):
        return path
    if (path / "metrics").is_dir():
        return path / "metrics"
    raise ValueError(f"{path}: not the authors' metrics tree; expected folder(s) "
                     f"{sorted(PUBLISHED_STRATEGIES)} in it or in its 'metrics/' subfolder")


def _paper_model(model_dir: str, where: object) -> str | None:
    """Our model name of a model folder, or None (logged) when it is not a paper model."""
    if model_dir not in PUBLISHED_MODELS:
        log.warning("%s: unknown model folder, skipped (known: %s)", where, sorted(PUBLISHED_MODELS))
        return None
    model = PUBLISHED_MODELS[model_dir]
    if model is None:
        log.debug("%s: not part of the paper, skipped", where)
    return model


def _tree_tables(root: Path) -> Iterator[tuple[str, str, str, str, pd.DataFrame]]:
    """(strategy folder, model folder, prompt folder, csv path, its table) of every paper file."""
    for strategy_dir in PUBLISHED_STRATEGIES:
        if not (root / strategy_dir).is_dir():
            log.warning("%s: no %s folder; strategy %s left out", root, strategy_dir, PUBLISHED_STRATEGIES[strategy_dir])
            continue
        for model_dir in sorted(p for p in (root / strategy_dir).iterdir() if p.is_dir()):
            if _paper_model(model_dir.name, model_dir) is None:
                continue
            for prompt_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                if _PROMPT_DIR.match(prompt_dir.name) is None or not (prompt_dir / "metrics.csv").is_file():
                    log.warning("%s: not a p<N>/metrics.csv folder, skipped", prompt_dir)
                    continue
                csv = prompt_dir / "metrics.csv"
                yield strategy_dir, model_dir.name, prompt_dir.name, str(csv), pd.read_csv(csv)


def _read_bundle() -> pd.DataFrame:
    with resources.files("analysis").joinpath(BUNDLE).open("rb") as fh:
        raw = pd.read_parquet(fh)
    require_columns(raw, BUNDLE_COLUMNS, f"analysis/{BUNDLE}")
    return raw


def _bundle_tables() -> Iterator[tuple[str, str, str, str, pd.DataFrame]]:
    """The same as `_tree_tables`, from the bundled copy, in the same order."""
    raw = _read_bundle()
    for strategy_dir in PUBLISHED_STRATEGIES:
        of_strategy = raw[raw["strategy_folder"] == strategy_dir]
        for model_dir in sorted(set(of_strategy["model_folder"])):
            where = f"analysis/{BUNDLE}:{strategy_dir}/{model_dir}"
            if _paper_model(model_dir, where) is None:
                continue
            of_model = of_strategy[of_strategy["model_folder"] == model_dir]
            for prompt_dir in sorted(set(of_model["prompt_folder"])):
                rows = of_model[of_model["prompt_folder"] == prompt_dir]
                yield strategy_dir, model_dir, prompt_dir, f"{where}/{prompt_dir}", rows.reset_index(drop=True)


def _read_one(raw: pd.DataFrame, source: str, model: str, strategy: str, prompt: str) -> pd.DataFrame:
    require_columns(raw, _CSV_COLUMNS, source)
    parts = raw["filename"].astype(str).str.extract(_FILENAME)
    bad = raw["filename"][parts["image"].isna()]
    if len(bad):
        raise ValueError(f"{source}: {len(bad)} filename(s) do not end in "
                         f"'mask_<k>/patientXXXX_<2CH|4CH>_<ED|ES>_gt.png', e.g. {bad.iloc[0]!r}")
    labels = parts["k"].astype(int)
    unknown = sorted(set(labels) - set(STRUCTURES))
    if unknown:
        raise ValueError(f"{source}: mask_<k> with k={unknown}; expected k in {sorted(STRUCTURES)}")
    frame = pd.DataFrame({
        "model": model, "strategy": strategy, "encoder": PUBLISHED_ENCODER, "prompt": prompt,
        "image": parts["image"].astype(object), "structure": labels.map(STRUCTURES).astype(object),
        "dice": raw["dice"].astype(float) / _SCALE, "iou": raw["iou"].astype(float) / _SCALE,
        "hausdorff": raw["hausdorff_distance"].astype(float) / _SCALE,
    })
    dup = frame.duplicated(["image", "structure"])
    if dup.any():
        first = frame[dup].iloc[0]
        raise ValueError(f"{source}: image {first['image']} structure {first['structure']} appears twice")
    out_of_range = ~frame["dice"].between(0.0, 1.0)
    if out_of_range.any():
        raise ValueError(f"{source}: dice {raw['dice'][out_of_range].iloc[0]} outside [0, 100] "
                         "(published values are x100)")
    return frame


def load_published(path: Path | str | None = None) -> pd.DataFrame:
    """The authors' per-image metrics as our per-image frame (PER_IMAGE_COLUMNS).

    path: None reads the bundled copy (commit 532d3dc); else the authors' `metrics/` folder
    (or the folder holding it). Dice and IoU as fractions, Hausdorff in pixels at 512 x 512;
    encoder "unfrozen", one run per cell: seed 42, synthetic source "sdm", provenance "".
    """
    if path is None:
        source, tables = f"analysis/{BUNDLE}", _bundle_tables()
    else:
        root = _metrics_root(Path(path))
        source, tables = str(root), _tree_tables(root)
    frames = [
        _read_one(raw, where, PUBLISHED_MODELS[model_dir], PUBLISHED_STRATEGIES[strategy_dir],
                  f"P{_PROMPT_DIR.match(prompt_dir)['n']}")
        for strategy_dir, model_dir, prompt_dir, where, raw in tables
    ]
    if not frames:
        raise ValueError(f"{source}: no metrics.csv files found under <strategy>/<model>/p<N>/")
    out = complete_variants(pd.concat(frames, ignore_index=True))  # one run per cell, seed 42, SDM data
    return out[list(PER_IMAGE_COLUMNS)]


def write_bundle(path: Path | str, out: Path | str) -> Path:
    """Write the bundled copy (`BUNDLE_COLUMNS`) from the authors' metrics folder `path`:
    the paper's files, rows in file order, metrics as published, `filename` cut to its
    `mask_<k>/<file>` tail (analysis/published_data/README.md)."""
    root = _metrics_root(Path(path))
    frames = []
    for strategy_dir, model_dir, prompt_dir, source, raw in _tree_tables(root):
        require_columns(raw, ("filename", *_METRIC_COLUMNS), source)
        tail = raw["filename"].astype(str).str.extract(_TAIL, expand=False)
        if tail.isna().any():
            raise ValueError(f"{source}: filename {raw['filename'][tail.isna()].iloc[0]!r} has no mask_<k>/<file> tail")
        frames.append(pd.DataFrame({
            "strategy_folder": strategy_dir, "model_folder": model_dir, "prompt_folder": prompt_dir,
            "filename": tail.astype(object), **{c: raw[c].astype("float64") for c in _METRIC_COLUMNS},
        }))
    if not frames:
        raise ValueError(f"{root}: no metrics.csv files found under <strategy>/<model>/p<N>/")
    table = pd.concat(frames, ignore_index=True)[list(BUNDLE_COLUMNS)]
    out = Path(out)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False, compression="zstd", compression_level=19)
    return out
