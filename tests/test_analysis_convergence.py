"""Epochs to the best validation Dice, the speed-up of finetuning, and the per-epoch plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    epochs_to_best,
    read_epochs,
    read_trials,
    speedup,
    val_dice_figure,
    write_example_exports,
)
from analysis.example import BEST_EPOCH


def _epochs(trial_id: str, scores: list[float], start: int = 0) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame({
        "trial_id": trial_id, "epoch": range(start, start + n), "train_loss": 0.1, "val_loss": 0.1,
        "val_dice": scores, "lr": 1e-3, "images_per_s": 10.0, "seconds": 1.0,
    })


TRIALS = pd.DataFrame({
    "trial_id": ["r1", "r2", "f1", "f2", "s1"],
    "model": "CRIS",
    "strategy": ["real", "real", "synth-PT:real-FT", "synth-PT:real-FT", "synthetic"],
    "encoder": "unfrozen",
    "prompt": ["P1", "P2", "P1", "P3", "P1"],
})


def test_epochs_to_best_counts_epochs_whatever_the_numbering() -> None:
    epochs = pd.concat([
        _epochs("r1", [0.1, 0.5, 0.8, 0.8, 0.7], start=0),  # first maximum: the 3rd epoch
        _epochs("r2", [0.2, np.nan, 0.9, 0.3], start=1),  # NaN epochs are skipped, numbering from 1
        _epochs("f1", [0.7, 0.6], start=5),
        _epochs("f2", [0.4, 0.6, 0.5], start=0),
        _epochs("s1", [np.nan, np.nan], start=0),  # never validated: left out
    ]).sample(frac=1.0, random_state=0)  # row order must not matter
    per_trial = epochs_to_best(epochs, TRIALS).set_index("trial_id")
    assert list(per_trial.index) == ["r1", "r2", "f1", "f2"]
    assert per_trial.loc["r1", ["best_epoch", "epochs_to_best", "epochs"]].tolist() == [2, 3, 5]
    assert per_trial.loc["r2", ["best_epoch", "epochs_to_best"]].tolist() == [3, 3]
    assert per_trial.loc["f1", ["best_epoch", "epochs_to_best"]].tolist() == [5, 1]
    assert per_trial.loc["r1", "best_val_dice"] == pytest.approx(0.8)

    # only P1 has both strategies: real 3 epochs, finetune 1 -> 3x
    speed = speedup(per_trial.reset_index())
    assert speed.to_dict("records") == [{
        "model": "CRIS", "encoder": "unfrozen", "synthetic_source": "sdm", "n_prompts": 1,
        "real_epochs": 3.0, "finetune_epochs": 1.0, "speedup": 3.0,
    }]


def test_speedup_and_plot_on_example(tmp_path: Path) -> None:
    write_example_exports(tmp_path, prompts=("P1", "P2"))
    epochs, trials = read_epochs(tmp_path), read_trials(tmp_path)
    per_trial = epochs_to_best(epochs, trials)
    assert len(per_trial) == len(trials)
    for strategy, best in BEST_EPOCH.items():
        assert (per_trial.loc[per_trial["strategy"] == strategy, "epochs_to_best"] == best).all()
    speed = speedup(per_trial)
    assert len(speed) == 4  # 2 models x 2 encoders
    assert speed["speedup"].to_numpy() == pytest.approx(BEST_EPOCH["real"] / BEST_EPOCH["synth-PT:real-FT"])

    fig = val_dice_figure(epochs, trials, encoder="unfrozen")
    clipseg, cris = fig.axes
    assert len(cris.lines) == 3 * 2  # one line per unfrozen CRIS trial: 3 strategies x 2 prompts
    labels = sorted(line.get_label() for line in cris.lines if not line.get_label().startswith("_"))
    assert labels == ["real", "synth-PT:real-FT", "synthetic"]  # one legend entry per strategy
    line = next(line for line in cris.lines if line.get_label() == "real")
    trial = trials.set_index("trial_id").loc[line.get_gid()]
    assert (trial["model"], trial["strategy"], trial["encoder"]) == ("CRIS", "real", "unfrozen")
    expected = epochs[epochs["trial_id"] == line.get_gid()].sort_values("epoch")["val_dice"].to_numpy()
    assert line.get_ydata() == pytest.approx(expected)
    with pytest.raises(ValueError, match="no epochs"):
        val_dice_figure(epochs, trials[trials["encoder"] == "frozen"], encoder="unfrozen")


def test_speedup_per_source_and_a_colour_per_arm(tmp_path: Path) -> None:
    write_example_exports(tmp_path, prompts=("P1",), models=("CRIS",), encoders=("unfrozen",), n_patients=1,
                          strategies=("real", "synthetic", "synth-PT:real-FT", "real+synthetic"),
                          sources=("sdm", "diffecho"), seeds=(42, 43))
    epochs, trials = read_epochs(tmp_path), read_trials(tmp_path)
    per_trial = epochs_to_best(epochs, trials)
    assert len(per_trial) == len(trials) and set(per_trial["seed"]) == {42, 43}
    speed = speedup(per_trial)
    assert list(speed["synthetic_source"]) == ["sdm", "diffecho"]
    assert (speed["speedup"] == BEST_EPOCH["real"] / BEST_EPOCH["synth-PT:real-FT"]).all()
    fig = val_dice_figure(epochs, trials)
    (cris,) = fig.axes
    assert len(cris.lines) == len(trials)
    labels = [line.get_label() for line in cris.lines if not line.get_label().startswith("_")]
    assert sorted(labels) == sorted(["real", "synthetic", "synthetic (diffecho)", "synth-PT:real-FT",
                                     "synth-PT:real-FT (diffecho)", "real+synthetic", "real+synthetic (no provenance)",
                                     "real+synthetic (diffecho)", "real+synthetic (diffecho, no provenance)"])
    assert len({line.get_color() for line in cris.lines}) == len(labels)
