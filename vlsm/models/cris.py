"""CRIS (Wang et al., CVPR 2022) re-implemented: the official architecture and state-dict
names. Unlike the official code, padding and the end-of-text token come from the attention
mask (docs/design.md, "Pitfalls"), and the logits come back at the input size (bicubic,
align_corners=True, as the official evaluation upsamples).

    model = build_cris(pretrained="RN50.pt")       # OpenAI CLIP RN50 backbone; checkpoint=: official CRIS
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlsm.models.common import check_forward_inputs, load_state_dict_file, load_strict
from vlsm.models.cris_clip import CLIPBackbone
from vlsm.models.tokenizer import (
    CLIP_CONTEXT_LENGTH,
    CLIP_VOCAB_SIZE,
    TINY_CONTEXT_LENGTH,
    tiny_vocab_size,
)

__all__ = ["CLIP_MEAN", "CLIP_STD", "CRIS", "CRISConfig", "build_cris", "expected_input_size", "load_clip_weights",
           "load_cris_checkpoint", "text_shape", "tiny_cris_config", "tiny_prompt_cris_config"]

log = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Entries of OpenAI's JIT state dict that are metadata, not weights.
_CLIP_META_KEYS = ("input_resolution", "context_length", "vocab_size")
# CRIS adds this branch to CLIP's attention pool; an OpenAI file cannot hold it.
_CRIS_ONLY_BACKBONE_PREFIX = "visual.attnpool.connect."


@dataclass
class CRISConfig:
    """Every hyperparameter of CRIS; defaults are the official RN50 model at 416 px."""

    # --- CRIS head ---------------------------------------------------------------------
    word_len: int = 77  # most prompt tokens accepted (CLIP context; the official RefCOCO configs used 17)
    fpn_in: tuple[int, int, int] = (512, 1024, 1024)  # C3, C4, C5: (8 * vision_width, 16 * vision_width, embed_dim)
    fpn_out: tuple[int, int, int] = (256, 512, 1024)  # the FPN's three levels; fpn_out[1] is the decoder width
    vis_dim: int = 512  # decoder width d (= fpn_out[1] = text_width: cross-attention keys are word features)
    word_dim: int = 1024  # sentence-feature width (= embed_dim): gates the FPN, makes the dynamic kernel
    num_layers: int = 3  # transformer decoder layers
    num_head: int = 8  # decoder attention heads
    dim_ffn: int = 2048  # hidden width of the decoder's feed-forward block
    dropout: float = 0.2  # decoder dropout (attention weights and residual branches)
    input_size: int = 416  # square input side (a multiple of 32); the logits come back at this size
    # --- CLIP RN50 backbone --------------------------------------------------------------
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # bottleneck blocks per ResNet stage
    vision_width: int = 64  # ResNet stem width w; stage i outputs 4 * w * 2**i channels
    vision_heads: int = 32  # attention-pool heads (CLIP: 32 * vision_width / 64)
    image_resolution: int = 224  # CLIP's training resolution: the attention pool's (7x7 + 1) position table
    embed_dim: int = 1024  # CLIP joint embedding width: attention-pool output and text projection
    text_width: int = 512  # text transformer width (word features)
    text_layers: int = 12
    text_heads: int = 8
    vocab_size: int = 49408  # CLIP BPE vocabulary
    context_length: int = 77  # rows of the text position table

    def __post_init__(self) -> None:
        self.fpn_in = tuple(int(v) for v in self.fpn_in)  # type: ignore[assignment]
        self.fpn_out = tuple(int(v) for v in self.fpn_out)  # type: ignore[assignment]
        self.vision_layers = tuple(int(v) for v in self.vision_layers)  # type: ignore[assignment]
        w, fpn_in = self.vision_width, (8 * self.vision_width, 16 * self.vision_width, self.embed_dim)
        checks: list[tuple[str, bool, str]] = [
            ("fpn_in", len(self.fpn_in) == 3, "3 values"),
            ("fpn_out", len(self.fpn_out) == 3, "3 values"),
            ("vision_layers", len(self.vision_layers) == 4, "4 values"),
            ("fpn_in", self.fpn_in == fpn_in, f"(8 * vision_width, 16 * vision_width, embed_dim) = {fpn_in}"),
            ("word_dim", self.word_dim == self.embed_dim, f"embed_dim = {self.embed_dim}"),
            ("vis_dim", self.vis_dim == self.fpn_out[1] == self.text_width,
             f"fpn_out[1] = {self.fpn_out[1]} and text_width = {self.text_width}"),
            ("vis_dim", self.vis_dim % 4 == 0 and self.vis_dim % (2 * self.num_head) == 0,
             "a multiple of 4 and of 2 * num_head"),
            ("vision_heads", (32 * w) % self.vision_heads == 0, f"a divisor of {32 * w}"),
            ("text_heads", self.text_width % self.text_heads == 0, f"a divisor of {self.text_width}"),
            ("input_size", self.input_size > 0 and self.input_size % 32 == 0, "a multiple of 32"),
            ("image_resolution", self.image_resolution >= 32 and self.image_resolution % 32 == 0,
             "a multiple of 32"),
            ("word_len", 1 <= self.word_len <= self.context_length,
             f"between 1 and context_length = {self.context_length}"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"CRIS config field '{name}' = {getattr(self, name)!r}: expected {expected}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> CRISConfig:
        """Defaults overridden by ``values``; an unknown key raises ValueError."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"CRIS config: unknown field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def tiny_cris_config() -> dict[str, Any]:
    """A narrow CRIS (about 2 M parameters, 64 px; a batch of 8 in well under 0.1 s on CPU),
    with CLIP's vocabulary and context (49408, 77) so the real tokenizer's ids fit."""
    return CRISConfig(word_len=77, fpn_in=(64, 128, 64), fpn_out=(16, 32, 64), vis_dim=32, word_dim=64,
                      num_layers=1, num_head=2, dim_ffn=64, dropout=0.2, input_size=64, vision_layers=(1, 1, 1, 1),
                      vision_width=8, vision_heads=4, image_resolution=64, embed_dim=64, text_width=32,
                      text_layers=1, text_heads=2).to_dict()


def tiny_prompt_cris_config() -> dict[str, Any]:
    """The tiny CRIS of tests and the demo: `tiny_cris_config` over the tiny prompt vocabulary
    (an offline tokenizer; a 678-row embedding instead of 49408)."""
    return {**tiny_cris_config(), "vocab_size": tiny_vocab_size(), "context_length": TINY_CONTEXT_LENGTH,
            "word_len": TINY_CONTEXT_LENGTH}


def expected_input_size(config: dict[str, Any] | None, pretrained: str | Path | None = None) -> int:
    """The input side `build_cris(config=config, ...)` gives, without building (the weights
    never change it)."""
    return int(CRISConfig.from_dict(config).input_size)


def text_shape(config: dict[str, Any]) -> tuple[int, int]:
    """(vocabulary size, tokens per prompt) of a config's text tower (CLIP's by default)."""
    return config.get("vocab_size", CLIP_VOCAB_SIZE), config.get("word_len", CLIP_CONTEXT_LENGTH)


# --- building blocks -----------------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


def _linear_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(True))


class CoordConv(nn.Module):
    """3x3 conv + BN + ReLU over the features with x and y coordinates in [-1, 1] appended."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + 2, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
        coords = torch.stack([grid_x, grid_y]).expand(b, -1, -1, -1).to(x.dtype)  # (B, 2, h, w)
        return self.conv1(torch.cat([x, coords], dim=1))


class TextGatedFPN(nn.Module):
    """Fuse C3/C4/C5 into one (B, fpn_out[1], H/16, W/16) map, gated by the sentence."""

    def __init__(self, fpn_in: tuple[int, int, int], fpn_out: tuple[int, int, int]) -> None:
        super().__init__()
        c3_in, c4_in, c5_in = fpn_in
        o3, o4, o5 = fpn_out
        self.txt_proj = _linear_bn_relu(c5_in, o5)
        self.f1_v_proj = _conv_bn_relu(c5_in, o5, 1, 0)
        self.norm_layer = nn.Sequential(nn.BatchNorm2d(o5), nn.ReLU(True))
        self.f2_v_proj = _conv_bn_relu(c4_in, o4, 3, 1)
        self.f2_cat = _conv_bn_relu(o5 + o4, o4, 1, 0)
        self.f3_v_proj = _conv_bn_relu(c3_in, o3, 3, 1)
        self.f3_cat = _conv_bn_relu(o3 + o4, o4, 1, 0)
        self.f4_proj5 = _conv_bn_relu(o5, o4, 3, 1)
        self.f4_proj4 = _conv_bn_relu(o4, o4, 3, 1)
        self.f4_proj3 = _conv_bn_relu(o4, o4, 3, 1)
        self.aggr = _conv_bn_relu(3 * o4, o4, 1, 0)
        self.coordconv = nn.Sequential(CoordConv(o4, o4), _conv_bn_relu(o4, o4, 3, 1))

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        c3, c4, c5 = feats  # (B, ., H/8), (B, ., H/16), (B, ., H/32)
        gate = self.txt_proj(state)[:, :, None, None]  # (B, o5, 1, 1)
        f5 = self.norm_layer(self.f1_v_proj(c5) * gate)  # (B, o5, H/32, W/32)
        up5 = F.interpolate(f5, scale_factor=2, mode="bilinear", align_corners=False)
        f4 = self.f2_cat(torch.cat([self.f2_v_proj(c4), up5], dim=1))  # (B, o4, H/16, W/16)
        f3 = F.avg_pool2d(self.f3_v_proj(c3), 2, 2)  # (B, o3, H/16, W/16)
        f3 = self.f3_cat(torch.cat([f3, f4], dim=1))  # (B, o4, H/16, W/16)
        q5 = F.interpolate(self.f4_proj5(f5), scale_factor=2, mode="bilinear", align_corners=False)
        q = torch.cat([self.f4_proj3(f3), self.f4_proj4(f4), q5], dim=1)  # (B, 3*o4, H/16, W/16)
        return self.coordconv(self.aggr(q))  # (B, o4, H/16, W/16)


def sine_positions_1d(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Transformer sine/cosine positions: (length, dim), even channels sin, odd cos."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.empty(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def sine_positions_2d(height: int, width: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """2-D sine positions, raster order: (height*width, dim); the first dim/2 channels encode
    the column, the last dim/2 the row, as in CRIS."""
    half = dim // 2
    col = sine_positions_1d(width, half, device)  # (W, half)
    row = sine_positions_1d(height, half, device)  # (H, half)
    pe = torch.cat([col[None].expand(height, -1, -1), row[:, None].expand(-1, width, -1)], dim=2)  # (H, W, dim)
    return pe.reshape(height * width, dim)


class DecoderLayer(nn.Module):
    """Pre-norm layer: visual self-attention, cross-attention to words, FFN; CRIS normalises
    each attention output again (``*_attn_norm``) before the residual."""

    def __init__(self, d_model: int, nhead: int, dim_ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_ffn), nn.ReLU(True), nn.Dropout(dropout),
                                 nn.LayerNorm(dim_ffn), nn.Linear(dim_ffn, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        vis: torch.Tensor,  # (B, HW, d)
        txt: torch.Tensor,  # (B, L, d)
        vis_pos: torch.Tensor,  # (1, HW, d)
        txt_pos: torch.Tensor,  # (1, L, d)
        pad_mask: torch.Tensor,  # (B, L) True = padding
    ) -> torch.Tensor:
        y = self.norm1(vis)
        qk = y + vis_pos
        y = self.self_attn(qk, qk, y, need_weights=False)[0]
        vis = vis + self.dropout1(self.self_attn_norm(y))
        y = self.norm2(vis)
        y = self.multihead_attn(y + vis_pos, txt + txt_pos, txt, key_padding_mask=pad_mask, need_weights=False)[0]
        vis = vis + self.dropout2(self.cross_attn_norm(y))
        return vis + self.dropout3(self.ffn(self.norm3(vis)))  # (B, HW, d)


class TransformerDecoder(nn.Module):
    """Stack of DecoderLayer over the visual tokens, then a final LayerNorm."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_ffn: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, nhead, dim_ffn, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, vis: torch.Tensor, txt: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """vis (B, d, h, w), txt (B, L, d), pad_mask (B, L) -> (B, d, h, w)."""
        b, d, h, w = vis.shape
        vis_pos = sine_positions_2d(h, w, d, vis.device)[None].to(vis.dtype)  # (1, hw, d)
        txt_pos = sine_positions_1d(txt.shape[1], txt.shape[2], txt.device)[None].to(txt.dtype)
        x = vis.flatten(2).transpose(1, 2)  # (B, d, h, w) -> (B, hw, d)
        for layer in self.layers:
            x = layer(x, txt, vis_pos, txt_pos, pad_mask)
        return self.norm(x).transpose(1, 2).reshape(b, d, h, w)


class Projector(nn.Module):
    """Upsample the decoder map x4 and convolve it with a per-sample 3x3 kernel (and bias)
    predicted from the sentence feature: each prompt defines its own 1-channel classifier."""

    def __init__(self, word_dim: int, in_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.kernel_size = kernel_size
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            _conv_bn_relu(in_dim * 2, in_dim * 2, 3, 1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            _conv_bn_relu(in_dim * 2, in_dim, 3, 1),
            nn.Conv2d(in_dim, in_dim, 1),
        )
        self.txt = nn.Linear(word_dim, in_dim * kernel_size * kernel_size + 1)

    def dynamic_kernels(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, word_dim) -> weights (B, in_dim, k, k) and biases (B,)."""
        params = self.txt(state)  # (B, in_dim*k*k + 1)
        k = self.kernel_size
        return params[:, :-1].reshape(-1, self.in_dim, k, k), params[:, -1]

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """x (B, 2*in_dim, h, w), state (B, word_dim) -> logits (B, 1, 4h, 4w)."""
        x = self.vis(x)  # (B, C, 4h, 4w)
        b, c, h, w = x.shape
        weight, bias = self.dynamic_kernels(state)
        # One grouped convolution applies sample i's kernel to sample i only.
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, bias, padding=self.kernel_size // 2,
                       groups=b)  # (1, B, 4h, 4w)
        return out.transpose(0, 1)  # (B, 1, 4h, 4w)


# --- the model -----------------------------------------------------------------------------


class CRIS(nn.Module):
    """CRIS segmenter: (image, prompt tokens) -> one logit map per sample, following the
    `vlsm.models` contract."""

    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    encoder_prefixes: tuple[str, ...] = ("backbone.",)

    def __init__(self, config: CRISConfig | None = None, *, freeze_encoder: bool = False) -> None:
        super().__init__()
        cfg = config or CRISConfig()
        self.config = cfg
        self.input_size = cfg.input_size
        self.backbone = CLIPBackbone(
            embed_dim=cfg.embed_dim, image_resolution=cfg.image_resolution, vision_layers=cfg.vision_layers,
            vision_width=cfg.vision_width, vision_heads=cfg.vision_heads, context_length=cfg.context_length,
            vocab_size=cfg.vocab_size, transformer_width=cfg.text_width, transformer_heads=cfg.text_heads,
            transformer_layers=cfg.text_layers)
        self.neck = TextGatedFPN(cfg.fpn_in, cfg.fpn_out)
        self.decoder = TransformerDecoder(cfg.num_layers, cfg.vis_dim, cfg.num_head, cfg.dim_ffn, cfg.dropout)
        self.proj = Projector(cfg.word_dim, cfg.vis_dim // 2, 3)
        self.freeze_encoder = False
        # True when the CRIS-only `connect` branch is freshly initialised (CLIP RN50 weights, no
        # CRIS checkpoint): frozen, it would stay random, so it trains with the decoder (build_cris)
        self.connect_trains_when_frozen = False
        self.spec: dict[str, Any] = {"name": "cris", "pretrained": None, "checkpoint": None,
                                     "config": cfg.to_dict(), "freeze_encoder": False}
        self.set_encoder_frozen(freeze_encoder)

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Frozen: CLIP towers get no gradients and their BatchNorm stays in eval mode."""
        self.freeze_encoder = bool(frozen)
        self.spec["freeze_encoder"] = self.freeze_encoder
        self.backbone.requires_grad_(not self.freeze_encoder)
        if self.freeze_encoder and self.connect_trains_when_frozen:
            self._connect().requires_grad_(True)
        self.train(self.training)

    def _connect(self) -> nn.Module:
        return self.backbone.get_submodule(_CRIS_ONLY_BACKBONE_PREFIX.rstrip("."))

    def train(self, mode: bool = True) -> CRIS:
        super().train(mode)
        if self.freeze_encoder:
            self.backbone.eval()  # keep BatchNorm running statistics fixed
            if self.connect_trains_when_frozen:
                self._connect().train(mode)
        return self

    @property
    def _pool_trains(self) -> bool:
        """Whether the attention pool's `connect` branch trains while the towers are frozen."""
        return self.freeze_encoder and self.connect_trains_when_frozen

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, H, W) CLIP-normalised, input_ids/attention_mask (B, L) -> logits (B, 1, H, W)."""
        check_forward_inputs("CRIS", pixel_values, input_ids, attention_mask)
        return self.decode(self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask),
                           attention_mask, tuple(pixel_values.shape[-2:]))

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> the visual backbone's C3 (B, 8w, H/8, W/8), C4 (B, 16w, H/16, W/16)
        and C5 (B, E, H/32, W/32); while `connect` trains with frozen towers, the frozen
        part ends before the attention pool: layer4's output (B, 32w, H/32, W/32) in C5's place."""
        _check_pixels(pixel_values)
        if self._pool_trains:
            return self.backbone.visual.trunk(pixel_values)
        return self.backbone.encode_image(pixel_values)

    def encode_text(self, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) prompts -> words (B, L, d) and the end-of-text token (B, d): the text tower
        before its projection (`CLIPBackbone.encode_words`), which `decode` applies per batch."""
        self._check_text(input_ids, attention_mask)
        return self.backbone.encode_words(input_ids, attention_mask)

    def decode(self, image_features: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
               text_features: tuple[torch.Tensor, torch.Tensor], attention_mask: torch.Tensor,
               size: tuple[int, int]) -> torch.Tensor:
        """`encode_image`'s and `encode_text`'s features (B rows each) and the prompts' mask
        (B, L) -> logits (B, 1, H, W): [the attention pool,] the text projection, neck,
        decoder and projector."""
        c3, c4, c5 = image_features
        if self._pool_trains:
            c5 = self.backbone.visual.attnpool(c5)  # layer4's output -> C5
        words, eot = text_features  # (B, L, d), (B, d)
        state = eot @ self.backbone.text_projection  # (B, E), as CLIPBackbone.encode_text
        fq = self.neck((c3, c4, c5), state)  # (B, d, H/16, W/16)
        fq = self.decoder(fq, words, attention_mask == 0)  # (B, d, H/16, W/16)
        logits = self.proj(fq, state)  # (B, 1, H/4, W/4)
        return F.interpolate(logits, size=tuple(size), mode="bicubic", align_corners=True)  # (B, 1, H, W)

    def _check_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        if input_ids.shape[1] > self.config.word_len:
            raise ValueError(f"CRIS input_ids: {input_ids.shape[1]} tokens, more than word_len = "
                             f"{self.config.word_len}")
        mask = attention_mask != 0
        # right padding with at least one real token: the causal text tower and the end-of-text lookup rely on it
        right_padded = mask[:, 0].all() & (mask[:, 1:] <= mask[:, :-1]).all()
        if mask.is_cuda or torch.compiler.is_compiling():
            # no host sync (a GPU step stays asynchronous, a compiled graph unbroken): a bad mask
            # fails (RuntimeError) at the next synchronisation instead
            torch._assert_async(right_padded, _MASK_ERROR)
        elif not bool(right_padded):
            raise ValueError(_MASK_ERROR)


_MASK_ERROR = ("CRIS attention_mask: every row must start with attended tokens (1) followed "
               "only by padding (0), i.e. right padding with a non-empty prompt")


def _check_pixels(pixel_values: torch.Tensor) -> None:
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"CRIS pixel_values: expected (B, 3, H, W), got {tuple(pixel_values.shape)}")
    h, w = pixel_values.shape[-2:]
    if h % 32 or w % 32:
        raise ValueError(f"CRIS pixel_values: height and width must be multiples of 32, got {h}x{w}")


def load_cris_checkpoint(model: CRIS, path: str | Path) -> None:
    """Load an official CRIS checkpoint (or one of ours) strictly into ``model``
    (`load_state_dict_file`'s formats); a mismatched tensor raises ValueError naming it."""
    state = load_state_dict_file(path, "checkpoint")
    load_strict(model, state, f"checkpoint={str(path)!r}")
    log.info("loaded CRIS checkpoint %s (%d tensors)", path, len(state))


def _read_clip_file(path: Path) -> dict[str, torch.Tensor]:
    """OpenAI's RN50.pt is a TorchScript archive; plain state dicts load too."""
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = any(n.endswith("/constants.pkl") for n in archive.namelist())
        if scripted:
            try:
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            except Exception as err:  # TorchScript raises several unrelated types
                raise ValueError(f"pretrained={str(path)!r}: cannot load the TorchScript archive "
                                 f"({type(err).__name__}: {err})") from err
    return load_state_dict_file(path, "pretrained")


def load_clip_weights(backbone: CLIPBackbone, path: str | Path) -> None:
    """Initialise the CLIP towers from an OpenAI CLIP RN50 file, cast to float32; strict except
    for the CRIS-only ``visual.attnpool.connect`` branch, which keeps its fresh init."""
    path = Path(path).expanduser()
    state = {k: v.float() for k, v in _read_clip_file(path).items() if k not in _CLIP_META_KEYS}
    own = backbone.state_dict()
    fresh = {k: v for k, v in own.items() if k.startswith(_CRIS_ONLY_BACKBONE_PREFIX)}
    try:
        load_strict(backbone, {**fresh, **state}, f"pretrained={str(path)!r}")
    except ValueError as err:
        raise ValueError(f"{err}. Expected OpenAI CLIP RN50 weights (e.g. RN50.pt) matching the CRIS "
                         f"config's CLIP dimensions") from err
    log.info("loaded CLIP weights %s (%d tensors)", path, len(state))


def build_cris(*, pretrained: str | Path | None = None, checkpoint: str | Path | None = None,
               config: dict | None = None, freeze_encoder: bool = False) -> CRIS:
    """CRIS from CRISConfig overrides; ``pretrained``: an OpenAI CLIP RN50 file for the
    backbone; ``checkpoint``: a full CRIS checkpoint (loaded after, so it wins)."""
    cfg = CRISConfig.from_dict(config)
    model = CRIS(cfg)
    model.connect_trains_when_frozen = pretrained is not None and checkpoint is None
    if pretrained is not None:
        load_clip_weights(model.backbone, pretrained)
    if checkpoint is not None:
        load_cris_checkpoint(model, checkpoint)
    model.set_encoder_frozen(freeze_encoder)
    model.spec.update(
        pretrained=None if pretrained is None else str(pretrained),
        checkpoint=None if checkpoint is None else str(checkpoint),
    )
    return model
