"""What the training loop feeds the model: prompt tokens, uint8 pixels (on the device when
they fit, normalised there), and the one path to logits (docs/design.md, "Models").

    for idx, images, labels in data.batches(epoch_order(len(data), seed, epoch), 8):
        logits = inputs(model, images, prompts.choose(split.items, None)[idx], data.image_index[idx])
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from vlsm.config import TrainConfig
from vlsm.data.prompts import GENERATOR_PROMPT, pick_phrasing, with_provenance

if TYPE_CHECKING:
    from vlsm.data.cache import CacheItem, PreparedSplit

__all__ = ["DEVICE_DATA_FRACTION", "ModelInputs", "PromptTable", "SplitTensors", "allowed_device_bytes",
           "autocast_for", "epoch_order", "keep_on_device", "mixed_epoch_order", "open_cache", "pixel_values"]

log = logging.getLogger(__name__)

# The most of a trial's GPU memory one split's uint8 arrays take (train, validation and test
# then stay under half); larger splits stream from pinned host memory.
DEVICE_DATA_FRACTION = 0.15


def open_cache(path: str | None, what: str) -> PreparedSplit:
    """The cache split at path (a folder, or a copy of one on shared storage: s3://). This
    node's copy found damaged is downloaded again; the published one found damaged is named."""
    from vlsm.data.cache import open_split
    from vlsm.data.remote_cache import is_remote, localize
    from vlsm.integrity import CorruptFile

    if path is None:
        raise ValueError(f"{what}: no cache folder given; set it to a folder written by `vlsm prepare`")
    if not is_remote(path):
        return open_split(Path(path))
    try:
        return open_split(localize(path))
    except CorruptFile as err:
        log.warning("%s: this node's copy is damaged (%s: %s); downloading it again", path, err.path.name, err.problem)
    try:
        return open_split(localize(path, again=True))
    except CorruptFile as err:
        raise CorruptFile(f"{str(path).rstrip('/')}/{err.path.name}", f"{err.problem}, in the copy on shared storage",
                          "delete that folder on the storage and run the sweep's command again (it publishes "
                          "the cache anew)") from None


class PromptTable:
    """Every prompt string of the trial, tokenised once, on the device; which sentence an item
    gets: docs/design.md, "Prompts"."""

    def __init__(self, splits: Sequence[PreparedSplit], key: str, tokenizer: Callable,
                 device: torch.device, *, synthetic_style: bool = False, generator: bool = False,
                 provenance: Mapping[str, str] | None = None):
        # a model trained on synthetic data is tested with the prompts it learned (the authors' way)
        self.synthetic_style, self.generator, self.provenance = synthetic_style, generator, provenance
        self.key = key
        strings: dict[str, int] = {}
        # id -> (the item, to tell a reused id apart, its value), read by every epoch's `choose`
        self._values: dict[int, tuple[CacheItem, str | tuple[str, ...]]] = {}
        for split in splits:
            for item in split.items:
                value = self._phrasings(item, split)
                self._values[id(item)] = (item, value)
                for text in [value] if isinstance(value, str) else value:
                    strings.setdefault(text, len(strings))
        self.rows = strings  # text -> row
        self.texts = list(strings)  # row -> text
        tokens = tokenizer(list(strings))
        self.input_ids = torch.as_tensor(tokens["input_ids"]).to(device)  # (P, L)
        self.attention_mask = torch.as_tensor(tokens["attention_mask"]).to(device)  # (P, L)

    def _phrasings(self, item: CacheItem, split: PreparedSplit | None = None) -> str | tuple[str, ...]:
        """The item's prompt value: one sentence, or its phrasings."""
        synthetic = self.synthetic_style and item.synthetic_prompts is not None  # else its own
        prompts = item.synthetic_prompts if synthetic else item.prompts
        key = GENERATOR_PROMPT if self.generator and item.synthetic and GENERATOR_PROMPT in prompts else self.key
        value = prompts.get(key)
        if value is None:
            where = f"{split.root}: " if split is not None else ""
            raise ValueError(f"{where}item {item.name} has no prompt {key!r}; it holds {sorted(prompts)} "
                             f"(synthetic data has no P7; a source without patient data has P0-P3)")
        if self.provenance is None:
            return value
        if isinstance(value, str):
            return with_provenance(value, item.synthetic, self.provenance)
        return tuple(with_provenance(text, item.synthetic, self.provenance) for text in value)

    def _value(self, item: CacheItem) -> str | tuple[str, ...]:
        """`_phrasings` of item: the one worked out at construction for the splits' items."""
        entry = self._values.get(id(item))
        return entry[1] if entry is not None and entry[0] is item else self._phrasings(item)

    def choose(self, items: Sequence[CacheItem], rng: random.Random | None) -> torch.Tensor:
        """Row per item (N,): a random phrasing (training) or the first one (rng None: evaluation)."""
        return torch.tensor([self.rows[pick_phrasing(self._value(item), rng)] for item in items])


class _PairDataset(torch.utils.data.Dataset):
    """(image uint8 (S, S), label map uint8 (S, S)[, eval label map (512, 512)]) per item."""

    def __init__(self, split: PreparedSplit, with_eval: bool):
        self.split, self.with_eval = split, with_eval

    def __len__(self) -> int:
        return len(self.split.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        image = self.split.items[i].image_index
        out = (torch.from_numpy(np.array(self.split.images[image])),
               torch.from_numpy(np.array(self.split.labels[image])))
        if self.with_eval:
            out += (torch.from_numpy(np.array(self.split.eval_labels[image])),)
        return out


def keep_on_device(nbytes: int, allowed_bytes: float | None, wanted: bool,
                   fraction: float = DEVICE_DATA_FRACTION) -> bool:
    """Whether a split of nbytes is copied to the device once (True) or streamed: at most
    fraction of allowed_bytes, the device memory this process may use (None: no limit)."""
    return wanted and (allowed_bytes is None or nbytes <= fraction * allowed_bytes)


def allowed_device_bytes(device: torch.device) -> float | None:
    """GPU memory this process may use: the card's total times its per-process fraction."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    try:
        fraction = torch.cuda.get_per_process_memory_fraction(index)
    except (AttributeError, RuntimeError):  # not set or not offered by this build: the whole card
        fraction = 1.0
    return total * fraction


class SplitTensors:
    """One cache split for the loop: item tensors, and batches of uint8 pixels on the device,
    gathered there (data_on_device, when they fit) or streamed from the memory-mapped cache."""

    def __init__(self, split: PreparedSplit, cfg: TrainConfig, device: torch.device, with_eval: bool):
        self.split, self.device, self.with_eval = split, device, with_eval
        self.num_workers = cfg.num_workers
        self.image_index = torch.tensor([it.image_index for it in split.items])  # (N,)
        self.structure = torch.tensor([it.structure for it in split.items], dtype=torch.uint8)  # (N,)
        self.synthetic = torch.tensor([it.synthetic for it in split.items], dtype=torch.bool)  # (N,)
        self.arrays: tuple[torch.Tensor, ...] = ()
        names = ("images", "labels", "eval_labels") if with_eval else ("images", "labels")
        nbytes = sum(int(getattr(split, n).nbytes) for n in names)
        allowed = allowed_device_bytes(device)
        self.on_device = keep_on_device(nbytes, allowed, cfg.data_on_device)
        if cfg.data_on_device and not self.on_device:
            log.info("%s: %.2f GB of uint8 data stream from host memory (more than %.0f%% of the "
                     "%.2f GB this trial may use on the GPU)", split.root, nbytes / 1e9,
                     100 * DEVICE_DATA_FRACTION, (allowed or 0) / 1e9)
        if self.on_device:
            self.arrays = tuple(torch.from_numpy(np.array(getattr(split, n))).to(device) for n in names)

    def __len__(self) -> int:
        return len(self.image_index)

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield (item indices (B,), images (B, S, S), labels (B, S, S)[, eval labels]) on device."""
        chunks = list(order.split(batch_size))
        if self.on_device:
            for idx in chunks:
                image = self.image_index[idx].to(self.device)
                yield (idx, *(a[image] for a in self.arrays))
            return
        loader = torch.utils.data.DataLoader(
            _PairDataset(self.split, self.with_eval),
            batch_sampler=[c.tolist() for c in chunks],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),  # never touch the global RNG
        )
        for idx, batch in zip(chunks, loader, strict=True):
            yield (idx, *(t.to(self.device, non_blocking=True) for t in batch))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled item order (n,) of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def mixed_epoch_order(synthetic: torch.Tensor, share: float | None, seed: int, epoch: int) -> torch.Tensor:
    """One epoch's order of real and synthetic pairs (synthetic (N,) bool): every real pair
    and synthetic ones drawn to make `share` of it (with replacement only when too few); a
    pure function of (seed, epoch). share None: `epoch_order`."""
    if share is None:
        return epoch_order(len(synthetic), seed, epoch)
    real, fake = torch.nonzero(~synthetic).flatten(), torch.nonzero(synthetic).flatten()
    if len(real) == 0 or len(fake) == 0:
        raise ValueError(f"synthetic_share {share}: the training cache holds {len(real)} real and "
                         f"{len(fake)} synthetic pairs; a share needs both (a real+synthetic cache)")
    wanted = max(1, round(share / (1 - share) * len(real)))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if wanted <= len(fake):
        drawn = fake[torch.randperm(len(fake), generator=generator)[:wanted]]
    else:
        drawn = fake[torch.randint(len(fake), (wanted,), generator=generator)]
    chosen = torch.cat([real, drawn])
    return chosen[torch.randperm(len(chosen), generator=generator)]


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for "bf16" / "fp16", nothing for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class StoredFeatures(Protocol):
    """A split's stored image features and the trial's text table (`vlsm.feature_store`)."""

    text: tuple[torch.Tensor, ...]  # P rows each, one per prompt row

    def gather(self, image_index: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


class ModelInputs:
    """uint8 pixels and prompt rows -> the model's logits, through its contract: image features
    from the store (`stored`), `encode_image` of every row, or (`shared`) of each distinct
    image once; text features from the store's table or `encode_text`; then `decode`. Under
    the trial's autocast; the loss is computed outside it, in float32."""

    def __init__(self, model: nn.Module, prompts: PromptTable, device: torch.device, precision: str):
        self.mean = torch.tensor(model.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(model.image_std, device=device).view(1, 3, 1, 1)
        self.prompts, self.device, self.precision = prompts, device, precision

    def __call__(self, model: nn.Module, images: torch.Tensor, rows: torch.Tensor, image_index: torch.Tensor,
                 *, stored: StoredFeatures | None = None, shared: bool = False) -> torch.Tensor:
        """images (B, S, S) uint8, prompt rows (B,), the rows' images in the cache
        (image_index (B,)) -> logits (B, 1, S, S)."""
        with autocast_for(self.device, self.precision):
            rows = rows.to(self.mean.device)
            mask = self.prompts.attention_mask[rows]  # (B, L)
            if stored is not None:
                image, text = stored.gather(image_index), tuple(t[rows] for t in stored.text)
            else:
                image = self._encoded(model, images, image_index if shared else None)
                text = model.encode_text(self.prompts.input_ids[rows], mask)
            return model.decode(image, text, mask, tuple(images.shape[-2:]))

    def _encoded(self, model: nn.Module, images: torch.Tensor, image_index: torch.Tensor | None) -> tuple:
        """`encode_image` of every row's image, or with image_index of each distinct image once
        (B rows each)."""
        if image_index is None:
            return model.encode_image(self._pixels(images))
        distinct, inverse = torch.unique(image_index, return_inverse=True)  # (U,), (B,)
        first = torch.full((len(distinct),), len(inverse)).scatter_reduce_(
            0, inverse, torch.arange(len(inverse)), reduce="amin")  # (U,) a row of each image
        features = model.encode_image(self._pixels(images[first.to(images.device)]))  # U rows each
        inverse = inverse.to(images.device)
        return tuple(f[inverse] for f in features)

    def image_features(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images (B, S, S) uint8 -> `encode_image` as the call computes it (the store's rows)."""
        with autocast_for(self.device, self.precision):
            return model.encode_image(self._pixels(images))

    def text_table(self, model: nn.Module, chunk: int) -> tuple[torch.Tensor, ...]:
        """`encode_text` of every prompt row (P rows each), chunk rows at a time (the store's table)."""
        ids, mask = self.prompts.input_ids, self.prompts.attention_mask  # (P, L)
        parts = []
        with autocast_for(self.device, self.precision):
            for start in range(0, len(ids), chunk):
                parts.append(model.encode_text(ids[start:start + chunk], mask[start:start + chunk]))
        return tuple(torch.cat(columns) for columns in zip(*parts, strict=True))

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        return pixel_values(images, self.mean, self.std)


def pixel_values(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, S, S) uint8 grey -> (B, 3, S, S) normalised by a model's mean and std (1, 3, 1, 1)."""
    x = images.unsqueeze(1).float().div_(255.0)  # (B, 1, S, S) in [0, 1]
    return (x - mean) / std  # grey repeated to 3 channels: (B, 3, S, S)
