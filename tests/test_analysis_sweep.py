"""load_sweep joins our Parquet exports into the per-image frame and rejects bad exports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis import load_sweep, read_epochs, read_trials, write_example_exports
from analysis.schema import (
    EPOCHS_COLUMNS,
    PER_IMAGE_COLUMNS,
    PER_IMAGE_EXPORT_COLUMNS,
    PER_IMAGE_FILE,
    TRIALS_COLUMNS,
    TRIALS_FILE,
)


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    write_example_exports(tmp_path, prompts=("P1", "P7"), models=("CRIS",), n_patients=2)
    return tmp_path


def test_load_sweep_joins_cells(export: Path) -> None:
    per_image = load_sweep(export)
    assert list(per_image.columns) == [*PER_IMAGE_COLUMNS, "trial_id"]
    trials = read_trials(export)
    assert list(trials.columns) == list(TRIALS_COLUMNS)
    assert list(read_epochs(export).columns) == list(EPOCHS_COLUMNS)
    # CRIS x 3 strategies x 2 encoders x (P1, P7), no synthetic P7: 10 trials x 8 images x 3 structures
    assert len(trials) == 10 and len(per_image) == 10 * 8 * 3
    assert not ((per_image["strategy"] == "synthetic") & (per_image["prompt"] == "P7")).any()
    one = trials.set_index("trial_id").loc[per_image["trial_id"].iloc[0]]
    assert per_image.iloc[0][["model", "strategy", "encoder", "prompt"]].tolist() == [
        one["model"], one["strategy"], one["encoder"], one["prompt"]]
    # a finetune names the synthetic trial it starts from (none for P7 here: no synthetic P6 was run)
    by_cell = trials.set_index(["strategy", "encoder", "prompt"])["trial_id"]
    upstream = trials.set_index("trial_id")["upstream_trial_id"]
    assert upstream[by_cell[("synth-PT:real-FT", "frozen", "P1")]] == by_cell[("synthetic", "frozen", "P1")]
    assert pd.isna(upstream[by_cell[("synth-PT:real-FT", "frozen", "P7")]])
    assert load_sweep(export / "exports")["trial_id"].nunique() == 10  # the exports/ folder works too


def _rewrite(path: Path, change) -> None:
    frame = pd.read_parquet(path)
    change(frame).to_parquet(path, index=False)


def test_structure_labels_and_duplicates(export: Path) -> None:
    exports = export / "exports"
    _rewrite(exports / PER_IMAGE_FILE, lambda f: f.assign(structure=f["structure"].map({"LV": 1, "MYO": 2, "LA": 3})))
    assert set(load_sweep(export)["structure"]) == {"LV", "MYO", "LA"}

    # a second trial of the same cell (an LR search, a retry): keep the best validation Dice
    trials = pd.read_parquet(exports / TRIALS_FILE)
    per_image = pd.read_parquet(exports / PER_IMAGE_FILE)
    first = trials.iloc[0]
    extra = first.copy()
    extra["trial_id"], extra["best_val_dice"] = "retry", first["best_val_dice"] + 0.1
    pd.concat([trials, extra.to_frame().T], ignore_index=True).astype(trials.dtypes.to_dict()).to_parquet(
        exports / TRIALS_FILE, index=False)
    copy = per_image[per_image["trial_id"] == first["trial_id"]].assign(trial_id="retry", dice=0.5)
    pd.concat([per_image, copy], ignore_index=True).to_parquet(exports / PER_IMAGE_FILE, index=False)
    kept = load_sweep(export)
    assert "retry" in set(kept["trial_id"]) and first["trial_id"] not in set(kept["trial_id"])
    assert len(kept) == 10 * 8 * 3
    with pytest.raises(ValueError, match=r"has trials \['t000', 'retry'\]"):
        load_sweep(export, duplicates="error")
    with pytest.raises(ValueError, match="duplicates='first'"):
        load_sweep(export, duplicates="first")


def test_bad_exports_name_file_and_value(export: Path) -> None:
    exports = export / "exports"
    original = pd.read_parquet(exports / PER_IMAGE_FILE)
    _rewrite(exports / PER_IMAGE_FILE, lambda f: f.assign(dice=f["dice"] * 100))
    with pytest.raises(ValueError, match=r"per_image\.parquet: column 'dice' has values outside \[0, 1\]"):
        load_sweep(export)
    original.assign(structure="RV").to_parquet(exports / PER_IMAGE_FILE, index=False)
    with pytest.raises(ValueError, match=r"'structure' has value\(s\) \['RV'\]"):
        load_sweep(export)
    original.assign(trial_id="ghost").to_parquet(exports / PER_IMAGE_FILE, index=False)
    with pytest.raises(ValueError, match=r"trial_id\(s\) \['ghost'\] are not in"):
        load_sweep(export)
    original.drop(columns=["iou"]).to_parquet(exports / PER_IMAGE_FILE, index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['iou'\]"):
        load_sweep(export)
    original.to_parquet(exports / PER_IMAGE_FILE, index=False)
    _rewrite(exports / TRIALS_FILE, lambda f: f.assign(model="UNet"))
    with pytest.raises(ValueError, match=r"trials\.parquet: column 'model' has value\(s\) \['UNet'\]"):
        load_sweep(export)
    with pytest.raises(FileNotFoundError, match="trials.parquet"):
        load_sweep(export / "nowhere")
    assert tuple(original.columns) == PER_IMAGE_EXPORT_COLUMNS


def test_exports_without_seeds_or_variants_read_as_one_seed_of_sdm(export: Path) -> None:
    exports = export / "exports"
    # written before the columns existed, and by a sweep that leaves them empty
    _rewrite(exports / TRIALS_FILE, lambda f: f.drop(columns=["seed", "synthetic_source", "provenance"]))
    trials = read_trials(export)
    assert list(trials.columns) == list(TRIALS_COLUMNS)
    assert set(trials["seed"]) == {42} and set(trials["provenance"]) == {""}
    assert set(trials.loc[trials["strategy"] == "real", "synthetic_source"]) == {""}
    assert set(trials.loc[trials["strategy"] != "real", "synthetic_source"]) == {"sdm"}
    _rewrite(exports / TRIALS_FILE, lambda f: f.assign(seed=None, synthetic_source=None, provenance=None,
                                                       reason="done"))
    trials = read_trials(export)
    assert list(trials.columns) == [*TRIALS_COLUMNS, "reason"]  # other columns kept, after the schema's
    assert trials["seed"].dtype == "int64" and set(trials["seed"]) == {42}
    per_image = load_sweep(export)
    assert set(per_image["seed"]) == {42} and len(per_image) == 10 * 8 * 3


def test_every_seed_is_kept_and_one_trial_per_seed(tmp_path: Path) -> None:
    write_example_exports(tmp_path, prompts=("P1",), models=("CRIS",), encoders=("unfrozen",), n_patients=1,
                          strategies=("real", "synthetic", "real+synthetic"), sources=("sdm", "diffecho"),
                          seeds=(42, 43))
    trials = read_trials(tmp_path)
    # real, 2 sources x synthetic, 2 sources x 2 provenances x real+synthetic; 2 seeds each
    assert len(trials) == (1 + 2 + 4) * 2
    mixed = trials[trials["strategy"] == "real+synthetic"]
    assert set(zip(mixed["synthetic_source"], mixed["provenance"], strict=True)) == {
        ("sdm", "prompt"), ("sdm", "none"), ("diffecho", "prompt"), ("diffecho", "none")}
    per_image = load_sweep(tmp_path)
    assert per_image["trial_id"].nunique() == 14 and set(per_image["seed"]) == {42, 43}
    # a retry of one (cell, seed) is a duplicate; the other seed is not
    exports = tmp_path / "exports"
    first = trials.iloc[0]
    retry = trials.iloc[[0]].assign(trial_id="retry", best_val_dice=first["best_val_dice"] + 0.1)
    pd.concat([pd.read_parquet(exports / TRIALS_FILE), retry], ignore_index=True).to_parquet(
        exports / TRIALS_FILE, index=False)
    rows = pd.read_parquet(exports / PER_IMAGE_FILE)
    pd.concat([rows, rows[rows["trial_id"] == first["trial_id"]].assign(trial_id="retry")]).to_parquet(
        exports / PER_IMAGE_FILE, index=False)
    kept = load_sweep(tmp_path)
    assert "retry" in set(kept["trial_id"]) and first["trial_id"] not in set(kept["trial_id"])
    assert kept["trial_id"].nunique() == 14
    with pytest.raises(ValueError, match="expected one per cell and seed"):
        load_sweep(tmp_path, duplicates="error")
    _rewrite(exports / TRIALS_FILE, lambda f: f.assign(provenance="maybe"))
    with pytest.raises(ValueError, match=r"column 'provenance' has value\(s\) \['maybe'\]"):
        read_trials(tmp_path)
