"""The preprocessing cache: each image of a split decoded, resized and prompted once into
a read-only, content-keyed folder that trials memory-map (docs/design.md, "The
preprocessing cache"). Nothing here imports torch.

Layout of one folder: ``images.npy`` (N, size, size) uint8 grey, ``labels.npy`` (N, size,
size) and ``eval_labels.npy`` (N, 512, 512) uint8 label maps 0..3, ``items.json`` (one item
per image and structure, with its prompts; a prompt whose metadata is missing is left
out) and ``meta.json`` (version, key, parameters, per-image metadata, ``prompt_counts``,
every other file's size and sha256, and its own checksum: `vlsm.integrity`). A folder
is verified when it is opened; `prepare_split` rebuilds a damaged one from its records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlsm import integrity
from vlsm.atomic import build_folder_once
from vlsm.axes import EVAL_SIZE, STRUCTURES
from vlsm.data.io import resize
from vlsm.data.itk_size import mhd_data_file
from vlsm.data.records import SPLITS, EchoImage
from vlsm.data.synthetic_sources import SYNTHETIC_SOURCE_REGISTRY, load_synthetic

__all__ = ["CACHE_VERSION", "dataset_kinds", "CacheItem", "PreparedSplit", "cache_key", "cache_folder_name",
           "check_split", "code_digest", "load_records", "open_split", "prepare_dataset", "prepare_records", "prepare_split",
           "resize_image"]

log = logging.getLogger(__name__)

# Bump when the layout or meaning of the cached files changes (3: meta.json records checksums).
CACHE_VERSION = 3

# Modules whose code decides the cached values; their source is part of the key.
_CODE_MODULES: tuple[str, ...] = (
    "vlsm.axes",  # structure names, hence prompts
    "vlsm.data.records",
    "vlsm.data.io",
    "vlsm.data.itk_size",  # what counts as a whole file
    "vlsm.data.label_codings",
    "vlsm.data.sdm",
    "vlsm.data.prompts",
    "vlsm.data.shapes",
    "vlsm.data.cache",
)
_ARRAYS: tuple[str, ...] = ("images", "labels", "eval_labels")
_CHECKED_FILES: tuple[str, ...] = (*(f"{name}.npy" for name in _ARRAYS), "items.json")  # meta.json's manifest
# Preprocessing is CPU-bound (decoding, resizing, shape classification at 512 px).
_PARALLEL_MIN_IMAGES = 64
_MAX_WORKERS = 8


@dataclass(frozen=True)
class CacheItem:
    """One sample: structure `structure` of image `image_index`, named <record.name>_<LV|MYO|LA>;
    prompts maps "p0".."p7" to "" or a pair of phrasings."""

    image_index: int
    structure: int  # 1 LV cavity, 2 myocardium, 3 LA (vlsm.axes.STRUCTURES)
    name: str
    prompts: dict[str, str | tuple[str, str]]
    # Real images only: the same prompts in the synthetic style (p0-p6, p6 = shape, no
    # image quality), which models trained on synthetic data are tested with.
    synthetic_prompts: dict[str, str | tuple[str, str]] | None = None
    synthetic: bool = False  # its image is synthetic (from the record's meta; a mixed split has both)


@dataclass(frozen=True, eq=False)
class PreparedSplit:
    """A cache folder opened read-only, its arrays memory maps of its .npy files; pickling (Ray)
    sends only the path and the receiver re-opens the maps, so no process copies the arrays."""

    root: Path
    size: int
    split: str
    source: str
    images: np.ndarray = field(repr=False)  # (N, size, size) uint8 grayscale 0-255
    labels: np.ndarray = field(repr=False)  # (N, size, size) uint8 in {0,1,2,3}, nearest
    eval_labels: np.ndarray = field(repr=False)  # (N, 512, 512) uint8 in {0,1,2,3}, nearest
    names: list[str] = field(repr=False)  # record.name per image
    records_meta: list[dict] = field(repr=False)  # patient, view, phase, split, ... per image
    items: list[CacheItem] = field(repr=False)  # one per (image, structure): 3 * N

    def __len__(self) -> int:
        """Number of items (image-structure pairs), not images."""
        return len(self.items)

    @property
    def n_images(self) -> int:
        return len(self.names)

    @property
    def synthetic(self) -> bool:
        """Whether the split holds synthetic (SDM) images."""
        return any(meta.get("synthetic") for meta in self.records_meta)

    def __reduce__(self):
        return (open_split, (self.root,))


# --- the key --------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    """sha256 of the file's bytes (and of its .raw for a .mhd header)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: input file not found while computing the cache key")
    digest = hashlib.sha256()
    data_file = mhd_data_file(path) if path.name.lower().endswith(".mhd") else None
    for file in [path] if data_file is None else [path, data_file]:
        if not file.is_file():
            raise ValueError(f"{file}: data file of {path} not found")
        with open(file, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def code_digest(modules: Sequence[str]) -> str:
    """sha256 of the source of `modules` (those that decide what a folder holds) and of
    the VLSM_PLUGINS modules (their registry entries may decide it too)."""
    import importlib

    from vlsm.registry import plugin_modules

    digest = hashlib.sha256()
    for module_name in (*modules, *plugin_modules()):
        digest.update(module_name.encode())
        digest.update(Path(importlib.import_module(module_name).__file__).read_bytes())
    return digest.hexdigest()


def _jsonable(value):
    """Records' metadata as JSON-friendly values (paths as str, tuples as lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _record_fields(rec: EchoImage) -> dict:
    """Everything about a record except where its files are (moving data keeps the key)."""
    fields = {"source": rec.source, "patient": rec.patient, "view": rec.view, "phase": rec.phase,
              "split": rec.split, "variant": rec.variant, "info": dataclasses.asdict(rec.info),
              "n_masks": len(rec.mask_paths)}
    if rec.prompts is not None:
        fields["prompts"] = {str(k): _jsonable(v) for k, v in sorted(rec.prompts.items())}
    if rec.text is not None:  # the generator's prompt (absent: the keys of old records stay)
        fields["text"] = rec.text
    return fields


def cache_key(records: Sequence[EchoImage], size: int, *, eval_size: int = EVAL_SIZE) -> str:
    """Content hash (sha256 hex) of what a cache built from these records would hold: every
    input file's bytes (a .mhd's .raw too), the records' metadata and order, the sizes,
    CACHE_VERSION and the code of `_CODE_MODULES`."""
    digest = hashlib.sha256()
    header = {"cache_version": CACHE_VERSION, "size": size, "eval_size": eval_size}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(code_digest(_CODE_MODULES).encode())
    for rec in records:
        digest.update(json.dumps(_record_fields(rec), sort_keys=True, default=str).encode())
        for path in (rec.image_path, *rec.mask_paths):
            digest.update(_file_digest(Path(path)).encode())
    return digest.hexdigest()


def cache_folder_name(name: str, split: str, size: int, key: str) -> str:
    return f"{name}-{split}-{size}-{key[:16]}"


# --- building -------------------------------------------------------------------------


def resize_image(array: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 grey -> (size, size) as the cache resizes images (what a model saw)."""
    return resize(array, size, nearest=False)


def _as_prompt_set(prompts: Mapping) -> dict[str, str | tuple[str, str]]:
    """Prompts with lists (JSON) turned back into (phrasing 1, phrasing 2) tuples."""
    return {str(key): value if isinstance(value, str) else tuple(value) for key, value in prompts.items()}


def _shape(rec: EchoImage, structure: int, mask512: np.ndarray) -> str | None:
    """The P7 shape word of a structure (on its 512 x 512 mask), or None if it has none."""
    from vlsm.data.shapes import classify_shape

    binary = mask512 == structure  # (512, 512) bool
    if not binary.any():
        return None
    try:
        return classify_shape(binary)
    except ValueError as err:  # degenerate outline (a few pixels): no shape prompt
        log.debug("%s structure %d: no shape (%s)", rec.name, structure, err)
        return None


def _item_prompts(rec: EchoImage, structure: int, shape: str | None, *, synthetic: bool) -> dict:
    """The record's own prompts (authors' layout) or prompts built from its metadata in
    the real or the synthetic style; with the generator's text (`rec.text`) also
    "generator" (`vlsm.data.prompts.generator_prompt`)."""
    prompts = _metadata_prompts(rec, structure, shape, synthetic=synthetic)
    if rec.text is not None:
        from vlsm.data.prompts import GENERATOR_PROMPT, generator_prompt

        prompts[GENERATOR_PROMPT] = generator_prompt(structure, rec.text)
    return prompts


def _metadata_prompts(rec: EchoImage, structure: int, shape: str | None, *, synthetic: bool) -> dict:
    if rec.prompts is not None:
        if structure not in rec.prompts:
            raise ValueError(
                f"{rec.image_path}: record {rec.name} carries prompts for structures "
                f"{sorted(rec.prompts)}, but not for structure {structure}"
            )
        return _as_prompt_set(rec.prompts[structure])
    from vlsm.data.prompts import build_prompts, prompt_keys

    try:
        return _as_prompt_set(build_prompts(rec, structure, shape=shape, synthetic=synthetic))
    except ValueError as err:
        # Missing metadata (an age, a shape) only rules out the prompts that need it:
        # keep the others so that e.g. P1 trials still run; meta.json counts them.
        log.debug("%s: %s", rec.name, err)
    prompts: dict[str, str | tuple[str, str]] = {}
    for key in prompt_keys(synthetic):
        try:
            prompts.update(build_prompts(rec, structure, shape=shape, keys=[key], synthetic=synthetic))
        except ValueError:
            continue
    return _as_prompt_set(prompts)


def _record_meta(rec: EchoImage) -> dict:
    return {"name": rec.name, "source": rec.source, "patient": rec.patient, "view": rec.view, "phase": rec.phase,
            "split": rec.split, "variant": rec.variant, "synthetic": rec.synthetic, **dataclasses.asdict(rec.info),
            "image_path": str(rec.image_path), "mask_paths": [str(p) for p in rec.mask_paths], "text": rec.text}


@dataclass(frozen=True)
class _Processed:
    """One record, preprocessed (what a worker process sends back)."""

    image: np.ndarray  # (size, size) uint8
    labels: np.ndarray  # (size, size) uint8 in 0..3
    eval_labels: np.ndarray  # (512, 512) uint8 in 0..3
    prompts: list[dict]  # per structure 1, 2, 3
    synthetic_prompts: list[dict | None]  # per structure: real images in the synthetic style
    missing: list[str]  # prompt keys some structure could not get


def _process(rec: EchoImage, size: int) -> _Processed:
    """Read, resize and prompt one record (runs in the parent or a worker process)."""
    from vlsm.data.io import read_image, read_label_map
    from vlsm.data.prompts import prompt_keys

    image = read_image(rec)  # (H, W) uint8
    label_map = read_label_map(rec)  # (H, W) uint8 in 0..3
    if image.shape != label_map.shape:
        raise ValueError(
            f"{rec.image_path}: image shape {image.shape} differs from its mask "
            f"{rec.mask_paths[0]} shape {label_map.shape}"
        )
    mask512 = resize(label_map, EVAL_SIZE, nearest=True)  # (512, 512)
    prompts, synthetic_prompts, missing = [], [], []
    for structure in sorted(STRUCTURES):
        shape = _shape(rec, structure, mask512) if rec.prompts is None else None
        item_prompts = _item_prompts(rec, structure, shape, synthetic=rec.synthetic)
        if rec.prompts is None:
            missing += [k for k in prompt_keys(rec.synthetic) if k not in item_prompts]
        prompts.append(_jsonable(item_prompts))
        as_synthetic = None
        if rec.prompts is None and not rec.synthetic:
            as_synthetic = _jsonable(_item_prompts(rec, structure, shape, synthetic=True))
        synthetic_prompts.append(as_synthetic)
    return _Processed(image=resize(image, size, nearest=False), labels=resize(label_map, size, nearest=True),
                      eval_labels=mask512, prompts=prompts, synthetic_prompts=synthetic_prompts, missing=missing)


def _default_workers(n: int) -> int:
    """Worker processes for n images: none for small jobs (start-up costs ~1 s)."""
    if n < _PARALLEL_MIN_IMAGES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cpus))


@contextmanager
def _processed(records: Sequence[EchoImage], size: int, workers: int) -> Iterator:
    """_Processed per record, in order; in `workers` spawned processes when > 1."""
    if workers <= 1:
        yield (_process(rec, size) for rec in records)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from itertools import repeat

    # spawn, not fork: the caller may hold threads (Ray, tqdm) that fork would copy broken
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        yield pool.map(_process, records, repeat(size), chunksize=4)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # do not finish a failed build
        raise
    pool.shutdown()


def _build(folder: Path, records: Sequence[EchoImage], size: int, meta: dict, progress: bool, workers: int) -> None:
    """Write the arrays, items.json and meta.json of one split into folder."""
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    n = len(records)
    # Written straight to disk: SDM train at 416 px would not fit in memory.
    images = open_memmap(folder / "images.npy", "w+", np.uint8, (n, size, size))
    labels = open_memmap(folder / "labels.npy", "w+", np.uint8, (n, size, size))
    eval_labels = open_memmap(folder / "eval_labels.npy", "w+", np.uint8, (n, EVAL_SIZE, EVAL_SIZE))
    items: list[dict] = []
    missing: Counter[str] = Counter()  # prompt key -> items that could not get it
    desc = f"prepare {meta['name']}/{meta['split']} @ {size}px"
    with _processed(records, size, workers) as results:
        bar = tqdm(results, total=n, desc=desc, unit="img", disable=not progress)
        for index, (rec, done) in enumerate(zip(records, bar, strict=True)):
            images[index] = done.image
            labels[index] = done.labels
            eval_labels[index] = done.eval_labels
            missing.update(done.missing)
            items += [
                {"image_index": index, "structure": structure, "name": f"{rec.name}_{short}",
                 "prompts": prompts, "synthetic_prompts": as_synthetic}
                for (structure, short), prompts, as_synthetic
                in zip(sorted(STRUCTURES.items()), done.prompts, done.synthetic_prompts, strict=True)
            ]
    for array in (images, labels, eval_labels):
        array.flush()
    del images, labels, eval_labels
    _write_json(folder / "items.json", items)
    prompt_counts = dict(Counter(key for item in items for key in item["prompts"]))
    if missing:
        log.warning("%s/%s: some items lack prompts (missing metadata or shape): %s", meta["name"], meta["split"],
                    ", ".join(f"{k} missing for {m} item(s)" for k, m in sorted(missing.items())))
    meta = {**meta, "n_images": n, "n_items": len(items), "prompt_counts": prompt_counts,  # items per prompt key
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "names": [rec.name for rec in records],
            "records": [_record_meta(rec) for rec in records], "files": integrity.manifest(folder, _CHECKED_FILES)}
    _write_json(folder / "meta.json", integrity.seal(meta))  # written last: its presence = complete


def _write_json(path: Path, value) -> None:
    with open(path, "w") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _check_records(records: Sequence[EchoImage], split: str, size: int, name: str) -> None:
    if not records:
        raise ValueError(f"prepare_split: no records for split {split!r} of {name!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"prepare_split: size must be a positive int, got {size!r}")
    if not name or "/" in name or os.sep in name or name.startswith("."):
        raise ValueError(
            f"prepare_split: name {name!r} must be a non-empty file-name-safe string "
            "(no '/', not starting with '.')"
        )
    for rec in records:
        if rec.split != split:
            raise ValueError(
                f"{rec.image_path}: record {rec.name} belongs to split {rec.split!r}, "
                f"but prepare_split was asked for split {split!r}"
            )
        if not rec.mask_paths:
            raise ValueError(
                f"{rec.image_path}: record {rec.name} has no ground-truth mask; the cache "
                "needs labelled images (drop unlabelled records, e.g. CAMUS 2019 testing)"
            )
    names = [rec.name for rec in records]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ValueError(f"prepare_split: duplicate record names in split {split!r}: {dupes}")


def prepare_split(
    records: Sequence[EchoImage], split: str, size: int, cache_dir: Path, *, name: str,
    progress: bool = True, workers: int | None = None,
) -> Path:
    """Build (or reuse) the cache folder <cache_dir>/<name>-<split>-<size>-<key[:16]> of one
    split at one input size, atomically; return it. workers: processes that decode and
    resize (default up to 8 for 64+ images; 1 = this process); the result does not depend on it."""
    records = list(records)
    _check_records(records, split, size, name)
    cache_dir = Path(cache_dir)
    key = cache_key(records, size)
    final = cache_dir / cache_folder_name(name, split, size, key)
    sources = sorted({rec.source for rec in records})
    meta = {"cache_version": CACHE_VERSION, "key": key, "name": name, "split": split, "size": size,
            "eval_size": EVAL_SIZE, "source": "+".join(sources)}
    started = time.perf_counter()
    n_workers = _default_workers(len(records)) if workers is None else workers
    if build_folder_once(final, lambda tmp: _build(tmp, records, size, meta, progress, n_workers),
                         reusable=_reusable):
        # the manifest hashed the files as they were written: they count as verified
        integrity.remember_verified(final, json.loads((final / "meta.json").read_text())["files"])
        log.info("built cache %s (%d images) in %.1f s", final, len(records), time.perf_counter() - started)
    else:
        log.info("reusing cache %s", final)
    return final


# --- opening --------------------------------------------------------------------------


def _remedy(path: Path) -> str:
    from vlsm.data.remote_cache import LOCAL_ROOT

    if Path(LOCAL_ROOT).resolve() in path.resolve().parents:  # downloaded by `localize`
        return (f"the cache folder {path} is this node's copy of one on shared storage: delete it "
                "(the next trial downloads it again)")
    return (f"the cache folder {path.name} is damaged: run `vlsm prepare` or the sweep's command again "
            "(they verify it and rebuild it from the dataset)")


def check_split(path: Path) -> dict:
    """A cache folder's meta.json, after checking it and every file it lists (`vlsm.integrity`:
    sizes always, digests once per file version or, with VLSM_VERIFY=always, every time);
    CorruptFile (a ValueError) names the first damaged file."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise integrity.CorruptFile(path, "not a prepared cache folder (no meta.json)", "run `vlsm prepare` first")
    meta = integrity.read_json(meta_path, _remedy(path))
    version = meta.get("cache_version") if isinstance(meta, dict) else None
    if version != CACHE_VERSION:  # an older layout (no checksums before 3), or a damaged file
        raise integrity.CorruptFile(meta_path, f"cache_version {version!r}, expected {CACHE_VERSION}",
                                    "re-run `vlsm prepare` (it builds a new folder) and delete this one")
    meta = integrity.check_sealed(meta, meta_path, _remedy(path))
    integrity.verify_files(path, meta["files"], _remedy(path))
    return meta


def _reusable(folder: Path) -> bool:
    """Whether folder is a whole, undamaged cache (else it is rebuilt: logged with the reason)."""
    if not folder.is_dir():
        return False
    try:
        check_split(folder)
    except integrity.CorruptFile as err:
        log.warning("rebuilding cache %s from its records: %s: %s", folder, err.path.name, err.problem)
        return False
    return True


def open_split(path: Path) -> PreparedSplit:
    """Open a cache folder read-only (arrays memory-mapped, mmap_mode="r"), verified first
    (`check_split`)."""
    path = Path(path)
    meta = check_split(path)
    arrays = {array_name: np.load(path / f"{array_name}.npy", mmap_mode="r") for array_name in _ARRAYS}
    size, n = int(meta["size"]), int(meta["n_images"])
    eval_size = int(meta["eval_size"])
    expected = {"images": (n, size, size), "labels": (n, size, size), "eval_labels": (n, eval_size, eval_size)}
    for array_name, shape in expected.items():
        if arrays[array_name].shape != shape or arrays[array_name].dtype != np.uint8:
            raise ValueError(
                f"{path / (array_name + '.npy')}: shape {arrays[array_name].shape} dtype "
                f"{arrays[array_name].dtype}, expected {shape} uint8; delete it and re-prepare"
            )
    raw_items = integrity.read_json(path / "items.json", _remedy(path))
    items = [
        CacheItem(
            image_index=int(it["image_index"]),
            structure=int(it["structure"]),
            name=it["name"],
            prompts=_as_prompt_set(it["prompts"]),
            synthetic_prompts=_as_prompt_set(it["synthetic_prompts"]) if it.get("synthetic_prompts") else None,
            synthetic=bool(meta["records"][int(it["image_index"])].get("synthetic")),
        )
        for it in raw_items
    ]
    return PreparedSplit(root=path, size=size, split=meta["split"], source=meta["source"], **arrays,
                         names=list(meta["names"]), records_meta=list(meta["records"]), items=items)


# --- whole datasets -------------------------------------------------------------------


def _load_records(kind: str, root: Path, split_scheme: str, n_val: int | None, camus_root: Path | None,
                  dataset: str) -> list[EchoImage]:
    if kind == "camus":
        from vlsm.data.camus import PAPER_VAL_PATIENTS, empty_split, load_camus

        n_val = PAPER_VAL_PATIENTS if n_val is None else n_val
        records = load_camus(root, split_scheme, n_val=n_val)
        why = empty_split(records, root, split_scheme, n_val)
        if why:
            raise ValueError(why)
        return records
    if kind in SYNTHETIC_SOURCE_REGISTRY:
        return load_synthetic(kind, root, camus_root, split_scheme, n_val)
    if kind == "synthetic-boost":
        from vlsm.data.synthetic_boost import load_synthetic_boost

        return load_synthetic_boost(root, dataset=dataset)
    raise ValueError(f"prepare_dataset: unknown kind {kind!r}; expected one of {dataset_kinds()}")


def dataset_kinds() -> tuple[str, ...]:
    """What `prepare_dataset` reads: CAMUS, the authors' layout and every synthetic source."""
    return ("camus", "synthetic-boost", *SYNTHETIC_SOURCE_REGISTRY.names())


def prepare_records(
    records: Sequence[EchoImage], size: int, cache_dir: Path, *, name: str,
    progress: bool = True, workers: int | None = None,
) -> dict[str, Path]:
    """Prepare one cache per split present in records, skipping (with a warning) records
    without ground truth (CAMUS 2019 testing); return {split: folder}."""
    labelled = [rec for rec in records if rec.mask_paths]
    if len(labelled) < len(records):
        first = next(rec for rec in records if not rec.mask_paths)
        log.warning("%s: skipping %d image(s) without ground truth (e.g. %s)", name, len(records) - len(labelled),
                    first.image_path)
    if not labelled:
        raise ValueError(f"prepare {name!r}: no labelled images among {len(records)} records")
    unknown = sorted({rec.split for rec in labelled} - set(SPLITS))
    if unknown:
        raise ValueError(f"prepare {name!r}: unknown split(s) {unknown}; expected {SPLITS}")
    out: dict[str, Path] = {}
    for split in SPLITS:
        split_records = [rec for rec in labelled if rec.split == split]
        if split_records:
            out[split] = prepare_split(split_records, split, size, cache_dir, name=name, progress=progress,
                                       workers=workers)
    return out


def prepare_dataset(
    kind: str, root: Path, size: int, cache_dir: Path, split_scheme: str = "paper", *, n_val: int | None = None,
    camus_root: Path | None = None, dataset: str = "camus", progress: bool = True, workers: int | None = None,
) -> dict[str, Path]:
    """Read a dataset (kind: one of `dataset_kinds`) and prepare one cache per split; return
    {split: folder}. split_scheme and n_val (default the paper's 50) as `load_camus`'s; for
    "sdm" camus_root gives P4-P6 their metadata; n_val also counts the validating DiffEcho
    subjects and imagefolder patients; dataset picks the authors' layout's data set."""
    records = _load_records(kind, Path(root), split_scheme, n_val, camus_root, dataset)
    name = kind if kind != "synthetic-boost" else f"synthetic-boost-{dataset}"
    return prepare_records(records, size, cache_dir, name=name, progress=progress, workers=workers)


def load_records(kind: str, root: Path, split_scheme: str = "paper", n_val: int | None = None,
                 camus_root: Path | None = None) -> list[EchoImage]:
    """A dataset's records as its reader gives them (kind as `prepare_dataset`'s), e.g.
    to prepare real and synthetic training images as one split (real+synthetic)."""
    return _load_records(kind, Path(root), split_scheme, n_val, camus_root, "camus")
