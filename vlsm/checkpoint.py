"""Checkpoints as plain files: safetensors for tensors, JSON for everything else; loading
runs no pickle. A checkpoint folder (what `vlsm.train` reports):

    weights.safetensors      model tensors, frozen towers left out (rebuilt from the spec, verified by hash)
    model_spec.json          {"spec": model.spec, "init_seed", "stored", "frozen", "frozen_sha256"}
    train_state.safetensors  optimizer tensors and RNG states; train_state.json the rest
    config.json              the resolved TrainConfig
    best/                    the best epoch's weights + model_spec.json + metrics.json + tokenizer/
    per_image.parquet        test metrics of best/ (last checkpoint of a trial only)
    manifest.json            size and sha256 of each file above (best/ by its own manifest), written last

Why and how frozen towers are re-derived: docs/design.md, "One trial". A folder whose files
differ from its manifest is never loaded (`DamagedFileError`); one without a manifest (written
before there were manifests) loads unverified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlsm import integrity
from vlsm.atomic import atomic_path, write_json_atomic
from vlsm.model_registry import INIT_SEED

__all__ = [
    "BEST_DIR", "CONFIG_FILE", "MANIFEST_FILE", "MODEL_SPEC_FILE", "PER_IMAGE_FILE", "TOKENIZER_DIR",
    "TRAIN_STATE_JSON", "TRAIN_STATE_TENSORS", "WEIGHTS_FILE", "CheckpointError", "DamagedFileError", "capture_rng",
    "copy_tree", "frozen_fingerprint", "frozen_names", "host_copy", "load_model", "load_stored_into",
    "load_tokenizer", "load_train_state", "load_weights_into", "optimizer_from_flat", "optimizer_to_flat",
    "read_json", "rebuild", "restore_rng", "resumable", "save_model", "save_train_state", "seal", "verify",
]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
MODEL_SPEC_FILE = "model_spec.json"
TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
CONFIG_FILE = "config.json"
BEST_DIR = "best"
TOKENIZER_DIR = "tokenizer"
PER_IMAGE_FILE = "per_image.parquet"
MANIFEST_FILE = integrity.MANIFEST_FILE
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files, inconsistent or not re-derivable."""


class DamagedFileError(CheckpointError):
    """A file of a checkpoint folder that is not as it was written (truncated, bytes flipped):
    its size or hash differs from the folder's manifest."""


def seal(directory: Path, algorithm: str = integrity.ALGORITHM) -> None:
    """Write directory's manifest, last: every file in it, except that a subfolder with a
    manifest of its own (best/, sealed when it was written) is listed by that manifest alone,
    so its files are hashed once, not again with every checkpoint that links them."""
    directory = Path(directory)
    sealed = [d for d in directory.iterdir() if d.is_dir() and (d / MANIFEST_FILE).is_file()]
    names = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        owner = next((d for d in sealed if d in path.parents), None)
        if path == directory / MANIFEST_FILE or (owner is not None and path != owner / MANIFEST_FILE):
            continue
        names.append(path.relative_to(directory).as_posix())
    integrity.write_manifest(directory, names, algorithm)


def verify(directory: Path, names: Sequence[str] | None = None) -> None:
    """DamagedFileError (one line, the file named) when a file of directory's manifest, or
    of a manifest it lists (best/'s), is not as written; `names`: only those files."""
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).is_file():
        log.info("%s: no %s (written before checkpoints had one): loaded unverified", directory, MANIFEST_FILE)
        return
    for bad in integrity.verify_manifest(directory, names):
        raise DamagedFileError(f"{directory / bad.name}: damaged since it was written ({bad.why})")
    if names is None:
        manifest = integrity.read_manifest(directory) or {"files": {}}
        for name in manifest["files"]:
            if name.endswith(f"/{MANIFEST_FILE}"):
                verify(directory / name.rsplit("/", 1)[0])


def resumable(directory: Path, cell: str = "") -> bool:
    """Whether a trial may resume from the checkpoint in directory: False, with one warning
    line naming the file, when a file is damaged (the trial then trains again from its start)."""
    try:
        verify(directory)
    except DamagedFileError as err:
        log.warning("%s%s; not resumed from it: the trial trains again from its start",
                    f"cell {cell}: " if cell else "", err)
        return False
    return True


def _existing(path: Path) -> Path:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: missing; not a complete vlsm checkpoint folder")
    return Path(path)


def read_json(path: Path) -> Any:
    return json.loads(_existing(path).read_text())


def _read_meta(path: Path) -> dict:
    """A checkpoint JSON file of this format."""
    meta = read_json(path)
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {_FORMAT}")
    return meta


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Written atomically; shared storages are cloned (safetensors forbids them)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(ptr)
        out[name] = tensor
    with atomic_path(path) as tmp:
        save_file(out, str(tmp))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(_existing(path)))


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where possible (checkpoints are never modified in place)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy, dirs_exist_ok=True)


def frozen_names(model: nn.Module) -> list[str]:
    """State-dict keys of the parameters that do not train (requires_grad False)."""
    return sorted(name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad)


def frozen_fingerprint(model: nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of the frozen parameters."""
    state = model.state_dict()
    digest = hashlib.sha256()
    for name in frozen_names(model):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rebuild(spec: Mapping[str, Any]) -> nn.Module:
    """The model a checkpoint's spec describes, random init (its init_seed) included."""
    from vlsm.models import build_model

    return build_model(**spec)


def _stored(model: nn.Module, include_frozen: bool) -> dict[str, torch.Tensor]:
    """The state-dict tensors a checkpoint stores: all but the frozen parameters, unless
    include_frozen (views of the model's own tensors)."""
    skip = set() if include_frozen else set(frozen_names(model))
    return {name: t for name, t in model.state_dict().items() if name not in skip}


def host_copy(model: nn.Module, *, include_frozen: bool = False) -> dict[str, torch.Tensor]:
    """A copy in host memory of what `save_model` would store now: the best epoch's weights
    are kept so and written with the next checkpoint, not at every improvement."""
    return {name: t.detach().to("cpu", copy=True) for name, t in _stored(model, include_frozen).items()}


def save_model(
    model: nn.Module,
    directory: Path,
    *,
    include_frozen: bool = False,
    frozen_sha256: str | None = None,
    extra: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write weights.safetensors (all but the frozen parameters, unless include_frozen) and
    model_spec.json into directory. frozen_sha256: the model's `frozen_fingerprint`, if known
    (else computed); tokenizer: saved to tokenizer/; tensors: a `host_copy` (same
    include_frozen) to store instead of the current ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, Mapping):
        raise CheckpointError(f"save_model: {type(model).__name__} has no `spec` dict to rebuild it")
    frozen = frozen_names(model)
    stored = dict(tensors) if tensors is not None else _stored(model, include_frozen)
    if frozen and frozen_sha256 is None:
        frozen_sha256 = frozen_fingerprint(model)
    _save_tensors(directory / WEIGHTS_FILE, stored)
    meta = {
        "format": _FORMAT,
        "spec": dict(spec),
        "init_seed": int(spec.get("init_seed", INIT_SEED)),  # the seed its random init used
        "stored": sorted(stored),
        "frozen": frozen,
        "frozen_sha256": frozen_sha256 if frozen else None,
        **(dict(extra) if extra else {}),
    }
    if tokenizer is not None:  # callers write directory as a whole, beside its place
        tokenizer.save_pretrained(directory / TOKENIZER_DIR)
    write_json_atomic(directory / MODEL_SPEC_FILE, meta)


def load_stored_into(model: nn.Module, directory: Path) -> dict:
    """Load a checkpoint's tensors into model, built from the same spec; verify the re-derived
    frozen ones. Returns its model_spec.json."""
    directory = Path(directory)
    meta = _read_meta(directory / MODEL_SPEC_FILE)
    stored = _load_tensors(directory / WEIGHTS_FILE)
    state = model.state_dict()
    frozen = frozen_names(model)
    unexpected = sorted(set(stored) - set(state))
    missing = sorted(set(state) - set(stored) - set(frozen))
    if unexpected or missing:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: does not match the model built from "
            f"{MODEL_SPEC_FILE}: unexpected tensors {unexpected[:5]}, missing {missing[:5]}"
        )
    for name, tensor in stored.items():
        if tensor.shape != state[name].shape:
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(state[name].shape)}"
            )
    if any(name not in stored for name in frozen):
        if frozen_fingerprint(model) != meta.get("frozen_sha256"):
            raise CheckpointError(
                f"{directory}: the frozen encoder re-derived from {MODEL_SPEC_FILE} (spec "
                f"{meta['spec']}, init_seed {meta['init_seed']}) differs from the one trained "
                "(frozen_sha256 mismatch); were the pretrained weights changed or moved?"
            )
    model.load_state_dict({**state, **stored}, strict=True)
    return meta


def load_model(directory: Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by `save_model`, in eval mode (ready to predict); its files are
    checked against its manifest, frozen tensors re-derived and verified."""
    _verify_to_load(directory, "", "not loaded: restore the folder from a copy, or train the model again")
    return _rebuilt(directory).to(device).eval()


def _rebuilt(directory: Path) -> nn.Module:
    meta = read_json(Path(directory) / MODEL_SPEC_FILE)
    model = rebuild(meta["spec"])
    load_stored_into(model, directory)
    return model


def _verify_to_load(directory: Path, prefix: str, advice: str) -> None:
    """`verify`, its one line prefixed and followed by what to do."""
    try:
        verify(directory)
    except DamagedFileError as err:
        raise DamagedFileError(f"{prefix}{err}; {advice}") from None


def load_tokenizer(directory: Path):
    """The `PromptTokenizer` saved beside a model by `save_model(..., tokenizer=...)`."""
    from vlsm.models.tokenizer import load_clip_tokenizer

    folder = Path(directory) / TOKENIZER_DIR
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: missing; this model folder was saved without its tokenizer")
    return load_clip_tokenizer(folder)


def load_weights_into(model: nn.Module, directory: Path) -> None:
    """Copy every tensor of the checkpoint in directory into model (`init_from`: weights only;
    the architectures must match)."""
    _verify_to_load(directory, "init_from ", "the upstream trial's best weights cannot be trusted: restore them "
                    "from a copy, or train that upstream again (e.g. its cells alone in a new --output)")
    source = _rebuilt(directory)
    try:
        model.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"init_from {directory}: its model ({read_json(Path(directory) / MODEL_SPEC_FILE)['spec']}) "
            f"does not fit this trial's model: {err}"
        ) from err


def optimizer_to_flat(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """optimizer.state_dict() -> (tensors "optimizer.<param>.<key>", JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    """Inverse of `optimizer_to_flat` (betas come back as tuples)."""
    per_param: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = tensor
    for index, values in meta["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": dict(sorted(per_param.items())), "param_groups": groups}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """The states of torch (CPU and CUDA), numpy and Python's global RNGs."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, gauss_next = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
                     "python": [version, list(py_state), gauss_next]}


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng` (CUDA states only when the same devices exist)."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss_next = meta["python"]
    random.setstate((version, tuple(py_state), gauss_next))


def save_train_state(directory: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write train_state.safetensors + train_state.json (JSON last: it marks completeness)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _save_tensors(directory / TRAIN_STATE_TENSORS, tensors)
    write_json_atomic(directory / TRAIN_STATE_JSON, {"format": _FORMAT, **meta})


def load_train_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what `save_train_state` wrote: (tensors, meta). Nothing is unpickled."""
    directory = Path(directory)
    meta = _read_meta(directory / TRAIN_STATE_JSON)
    return _load_tensors(directory / TRAIN_STATE_TENSORS), meta
