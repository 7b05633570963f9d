"""Read our sweep's Parquet exports (`analysis.schema`) into the per-image frame.

A trial's cell, variant and seed come from `trials.parquet`. Several seeds of a cell are
replicates, all kept; one (cell, variant, seed) run more than once (an LR search, a retry)
keeps by default the trial with the best validation Dice: test results never choose.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from analysis.schema import (
    CELL_KEYS,
    EPOCHS_COLUMNS,
    EPOCHS_FILE,
    EXPORTS_DIR,
    OPTIONAL_COLUMNS,
    PER_IMAGE_COLUMNS,
    PER_IMAGE_EXPORT_COLUMNS,
    PER_IMAGE_FILE,
    TRIALS_COLUMNS,
    TRIALS_FILE,
    cell_values,
    complete_variants,
    exports_dir,
    normalise_structure,
    require_columns,
)
from vlsm.axes import BEST_VAL_DICE, SEED

__all__ = ["DUPLICATE_POLICIES", "check_cells", "load_sweep", "read_epochs", "read_export", "read_trials"]

log = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("best-val", "error")
_REPLICATE = (*CELL_KEYS, SEED)  # one trial stands for each


def check_cells(frame: pd.DataFrame, source: str) -> None:
    """Raise ValueError when a cell or variant value (of the columns present) is not one of vlsm.axes."""
    for column, allowed in cell_values().items():
        if column not in frame:
            continue
        bad = sorted(set(frame[column].dropna().astype(str)) - set(allowed))
        if bad:
            raise ValueError(f"{source}: column {column!r} has value(s) {bad}; expected one of {list(allowed)}")


def read_export(path: Path) -> pd.DataFrame:
    """An export Parquet file, its page CRCs checked (files written without them: unchecked);
    ValueError, one line naming the file and how to rewrite it, when it is damaged."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such export; run the sweep's export first")
    try:
        return pd.read_parquet(path, page_checksum_verification=True)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        output = path.parent.parent if path.parent.name == EXPORTS_DIR else path.parent
        raise ValueError(f"{path}: damaged or not a Parquet file ({why}); rewrite the exports from the sweep's "
                         f"records with: python -m sweeps export {output}") from None


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = read_export(path)
    require_columns(frame, columns, str(path))
    return frame


def read_trials(output_dir: Path | str) -> pd.DataFrame:
    """`trials.parquet` of a sweep output folder (or of its `exports/` folder): TRIALS_COLUMNS,
    then any others the file has; missing variant or seed values filled (`complete_variants`)."""
    path = exports_dir(output_dir) / TRIALS_FILE
    trials = _read(path, tuple(c for c in TRIALS_COLUMNS if c not in OPTIONAL_COLUMNS))
    trials = complete_variants(trials)
    trials = trials[[*TRIALS_COLUMNS, *(c for c in trials.columns if c not in TRIALS_COLUMNS)]]
    check_cells(trials, str(path))
    if trials["trial_id"].duplicated().any():
        dup = trials["trial_id"][trials["trial_id"].duplicated()].iloc[0]
        raise ValueError(f"{path}: trial_id {dup!r} appears more than once")
    return trials


def read_epochs(output_dir: Path | str) -> pd.DataFrame:
    """`epochs.parquet` of a sweep output folder (or of its `exports/` folder)."""
    return _read(exports_dir(output_dir) / EPOCHS_FILE, EPOCHS_COLUMNS)


def _one_trial_per_seed(trials: pd.DataFrame, duplicates: str, source: str) -> pd.DataFrame:
    """One trial per (cell, variant, seed): several seeds of a cell are replicates, kept."""
    counts = trials.groupby(list(_REPLICATE)).size()
    repeated = counts[counts > 1]
    if repeated.empty:
        return trials
    if duplicates == "error":
        cell = repeated.index[0]
        ids = trials.loc[(trials[list(_REPLICATE)] == list(cell)).all(axis=1), "trial_id"].tolist()
        raise ValueError(f"{source}: cell {dict(zip(_REPLICATE, cell, strict=True))} has trials {ids}; "
                         "expected one per cell and seed (use duplicates='best-val' to keep the best validation Dice)")
    log.info("%s: %d cell(s) and seed(s) with several trials; keeping the best validation Dice",
             source, len(repeated))
    ranked = trials.sort_values(BEST_VAL_DICE, ascending=False, na_position="last", kind="stable")
    return ranked.drop_duplicates(list(_REPLICATE), keep="first")


def load_sweep(output_dir: Path | str, *, duplicates: str = "best-val") -> pd.DataFrame:
    """Our exports as the long per-image frame (PER_IMAGE_COLUMNS plus trial_id).

    duplicates: when one (cell, variant, seed) has several trials with per-image results,
    "best-val" keeps the one with the highest best_val_dice, "error" raises.
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates={duplicates!r}; expected one of {DUPLICATE_POLICIES}")
    folder = exports_dir(output_dir)
    trials = read_trials(output_dir)
    per_image_path = folder / PER_IMAGE_FILE
    per_image = _read(per_image_path, PER_IMAGE_EXPORT_COLUMNS)
    unknown = sorted(set(per_image["trial_id"]) - set(trials["trial_id"]))
    if unknown:
        raise ValueError(f"{per_image_path}: trial_id(s) {unknown[:5]} are not in {folder / TRIALS_FILE}")
    tested = trials[trials["trial_id"].isin(per_image["trial_id"])]
    kept = _one_trial_per_seed(tested, duplicates, str(folder / TRIALS_FILE))
    merged = per_image.merge(kept[["trial_id", *_REPLICATE]], on="trial_id", how="inner")
    merged["structure"] = normalise_structure(merged["structure"], str(per_image_path))
    for column in ("dice", "iou"):
        values = merged[column].astype(float)
        if not values.dropna().between(0.0, 1.0).all():
            raise ValueError(f"{per_image_path}: column {column!r} has values outside [0, 1] "
                             f"(max {values.max()}); expected fractions, not percentages")
    dup = merged.duplicated(["trial_id", "image", "structure"])
    if dup.any():
        row = merged[dup].iloc[0]
        raise ValueError(f"{per_image_path}: trial {row['trial_id']} has image {row['image']} "
                         f"structure {row['structure']} more than once")
    for column in (*CELL_KEYS, "image"):
        merged[column] = merged[column].astype(object)
    return merged[[*PER_IMAGE_COLUMNS, "trial_id"]].reset_index(drop=True)
