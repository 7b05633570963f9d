"""The models as registry entries: one `ModelEntry` per model holds all the project knows of
it (docs/design.md, "Models"); its functions are imported on first call (no torch import here).

    entry = model_entry("CRIS")             # display names and registry keys both work
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlsm.registry import LazyFunction, Registry

__all__ = ["INIT_SEED", "MODELS", "ModelEntry", "PaperDefaults", "model_entry", "model_key", "model_names"]

# Default seed of every random initialisation done by `build_model` (tests, tiny models).
INIT_SEED = 0


@dataclass(frozen=True)
class PaperDefaults:
    """The Synthetic Boost paper's optimisation settings for a model (docs/design.md)."""

    lr: float
    batch_size: int


@dataclass(frozen=True)
class ModelEntry:
    """One model: how to build it and everything the code decides by its name."""

    key: str  # registry key in configs and checkpoint specs: "clipseg"
    name: str  # display name, the grid axis value: "CLIPSeg"
    build: LazyFunction  # (*, pretrained, checkpoint, config, freeze_encoder) -> nn.Module
    input_size: LazyFunction  # (config, pretrained) -> square input side, building nothing
    tiny_config: LazyFunction  # () -> config of the CPU-fast model of tests and the demo
    # (config) -> (vocabulary size, tokens per prompt) the config gives the text tower, or
    # None when it leaves them to the pretrained folder's tokenizer
    text_shape: LazyFunction
    paper: PaperDefaults
    code_modules: tuple[str, ...]  # their source decides `encode_image`'s values (the store's key)
    schedule_rank: int = 0  # a sweep starts a lower rank first (the slower model)
    hub_id_has_tokenizer: bool = False  # a hub id given as `pretrained` also holds its tokenizer
    save_folder: LazyFunction | None = None  # (model, tokenizer, path) -> a local `pretrained` folder
    # bench/: the paper's architecture with random weights (None: the builder's defaults)
    full_size_config: Mapping[str, Any] | None = None
    speed_switches: tuple[str, ...] = ()  # TrainConfig switches only this model reads


MODELS: Registry[ModelEntry] = Registry("model", names_of=lambda e: (e.key, e.name))
MODELS.register(ModelEntry(
    key="clipseg",
    name="CLIPSeg",
    build=LazyFunction("vlsm.models.clipseg", "build_clipseg"),
    input_size=LazyFunction("vlsm.models.clipseg", "expected_input_size"),
    tiny_config=LazyFunction("vlsm.models.clipseg", "tiny_clipseg_config"),
    text_shape=LazyFunction("vlsm.models.clipseg", "text_shape"),
    paper=PaperDefaults(lr=2e-3, batch_size=128),
    code_modules=("vlsm.models.clipseg",),
    schedule_rank=1,
    hub_id_has_tokenizer=True,
    save_folder=LazyFunction("vlsm.models.clipseg", "save_clipseg_folder"),
    # CIDAS/clipseg-rd64-refined: ViT-B/16 towers (CLIPSegVisionConfig's default is
    # ViT-B/32), the refined transposed convolution, at 352 px
    full_size_config={"input_size": 352, "vision_config": {"patch_size": 16},
                      "use_complex_transposed_convolution": True},
    speed_switches=("vision_stop_early", "attention"),
))
MODELS.register(ModelEntry(
    key="cris",
    name="CRIS",
    build=LazyFunction("vlsm.models.cris", "build_cris"),
    input_size=LazyFunction("vlsm.models.cris", "expected_input_size"),
    tiny_config=LazyFunction("vlsm.models.cris", "tiny_prompt_cris_config"),
    text_shape=LazyFunction("vlsm.models.cris", "text_shape"),
    paper=PaperDefaults(lr=2e-5, batch_size=32),
    code_modules=("vlsm.models.cris", "vlsm.models.cris_clip"),
    schedule_rank=0,
    speed_switches=("channels_last",),
))


def model_entry(name: str) -> ModelEntry:
    """The entry of a registry key ("cris") or display name ("CRIS"); ValueError otherwise."""
    return MODELS[name]


def model_key(name: str) -> str:
    """Registry key of a key or display name: "CLIPSeg" -> "clipseg"."""
    return MODELS[name].key


def model_names() -> tuple[str, ...]:
    """The model axis: the entries' display names ("CLIPSeg", "CRIS"), in registry order."""
    return tuple(entry.name for entry in MODELS)
