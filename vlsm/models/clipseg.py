"""CLIPSeg (Lüddecke and Ecker, CVPR 2022): Hugging Face weights, our forward, whose towers
really train (docs/design.md, "Pitfalls"). Config keys besides `CLIPSegConfig`'s:
`input_size` (352 with pretrained weights, else vision_config.image_size) and
`stock_forward_no_grad_encoders` (the authors' towers without gradients).

    model = build_model("clipseg", pretrained="CIDAS/clipseg-rd64-refined")  # the paper's weights
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegTextConfig,
    CLIPSegVisionConfig,
)

from vlsm.atomic import atomic_folder
from vlsm.models.common import (
    check_forward_inputs,
    hub_files_only,
    is_hub_id,
    load_state_dict_file,
    load_strict,
)
from vlsm.models.tokenizer import (
    CLIP_CONTEXT_LENGTH,
    CLIP_VOCAB_SIZE,
    TINY_CONTEXT_LENGTH,
    PromptTokenizer,
    tiny_vocab_size,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PAPER_INPUT_SIZE", "PAPER_PRETRAINED", "CLIPSeg", "build_clipseg",
           "expected_input_size", "save_clipseg_folder", "text_shape", "tiny_clipseg_config"]

logger = logging.getLogger(__name__)

PAPER_PRETRAINED = "CIDAS/clipseg-rd64-refined"  # the weights the paper finetuned
PAPER_INPUT_SIZE = 352
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Our keys in the config dict (not CLIPSegConfig fields), and where input_size is kept
# inside a saved folder's config.json so that a tiny folder reloads at its own size.
INPUT_SIZE = "input_size"
STOCK_FORWARD = "stock_forward_no_grad_encoders"
_FOLDER_INPUT_SIZE = "vlsm_input_size"


def tiny_clipseg_config() -> dict[str, Any]:
    """A CLIPSeg of about 0.1 M parameters shaped like rd64: 64 px input, 4 px patches (they
    learn the phantom far better than 8 px: test Dice 0.42 against 0.25 in 5 epochs), taps
    after vision layers 1, 2, 3, the tiny prompt vocabulary. The single transposed
    convolution gives logits at exactly 64 px (the refined one does not reach it)."""
    vocab = tiny_vocab_size()
    return {
        INPUT_SIZE: 64,
        "text_config": {
            "vocab_size": vocab,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": TINY_CONTEXT_LENGTH,
            # the tiny vocabulary puts bos and eos last, as CLIP's does
            "bos_token_id": vocab - 2,
            "eos_token_id": vocab - 1,
            "pad_token_id": vocab - 1,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 4,
        },
        "projection_dim": 32,
        "extract_layers": [1, 2, 3],
        # a 32-wide decoder learns the phantom clearly better than 16 at the same speed
        "reduce_dim": 32,
        "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 64,
        "use_complex_transposed_convolution": False,
    }


class CLIPSeg(CLIPSegForImageSegmentation):
    """`CLIPSegForImageSegmentation` following the `vlsm.models` contract, with its modules
    and state-dict names (`from_pretrained` / `save_pretrained` work unchanged). Build it
    with `build_clipseg`, which sets input_size, spec, freeze_encoder and stock_forward."""

    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    encoder_prefixes: tuple[str, ...] = ("clip.",)

    def __init__(self, config: CLIPSegConfig) -> None:
        super().__init__(config)
        self.input_size: int = config.vision_config.image_size
        self.freeze_encoder = False
        self.stock_forward = False  # the towers without gradients, as the stock forward runs them
        self.vision_stop_early = True  # the vision tower stops after its last tapped layer (vlsm.speed)
        self.spec: dict[str, Any] = {}

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Frozen: `clip` gets requires_grad False and stays in eval mode."""
        self.freeze_encoder = bool(frozen)
        if self.spec:
            self.spec["freeze_encoder"] = self.freeze_encoder
        self.clip.requires_grad_(not self.freeze_encoder)
        self.train(self.training)

    def train(self, mode: bool = True) -> CLIPSeg:
        super().train(mode)
        if self.freeze_encoder:
            self.clip.eval()  # no dropout in the towers while the decoder trains
        return self

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,  # type: ignore[override]
                attention_mask: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) ImageNet-normalised, input_ids/attention_mask (B, L) -> logits (B, 1, S, S)."""
        check_forward_inputs("CLIPSeg", pixel_values, input_ids, attention_mask)
        return self.decode(self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask),
                           attention_mask, tuple(pixel_values.shape[-2:]))

    def _towers(self) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self.stock_forward else contextlib.nullcontext()

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, S, S) -> the vision tower's hidden states after layers `extract_layers`,
        each (B, 1 + N, D_vision), N = (S / patch)**2."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"CLIPSeg pixel_values: expected (B, 3, S, S), got {tuple(pixel_values.shape)}")
        h, w = pixel_values.shape[-2:]
        if h != w:
            raise ValueError(f"CLIPSeg pixel_values: expected a square image, got {h}x{w}")
        # hidden_states[0] is the embedding output, hence the +1 (as stock).
        taps = [i + 1 for i in self.extract_layers]
        with self._towers():
            if self.vision_stop_early:
                return self._vision_taps(pixel_values, taps)
            vision = self.clip.vision_model(
                pixel_values=pixel_values, interpolate_pos_encoding=True, output_hidden_states=taps
            )
            return tuple(vision.hidden_states[i] for i in taps)

    def _vision_taps(self, pixel_values: torch.Tensor, taps: list[int]) -> tuple[torch.Tensor, ...]:
        """The vision tower's forward stopped after layer max(taps): the same hidden states."""
        vision = self.clip.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=True))
        states = [hidden]  # states[k]: after k layers, (B, 1 + N, D_vision)
        for layer in vision.encoder.layers[: max(taps)]:
            hidden = layer(hidden, None)
            states.append(hidden)
        return tuple(states[i] for i in taps)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        """(B, L) prompts -> (the end-of-text token's features (B, D_text),), before the
        projection, which `decode` applies per batch (docs/design.md, "Models"). The
        end-of-text token is the last attended one: for CLIP tokens, where stock finds it."""
        with self._towers():
            text = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
            words = text.last_hidden_state  # (B, L, D_text), after the final layer norm
            positions = torch.arange(words.shape[1], device=words.device)  # (L,)
            eot = ((attention_mask != 0) * positions).argmax(dim=1)  # (B,) last attended token
            return (words[torch.arange(words.shape[0], device=words.device), eot],)  # (B, D_text)

    def decode(self, image_features: tuple[torch.Tensor, ...], text_features: tuple[torch.Tensor, ...],
               attention_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """`encode_image`'s and `encode_text`'s features (B rows each) -> logits (B, 1, S, S);
        attention_mask is unused (the end-of-text token holds the prompt)."""
        (pooled,) = text_features  # (B, D_text)
        with self._towers():
            conditional = self.clip.text_projection(pooled)  # (B, projection_dim)
        logits = self.decoder(list(image_features), conditional).logits  # (B, S', S')
        logits = logits.reshape(conditional.shape[0], 1, *logits.shape[-2:])  # (B, 1, S', S')
        if tuple(logits.shape[-2:]) != tuple(size):  # the decoder's grid times its upsampling
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits


def _check_keys(values: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"CLIPSeg config{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")


def _split_config(config: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our options, CLIPSegConfig kwargs) of a config dict; unknown keys raise ValueError."""
    if config is None:
        return {}, {}
    if not isinstance(config, dict):
        raise ValueError(f"CLIPSeg config: expected a dict, got {type(config).__name__}")
    ours = {k: config[k] for k in (INPUT_SIZE, STOCK_FORWARD) if k in config}
    hf = {k: v for k, v in config.items() if k not in ours}
    _check_keys(hf, {f.name for f in fields(CLIPSegConfig)}, "")
    for key, cls in (("text_config", CLIPSegTextConfig), ("vision_config", CLIPSegVisionConfig)):
        sub = hf.get(key)
        if sub is not None:
            if not isinstance(sub, dict):
                raise ValueError(f"CLIPSeg config[{key!r}]: expected a dict, got {sub!r:.80}")
            _check_keys(sub, {f.name for f in fields(cls)}, f"[{key!r}]")
    if STOCK_FORWARD in ours and not isinstance(ours[STOCK_FORWARD], bool):
        raise ValueError(f"CLIPSeg config[{STOCK_FORWARD!r}]: expected true or false, got {ours[STOCK_FORWARD]!r}")
    return ours, hf


def _resolve_pretrained(pretrained: str | Path) -> str:
    """An absolute local folder, or a hub id as given."""
    path = Path(pretrained).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"pretrained={str(pretrained)!r}: expected a folder written by save_pretrained "
                             f"(with config.json and model weights)")
        return str(path.resolve())
    if isinstance(pretrained, Path) or not is_hub_id(str(pretrained)):
        raise ValueError(f"pretrained={str(pretrained)!r}: no such folder (and not a Hugging Face hub id such "
                         f"as {PAPER_PRETRAINED!r})")
    return str(pretrained)


def _from_pretrained(source: str) -> CLIPSeg:
    local_only = not Path(source).is_dir() and hub_files_only(source, "config.json", "pretrained")
    try:
        model, info = CLIPSeg.from_pretrained(source, dtype=torch.float32, output_loading_info=True,
                                              local_files_only=local_only)
    except OSError as err:
        raise ValueError(f"pretrained={source!r}: could not load CLIPSeg weights ({err}). A hub id needs "
                         f"network access once, or a cached copy (HF_HUB_OFFLINE=1 uses the cache only).") from err
    missing = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
    if missing:
        raise ValueError(f"pretrained={source!r}: the weights do not cover the model; missing or mismatched: "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return model


def expected_input_size(config: dict[str, Any] | None, pretrained: str | Path | None = None) -> int:
    """The input_size `build_clipseg(config=config, pretrained=pretrained)` gives, without
    building: a local folder's config.json says it; a hub id means the paper's 352."""
    options, hf_kwargs = _split_config(config)
    if INPUT_SIZE in options:
        return int(options[INPUT_SIZE])
    if pretrained is not None:
        config_file = Path(pretrained).expanduser() / "config.json"
        if config_file.is_file():
            return int(json.loads(config_file.read_text()).get(_FOLDER_INPUT_SIZE, PAPER_INPUT_SIZE))
        return PAPER_INPUT_SIZE
    vision = hf_kwargs.get("vision_config") or {}
    return int(vision.get("image_size", CLIPSegVisionConfig().image_size))


def text_shape(config: dict[str, Any]) -> tuple[int, int] | None:
    """(vocabulary size, tokens per prompt) of a config's text tower; None without a
    `text_config` (pretrained weights: their tokenizer knows its own length)."""
    text = config.get("text_config")
    if text is None:
        return None
    return text.get("vocab_size", CLIP_VOCAB_SIZE), text.get("max_position_embeddings", CLIP_CONTEXT_LENGTH)


def _hf_model_and_config(
    pretrained: str | Path | None, config: dict[str, Any] | None, hf_kwargs: dict[str, Any]
) -> tuple[CLIPSeg | None, CLIPSegConfig, str | None, int]:
    """(the loaded model or None, its CLIPSegConfig, the resolved source, the default input size)."""
    if pretrained is not None:
        if hf_kwargs:
            raise ValueError(f"CLIPSeg config keys {sorted(hf_kwargs)} with pretrained={str(pretrained)!r}: the "
                             f"architecture comes from the pretrained folder; only {INPUT_SIZE!r} and "
                             f"{STOCK_FORWARD!r} may be set")
        source = _resolve_pretrained(pretrained)
        model = _from_pretrained(source)
        return model, model.config, source, getattr(model.config, _FOLDER_INPUT_SIZE, PAPER_INPUT_SIZE)
    if config is not None:
        hf_config = CLIPSegConfig(**hf_kwargs)
        return None, hf_config, None, hf_config.vision_config.image_size
    raise ValueError(f"CLIPSeg needs pretrained= (a hub id such as {PAPER_PRETRAINED!r} or a local folder) "
                     f"or config= (e.g. vlsm.models.tiny_config('clipseg')); got neither")


def build_clipseg(*, pretrained: str | Path | None = None, checkpoint: str | Path | None = None,
                  config: dict[str, Any] | None = None, freeze_encoder: bool = False) -> CLIPSeg:
    """CLIPSeg from a hub id / local folder (`pretrained`; `config` may then only hold our two
    keys) or from `config` (random weights, from the global RNG: `build_model` seeds it);
    `checkpoint`, a state-dict file, loaded strictly on top."""
    options, hf_kwargs = _split_config(config)
    model, hf_config, source, default_size = _hf_model_and_config(pretrained, config, hf_kwargs)
    input_size = options.get(INPUT_SIZE, default_size)
    patch = hf_config.vision_config.patch_size
    if not isinstance(input_size, int) or input_size <= 0 or input_size % patch:
        raise ValueError(f"CLIPSeg config[{INPUT_SIZE!r}]: expected a positive multiple of the patch size "
                         f"{patch}, got {input_size!r}")
    if model is None:
        model = CLIPSeg(hf_config)
    model.input_size = input_size
    model.stock_forward = bool(options.get(STOCK_FORWARD, False))
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint, "checkpoint")
        load_strict(model, state, f"checkpoint={str(checkpoint)!r}")
        checkpoint = str(Path(checkpoint).expanduser().resolve())
    model.spec = {
        "name": "clipseg",
        "pretrained": source,
        "checkpoint": checkpoint,
        "config": None if config is None else json.loads(json.dumps(config)),
        "freeze_encoder": bool(freeze_encoder),
    }
    model.set_encoder_frozen(freeze_encoder)
    if model.stock_forward and not freeze_encoder:
        logger.warning("CLIPSeg %s=True: the stock Hugging Face forward runs the CLIP towers under "
                       "no_grad, so the 'unfrozen' encoder will not train (the authors' behaviour)", STOCK_FORWARD)
    logger.debug("built CLIPSeg (%s, %.2f M parameters, input %d)", source or "random",
                 sum(p.numel() for p in model.parameters()) / 1e6, input_size)
    return model


def save_clipseg_folder(model: CLIPSeg, tokenizer: PromptTokenizer, path: str | Path) -> Path:
    """Write model and tokenizer as one `save_pretrained` folder (replacing `path`, atomically),
    with the input size: `build_model`/`build_tokenizer("clipseg", pretrained=path)` load it
    as they load a hub id."""
    if not isinstance(model, CLIPSeg):
        raise ValueError(f"save_clipseg_folder: expected a CLIPSeg model, got {type(model).__name__}")
    path = Path(path).expanduser().resolve()
    with atomic_folder(path, replace=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        saved = json.loads(config_file.read_text())
        # a standard Hugging Face folder: loadable by CLIPSegForImageSegmentation too
        saved["architectures"] = ["CLIPSegForImageSegmentation"]
        saved[_FOLDER_INPUT_SIZE] = model.input_size
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return path
