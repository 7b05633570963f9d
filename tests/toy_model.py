"""A toy model that follows the `vlsm.models` contract and is one registry entry (tests only).

    import toy_model
    toy_model.register()            # "toy" / "Toy" now builds, trains and sweeps like any model
    ...
    toy_model.unregister()

Nothing else in the project names it: the test that trains it proves that adding a model is
its module and one `MODELS.register` (docs/design.md, "Models").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlsm.model_registry import MODELS, ModelEntry, PaperDefaults
from vlsm.models.tokenizer import TINY_CONTEXT_LENGTH, tiny_vocab_size
from vlsm.registry import LazyFunction

KEY, NAME = "toy", "Toy"


class ToyModel(nn.Module):
    """A 3x3 convolution as the image tower, a word embedding averaged over the prompt as the
    text tower, and a 1x1 convolution of their product as the decoder."""

    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    encoder_prefixes: tuple[str, ...] = ("image_tower.", "text_tower.")

    def __init__(self, config: dict[str, Any], freeze_encoder: bool) -> None:
        super().__init__()
        width = int(config.get("width", 8))
        self.input_size = int(config.get("input_size", 64))
        self.image_tower = nn.Conv2d(3, width, 3, padding=1)
        self.text_tower = nn.Embedding(tiny_vocab_size(), width)
        self.head = nn.Conv2d(width, 1, 1)
        self.freeze_encoder = bool(freeze_encoder)
        for tower in (self.image_tower, self.text_tower):
            tower.requires_grad_(not self.freeze_encoder)
        self.spec = {"name": KEY, "pretrained": None, "checkpoint": None, "config": dict(config),
                     "freeze_encoder": self.freeze_encoder}

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.relu(self.image_tower(pixel_values)),)  # (B, W, S, S)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        words = self.text_tower(input_ids) * attention_mask.unsqueeze(-1)  # (B, L, W), padding zeroed
        return (words.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1),)  # (B, W)

    def decode(self, image_features: tuple[torch.Tensor, ...], text_features: tuple[torch.Tensor, ...],
               attention_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        (image,), (text,) = image_features, text_features
        return self.head(image * text[:, :, None, None])  # (B, 1, S, S): already at the input size

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask),
                           attention_mask, tuple(pixel_values.shape[-2:]))


def build(*, pretrained=None, checkpoint=None, config=None, freeze_encoder: bool = False) -> ToyModel:
    if pretrained is not None or checkpoint is not None:
        raise ValueError("toy model: there are no weights files to load")
    return ToyModel(config or tiny_config(), freeze_encoder)


def input_size(config: dict[str, Any] | None, pretrained=None) -> int:
    return int((config or tiny_config()).get("input_size", 64))


def tiny_config() -> dict[str, Any]:
    return {"input_size": 64, "width": 8}


def text_shape(config: dict[str, Any]) -> tuple[int, int]:
    return tiny_vocab_size(), TINY_CONTEXT_LENGTH  # the offline tiny tokenizer


ENTRY = ModelEntry(
    key=KEY, name=NAME,
    build=LazyFunction(__name__, "build"),
    input_size=LazyFunction(__name__, "input_size"),
    tiny_config=LazyFunction(__name__, "tiny_config"),
    text_shape=LazyFunction(__name__, "text_shape"),
    paper=PaperDefaults(lr=1e-2, batch_size=8),
    code_modules=(__name__,),
    schedule_rank=2,
)


def register() -> ModelEntry:
    """Add the toy entry to `MODELS` (again: a no-op)."""
    return ENTRY if KEY in MODELS else MODELS.register(ENTRY)


def unregister() -> None:
    MODELS.unregister(KEY)
