"""The model registry as data: one entry per model, holding all the project knows of it.

    from vlsm.model_registry import model_entry
    entry = model_entry("CRIS")             # display names and registry keys both work
    entry.key, entry.paper.lr, entry.input_size(None, None)   # "cris", 2e-05, 416

Adding a model is one entry in `MODEL_REGISTRY`: its display name (the grid axis value in
YAML, exports and MLflow), its builder, how to read its input size and text shape from a
config without building it, its tiny config for tests and the demo, and the paper's
learning rate and batch size. The grid axis `vlsm.axes.MODELS` is read from here.

The functions are named by module and attribute and imported on first call
(`LazyFunction`), so importing the registry costs no torch import: the sweep loads and
checks its YAML before any heavy library is touched.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INIT_SEED",
    "MODEL_REGISTRY",
    "LazyFunction",
    "ModelEntry",
    "PaperDefaults",
    "model_entry",
    "model_key",
]

# Default seed of every random initialisation done by `build_model` (tests, tiny models).
INIT_SEED = 0


@dataclass(frozen=True)
class LazyFunction:
    """`module.name`, imported when first called."""

    module: str
    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)


@dataclass(frozen=True)
class PaperDefaults:
    """The Synthetic Boost paper's optimisation settings for a model (docs/design.md)."""

    lr: float
    batch_size: int


@dataclass(frozen=True)
class ModelEntry:
    """One model: the model contract is in `vlsm.models`' docstring."""

    key: str  # registry key in configs and checkpoint specs: "clipseg"
    name: str  # display name, the grid axis value: "CLIPSeg"
    build: LazyFunction  # (*, pretrained, checkpoint, config, freeze_encoder) -> nn.Module
    input_size: LazyFunction  # (config, pretrained) -> square input side, building nothing
    tiny_config: LazyFunction  # () -> config of the CPU-fast model of tests and the demo
    # (config) -> (vocabulary size, tokens per prompt) the config gives the text tower, or
    # None when it leaves them to the pretrained folder's tokenizer
    text_shape: LazyFunction
    paper: PaperDefaults
    hub_id_has_tokenizer: bool = False  # a hub id given as `pretrained` also holds its tokenizer
    save_folder: LazyFunction | None = None  # (model, tokenizer, path) -> a local `pretrained` folder


MODEL_REGISTRY: dict[str, ModelEntry] = {
    "clipseg": ModelEntry(
        key="clipseg",
        name="CLIPSeg",
        build=LazyFunction("vlsm.models.clipseg", "build_clipseg"),
        input_size=LazyFunction("vlsm.models.clipseg", "expected_input_size"),
        tiny_config=LazyFunction("vlsm.models.clipseg", "tiny_clipseg_config"),
        text_shape=LazyFunction("vlsm.models.clipseg", "text_shape"),
        paper=PaperDefaults(lr=2e-3, batch_size=128),
        hub_id_has_tokenizer=True,
        save_folder=LazyFunction("vlsm.models.clipseg", "save_clipseg_folder"),
    ),
    "cris": ModelEntry(
        key="cris",
        name="CRIS",
        build=LazyFunction("vlsm.models.cris", "build_cris"),
        input_size=LazyFunction("vlsm.models.cris", "expected_input_size"),
        tiny_config=LazyFunction("vlsm.models.cris", "tiny_prompt_cris_config"),
        text_shape=LazyFunction("vlsm.models.cris", "text_shape"),
        paper=PaperDefaults(lr=2e-5, batch_size=32),
    ),
}


def model_entry(name: str) -> ModelEntry:
    """The entry of a registry key ("cris") or display name ("CRIS"); ValueError naming
    the known ones otherwise."""
    for entry in MODEL_REGISTRY.values():
        if name in (entry.key, entry.name):
            return entry
    known = sorted({*MODEL_REGISTRY, *(e.name for e in MODEL_REGISTRY.values())})
    raise ValueError(f"model {name!r} not found; available models = {known}")


def model_key(name: str) -> str:
    """Registry key of a key or display name: "CLIPSeg" -> "clipseg"."""
    return model_entry(name).key


def model_names() -> tuple[str, ...]:
    """The model axis: the entries' display names ("CLIPSeg", "CRIS"), in registry order."""
    return tuple(entry.name for entry in MODEL_REGISTRY.values())
