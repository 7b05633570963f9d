"""A saved model folder (a trial's ``best/``) as a predictor: grey images and prompts in,
mask logits out at the image's size, preprocessed as the cache and scored as the trials were;
also MLflow's pyfunc loader (`_load_pyfunc`), without importing MLflow.

    logits = Predictor(".../checkpoint_000004/best").predict({"image": grey_uint8_hw, "prompt": "left ventricle"})
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlsm.checkpoint import load_model, load_tokenizer
from vlsm.trial_data import pixel_values

__all__ = ["Predictor"]


class Predictor:
    """The model and tokenizer of one saved folder, in eval mode on one device."""

    def __init__(self, directory: str | Path, *, device: str | torch.device | None = None,
                 batch_size: int = 16):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_model(Path(directory), device=self.device)
        self.tokenizer = load_tokenizer(Path(directory))
        self.batch_size = batch_size
        self.mean = torch.tensor(self.model.image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.model.image_std, device=self.device).view(1, 3, 1, 1)

    def predict(self, data: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> np.ndarray:
        """{"image": (N, H, W) or (H, W) uint8 grey, "prompt": (N,) or one str} -> float32 logits
        (N, H, W); logits > 0 is the mask at threshold 0.5."""
        images, prompts = _as_batch(data)
        out = np.empty(images.shape, dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = self._logits(images[start:stop], prompts[start:stop])
        return out

    @torch.no_grad()
    def _logits(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        from vlsm.data.cache import resize_image

        size = self.model.input_size
        pixels = np.stack([resize_image(image, size) for image in images])  # (B, S, S) uint8
        x = pixel_values(torch.from_numpy(pixels).to(self.device), self.mean, self.std)  # as in training
        tokens = self.tokenizer(prompts)
        logits = self.model(x, tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))
        logits = F.interpolate(logits.float(), size=images.shape[1:], mode="nearest-exact")
        return logits[:, 0].cpu().numpy()


def _as_batch(data: Mapping[str, Any]) -> tuple[np.ndarray, list[str]]:
    """(N, H, W) uint8 images and N prompt strings, or a ValueError naming the input."""
    if not isinstance(data, Mapping) or "image" not in data or "prompt" not in data:
        raise ValueError('predict: expected {"image": (N, H, W) uint8, "prompt": (N,) str}, got '
                         f"{type(data).__name__} with keys {sorted(data) if isinstance(data, Mapping) else '-'}")
    images = np.asarray(data["image"])
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f'predict: "image" must be uint8 (N, H, W) or (H, W) grey pixels, got '
                         f"{images.dtype} {images.shape}")
    prompts = np.asarray(data["prompt"], dtype=str).reshape(-1).tolist()
    if len(prompts) == 1:
        prompts = prompts * len(images)
    if len(prompts) != len(images):
        raise ValueError(f'predict: {len(images)} images but {len(prompts)} prompts; give one '
                         "prompt per image or one for all")
    return images, prompts


def _load_pyfunc(path: str, model_config: Mapping[str, Any] | None = None) -> Predictor:
    """MLflow's entry point for a pyfunc model; model_config may name a "device" and a "batch_size"."""
    config = dict(model_config or {})
    return Predictor(path, device=config.get("device"), batch_size=int(config.get("batch_size", 16)))
