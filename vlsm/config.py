"""The typed configuration of one training trial, built from a Ray Tune config dict.

Why a dataclass and not ``config.get(key, default)``: a mistyped key in a sweep file
would otherwise be silently ignored and the trial would run with a default nobody
chose. `TrainConfig.from_dict` therefore names every unknown key and every bad value
at once, and the resolved config (`to_dict`) is saved with every checkpoint.

    from vlsm.config import TrainConfig
    cfg = TrainConfig.from_dict({"model": "clipseg", "prompt": "P3", "train_cache": "..."})
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlsm.axes import PROMPTS
from vlsm.model_registry import MODEL_REGISTRY, model_entry
from vlsm.typed_config import ConfigError, from_mapping, normalise_fields

__all__ = ["ATTENTIONS", "PRECISIONS", "PROMPT_SOURCES", "RENAMED_KEYS", "TrainConfig"]

PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
ATTENTIONS: tuple[str, ...] = ("sdpa", "eager")
PROMPT_SOURCES: tuple[str, ...] = ("template", "generator")  # Hugging Face attn_implementation values we allow

# Keys that were replaced: old key -> what to write instead (refused, never translated:
# the old and the new key do not mean the same thing).
RENAMED_KEYS: dict[str, str] = {
    "checkpoint_every": "checkpoint_interval_s (seconds between full checkpoints, always one at "
                        "the end; 0 = every epoch)",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one trial needs. Defaults are the paper's (docs/design.md, "Training").

    The annotations are the schema (`vlsm.typed_config`): a value of the wrong type
    is named, never guessed at.
    """

    # --- model -------------------------------------------------------------------------
    model: str = "clipseg"  # registry key ("clipseg" | "cris"; "CLIPSeg"/"CRIS" accepted)
    model_config: dict | None = None  # architecture overrides, e.g. tiny_config(model) for tests
    pretrained: str | None = None  # HF id / local folder (CLIPSeg) or CLIP RN50 file (CRIS)
    checkpoint: str | None = None  # official CRIS checkpoint file; None = not used
    tokenizer: str | None = None  # CLIP BPE tokenizer (hub id or folder); None = from pretrained, else the hub's
    freeze_encoder: bool = False  # grid axis "encoder": frozen trains only the decoder
    prompt: str = "P1"  # grid axis "prompt" (P0..P7); P1 = structure name only
    # "generator": synthetic images that carry their generator's text (DiffEcho, an
    # imagefolder's `text`) are prompted with it, "<structure> in <text>.", instead of P0-P7
    prompt_source: str = "template"
    # real+synthetic with provenance: {"real": phrase, "synthetic": phrase} worked into every
    # prompt (vlsm.data.prompts.with_provenance); None = prompts as they are
    provenance_phrases: dict | None = None
    # --- data (folders written by `vlsm prepare`; passed by path so Ray ships no arrays) --
    train_cache: str | None = None
    val_cache: str | None = None
    test_cache: str | None = None  # None: no test evaluation at the end
    init_from: str | None = None  # checkpoint folder: weights only (synth-PT:real-FT)
    # a train_cache holding real and synthetic pairs (real+synthetic): the share of synthetic
    # pairs in each epoch (all real pairs and as many synthetic ones as that share needs,
    # drawn per (seed, epoch)); None = every pair of the cache, each epoch
    synthetic_share: float | None = None
    # --- optimisation ------------------------------------------------------------------
    lr: float | None = None  # None -> paper value for the model (2e-3 CLIPSeg, 2e-5 CRIS)
    batch_size: int | None = None  # None -> paper value (128 CLIPSeg, 32 CRIS)
    eval_batch_size: int | None = None  # None -> batch_size; evaluation needs no gradients
    weight_decay: float = 1e-3  # AdamW, as in the paper
    grad_clip: float = 0.5  # max gradient norm (Lightning's gradient_clip_val in the paper)
    lr_factor: float = 0.1  # ReduceLROnPlateau on val loss: multiply lr by this ...
    lr_patience: int = 5  # ... after this many epochs without improvement
    # --- stopping ------------------------------------------------------------------------
    max_epochs: int = 1000  # paper: effectively "until early stopping"
    min_epochs: int = 10  # never stop early before this many epochs
    patience: int = 20  # early stopping on val Dice: epochs without improvement
    min_delta: float = 1e-4  # an improvement must exceed this
    # --- loss and evaluation -------------------------------------------------------------
    dice_weight: float = 1.0  # soft Dice term
    bce_weight: float = 0.2  # BCE term; 0 reproduces the authors' effective Dice-only loss
    dice_smooth: float = 1.0  # added to numerator and denominator of the soft Dice
    threshold: float = 0.5  # sigmoid threshold of a prediction (authors' CRIS config: 0.35)
    shared_image_eval: bool = True  # encode each image once for its 3 structures (same results); False: per pair
    # --- runtime -------------------------------------------------------------------------
    precision: str = "auto"  # auto: bf16 on GPUs that have it, else fp16 + grad scaler; fp32 on CPU
    seed: int = 42  # the paper's seed: random init of the model, data order, prompt phrasing, dropout
    num_workers: int = 0  # DataLoader workers (only when data_on_device is False)
    data_on_device: bool = True  # copy the uint8 cache to the device once when it fits the trial's GPU share
    # the frozen towers' outputs computed once per (frozen weights, cache split, size,
    # precision) into a folder beside the cache and read back (same results, no frozen
    # forward per step; vlsm.feature_store). None = on when the encoder is frozen
    feature_store: bool | None = None
    # the share of the trial's GPU memory one split's store may take on the device; a larger
    # store is gathered from its memory maps each batch (bench/gpu_suite.py measures both)
    store_device_fraction: float = 0.2
    deterministic: bool = False  # deterministic CUDA kernels (slower); CPU runs are exact anyway
    system_metrics_interval_s: float = 10.0  # CPU/memory/GPU sampling for MLflow under Ray; 0 = off
    # a full resumable checkpoint once this many seconds passed since the last one, and
    # always at the end; 0 = every epoch. 600 s: a full unfrozen checkpoint costs ~16 s
    checkpoint_interval_s: float = 600.0
    # --- speed switches (vlsm.speed; each gives the plain path's results, tests/test_speed.py) --
    vision_stop_early: bool = True  # CLIPSeg: stop the vision tower after its last tapped layer (10 of 12)
    attention: str = "sdpa"  # CLIPSeg's towers and decoder: PyTorch's fused kernels, or "eager" (HF's matmuls)
    fused_adamw: bool | None = None  # AdamW(fused=True); None = on CUDA only
    channels_last: bool = False  # CRIS: convolutions in channels_last (GPU tensor cores); off until measured
    compile: bool = False  # torch.compile the model's forward; off until measured on a GPU
    cell_id: str = ""  # the sweep's name of the trial (its grid cell's id); the loop does not read it

    def __post_init__(self) -> None:
        errors = normalise_fields(self) or _validate(self)
        if errors:
            raise ValueError("TrainConfig: " + "; ".join(errors))
        entry = model_entry(self.model)
        object.__setattr__(self, "model", entry.key)
        if self.lr is None:
            object.__setattr__(self, "lr", float(entry.paper.lr))
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", int(entry.paper.batch_size))
        if self.eval_batch_size is None:
            object.__setattr__(self, "eval_batch_size", self.batch_size)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a (Ray Tune) dict; ValueError naming every unknown key and bad value."""
        if not isinstance(d, Mapping):
            raise ValueError(f"TrainConfig.from_dict: expected a mapping, got {type(d).__name__}")
        renamed = [f"{old} is now {new}" for old, new in RENAMED_KEYS.items() if old in d]
        if renamed:
            raise ValueError("TrainConfig: " + "; ".join(renamed))
        try:
            return from_mapping(cls, d)
        except ConfigError as err:
            raise ValueError(f"TrainConfig: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; `from_dict(to_dict())` gives an equal config."""
        return dataclasses.asdict(self)


def _validate(cfg: TrainConfig) -> list[str]:
    """Every problem of a config, each naming the field, its value and what was expected."""
    errors = []  # the types are right already (normalise_fields ran first)
    try:
        model_entry(cfg.model)
    except ValueError:
        allowed = sorted({*MODEL_REGISTRY, *(e.name for e in MODEL_REGISTRY.values())})
        errors.append(f"model: unknown value {cfg.model!r}; expected one of {allowed}")
    if cfg.prompt not in PROMPTS:
        errors.append(f"prompt: got {cfg.prompt!r}, expected one of {list(PROMPTS)}")
    if cfg.prompt_source not in PROMPT_SOURCES:
        errors.append(f"prompt_source: got {cfg.prompt_source!r}, expected one of {list(PROMPT_SOURCES)}")
    if cfg.provenance_phrases is not None:
        phrases = cfg.provenance_phrases
        if set(phrases) != {"real", "synthetic"} or not all(isinstance(v, str) and v for v in phrases.values()):
            errors.append(f"provenance_phrases: got {phrases!r}, expected {{real: <phrase>, synthetic: <phrase>}} "
                          f"with two non-empty phrases")
    if cfg.synthetic_share is not None and not 0 < cfg.synthetic_share < 1:
        errors.append(f"synthetic_share: got {cfg.synthetic_share!r}, expected 0 < share < 1 (or null: every pair)")
    if cfg.precision not in PRECISIONS:
        errors.append(f"precision: got {cfg.precision!r}, expected one of {list(PRECISIONS)}")
    if cfg.attention not in ATTENTIONS:
        errors.append(f"attention: got {cfg.attention!r}, expected one of {list(ATTENTIONS)}")
    positive = {
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "eval_batch_size": cfg.eval_batch_size,
        "max_epochs": cfg.max_epochs,
        "patience": cfg.patience,
        "lr_factor": cfg.lr_factor,
        "grad_clip": cfg.grad_clip,
    }
    for name, value in positive.items():
        if value is not None and not 0 < value < math.inf:
            errors.append(f"{name}: got {value!r}, expected a finite value > 0")
    non_negative = {
        "weight_decay": cfg.weight_decay,
        "lr_patience": cfg.lr_patience,
        "min_epochs": cfg.min_epochs,
        "min_delta": cfg.min_delta,
        "dice_weight": cfg.dice_weight,
        "bce_weight": cfg.bce_weight,
        "dice_smooth": cfg.dice_smooth,
        "num_workers": cfg.num_workers,
        "system_metrics_interval_s": cfg.system_metrics_interval_s,
        "checkpoint_interval_s": cfg.checkpoint_interval_s,
    }
    for name, value in non_negative.items():
        if not 0 <= value < math.inf:
            errors.append(f"{name}: got {value!r}, expected a finite value >= 0")
    if cfg.dice_weight == 0 and cfg.bce_weight == 0:
        errors.append("dice_weight and bce_weight: both 0, expected at least one > 0")
    if not 0 < cfg.threshold < 1:
        errors.append(f"threshold: got {cfg.threshold!r}, expected 0 < threshold < 1")
    if not cfg.lr_factor < 1:
        errors.append(f"lr_factor: got {cfg.lr_factor!r}, expected < 1")
    if not 0 <= cfg.store_device_fraction <= 1:
        errors.append(f"store_device_fraction: got {cfg.store_device_fraction!r}, expected 0 <= value <= 1")
    if cfg.feature_store and not cfg.freeze_encoder:
        errors.append("feature_store: True needs freeze_encoder True (trained towers change their "
                      "features every step); leave it None (auto) or set it False")
    if cfg.min_epochs > cfg.max_epochs:
        errors.append(
            f"min_epochs: got {cfg.min_epochs}, expected <= max_epochs ({cfg.max_epochs})"
        )
    return errors
