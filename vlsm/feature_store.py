"""The feature store: a frozen encoder's `encode_image` output computed once per cache split
into a read-only folder beside the cache, keyed by everything that decides its values
(docs/design.md, "The feature store").

    train = FeatureStore(inputs, cfg, device).split(model, train_split)  # built once, then reused
    logits = inputs(model, images, rows, image_index, stored=train)       # no frozen tower runs
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from vlsm import integrity
from vlsm.atomic import build_folder_once, not_writable
from vlsm.checkpoint import frozen_fingerprint
from vlsm.config import TrainConfig
from vlsm.data import remote_cache
from vlsm.data.cache import code_digest
from vlsm.model_registry import model_entry
from vlsm.speed import kernel_choices
from vlsm.trial_data import ModelInputs, allowed_device_bytes, keep_on_device

if TYPE_CHECKING:
    from vlsm.data.cache import PreparedSplit

__all__ = ["STORE_VERSION", "FeatureStore", "SplitFeatures", "check_store", "host_array", "read_rows", "store_key",
           "store_path", "uses_feature_store"]

log = logging.getLogger(__name__)

STORE_VERSION = 2  # bump when the layout or meaning of the stored files changes (2: checksums)
# Besides the model entry's code_modules, their source decides the stored values.
_CODE_MODULES: tuple[str, ...] = ("vlsm.trial_data", "vlsm.feature_store")
_META = "meta.json"


def uses_feature_store(cfg: TrainConfig) -> bool:
    """Whether this trial reads its image features from a store (None: when the encoder is frozen)."""
    return cfg.freeze_encoder if cfg.feature_store is None else cfg.feature_store


def store_key(model: nn.Module, split: PreparedSplit, precision: str, device: torch.device,
              fingerprint: str | None = None) -> str:
    """The content key of the store of (frozen weights, model spec but its init_seed, cache
    split, size, precision, kernels, code)."""
    import transformers

    parts = {
        "store_version": STORE_VERSION,
        "frozen_sha256": fingerprint or frozen_fingerprint(model),
        "model": {k: v for k, v in model.spec.items() if k != "init_seed"},
        "kernels": kernel_choices(model),  # attention kernel, channels_last: their rounding
        "cache_key": str(json.loads((split.root / "meta.json").read_text())["key"]),
        "size": split.size,
        "precision": precision,
        "device_type": torch.device(device).type,  # GPU and CPU kernels round differently
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "code": code_digest((*model_entry(model.spec["name"]).code_modules, *_CODE_MODULES)),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def store_path(split: PreparedSplit, key: str) -> Path:
    """The store folder of a key: beside the cache folder."""
    return split.root.parent / f"{split.root.name}.features-{key[:16]}"


def _build(folder: Path, model: nn.Module, split: PreparedSplit, inputs: ModelInputs,
           batch_size: int, key: str) -> None:
    """Write image_<i>.npy for every image of split (cache order) and meta.json (last)."""
    from numpy.lib.format import open_memmap

    n, arrays, dtype = split.n_images, [], None
    was_training = model.training
    model.eval()  # frozen towers are in eval mode anyway; no dropout, fixed BatchNorm
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                images = torch.from_numpy(np.array(split.images[start:start + batch_size])).to(inputs.device)
                features = inputs.image_features(model, images)  # encode_image: B rows each
                if not arrays:
                    dtype, orders = features[0].dtype, [_memory_order(f) for f in features]
                    arrays = [open_memmap(folder / f"image_{i}.npy", "w+", _numpy_dtype(dtype),
                                          (n, *f.permute(order).shape[1:]))
                              for i, (f, order) in enumerate(zip(features, orders, strict=True))]
                for array, f, order in zip(arrays, features, orders, strict=True):
                    array[start:start + len(images)] = host_array(f.permute(order))
    finally:
        model.train(was_training)
    for array in arrays:
        array.flush()
    meta = {"store_version": STORE_VERSION, "key": key, "cache": split.root.name, "n_images": n,
            "dtype": str(dtype).removeprefix("torch."), "shapes": [list(a.shape) for a in arrays],
            "orders": orders, "nbytes": int(sum(a.nbytes for a in arrays))}
    files = [f"image_{i}.npy" for i in range(len(arrays))]
    del arrays
    meta["files"] = integrity.manifest(folder, files)  # every array's size and sha256
    (folder / _META).write_text(json.dumps(integrity.seal(meta)))  # written last


def _remedy(folder: Path) -> str:
    return f"delete the feature store {folder.name} (a trial rebuilds it) or set feature_store False"


def check_store(folder: Path, key: str) -> dict:
    """A store's meta.json, after checking it and every array it lists (sizes always,
    digests once per file version: `vlsm.integrity`); CorruptFile names a damaged file."""
    meta_path = folder / _META
    if not meta_path.is_file():
        raise integrity.CorruptFile(meta_path, "missing", _remedy(folder))
    meta = integrity.read_sealed(meta_path, _remedy(folder))
    if meta.get("store_version") != STORE_VERSION or meta.get("key") != key:
        raise integrity.CorruptFile(meta_path, f"store_version {meta.get('store_version')!r} and key "
                                    f"{str(meta.get('key'))[:16]}, expected {STORE_VERSION} and {key[:16]}",
                                    _remedy(folder))
    integrity.verify_files(folder, meta["files"], _remedy(folder))
    return meta


def _reusable(folder: Path, key: str) -> bool:
    """Whether a store folder is whole and undamaged (else it is rebuilt: logged with the reason)."""
    if not folder.is_dir():
        return False
    try:
        check_store(folder, key)
    except integrity.CorruptFile as err:
        log.warning("rebuilding feature store %s from the model: %s: %s", folder, err.path.name, err.problem)
        return False
    return True


def host_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A stored array as a tensor of the towers' dtype (bf16 is kept as its uint16 bits)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def read_rows(arrays: list[np.ndarray], image_index: torch.Tensor, dtype: torch.dtype,
              device: torch.device) -> list[torch.Tensor]:
    """Rows image_index (B,) of each stored array (memory maps), copied to device: a streamed
    store's work per batch."""
    index = image_index.cpu().numpy()
    return [host_tensor(a[index], dtype).to(device) for a in arrays]


def _memory_order(t: torch.Tensor) -> list[int]:
    """The dimensions of t from outermost to innermost in memory, the batch first: the store
    keeps the towers' layout (CRIS's C5 is channels-last), which decides the next ops' rounding."""
    return [0, *sorted(range(1, t.ndim), key=lambda d: -t.stride(d))]


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """numpy has no bfloat16: its 16 bits are kept as uint16."""
    return np.dtype(np.uint16) if dtype == torch.bfloat16 else torch.empty((), dtype=dtype).numpy().dtype


def host_array(t: torch.Tensor) -> np.ndarray:
    """A feature tensor as the store keeps it on the host (bf16 as its uint16 bits)."""
    t = t.detach().to("cpu")
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


class SplitFeatures:
    """One split's stored image features and the trial's text table, for `ModelInputs`:
    on the device when they fit, else gathered per batch from the memory-mapped files."""

    def __init__(self, folder: Path, device: torch.device, text: tuple[torch.Tensor, ...],
                 on_device_wanted: bool, device_fraction: float):
        meta = json.loads((folder / _META).read_text())
        self.folder, self.device, self.text = folder, device, text  # text: P rows each
        self.dtype = getattr(torch, meta["dtype"])
        self.arrays = [np.load(folder / f"image_{i}.npy", mmap_mode="r") for i in range(len(meta["shapes"]))]
        # stored dimension order -> the model's: argsort of each stored order
        self.unpermute = [sorted(range(len(order)), key=order.__getitem__) for order in meta["orders"]]
        allowed = allowed_device_bytes(device)
        # on CPU (allowed None) the memory maps are the page cache already: never copied
        self.on_device = allowed is not None and keep_on_device(meta["nbytes"], allowed, on_device_wanted,
                                                                device_fraction)
        self.tensors: list[torch.Tensor] = []
        if self.on_device:
            with warnings.catch_warnings():  # the read-only maps are only read: copied to the device
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self.tensors = [host_tensor(np.asarray(a), self.dtype).to(device) for a in self.arrays]
        log.info("feature store %s: %.2f GB of %s features, %s", folder, meta["nbytes"] / 1e9, meta["dtype"],
                 "on the device" if self.on_device else "read from the memory maps")

    def gather(self, image_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The features of images image_index (B,): B rows each, on the device."""
        if self.on_device:
            index = image_index.to(self.device)
            rows = [t[index] for t in self.tensors]
        else:
            rows = read_rows(self.arrays, image_index, self.dtype, self.device)
        return tuple(r.permute(back) for r, back in zip(rows, self.unpermute, strict=True))


class FeatureStore:
    """A trial's access to the stores of its splits and its prompts' text features, memoised
    per frozen fingerprint (the tested best weights share the trial's frozen towers), which
    is computed once per model."""

    def __init__(self, inputs: ModelInputs, cfg: TrainConfig, device: torch.device):
        self.inputs, self.cfg, self.device = inputs, cfg, device
        self._text: dict[str, tuple[torch.Tensor, ...]] = {}
        self._splits: dict[tuple[str, Path], SplitFeatures] = {}
        self._keys: dict[tuple[str, Path], str] = {}
        self._fingerprints: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

    def _fingerprint(self, model: nn.Module) -> str:
        if model not in self._fingerprints:
            self._fingerprints[model] = frozen_fingerprint(model)
        return self._fingerprints[model]

    def _key(self, model: nn.Module, split: PreparedSplit) -> str:
        """`store_key` of split for model's frozen towers, computed once per pair."""
        memo = (self._fingerprint(model), split.root)
        if memo not in self._keys:
            self._keys[memo] = store_key(model, split, self.inputs.precision, self.device, memo[0])
        return self._keys[memo]

    def _remote_store(self, split: PreparedSplit, path: Path) -> str | None:
        """Where a store goes on shared storage: beside the cache's URI (None: a local cache)."""
        for cache in (self.cfg.train_cache, self.cfg.val_cache, self.cfg.test_cache):
            if cache and remote_cache.is_remote(cache) and remote_cache.local_folder(cache).resolve() == split.root.resolve():
                return f"{cache.rstrip('/').rsplit('/', 1)[0]}/{path.name}"
        return None

    def check_writable(self, model: nn.Module, splits: list[PreparedSplit]) -> None:
        """ValueError naming feature_store when a missing store could not be written."""
        for split in splits:
            path = store_path(split, self._key(model, split))
            problem = None if path.is_dir() else not_writable(path.parent)
            if problem:
                raise ValueError(f"feature_store: the store of {split.root} belongs beside it, but {problem}; "
                                 f"set feature_store False or prepare the cache in a writable folder")

    def text(self, model: nn.Module, fingerprint: str) -> tuple[torch.Tensor, ...]:
        """Every prompt row's `encode_text` (P rows each), computed once."""
        if fingerprint not in self._text:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                self._text[fingerprint] = self.inputs.text_table(model, self.cfg.eval_batch_size)
            model.train(was_training)
        return self._text[fingerprint]

    def split(self, model: nn.Module, split: PreparedSplit) -> SplitFeatures:
        """The stored features of split for model's frozen towers: built once per node."""
        fingerprint = self._fingerprint(model)
        memo = (fingerprint, split.root)
        if memo not in self._splits:
            key = self._key(model, split)
            path = store_path(split, key)
            remote = self._remote_store(split, path)
            if remote is not None and not path.is_dir() and remote_cache.is_published(remote):
                remote_cache.localize(remote)  # another node built it: fetched, not rebuilt
            started = time.perf_counter()
            if build_folder_once(path, lambda tmp: _build(tmp, model, split, self.inputs,
                                                          self.cfg.eval_batch_size, key),
                                 reusable=lambda folder: _reusable(folder, key)):
                # the manifest hashed the arrays as they were written: they count as verified
                integrity.remember_verified(path, json.loads((path / _META).read_text())["files"])
                log.info("built feature store %s (%d images) in %.1f s", path, split.n_images,
                         time.perf_counter() - started)
                if remote is not None:
                    remote_cache.publish_folder(path, remote)
            self._splits[memo] = SplitFeatures(path, self.device, self.text(model, fingerprint),
                                               self.cfg.data_on_device, self.cfg.store_device_fraction)
        return self._splits[memo]
