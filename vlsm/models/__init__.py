"""Models: build one by name, with its tokenizer, following one contract.

    import torch
    from vlsm.models import build_model, build_tokenizer, tiny_config
    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True)
    tok = build_tokenizer("clipseg", config=tiny_config("clipseg"))
    batch = tok(["Left atrium cavity of the heart.", ""])       # (B, L) ids and mask
    s = model.input_size
    pixel_values = torch.zeros(2, 3, s, s)                      # normalised by image_mean/std
    logits = model(pixel_values, batch["input_ids"], batch["attention_mask"])  # (B, 1, S, S)

The contract every model follows (the loop, the feature store and the tests rely on it;
docs/design.md, "Models"):

    encode_image(pixel_values (B, 3, S, S)) -> image features (tuple, B rows each)
        the prompt-independent part, exactly what freeze_encoder freezes (the store caches it)
    encode_text(input_ids (B, L), attention_mask (B, L)) -> text features (tuple, B rows each)
        the frozen text tower's part (the store's per-trial text table)
    decode(image_features, text_features, attention_mask, size (S, S)) -> logits (B, 1, S, S)
    forward(pixel_values, input_ids, attention_mask) == decode(encode_image(..), encode_text(..), ..)

and the attributes `input_size`, `image_mean`, `image_std` (the pixel normalisation),
`spec` (JSON; `build_model(**model.spec)` rebuilds it), `encoder_prefixes` (state-dict
prefixes of the towers) and `freeze_encoder`. Which models exist is `vlsm.model_registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsm.model_registry import INIT_SEED, MODELS, model_entry, model_key

if TYPE_CHECKING:
    from torch import nn

    from vlsm.models.tokenizer import PromptTokenizer

__all__ = [
    "INIT_SEED",
    "build_model",
    "build_tokenizer",
    "input_size",
    "model_key",
    "save_pretrained_folder",
    "tiny_config",
]

def build_model(
    name: str,
    *,
    pretrained: str | Path | None = None,
    checkpoint: str | Path | None = None,
    config: dict[str, Any] | None = None,
    freeze_encoder: bool = False,
    init_seed: int = INIT_SEED,
) -> nn.Module:
    """Build model `name` (a key or display name of `MODELS`) following this module's contract.

    pretrained: CLIPSeg: a hub id or a local save_pretrained folder; CRIS: an OpenAI CLIP
    RN50 state-dict file. checkpoint: a full state-dict file loaded strictly on top (an
    official CRIS checkpoint). config: architecture overrides (`tiny_config(name)` for a
    tiny model). init_seed seeds every random initialisation (the decoder of a pretrained
    model, everything of a random one) without touching the caller's RNG; it is kept in
    `model.spec`, so `build_model(**model.spec)` rebuilds identical weights. Training
    passes its `seed`, so runs with different seeds start from different random inits.
    """
    from vlsm.models.common import seeded_init

    entry = model_entry(name)
    with seeded_init(init_seed):
        model = entry.build(
            pretrained=pretrained, checkpoint=checkpoint, config=config, freeze_encoder=freeze_encoder
        )
    model.spec["init_seed"] = int(init_seed)
    return model


def input_size(
    name: str, config: dict[str, Any] | None = None, *, pretrained: str | Path | None = None
) -> int:
    """The square input side `build_model(name, config=config, pretrained=pretrained)` will have.

    Cheap: reads configs only (for CLIPSeg, a local folder's config.json), builds nothing,
    downloads nothing; for cache preparation before any model exists.
    """
    return int(model_entry(name).input_size(config, pretrained))


def tiny_config(name: str) -> dict[str, Any]:
    """The tiny config of model `name` used by tests and the demo (CPU-fast, offline tokenizer)."""
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


def build_tokenizer(
    name: str,
    *,
    pretrained: str | Path | None = None,
    config: dict[str, Any] | None = None,
    tokenizer: str | Path | None = None,
) -> PromptTokenizer:
    """The CLIP BPE tokenizer model `name` was built with, as a callable.

    `tok(list_of_str)` -> {"input_ids", "attention_mask"}: (B, L) int64, padded to the
    model's context length and truncated with end-of-text kept. Source, first match wins:
    `tokenizer` (a hub id or folder, to override); a `pretrained` folder holding tokenizer
    files, or CLIPSeg's hub id; for real-vocabulary configs (49408) the CLIP BPE from
    `vlsm.models.tokenizer.CLIP_TOKENIZER_HUB_ID`; for tiny configs the offline tiny
    tokenizer (`vlsm.models.tokenizer.tiny_tokenizer`).
    """
    from vlsm.models.tokenizer import (
        CLIP_CONTEXT_LENGTH,
        CLIP_TOKENIZER_HUB_ID,
        CLIP_VOCAB_SIZE,
        load_clip_tokenizer,
        tiny_tokenizer,
    )

    entry = model_entry(name)
    key = entry.key
    # None: the config leaves the text tower to pretrained weights, whose tokenizer knows
    # its own length (CLIPSeg without text_config); CRIS configs always define it.
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
    """Write a CLIPSeg model and its tokenizer as a local `pretrained` folder (atomic).

    `build_model("clipseg", pretrained=path)` and `build_tokenizer("clipseg",
    pretrained=path)` load it back through the same `from_pretrained` path as a hub id.
    """
    name = getattr(model, "spec", {}).get("name")
    entry = model_entry(name) if name in MODELS else None
    if entry is None or entry.save_folder is None:
        with_folders = " and ".join(e.name for e in MODELS if e.save_folder)
        raise ValueError(
            f"save_pretrained_folder: only {with_folders} models have a pretrained-folder layout, "
            f"got model {name!r} (CRIS weights load from checkpoint files)"
        )
    return entry.save_folder(model, tokenizer, path)
