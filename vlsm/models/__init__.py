"""The model registry: one name -> one builder, one tokenizer, one tiny config.

    from vlsm.models import build_model, build_tokenizer, tiny_config
    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True)
    tok = build_tokenizer("clipseg", config=tiny_config("clipseg"))
    batch = tok(["Left atrium cavity of the heart.", ""])       # (B, L) ids and mask
    logits = model(pixel_values, batch["input_ids"], batch["attention_mask"])  # (B, 1, H, W)

Every model follows one contract (the training loop, the sweep and the tests rely on it):
`forward(pixel_values (B, 3, H, W), input_ids (B, L), attention_mask (B, L)) -> logits
(B, 1, H, W)` at input resolution, with pixel values normalised by `model.image_mean` /
`model.image_std`, and the attributes `input_size`, `image_mean`, `image_std`, `spec`
(JSON-serialisable; `build_model(**model.spec)` rebuilds the same model), `encoder_prefixes`
(state-dict prefixes of the CLIP towers) and `freeze_encoder`.

Adding a model is one entry here: a builder with the `build_model` keyword arguments, a
tiny config, and where its tokenizer's vocabulary size and context length live.
Builders are imported lazily: importing `vlsm.models` stays cheap (no torch import).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlsm.axes import MODEL_KEYS

if TYPE_CHECKING:
    from torch import nn

    from vlsm.models.tokenizer import PromptTokenizer

# Default seed of every random initialisation done by `build_model` (tests, tiny models).
INIT_SEED = 0

__all__ = [
    "INIT_SEED",
    "MODEL_NAMES",
    "build_model",
    "build_tokenizer",
    "input_size",
    "save_pretrained_folder",
    "tiny_config",
]

MODEL_NAMES: tuple[str, ...] = tuple(MODEL_KEYS.values())  # ("clipseg", "cris")


def _model_key(name: str) -> str:
    """Registry key of a model name; the display names of `vlsm.axes.MODELS` work too."""
    key = MODEL_KEYS.get(name, name)
    if key not in MODEL_NAMES:
        raise ValueError(f"model {name!r} not found; available models = {list(MODEL_NAMES)}")
    return key


def build_model(
    name: str,
    *,
    pretrained: str | Path | None = None,
    checkpoint: str | Path | None = None,
    config: dict[str, Any] | None = None,
    freeze_encoder: bool = False,
    init_seed: int = INIT_SEED,
) -> nn.Module:
    """Build model `name` ("clipseg" | "cris") following the contract in this module's docstring.

    pretrained: CLIPSeg: a hub id or a local save_pretrained folder; CRIS: an OpenAI CLIP
    RN50 state-dict file. checkpoint: a full state-dict file loaded strictly on top (an
    official CRIS checkpoint). config: architecture overrides (`tiny_config(name)` for a
    tiny model). init_seed seeds every random initialisation (the decoder of a pretrained
    model, everything of a random one) without touching the caller's RNG; it is kept in
    `model.spec`, so `build_model(**model.spec)` rebuilds identical weights. Training
    passes its `seed`, so runs with different seeds start from different random inits.
    """
    from vlsm.models.common import seeded_init

    key = _model_key(name)
    kwargs = dict(
        pretrained=pretrained, checkpoint=checkpoint, config=config, freeze_encoder=freeze_encoder
    )
    with seeded_init(init_seed):
        if key == "clipseg":
            from vlsm.models.clipseg import build_clipseg

            model = build_clipseg(**kwargs)
        else:
            from vlsm.models.cris import build_cris

            model = build_cris(**kwargs)
    model.spec["init_seed"] = int(init_seed)
    return model


def input_size(
    name: str, config: dict[str, Any] | None = None, *, pretrained: str | Path | None = None
) -> int:
    """The square input side `build_model(name, config=config, pretrained=pretrained)` will have.

    Cheap: reads configs only (for CLIPSeg, a local folder's config.json), builds nothing,
    downloads nothing; for cache preparation before any model exists.
    """
    key = _model_key(name)
    if key == "clipseg":
        from vlsm.models.clipseg import expected_input_size

        return expected_input_size(config, pretrained)
    from vlsm.models.cris import CRISConfig

    return int(CRISConfig.from_dict(config).input_size)


def tiny_config(name: str) -> dict[str, Any]:
    """The tiny config of model `name` used by tests and the demo (CPU-fast, offline tokenizer)."""
    from vlsm.models.tokenizer import TINY_CONTEXT_LENGTH, tiny_vocab_size

    key = _model_key(name)
    if key == "clipseg":
        from vlsm.models.clipseg import tiny_clipseg_config

        return tiny_clipseg_config()
    from vlsm.models.cris import tiny_cris_config

    # The tiny prompt vocabulary: its tokenizer is built offline (CLIP's BPE would need a
    # download), and a 678-row embedding instead of 49408 keeps the tiny model tiny.
    return {
        **tiny_cris_config(),
        "vocab_size": tiny_vocab_size(),
        "context_length": TINY_CONTEXT_LENGTH,
        "word_len": TINY_CONTEXT_LENGTH,
    }


def _text_shape(key: str, config: dict[str, Any] | None) -> tuple[int, int]:
    """(vocabulary size, tokens per prompt) that a config gives the text tower."""
    from vlsm.models.tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE

    config = config or {}
    if key == "clipseg":
        text = config.get("text_config") or {}
        return (
            text.get("vocab_size", CLIP_VOCAB_SIZE),
            text.get("max_position_embeddings", CLIP_CONTEXT_LENGTH),
        )
    return config.get("vocab_size", CLIP_VOCAB_SIZE), config.get("word_len", CLIP_CONTEXT_LENGTH)


def _tokenizer_folder(key: str, pretrained: str | Path | None) -> str | None:
    """Where `pretrained` holds tokenizer files: a local folder, or (CLIPSeg) a hub id."""
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
    if key == "clipseg" and not path.exists() and is_hub_id(str(pretrained)):
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
        CLIP_TOKENIZER_HUB_ID,
        CLIP_VOCAB_SIZE,
        load_clip_tokenizer,
        tiny_tokenizer,
    )

    key = _model_key(name)
    vocab_size, max_length = _text_shape(key, config)
    # CRIS configs always define the text tower (CLIP's defaults); CLIPSeg ones only with
    # text_config (with pretrained weights the folder's tokenizer knows its length).
    configured = key == "cris" or "text_config" in (config or {})
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
    if name != "clipseg":
        raise ValueError(
            f"save_pretrained_folder: only CLIPSeg models are supported, got model {name!r} "
            f"(CRIS weights load from checkpoint files)"
        )
    from vlsm.models.clipseg import save_clipseg_folder

    return save_clipseg_folder(model, tokenizer, path)
