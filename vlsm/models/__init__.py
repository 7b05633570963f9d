"""Models: build one by name (`vlsm.model_registry`), with its tokenizer, following one
contract: `encode_image`, `encode_text`, `decode`, and forward as their composition
(docs/design.md, "Models").

    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True)
    tok = build_tokenizer("clipseg", config=tiny_config("clipseg"))
    batch = tok(["Left atrium cavity of the heart.", ""])    # (B, L) ids and mask
    logits = model(pixel_values, batch["input_ids"], batch["attention_mask"])  # (B, 1, S, S)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsm.model_registry import INIT_SEED, MODELS, model_entry

if TYPE_CHECKING:
    from torch import nn

    from vlsm.models.tokenizer import PromptTokenizer

__all__ = ["INIT_SEED", "build_model", "build_tokenizer", "input_size", "save_pretrained_folder", "tiny_config"]


def build_model(name: str, *, pretrained: str | Path | None = None, checkpoint: str | Path | None = None,
                config: dict[str, Any] | None = None, freeze_encoder: bool = False,
                init_seed: int = INIT_SEED) -> nn.Module:
    """Model `name` (a key or display name of `MODELS`). pretrained: CLIPSeg's hub id or
    folder, CRIS's CLIP RN50 file; checkpoint: a full state dict loaded strictly on top;
    config: architecture overrides (`tiny_config(name)`). init_seed seeds every random init
    without touching the caller's RNG and is kept in `model.spec`, so
    `build_model(**model.spec)` rebuilds identical weights."""
    from vlsm.models.common import seeded_init

    entry = model_entry(name)
    with seeded_init(init_seed):
        model = entry.build(
            pretrained=pretrained, checkpoint=checkpoint, config=config, freeze_encoder=freeze_encoder
        )
    model.spec["init_seed"] = int(init_seed)
    return model


def input_size(name: str, config: dict[str, Any] | None = None, *, pretrained: str | Path | None = None) -> int:
    """The square input side `build_model(name, config=config, pretrained=pretrained)` will
    have; reads configs only (builds and downloads nothing)."""
    return int(model_entry(name).input_size(config, pretrained))


def tiny_config(name: str) -> dict[str, Any]:
    """The CPU-fast config of model `name` (tests, the demo), with an offline tokenizer."""
    return model_entry(name).tiny_config()


def _tokenizer_folder(name: str, pretrained: str | Path | None) -> str | None:
    """Where `pretrained` holds tokenizer files: a local folder, or a hub id (CLIPSeg's)."""
    from vlsm.models.common import is_hub_id

    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            raise ValueError(
                f"pretrained={str(pretrained)!r}: no tokenizer.json or vocab.json in the folder "
                f"(save it with vlsm.models.save_pretrained_folder)"
            )
        return str(path.resolve())
    if model_entry(name).hub_id_has_tokenizer and not path.exists() and is_hub_id(str(pretrained)):
        return str(pretrained)
    return None  # a CRIS weights file: the tokenizer comes from elsewhere


def build_tokenizer(name: str, *, pretrained: str | Path | None = None, config: dict[str, Any] | None = None,
                    tokenizer: str | Path | None = None) -> PromptTokenizer:
    """The CLIP BPE tokenizer model `name` was built with, as a callable. Source, first match
    wins: `tokenizer` (hub id or folder); a `pretrained` folder with tokenizer files, or
    CLIPSeg's hub id; CLIP's BPE (`CLIP_TOKENIZER_HUB_ID`) for a 49408 vocabulary; else the
    offline tiny tokenizer."""
    from vlsm.models.tokenizer import (
        CLIP_CONTEXT_LENGTH,
        CLIP_TOKENIZER_HUB_ID,
        CLIP_VOCAB_SIZE,
        load_clip_tokenizer,
        tiny_tokenizer,
    )

    entry = model_entry(name)
    key = entry.key
    # None: the text tower is the pretrained weights', whose tokenizer knows its own length
    shape = entry.text_shape(config or {})
    configured = shape is not None
    vocab_size, max_length = shape or (CLIP_VOCAB_SIZE, CLIP_CONTEXT_LENGTH)
    source = tokenizer or _tokenizer_folder(key, pretrained)
    if source is not None:
        tok = load_clip_tokenizer(source, max_length=max_length if configured else None)
    elif vocab_size == CLIP_VOCAB_SIZE:
        tok = load_clip_tokenizer(CLIP_TOKENIZER_HUB_ID, max_length=max_length)
    else:
        tok = tiny_tokenizer(max_length)
    if configured and tok.vocab_size > vocab_size:
        raise ValueError(
            f"{key} tokenizer: {tok.vocab_size} token ids do not fit the model's vocab_size "
            f"{vocab_size}; use tiny_config({key!r}) or a matching pretrained folder"
        )
    return tok


def save_pretrained_folder(model: nn.Module, tokenizer: PromptTokenizer, path: str | Path) -> Path:
    """Write a model and its tokenizer as a local `pretrained` folder (CLIPSeg), atomically."""
    name = getattr(model, "spec", {}).get("name")
    entry = model_entry(name) if name in MODELS else None
    if entry is None or entry.save_folder is None:
        with_folders = " and ".join(e.name for e in MODELS if e.save_folder)
        raise ValueError(
            f"save_pretrained_folder: only {with_folders} models have a pretrained-folder layout, "
            f"got model {name!r} (CRIS weights load from checkpoint files)"
        )
    return entry.save_folder(model, tokenizer, path)
