"""Convergence: epochs each trial needed to reach its best validation Dice, and the speed-up.

The paper's claim: finetuning after synthetic pretraining converges faster (4.55x CRIS,
1.71x CLIPSeg). The authors published no per-epoch logs, so only our sweeps can test it.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from analysis.figures import panels, plain_text
from analysis.schema import (
    CELL_COLUMNS,
    CELL_KEYS,
    EPOCHS_COLUMNS,
    complete_variants,
    require_columns,
)
from analysis.tables import ARM, arms, sort_cells, with_arm
from vlsm.axes import EPOCH, SEED, STRATEGY_FINETUNE, STRATEGY_REAL, SYNTHETIC_SOURCE, VAL_DICE
from vlsm.model_registry import model_names

__all__ = ["epochs_to_best", "speedup", "val_dice_figure"]


def epochs_to_best(epochs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: cell, variant, seed, best_epoch, epochs_to_best, epochs, best_val_dice.

    epochs_to_best counts the epochs up to and including the first with the highest
    val_dice, whatever the numbering starts at; trials without a finite val_dice are left out.
    """
    require_columns(epochs, EPOCHS_COLUMNS, "epochs frame")
    require_columns(trials, ("trial_id", *CELL_COLUMNS), "trials frame")
    rows = []
    for trial_id, group in epochs.sort_values(["trial_id", EPOCH], kind="stable").groupby("trial_id", sort=False):
        scores = group[VAL_DICE].astype(float).reset_index(drop=True)
        if scores.notna().sum() == 0:
            continue
        position = int(scores.idxmax())  # first maximum; NaN epochs are skipped
        rows.append((trial_id, group[EPOCH].iloc[position], position + 1, len(group), float(scores.iloc[position])))
    per_trial = pd.DataFrame.from_records(
        rows, columns=["trial_id", "best_epoch", "epochs_to_best", "epochs", "best_val_dice"]
    )
    cells = complete_variants(trials)[["trial_id", *CELL_KEYS, SEED]]
    return sort_cells(cells.merge(per_trial, on="trial_id", how="inner"))


def speedup(per_trial: pd.DataFrame) -> pd.DataFrame:
    """Per model, encoder and synthetic source: mean epochs to best of real and of
    synth-PT:real-FT (the finetune's own epochs), and speedup = real / finetune.

    per_trial: `epochs_to_best(...)`. A cell's seeds are averaged first; only prompts with
    both strategies count (n_prompts).
    """
    require_columns(per_trial, (*CELL_COLUMNS, "epochs_to_best"), "per-trial frame")
    frame = complete_variants(per_trial)
    means = sort_cells(frame.groupby(list(CELL_KEYS))["epochs_to_best"].mean().reset_index())
    real = means[means["strategy"] == STRATEGY_REAL]
    records = []
    for model in model_names():
        for encoder in sorted(set(frame["encoder"])):
            for source in dict.fromkeys(means.loc[means["strategy"] == STRATEGY_FINETUNE, SYNTHETIC_SOURCE]):
                finetune = means[(means["strategy"] == STRATEGY_FINETUNE) & (means[SYNTHETIC_SOURCE] == source)]
                pick = {"model": model, "encoder": encoder}
                paired = _of(real, pick).set_index("prompt")["epochs_to_best"].to_frame("real").join(
                    _of(finetune, pick).set_index("prompt")["epochs_to_best"].rename("finetune"), how="inner")
                if paired.empty:
                    continue
                real_epochs, finetune_epochs = paired["real"].mean(), paired["finetune"].mean()
                records.append({"model": model, "encoder": encoder, SYNTHETIC_SOURCE: source,
                                "n_prompts": len(paired), "real_epochs": real_epochs,
                                "finetune_epochs": finetune_epochs, "speedup": real_epochs / finetune_epochs})
    return pd.DataFrame.from_records(records, columns=["model", "encoder", SYNTHETIC_SOURCE, "n_prompts",
                                                       "real_epochs", "finetune_epochs", "speedup"])


def _of(frame: pd.DataFrame, values: dict[str, str]) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for column, value in values.items():
        mask &= frame[column] == value
    return frame[mask]


def val_dice_figure(epochs: pd.DataFrame, trials: pd.DataFrame, encoder: str | None = None) -> Figure:
    """Validation Dice per epoch: a panel per model, a line per trial, a colour per arm
    (strategy, with its synthetic source and provenance where not the defaults)."""
    require_columns(epochs, EPOCHS_COLUMNS, "epochs frame")
    chosen = with_arm(trials if encoder is None else trials[trials["encoder"] == encoder])
    data = epochs.merge(chosen[["trial_id", *CELL_COLUMNS, ARM]], on="trial_id", how="inner")
    models = [m for m in model_names() if m in set(data["model"])]
    if not models:
        raise ValueError(f"no epochs for trials with encoder {encoder!r}")
    fig, axes = panels(models, "Validation Dice per epoch" + (f" ({encoder} encoders)" if encoder else ""))
    colours = {a[0]: f"C{i}" for i, a in enumerate(arms(chosen))}
    for ax, model in zip(axes, models, strict=True):
        labelled: set[str] = set()
        for trial_id, group in data[data["model"] == model].groupby("trial_id", sort=True):
            group = group.sort_values(EPOCH)
            arm = group[ARM].iloc[0]
            label = None if arm in labelled else plain_text(arm)
            labelled.add(arm)
            ax.plot(group[EPOCH].to_numpy(), group[VAL_DICE].to_numpy(), color=colours[arm], alpha=0.7,
                    linewidth=1.0, label=label, gid=str(trial_id))
        ax.set_title(plain_text(model))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Dice")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return fig
