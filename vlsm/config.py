"""The typed configuration of one training trial, built from a Ray Tune config dict; its
annotations say what each value may be (docs/design.md, "Settings").

    cfg = TrainConfig.from_dict({"model": "clipseg", "prompt": "P3", "train_cache": "..."})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from vlsm.data.prompts import prompt_names
from vlsm.model_registry import MODELS, model_entry
from vlsm.typed_config import Check, Choice, ConfigError, Range, from_mapping, normalise_fields

__all__ = ["TrainConfig"]

Positive = Range(gt=0)
NonNegative = Range(ge=0)
Share = Range(gt=0, lt=1)
Fraction = Range(ge=0, le=1)


def _model_names() -> list[str]:
    """Registry keys and display names ("clipseg", "CLIPSeg", ...)."""
    return sorted(name for entry in MODELS for name in (entry.key, entry.name))


def _two_phrases(phrases: dict) -> bool:
    return set(phrases) == {"real", "synthetic"} and all(isinstance(v, str) and v for v in phrases.values())


@dataclass(frozen=True)
class TrainConfig:
    """Everything one trial needs; defaults are the paper's (docs/design.md, "Training"), the
    annotations the schema (`vlsm.typed_config`)."""

    # --- model -------------------------------------------------------------------------
    model: Annotated[str, Choice(_model_names)] = "clipseg"  # registry key ("clipseg" | "cris"; "CLIPSeg"/"CRIS" accepted)
    model_config: dict | None = None  # architecture overrides, e.g. tiny_config(model) for tests
    pretrained: str | None = None  # HF id / local folder (CLIPSeg) or CLIP RN50 file (CRIS)
    checkpoint: str | None = None  # official CRIS checkpoint file; None = not used
    tokenizer: str | None = None  # CLIP BPE tokenizer (hub id or folder); None = from pretrained, else the hub's
    freeze_encoder: bool = False  # grid axis "encoder": frozen trains only the decoder
    prompt: Annotated[str, Choice(prompt_names)] = "P1"  # grid axis "prompt" (P0..P7); P1 = structure name only
    # "generator": synthetic images with their generator's text are prompted "<structure> in <text>."
    prompt_source: Literal["template", "generator"] = "template"
    # real+synthetic with provenance: the phrases worked into every prompt (prompts.with_provenance)
    provenance_phrases: Annotated[dict, Check(_two_phrases, "{real: <phrase>, synthetic: <phrase>}, both non-empty")] | None = None
    # --- data (folders written by `vlsm prepare`; passed by path so Ray ships no arrays) --
    train_cache: str | None = None
    val_cache: str | None = None
    test_cache: str | None = None  # None: no test evaluation at the end
    init_from: str | None = None  # checkpoint folder: weights only (synth-PT:real-FT)
    # real+synthetic: the share of synthetic pairs in each epoch (trial_data.mixed_epoch_order); None = all pairs
    synthetic_share: Annotated[float, Share] | None = None
    # --- optimisation ------------------------------------------------------------------
    lr: Annotated[float, Positive] | None = None  # None -> paper value for the model (2e-3 CLIPSeg, 2e-5 CRIS)
    batch_size: Annotated[int, Positive] | None = None  # None -> paper value (128 CLIPSeg, 32 CRIS)
    eval_batch_size: Annotated[int, Positive] | None = None  # None -> batch_size; evaluation needs no gradients
    weight_decay: Annotated[float, NonNegative] = 1e-3  # AdamW, as in the paper
    grad_clip: Annotated[float, Positive] = 0.5  # max gradient norm (Lightning's gradient_clip_val in the paper)
    lr_factor: Annotated[float, Share] = 0.1  # ReduceLROnPlateau on val loss: multiply lr by this ...
    lr_patience: Annotated[int, NonNegative] = 5  # ... after this many epochs without improvement
    # --- stopping ------------------------------------------------------------------------
    max_epochs: Annotated[int, Positive] = 1000  # paper: effectively "until early stopping"
    min_epochs: Annotated[int, NonNegative] = 10  # never stop early before this many epochs
    patience: Annotated[int, Positive] = 20  # early stopping on val Dice: epochs without improvement
    min_delta: Annotated[float, NonNegative] = 1e-4  # an improvement must exceed this
    # --- loss and evaluation -------------------------------------------------------------
    dice_weight: Annotated[float, NonNegative] = 1.0  # soft Dice term
    bce_weight: Annotated[float, NonNegative] = 0.2  # BCE term; 0 reproduces the authors' effective Dice-only loss
    dice_smooth: Annotated[float, NonNegative] = 1.0  # added to numerator and denominator of the soft Dice
    threshold: Annotated[float, Share] = 0.5  # sigmoid threshold of a prediction (authors' CRIS config: 0.35)
    shared_image_eval: bool = True  # encode each image once for its 3 structures (same results); False: per pair
    # --- runtime -------------------------------------------------------------------------
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPUs that have it, else fp16 + grad scaler; fp32 on CPU
    seed: int = 42  # the paper's seed: random init of the model, data order, prompt phrasing, dropout
    num_workers: Annotated[int, NonNegative] = 0  # DataLoader workers (only when data_on_device is False)
    data_on_device: bool = True  # copy the uint8 cache to the device once when it fits the trial's GPU share
    # the frozen towers' outputs computed once beside the cache and read back (vlsm.feature_store);
    # None = on when the encoder is frozen
    feature_store: bool | None = None
    # the most of the trial's GPU memory one split's store takes on the device (else memory-mapped)
    store_device_fraction: Annotated[float, Fraction] = 0.2
    deterministic: bool = False  # deterministic CUDA kernels (slower); CPU runs are exact anyway
    system_metrics_interval_s: Annotated[float, NonNegative] = 10.0  # CPU/memory/GPU sampling for MLflow under Ray; 0 = off
    # a full checkpoint once this many seconds passed since the last, and at the end; 0 = every epoch
    checkpoint_interval_s: Annotated[float, NonNegative] = 600.0
    # --- speed switches (vlsm.speed; each gives the plain path's results, tests/test_speed.py) --
    vision_stop_early: bool = True  # CLIPSeg: stop the vision tower after its last tapped layer (10 of 12)
    attention: Literal["sdpa", "eager"] = "sdpa"  # CLIPSeg's towers and decoder: PyTorch's fused kernels, or "eager" (HF's matmuls)
    fused_adamw: bool | None = None  # AdamW(fused=True); None = on CUDA only
    channels_last: bool = False  # CRIS: convolutions in channels_last (GPU tensor cores); off until measured
    compile: bool = False  # torch.compile the model's forward; off until measured on a GPU
    cell_id: str = ""  # the sweep's name of the trial (its grid cell's id); the loop does not read it

    def __post_init__(self) -> None:
        errors = normalise_fields(self) or _check_together(self)
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
        try:
            return from_mapping(cls, d)
        except ConfigError as err:
            raise ValueError(f"TrainConfig: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; `from_dict(to_dict())` gives an equal config."""
        return dataclasses.asdict(self)


def _check_together(cfg: TrainConfig) -> list[str]:
    """What the fields' annotations cannot say: values that only fit together."""
    errors = []
    if cfg.dice_weight == 0 and cfg.bce_weight == 0:
        errors.append("dice_weight and bce_weight: both 0, expected at least one > 0")
    if cfg.feature_store and not cfg.freeze_encoder:
        errors.append("feature_store: True needs freeze_encoder True (trained towers change their "
                      "features every step); leave it None (auto) or set it False")
    if cfg.min_epochs > cfg.max_epochs:
        errors.append(f"min_epochs: expected <= max_epochs ({cfg.max_epochs}), got {cfg.min_epochs}")
    return errors
