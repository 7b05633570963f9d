"""File names and columns of the sweep's Parquet exports and of the per-image frame.

The sweep writes these files and `analysis` reads them, both with the names from here:

    <output>/exports/trials.parquet     one row per trial (one cell, variant and seed)
    <output>/exports/epochs.parquet     one row per trial and epoch
    <output>/exports/per_image.parquet  one row per trial, test image and structure

Dice and IoU are fractions, Hausdorff distances pixels at 512 x 512; `structure` holds
the names of `vlsm.axes.STRUCTURES` (labels 1-3 are mapped to them on reading).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from vlsm.axes import (
    BEST_VAL_DICE,
    CELL_AXES,
    DICE,
    ENCODERS,
    EPOCH,
    HAUSDORFF,
    IMAGES_PER_S,
    IOU,
    LR,
    PROVENANCE,
    PROVENANCES,
    SECONDS,
    SEED,
    SOURCE_SDM,
    STRATEGY_REAL,
    STRUCTURES,
    SYNTHETIC_SOURCE,
    TEST_DICE_MEAN,
    TEST_DICE_STD,
    TRAIN_LOSS,
    VAL_DICE,
    VAL_LOSS,
    VARIANT_AXES,
)
from vlsm.data.prompts import prompt_names
from vlsm.data.synthetic_sources import source_names
from vlsm.model_registry import model_names
from vlsm.strategies import strategy_names

__all__ = [
    "CELL_COLUMNS", "CELL_KEYS", "cell_values", "DEFAULT_SEED", "EPOCHS_COLUMNS", "EPOCHS_FILE",
    "EXPORTS_DIR", "OPTIONAL_COLUMNS", "PER_IMAGE_COLUMNS", "PER_IMAGE_EXPORT_COLUMNS",
    "PER_IMAGE_FILE", "TRIALS_COLUMNS", "TRIALS_FILE", "VARIANT_COLUMNS", "complete_variants",
    "exports_dir", "normalise_structure", "require_columns",
]

EXPORTS_DIR = "exports"
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
PER_IMAGE_FILE = "per_image.parquet"

TRIAL_ID, IMAGE, STRUCTURE = "trial_id", "image", "structure"

# One cell of the grid = one (model, strategy, encoder, prompt): the axes' own names.
CELL_COLUMNS: tuple[str, ...] = CELL_AXES
# What tells apart cells of one grid cell: "" where an axis does not apply.
VARIANT_COLUMNS: tuple[str, ...] = VARIANT_AXES
# The cell of the analysis (a row of its tables): grid cell and variant; seeds are its replicates.
CELL_KEYS: tuple[str, ...] = (*CELL_COLUMNS, *VARIANT_COLUMNS)


def cell_values() -> dict[str, tuple[str, ...]]:
    """The values each cell and variant column may hold, in their order in tables: the
    registries' (vlsm.registry), asked when a table is made, so plugin entries count."""
    return {
        "model": model_names(),
        "strategy": strategy_names(),
        "encoder": ENCODERS,
        "prompt": prompt_names(),
        SYNTHETIC_SOURCE: ("", *source_names()),
        PROVENANCE: ("", *PROVENANCES),
    }


# The seed of rows written before the seed was a column: the paper's (train.seed's default).
DEFAULT_SEED = 42

TRIALS_COLUMNS: tuple[str, ...] = (
    TRIAL_ID, *CELL_KEYS, SEED, LR, "status",
    "upstream_trial_id",  # synth-PT:real-FT: the synthetic trial it starts from
    "mlflow_run_id", "best_epoch", "epochs", BEST_VAL_DICE, TEST_DICE_MEAN, TEST_DICE_STD,
    "wall_s", "gpu_s", "checkpoint",
)
EPOCHS_COLUMNS: tuple[str, ...] = (TRIAL_ID, EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_DICE, LR, IMAGES_PER_S, SECONDS)
PER_IMAGE_EXPORT_COLUMNS: tuple[str, ...] = (TRIAL_ID, IMAGE, STRUCTURE, DICE, IOU, HAUSDORFF)

# The long per-image frame every analysis function takes (load_published, load_sweep).
PER_IMAGE_COLUMNS: tuple[str, ...] = (*CELL_KEYS, SEED, IMAGE, STRUCTURE, DICE, IOU, HAUSDORFF)
# Columns an export may lack (written before they existed): `complete_variants` fills them.
OPTIONAL_COLUMNS: tuple[str, ...] = (*VARIANT_COLUMNS, SEED)


def exports_dir(output_dir: Path | str) -> Path:
    """`<output>/exports`, or `output_dir` itself when it already holds the files."""
    output_dir = Path(output_dir)
    if (output_dir / TRIALS_FILE).is_file():
        return output_dir
    return output_dir / EXPORTS_DIR


def complete_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the variant and seed columns, missing values filled as before they existed:
    seed 42 (the paper's), synthetic_source "sdm" ("" for real), provenance "".

    Needs a `strategy` column. Returns `frame` itself when nothing is missing, else a copy
    with the lacking columns added at the end: never modify the result in place.
    """
    columns = (SYNTHETIC_SOURCE, PROVENANCE, SEED)
    if all(c in frame for c in columns) and not frame[list(columns)].isna().to_numpy().any():
        return frame
    out = frame.copy()
    for column in columns:
        if column not in out:
            out[column] = None
    real = out["strategy"] == STRATEGY_REAL
    source = out[SYNTHETIC_SOURCE].astype(object)
    out[SYNTHETIC_SOURCE] = source.where(source.notna(), real.map({True: "", False: SOURCE_SDM}))
    provenance = out[PROVENANCE].astype(object)
    out[PROVENANCE] = provenance.where(provenance.notna(), "")
    out[SEED] = pd.to_numeric(out[SEED]).fillna(DEFAULT_SEED).astype("int64")
    return out


def require_columns(frame: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    """Raise ValueError naming `source` and every column of `columns` it lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected at least {list(columns)}, "
                         f"found {list(frame.columns)}")


def normalise_structure(values: pd.Series, source: str) -> pd.Series:
    """Map structure labels (1-3 or "LV"/"MYO"/"LA") to the names of vlsm.axes.STRUCTURES."""
    names = set(STRUCTURES.values())
    by_label = {str(k): v for k, v in STRUCTURES.items()}
    out = values.astype(str).map(lambda v: v if v in names else by_label.get(v))
    bad = sorted(set(values[out.isna()].astype(str)))
    if bad:
        raise ValueError(f"{source}: column 'structure' has value(s) {bad[:5]}; expected one of "
                         f"{sorted(names)} or the labels {sorted(STRUCTURES)}")
    return out.astype(object)
