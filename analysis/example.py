"""A small made-up sweep export, to try the analysis without running a sweep.

    python -m analysis example-export /tmp/example && python -m analysis report /tmp/example

Every number in it is drawn from a seeded generator with effects built in (real beats
synthetic, synth-PT:real-FT beats real, CRIS beats CLIPSeg, P0 is poor, finetunes peak
at epoch 3 and real runs at epoch 9): the tests and notebooks check that the analysis
finds them. It is not a result of anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.schema import (
    EPOCHS_COLUMNS,
    EPOCHS_FILE,
    EXPORTS_DIR,
    PER_IMAGE_EXPORT_COLUMNS,
    PER_IMAGE_FILE,
    TRIALS_COLUMNS,
    TRIALS_FILE,
)
from vlsm.atomic import atomic_path
from vlsm.axes import (
    ENCODERS,
    MODELS,
    PAPER_STRATEGIES,
    STRATEGY_FINETUNE,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    STRUCTURES,
    SYNTHETIC_PROMPTS,
)

__all__ = ["BEST_EPOCH", "EXAMPLE_EPOCHS", "write_example_exports"]

# Epoch (1-based count) at which each strategy's validation Dice peaks in the example.
BEST_EPOCH = {STRATEGY_REAL: 9, STRATEGY_SYNTHETIC: 6, STRATEGY_FINETUNE: 3}
EXAMPLE_EPOCHS = 12
_BASE = {STRATEGY_REAL: 0.88, STRATEGY_SYNTHETIC: 0.83, STRATEGY_FINETUNE: 0.895}
_MODEL_OFFSET = {"CLIPSeg": 0.0, "CRIS": 0.02}
_ENCODER_OFFSET = {"frozen": -0.01, "unfrozen": 0.0}


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:  # never a partial file where a complete one belongs
        frame.to_parquet(tmp, index=False)


def write_example_exports(
    output_dir: Path | str,
    *,
    prompts: Sequence[str] = ("P0", "P1", "P2"),
    models: Sequence[str] = MODELS,
    encoders: Sequence[str] = ENCODERS,
    n_patients: int = 4,
    seed: int = 0,
) -> Path:
    """Write trials/epochs/per_image Parquet files under `<output_dir>/exports`; returns that folder."""
    rng = np.random.default_rng(seed)
    out = Path(output_dir) / EXPORTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    images = [f"patient{p:04d}_{v}_{ph}" for p in range(1, n_patients + 1) for v in ("2CH", "4CH") for ph in ("ED", "ES")]
    difficulty = {(i, s): rng.normal(0.0, 0.04) for i in images for s in STRUCTURES.values()}
    trials, epochs, per_image = [], [], []
    ids: dict[tuple[str, str, str, str], str] = {}
    for model in models:
        for strategy in PAPER_STRATEGIES:
            for encoder in encoders:
                for prompt in prompts:
                    if strategy == STRATEGY_SYNTHETIC and prompt not in SYNTHETIC_PROMPTS:
                        continue
                    trial_id = f"t{len(trials):03d}"
                    ids[(model, strategy, encoder, prompt)] = trial_id
                    upstream = None
                    if strategy == STRATEGY_FINETUNE:
                        source = prompt if prompt in SYNTHETIC_PROMPTS else SYNTHETIC_PROMPTS[-1]
                        upstream = ids.get((model, STRATEGY_SYNTHETIC, encoder, source))
                    best = BEST_EPOCH[strategy]
                    level = _BASE[strategy] + _MODEL_OFFSET[model] + _ENCODER_OFFSET[encoder]
                    if prompt == "P0":
                        level = 0.45
                    curve = [level - 0.3 * (best - e) / best if e <= best else level - 0.002 * (e - best)
                             for e in range(1, EXAMPLE_EPOCHS + 1)]
                    for e, val_dice in enumerate(curve, start=1):
                        epochs.append((trial_id, e, 1.0 - val_dice + 0.05, 1.0 - val_dice, val_dice,
                                       2e-5 if model == "CRIS" else 2e-3, 100.0, 1.5))
                    for image in images:
                        for structure in STRUCTURES.values():
                            dice = float(np.clip(level + difficulty[(image, structure)] + rng.normal(0.0, 0.01), 0.0, 1.0))
                            per_image.append((trial_id, image, structure, dice, dice / (2.0 - dice),
                                              float(5.0 + 40.0 * (1.0 - dice))))
                    trials.append((trial_id, model, strategy, encoder, prompt, 2e-5 if model == "CRIS" else 2e-3,
                                   "TERMINATED", upstream, f"run-{trial_id}", best, EXAMPLE_EPOCHS, curve[best - 1],
                                   float("nan"), float("nan"), 30.0, 30.0, f"checkpoints/{trial_id}/best"))
    trials_frame = pd.DataFrame.from_records(trials, columns=list(TRIALS_COLUMNS))
    per_image_frame = pd.DataFrame.from_records(per_image, columns=list(PER_IMAGE_EXPORT_COLUMNS))
    stats = per_image_frame.groupby("trial_id")["dice"].agg(["mean", "std"])
    trials_frame["test_dice_mean"] = trials_frame["trial_id"].map(stats["mean"])
    trials_frame["test_dice_std"] = trials_frame["trial_id"].map(stats["std"])
    _write_parquet(trials_frame, out / TRIALS_FILE)
    _write_parquet(pd.DataFrame.from_records(epochs, columns=list(EPOCHS_COLUMNS)), out / EPOCHS_FILE)
    _write_parquet(per_image_frame, out / PER_IMAGE_FILE)
    return out
