"""Grid axes, structures and metric names: defined once, imported everywhere (the axes'
values are their registries' entries; docs/design.md, "Vocabulary" and "Registries").
"""

from __future__ import annotations

# --- grid axes -------------------------------------------------------------------------
# The axes that name a grid cell, in the order of cell ids, export columns and tables.
CELL_AXES: tuple[str, ...] = ("model", "strategy", "encoder", "prompt")
# The paper's strategies, by name (their entries: vlsm.strategies).
STRATEGY_REAL = "real"
STRATEGY_SYNTHETIC = "synthetic"
STRATEGY_FINETUNE = "synth-PT:real-FT"
STRATEGY_MIXED = "real+synthetic"
ENCODERS: tuple[str, ...] = ("frozen", "unfrozen")

# Where a cell's synthetic data comes from: the format of its folder. "sdm" is the paper's.
SYNTHETIC_SOURCE = "synthetic_source"
SOURCE_SDM = "sdm"
# Whether a real+synthetic cell's prompts say "real" / "synthetic" ("" for other strategies).
PROVENANCE = "provenance"
PROVENANCE_PROMPT = "prompt"
PROVENANCE_NONE = "none"
PROVENANCES: tuple[str, ...] = (PROVENANCE_PROMPT, PROVENANCE_NONE)
# Axes that tell apart cells of the same (model, strategy, encoder, prompt): "" where they
# do not apply (a real cell has no source), so every row has a value to group by.
VARIANT_AXES: tuple[str, ...] = (SYNTHETIC_SOURCE, PROVENANCE)
# The replicate axis; the paper's seed keeps a trial's plain id, any other is written into it (-s43).
SEED = "seed"
PAPER_SEED = 42

# --- structures (CAMUS label values) ---------------------------------------------------
STRUCTURES: dict[int, str] = {1: "LV", 2: "MYO", 3: "LA"}
STRUCTURE_NAMES: dict[int, str] = {1: "Left ventricular cavity", 2: "Myocardium", 3: "Left atrium cavity"}

# --- image geometry --------------------------------------------------------------------
EVAL_SIZE = 512  # predictions and ground truth are compared at 512 x 512 (nearest)

# --- metric names (keys of tune.report, MLflow metrics and Parquet columns) -----------
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_DICE = "val_dice"
BEST_VAL_DICE = "best_val_dice"
BEST_EPOCH = "best_epoch"
STOP_REASON = "stop_reason"  # "" while training; "early_stopping" | "max_epochs" | "non-finite ..."
LR = "lr"
IMAGES_PER_S = "images_per_s"
EPOCH = "epoch"
SECONDS = "seconds"
TEST_DICE_MEAN = "test_dice_mean"
TEST_DICE_STD = "test_dice_std"
DICE = "dice"
IOU = "iou"
HAUSDORFF = "hausdorff"
