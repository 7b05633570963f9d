"""Read the Synthetic Boost authors' published per-image metrics as our per-image frame.

Their tree (naamiinepal/synthetic-boost, `metrics/`, CC-BY 4.0) is

    <strategy>_metrics_reduce_lr/<model>/p<N>/metrics.csv

with columns `filename,iou,dice,hausdorff_distance,...`, every value x100, and
`filename` an absolute path on their machine ending in
`mask_<k>/patientXXXX_<2CH|4CH>_<ED|ES>_gt.png`. Having it in our schema lets the same
tables, tests and figures run on their numbers and ours, and puts the two side by side.

Facts checked against the files: `hausdorff_distance` is x100 as well (a value of
670.8204 is 100 * sqrt(45) pixels); all published runs trained the encoders
("unfrozen"); the `clip_seg` folders are an unpublished CLIPSeg variant and are skipped,
`clip_seg_bs_128` is the published CLIPSeg.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from analysis.schema import PER_IMAGE_COLUMNS, require_columns
from vlsm.axes import (
    STRATEGY_FINETUNE,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    STRUCTURES,
)

__all__ = ["PUBLISHED_MODELS", "PUBLISHED_STRATEGIES", "load_published"]

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
_FILENAME = re.compile(r"mask_(?P<k>\d)/(?P<image>patient\d{4}_(?:2CH|4CH)_(?:ED|ES))(?:_gt)?\.png$")
_PROMPT_DIR = re.compile(r"^p(?P<n>\d)$")


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


def _read_one(csv: Path, model: str, strategy: str, prompt: str) -> pd.DataFrame:
    raw = pd.read_csv(csv)
    require_columns(raw, _CSV_COLUMNS, str(csv))
    parts = raw["filename"].astype(str).str.extract(_FILENAME)
    bad = raw["filename"][parts["image"].isna()]
    if len(bad):
        raise ValueError(
            f"{csv}: {len(bad)} filename(s) do not end in "
            f"'mask_<k>/patientXXXX_<2CH|4CH>_<ED|ES>_gt.png', e.g. {bad.iloc[0]!r}"
        )
    labels = parts["k"].astype(int)
    unknown = sorted(set(labels) - set(STRUCTURES))
    if unknown:
        raise ValueError(f"{csv}: mask_<k> with k={unknown}; expected k in {sorted(STRUCTURES)}")
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
        raise ValueError(f"{csv}: image {first['image']} structure {first['structure']} appears twice")
    out_of_range = ~frame["dice"].between(0.0, 1.0)
    if out_of_range.any():
        raise ValueError(
            f"{csv}: dice {raw['dice'][out_of_range].iloc[0]} outside [0, 100] (published values are x100)"
        )
    return frame


def load_published(path: Path | str) -> pd.DataFrame:
    """The authors' metrics CSV tree as our long per-image frame (PER_IMAGE_COLUMNS).

    `path` is their `metrics/` folder (or the folder holding it). Dice and IoU come back
    as fractions, Hausdorff in pixels at 512 x 512, encoder "unfrozen".
    """
    root = _metrics_root(Path(path))
    frames = []
    for strategy_dir, strategy in PUBLISHED_STRATEGIES.items():
        if not (root / strategy_dir).is_dir():
            log.warning("%s: no %s folder; strategy %s left out", root, strategy_dir, strategy)
            continue
        for model_dir in sorted(p for p in (root / strategy_dir).iterdir() if p.is_dir()):
            if model_dir.name not in PUBLISHED_MODELS:
                log.warning("%s: unknown model folder, skipped (known: %s)", model_dir, sorted(PUBLISHED_MODELS))
                continue
            model = PUBLISHED_MODELS[model_dir.name]
            if model is None:
                log.debug("%s: not part of the paper, skipped", model_dir)
                continue
            for prompt_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                match = _PROMPT_DIR.match(prompt_dir.name)
                if match is None or not (prompt_dir / "metrics.csv").is_file():
                    log.warning("%s: not a p<N>/metrics.csv folder, skipped", prompt_dir)
                    continue
                prompt = f"P{match['n']}"
                frames.append(_read_one(prompt_dir / "metrics.csv", model, strategy, prompt))
    if not frames:
        raise ValueError(f"{root}: no metrics.csv files found under <strategy>/<model>/p<N>/")
    out = pd.concat(frames, ignore_index=True)
    return out[list(PER_IMAGE_COLUMNS)]
