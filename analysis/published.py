"""Read the Synthetic Boost authors' published per-image metrics as our per-image frame.

Their tree (naamiinepal/synthetic-boost, `metrics/`, CC-BY 4.0) is

    <strategy>_metrics_reduce_lr/<model>/p<N>/metrics.csv

with columns `filename,iou,dice,hausdorff_distance,...`, every value x100, and
`filename` an absolute path on their machine ending in
`mask_<k>/patientXXXX_<2CH|4CH>_<ED|ES>_gt.png`. Having it in our schema lets the same
tables, tests and figures run on their numbers and ours, and puts the two side by side.

A copy of the paper's files ships with the package (`analysis/published_data/`, see its
README for the attribution), so `load_published()` works with no download:

    load_published()                 # the bundled copy
    load_published(".../metrics")    # the authors' folder (or the folder holding it)

Both give the same frame, row for row and bit for bit. The bundle is one long Parquet
table (`BUNDLE_COLUMNS`): one row per row of the 46 paper CSV files, the three folder
names, `filename` shortened to its `mask_<k>/<file>` tail, and the five metric columns
exactly as published (float64, x100). `write_bundle` rebuilds it from the folder.

Facts checked against the files: `hausdorff_distance` is x100 as well (a value of
670.8204 is 100 * sqrt(45) pixels); all published runs trained the encoders
("unfrozen"), one run per cell (read as seed 42, the paper's, on SDM's synthetic
images); the `clip_seg` folders are an unpublished CLIPSeg variant and are skipped (and
left out of the bundle), `clip_seg_bs_128` is the published CLIPSeg.
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
from vlsm.axes import (
    STRATEGY_FINETUNE,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    STRUCTURES,
)

__all__ = [
    "BUNDLE",
    "BUNDLE_COLUMNS",
    "PUBLISHED_MODELS",
    "PUBLISHED_STRATEGIES",
    "load_published",
    "write_bundle",
]

log = logging.getLogger(__name__)

PUBLISHED_STRATEGIES: dict[str, str] = {
    "camus_metrics_reduce_lr": STRATEGY_REAL,
    "sdm_camus_metrics_reduce_lr": STRATEGY_SYNTHETIC,
    "pt_on_sdm_camus_ft_on_camus_metrics_reduce_lr": STRATEGY_FINETUNE,
}
# None = present in the tree but not part of the paper: skipped.
PUBLISHED_MODELS: dict[str, str | None] = {
    "clip_seg_bs_128": "CLIPSeg",
    "cris": "CRIS",
    "clip_seg": None,
}
PUBLISHED_ENCODER = "unfrozen"
_SCALE = 100.0  # every published value is x100
_CSV_COLUMNS = ("filename", "iou", "dice", "hausdorff_distance")
_METRIC_COLUMNS = ("iou", "dice", "hausdorff_distance", "ones_dice_diff", "zeros_dice_diff")
_FILENAME = re.compile(r"mask_(?P<k>\d)/(?P<image>patient\d{4}_(?:2CH|4CH)_(?:ED|ES))(?:_gt)?\.png$")
_TAIL = re.compile(r"(mask_\d/[^/]+)$")
_PROMPT_DIR = re.compile(r"^p(?P<n>\d)$")

# The bundled copy: package data, found wherever the package is installed.
BUNDLE = "published_data/synthetic_boost_metrics.parquet"  # relative to the analysis package
_FOLDER_COLUMNS = ("strategy_folder", "model_folder", "prompt_folder")
BUNDLE_COLUMNS: tuple[str, ...] = (*_FOLDER_COLUMNS, "filename", *_METRIC_COLUMNS)


def _metrics_root(path: Path) -> Path:
    """Accept the metrics folder itself or the folder above it (the repository root)."""
    if any((path / name).is_dir() for name in PUBLISHED_STRATEGIES):
        return path
    if (path / "metrics").is_dir():
        return path / "metrics"
    raise ValueError(
        f"{path}: not the authors' metrics tree; expected folder(s) "
        f"{sorted(PUBLISHED_STRATEGIES)} in it or in its 'metrics/' subfolder"
    )


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
        raise ValueError(
            f"{source}: {len(bad)} filename(s) do not end in "
            f"'mask_<k>/patientXXXX_<2CH|4CH>_<ED|ES>_gt.png', e.g. {bad.iloc[0]!r}"
        )
    labels = parts["k"].astype(int)
    unknown = sorted(set(labels) - set(STRUCTURES))
    if unknown:
        raise ValueError(f"{source}: mask_<k> with k={unknown}; expected k in {sorted(STRUCTURES)}")
    frame = pd.DataFrame(
        {
            "model": model,
            "strategy": strategy,
            "encoder": PUBLISHED_ENCODER,
            "prompt": prompt,
            "image": parts["image"].astype(object),
            "structure": labels.map(STRUCTURES).astype(object),
            "dice": raw["dice"].astype(float) / _SCALE,
            "iou": raw["iou"].astype(float) / _SCALE,
            "hausdorff": raw["hausdorff_distance"].astype(float) / _SCALE,
        }
    )
    dup = frame.duplicated(["image", "structure"])
    if dup.any():
        first = frame[dup].iloc[0]
        raise ValueError(f"{source}: image {first['image']} structure {first['structure']} appears twice")
    out_of_range = ~frame["dice"].between(0.0, 1.0)
    if out_of_range.any():
        raise ValueError(
            f"{source}: dice {raw['dice'][out_of_range].iloc[0]} outside [0, 100] (published values are x100)"
        )
    return frame


def load_published(path: Path | str | None = None) -> pd.DataFrame:
    """The authors' published per-image metrics as our long per-image frame (PER_IMAGE_COLUMNS).

    path: None (the default) reads the copy bundled with the package
      (`analysis/published_data/`, naamiinepal/synthetic-boost at commit 532d3dc); a path
      reads the authors' `metrics/` folder (or the folder holding it). Both give the same
      frame. Dice and IoU come back as fractions, Hausdorff in pixels at 512 x 512,
      encoder "unfrozen"; each cell was run once: seed 42 (the paper's), synthetic
      source "sdm" (SDM's images; "" for real), provenance "".
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
    """Write the bundled copy (`BUNDLE_COLUMNS`) from the authors' metrics folder `path`.

    Keeps the paper's files only (not the `clip_seg` variant), every row in file order,
    the metric columns as published (float64, x100), `filename` cut to its
    `mask_<k>/<file>` tail. How `analysis/published_data/` was made:
    `write_bundle("shared/reference/synthetic-boost/metrics", "analysis/" + BUNDLE)`.
    """
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
