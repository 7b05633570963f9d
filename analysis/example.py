"""A small made-up sweep export, to try the analysis without running a sweep.

    python -m analysis example-export /tmp/example && python -m analysis report /tmp/example
    python -m analysis example-export /tmp/seeds --seeds 3 --sources sdm diffecho --mixed

Drawn from a seeded generator with effects built in, which the tests and notebooks check
the analysis finds (the offsets below: real beats synthetic, synth-PT:real-FT beats real,
CRIS beats CLIPSeg, P0 is poor, frozen costs a point, ...; each training seed shifts a
trial a little). It is not a result of anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.schema import (
    DEFAULT_SEED,
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
    PROVENANCE,
    PROVENANCES,
    SEED,
    SOURCE_SDM,
    STRATEGY_FINETUNE,
    STRATEGY_MIXED,
    STRATEGY_REAL,
    STRATEGY_SYNTHETIC,
    STRUCTURES,
    SYNTHETIC_SOURCE,
)
from vlsm.data.prompts import prompt_names
from vlsm.model_registry import model_entry, model_names
from vlsm.strategies import STRATEGY_REGISTRY, paper_strategies, uses_synthetic

__all__ = ["BEST_EPOCH", "EXAMPLE_EPOCHS", "SEED_SD", "write_example_exports"]

# Epoch (1-based count) at which each strategy's validation Dice peaks in the example.
BEST_EPOCH = {STRATEGY_REAL: 9, STRATEGY_SYNTHETIC: 6, STRATEGY_FINETUNE: 3, STRATEGY_MIXED: 7}
EXAMPLE_EPOCHS = 12
SEED_SD = 0.002  # between-seed standard deviation of a trial's Dice (a fraction)
_BASE = {STRATEGY_REAL: 0.88, STRATEGY_SYNTHETIC: 0.83, STRATEGY_FINETUNE: 0.895, STRATEGY_MIXED: 0.89}
_MODEL_OFFSET = {"CRIS": 0.02}  # CRIS beats CLIPSeg; any other model gets no offset
_ENCODER_OFFSET = {"frozen": -0.01, "unfrozen": 0.0}
_SOURCE_OFFSET = {"": 0.0, SOURCE_SDM: 0.0, "diffecho": -0.006, "imagefolder": -0.01}
_PROVENANCE_OFFSET = {"": 0.0, "prompt": 0.0, "none": -0.004}
_PROMPT_OFFSET = {"P2": 0.002}


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:  # never a partial file where a complete one belongs
        frame.to_parquet(tmp, index=False)


def _cells(models: Sequence[str], strategies: Sequence[str], encoders: Sequence[str], prompts: Sequence[str],
           sources: Sequence[str], provenances: Sequence[str]) -> Iterator[tuple[str, str, str, str, str, str]]:
    """(model, strategy, encoder, prompt, source, provenance) of every cell, in the sweep's order."""
    for model in models:
        for strategy in strategies:
            for encoder in encoders:
                for prompt in prompts:
                    if STRATEGY_REGISTRY[strategy].synthetic_style and prompt not in prompt_names(synthetic=True):
                        continue
                    for source in (sources if uses_synthetic(strategy) else ("",)):
                        for provenance in (provenances if STRATEGY_REGISTRY[strategy].provenance else ("",)):
                            yield model, strategy, encoder, prompt, source, provenance


def _level(model: str, strategy: str, encoder: str, prompt: str, source: str, provenance: str) -> float:
    """The cell's expected Dice (before its seed's shift)."""
    if prompt == "P0":
        return 0.45
    return (_BASE.get(strategy, 0.85) + _MODEL_OFFSET.get(model, 0.0) + _ENCODER_OFFSET[encoder] + _SOURCE_OFFSET.get(source, 0.0)
            + _PROVENANCE_OFFSET[provenance] + _PROMPT_OFFSET.get(prompt, 0.0))


def _upstream(ids: dict[tuple, str], cell: tuple, training_seed: int) -> str | None:
    """The trial id of the cell's upstream (a finetune's synthetic run), if written already."""
    model, strategy, encoder, prompt, source, _provenance = cell
    upstream_strategy = STRATEGY_REGISTRY[strategy].upstream
    if upstream_strategy is None:
        return None
    pretrain = prompt if prompt in prompt_names(synthetic=True) else prompt_names(synthetic=True)[-1]
    return ids.get((model, upstream_strategy, encoder, pretrain, source, "", training_seed))


def _trial(rng: np.random.Generator, trial_id: str, cell: tuple, training_seed: int, upstream: str | None,
           difficulty: dict[tuple[str, str], float]) -> tuple[dict, list[tuple], list[tuple]]:
    """One trial's row, epochs and per-image rows (difficulty: per image and structure)."""
    model, strategy, encoder, prompt, source, provenance = cell
    best = BEST_EPOCH.get(strategy, 5)
    level = _level(*cell) + rng.normal(0.0, SEED_SD)
    curve = [level - 0.3 * (best - e) / best if e <= best else level - 0.002 * (e - best)
             for e in range(1, EXAMPLE_EPOCHS + 1)]
    lr = model_entry(model).paper.lr
    epochs = [(trial_id, e, 1.0 - val_dice + 0.05, 1.0 - val_dice, val_dice, lr, 100.0, 1.5)
              for e, val_dice in enumerate(curve, start=1)]
    per_image = []
    for (image, structure), shift in difficulty.items():
        dice = float(np.clip(level + shift + rng.normal(0.0, 0.01), 0.0, 1.0))
        per_image.append((trial_id, image, structure, dice, dice / (2.0 - dice), float(5.0 + 40.0 * (1.0 - dice))))
    trial = {
        "trial_id": trial_id, "model": model, "strategy": strategy, "encoder": encoder, "prompt": prompt,
        SYNTHETIC_SOURCE: source, PROVENANCE: provenance, SEED: training_seed, "lr": lr,
        "status": "TERMINATED", "upstream_trial_id": upstream, "mlflow_run_id": f"run-{trial_id}",
        "best_epoch": best, "epochs": EXAMPLE_EPOCHS, "best_val_dice": curve[best - 1],
        "test_dice_mean": float("nan"), "test_dice_std": float("nan"), "wall_s": 30.0, "gpu_s": 30.0,
        "checkpoint": f"checkpoints/{trial_id}/best",
    }
    return trial, epochs, per_image


def write_example_exports(output_dir: Path | str, *, prompts: Sequence[str] = ("P0", "P1", "P2"),
                          models: Sequence[str] | None = None, encoders: Sequence[str] = ENCODERS,
                          strategies: Sequence[str] | None = None, sources: Sequence[str] = (SOURCE_SDM,),
                          provenances: Sequence[str] = PROVENANCES, seeds: Sequence[int] = (DEFAULT_SEED,),
                          n_patients: int = 4, seed: int = 0) -> Path:
    """Write trials/epochs/per_image Parquet files under `<output_dir>/exports`; returns that folder.

    strategies: with "real+synthetic", a cell per provenance in `provenances`; sources: of
    the cells with synthetic data; seeds: training seeds, one trial per cell and seed;
    seed: the generator's, which makes the whole export.
    """
    rng = np.random.default_rng(seed)
    out = Path(output_dir) / EXPORTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    images = [f"patient{p:04d}_{v}_{ph}" for p in range(1, n_patients + 1) for v in ("2CH", "4CH") for ph in ("ED", "ES")]
    difficulty = {(i, s): rng.normal(0.0, 0.04) for i in images for s in STRUCTURES.values()}
    trials, epochs, per_image = [], [], []
    ids: dict[tuple, str] = {}
    models, strategies = models or model_names(), strategies or paper_strategies()
    for cell in _cells(models, strategies, encoders, prompts, sources, provenances):
        for training_seed in seeds:
            trial_id = f"t{len(trials):03d}"
            ids[(*cell, training_seed)] = trial_id
            trial, trial_epochs, trial_per_image = _trial(rng, trial_id, cell, training_seed,
                                                          _upstream(ids, cell, training_seed), difficulty)
            trials.append(trial)
            epochs += trial_epochs
            per_image += trial_per_image
    trials_frame = pd.DataFrame.from_records(trials, columns=list(TRIALS_COLUMNS))
    per_image_frame = pd.DataFrame.from_records(per_image, columns=list(PER_IMAGE_EXPORT_COLUMNS))
    stats = per_image_frame.groupby("trial_id")["dice"].agg(["mean", "std"])
    trials_frame["test_dice_mean"] = trials_frame["trial_id"].map(stats["mean"])
    trials_frame["test_dice_std"] = trials_frame["trial_id"].map(stats["std"])
    _write_parquet(trials_frame, out / TRIALS_FILE)
    _write_parquet(pd.DataFrame.from_records(epochs, columns=list(EPOCHS_COLUMNS)), out / EPOCHS_FILE)
    _write_parquet(per_image_frame, out / PER_IMAGE_FILE)
    return out
