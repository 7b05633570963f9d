"""The sweep definition: search_spaces/paper.yaml, optionally overlaid by demo.yaml or a
user's `--config FILE`, then `--set key=value` overrides, become one typed `SweepSpec`
whose annotations say what each value may be; a bad value fails with the file (or option)
and the dotted key (docs/design.md, "Settings").
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from vlsm.axes import ENCODERS, PAPER_SEED, PROVENANCE_PROMPT, SOURCE_SDM, STRATEGY_REAL, VAL_DICE
from vlsm.config import TrainConfig  # light: no torch
from vlsm.data.prompts import DEFAULT_PROVENANCE_PHRASES, prompt_names  # light: no numpy
from vlsm.data.synthetic_sources import source_names
from vlsm.model_registry import model_key, model_names
from vlsm.strategies import paper_strategies, strategy_names, uses_synthetic
from vlsm.typed_config import Check, Choice, ConfigError, Range, from_mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_YAML, DEMO_YAML = REPO_ROOT / "search_spaces" / "paper.yaml", REPO_ROOT / "search_spaces" / "demo.yaml"


class SpecError(ValueError):
    """A sweep definition the user wrote (YAML or --set) is not what we expect."""


def _each_once(values: tuple) -> bool:
    return len(set(values)) == len(values)


def _two_phrases(phrases: dict[str, str]) -> bool:
    return set(phrases) == {"real", "synthetic"} and all(v.strip() for v in phrases.values())


def _tiny_or_mapping(config: Any) -> bool:
    return config == "tiny" or isinstance(config, dict)


def _gpu_share(gpu: float) -> bool:
    return gpu <= 1 or gpu.is_integer()


NonEmpty = Check(bool, "one value or more")
EachOnce = Check(_each_once, "each value once")
NonNegative = Range(ge=0)
Encoder = Literal["frozen", "unfrozen"]  # vlsm.axes.ENCODERS
Model = Annotated[str, Choice(model_names)]
Prompt = Annotated[str, Choice(prompt_names)]
Strategy = Annotated[str, Choice(strategy_names)]
Source = Annotated[str, Choice(source_names)]
Phrases = Annotated[dict[str, str], Check(_two_phrases, "{real: <phrase>, synthetic: <phrase>}, two non-empty phrases")]


@dataclass(frozen=True)
class DataSpec:
    camus_root: str | None = None  # raw CAMUS folder, 2019 or 2023 release
    sdm_root: str | None = None  # SDM CAMUS folder (synthetic source "sdm")
    synthetic_root: str | None = None  # a synthetic dataset in synthetic_format (another source)
    synthetic_format: Source = "sdm"  # the source's name too
    split_scheme: Literal["paper", "official"] = "paper"  # official: the 2023 split files
    val_patients: int = 50  # paper split: the first this many non-test patients validate
    cache_dir: str | None = None  # default: <output>/cache
    demo: bool = False  # generate phantom data instead of reading a dataset
    demo_patients: int = 24  # the demo's patients: its test ones, val_patients, the rest train
    demo_test_patients: int = 4
    demo_image_size: tuple[int, int] = (128, 112)
    demo_sdm_per_image: int = 1
    demo_seed: int = 0


@dataclass(frozen=True)
class GridSpec:
    models: Annotated[tuple[Model, ...], NonEmpty] = field(default_factory=model_names)
    prompts: Annotated[tuple[Prompt, ...], NonEmpty] = field(default_factory=prompt_names)
    strategies: Annotated[tuple[Strategy, ...], NonEmpty] = field(default_factory=paper_strategies)
    encoders: Annotated[tuple[Encoder, ...], NonEmpty] = ENCODERS
    finetune_upstream: dict[Prompt, Prompt] = field(default_factory=dict)  # finetune prompt -> synthetic prompt
    # replicates: every cell once per seed
    seeds: Annotated[tuple[Annotated[int, NonNegative], ...], NonEmpty, EachOnce] = (PAPER_SEED,)
    synthetic_sources: Annotated[tuple[Source, ...], EachOnce] = ()  # () = every configured source (the demo: sdm)
    # real+synthetic: with ("prompt") / without ("none") the provenance phrase
    provenance: Annotated[tuple[Literal["prompt", "none"], ...], NonEmpty, EachOnce] = (PROVENANCE_PROMPT,)
    provenance_phrases: Phrases = field(default_factory=lambda: dict(DEFAULT_PROVENANCE_PHRASES))


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for (gpu is ignored where there is none)."""

    cpu: Annotated[float, Range(gt=0)] = 1.0
    gpu: Annotated[float, NonNegative, Check(_gpu_share, "a share in [0, 1] or a whole number of GPUs")] = 0.0


@dataclass(frozen=True)
class ModelSpec:
    pretrained: str | None = None  # hub id or local folder / file
    checkpoint: str | None = None  # official CRIS checkpoint
    tokenizer: str | None = None  # CLIP BPE tokenizer folder or hub id (CRIS: openai/clip-vit-base-patch32)
    config: Annotated[Any, Check(_tiny_or_mapping, "null, 'tiny' or a mapping")] = None  # mapping: config fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for this model
    resources: dict[Encoder, Resources] = field(default_factory=dict)


@dataclass(frozen=True)
class LRSearchSpec:
    trials: Annotated[int, NonNegative] = 0  # Optuna trials per (model, encoder); 0 = no search
    space: str = "search_spaces/lr_search.yaml"


@dataclass(frozen=True)
class RunSpec:
    max_concurrent: Annotated[int, NonNegative] = 0  # 0 = as many as resources allow
    max_failures: Annotated[int, NonNegative] = 1  # retries of a failing trial before it counts as failed
    reuse_actors: bool = True  # 0.3 s instead of 4.6 s per trial slot (docs/design.md)
    expected_epochs: Annotated[int, Range(ge=1)] = 60  # --dry-run: early stopping ends runs before max_epochs


@dataclass(frozen=True)
class SweepSpec:
    name: str = "paper-grid"
    data: DataSpec = field(default_factory=DataSpec)
    grid: GridSpec = field(default_factory=GridSpec)
    models: dict[Model, ModelSpec] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every trial
    lr_search: LRSearchSpec = field(default_factory=LRSearchSpec)
    run: RunSpec = field(default_factory=RunSpec)


class _Loader(yaml.SafeLoader):
    """yaml.safe_load, but `1e-4` is a float (YAML 1.1 reads it as text: it has no dot)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(Path(path).read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError as err:
        raise SpecError(f"{path}: sweep definition not found") from err
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Overlay wins; nested mappings merge key by key; lists and scalars are replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b.c=value` overrides; values are parsed as YAML (quote a text that
    looks like a number: `--set data.camus_root="'2023'"`)."""
    values = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected key=value, e.g. --set train.max_epochs=5")
        try:
            values[key] = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as err:
            raise SpecError(f"--set {item!r}: not a YAML value: {err}") from None
    return set_values(raw, values, option="--set")


def set_values(raw: dict[str, Any], values: dict[str, Any], *, option: str = "") -> dict[str, Any]:
    """Set dotted keys to values as they are (command-line options pass paths and names
    this way: `--camus-root 2023` stays the text "2023")."""
    result = copy.deepcopy(raw)
    for key, value in values.items():
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # an unset section (e.g. `config: null`) becomes one
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                raise SpecError(f"{option or key}: {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return result


def _check_across_fields(spec: SweepSpec, where: str) -> None:
    """What the annotations cannot say: the settings each trial merges, the data folders."""
    for name, model in spec.models.items():
        try:  # what every trial of this model gets
            TrainConfig.from_dict({**spec.train, **model.train, "model": model_key(name)})
        except ValueError as err:
            raise SpecError(f"{where}: train + models.{name}.train: {err}") from None
    for name, section in (("train", spec.train), *((f"models.{m}.train", s.train) for m, s in spec.models.items())):
        if "seed" in section:
            raise SpecError(f"{where}: {name}.seed: a trial's seed is the grid axis grid.seeds (--seeds); "
                            f"remove {name}.seed")
    data = spec.data
    if data.synthetic_root and data.sdm_root and data.synthetic_format == SOURCE_SDM:
        raise SpecError(f"{where}: data.sdm_root and data.synthetic_root (format sdm) both name an SDM source; "
                        f"give one, or set data.synthetic_format to diffecho or imagefolder")
    if not data.demo and any(uses_synthetic(s) for s in spec.grid.strategies):
        roots = synthetic_roots(spec)
        for source in grid_sources(spec):
            if source not in roots and roots:
                option = "--sdm-root" if source == SOURCE_SDM else f"--synthetic-root PATH --synthetic-format {source}"
                raise SpecError(f"{where}: grid.synthetic_sources has {source!r} but no folder is configured for "
                                f"it; give {option} (configured: {sorted(roots)})")


def synthetic_roots(spec: SweepSpec) -> dict[str, str]:
    """Synthetic source -> its folder, from data.sdm_root and data.synthetic_root."""
    roots = {}
    if spec.data.sdm_root:
        roots[SOURCE_SDM] = spec.data.sdm_root
    if spec.data.synthetic_root:
        roots[spec.data.synthetic_format] = spec.data.synthetic_root
    return roots


def grid_sources(spec: SweepSpec) -> tuple[str, ...]:
    """The sources synthetic strategies train on: grid.synthetic_sources, else the configured, else sdm."""
    if spec.grid.synthetic_sources:
        return spec.grid.synthetic_sources
    return tuple(synthetic_roots(spec)) or (SOURCE_SDM,)


def load_spec(*, config: Path | None = None, demo: bool | None = False, overrides: list[str] | None = None,
              values: dict[str, Any] | None = None) -> SweepSpec:
    """paper.yaml, demo.yaml (when `demo`), `config`, `--set` overrides, then `values`
    (typed, from options). demo=None: the demo exactly when no dataset folder is
    configured (decided first, so the demo's settings are the ones checked)."""

    def merged(with_demo: bool) -> tuple[dict[str, Any], list[str]]:
        raw, sources = load_yaml(PAPER_YAML), [str(PAPER_YAML)]
        if with_demo:
            raw, sources = deep_merge(raw, load_yaml(DEMO_YAML)), [*sources, str(DEMO_YAML)]
        if config is not None:
            raw, sources = deep_merge(raw, load_yaml(Path(config))), [*sources, str(config)]
        if overrides:
            raw, sources = apply_overrides(raw, overrides), [*sources, "--set"]
        if values:
            raw = set_values(raw, values)
        return raw, sources

    raw, sources = merged(bool(demo))
    if demo is None and not _raw_has_dataset(raw):
        raw, sources = merged(True)
    where = " + ".join(sources)
    try:
        spec = from_mapping(SweepSpec, raw)
    except ConfigError as err:
        raise SpecError(f"{where}: {err}") from None
    _check_across_fields(spec, where)
    return _with_model_sections(spec)


def _with_model_sections(spec: SweepSpec) -> SweepSpec:
    """Every model of the grid with its `models:` section: one the YAML does not name gets
    the defaults (tiny in the demo; elsewhere no weights, which the plan refuses)."""
    missing = [m for m in spec.grid.models if m not in spec.models]
    if not missing:
        return spec
    default = ModelSpec(config="tiny" if spec.data.demo else None)
    return dataclasses.replace(spec, models={**spec.models, **dict.fromkeys(missing, default)})


def _raw_has_dataset(raw: dict[str, Any]) -> bool:
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    return bool(data.get("camus_root") or data.get("sdm_root") or data.get("synthetic_root"))


def models_without_weights(spec: SweepSpec) -> list[str]:
    """Models of the grid with no pretrained, checkpoint or config (a config says "random
    on purpose"): a full-size network from random weights, almost always a forgotten path."""
    models = spec.models
    return [n for n in spec.grid.models
            if not (models[n].pretrained or models[n].checkpoint or models[n].config is not None)]


# --- the learning-rate search space (lr_search.space, a YAML file of its own) ---------


@dataclass(frozen=True)
class LRSearchCell:
    """The grid cell every search trial trains (per model and encoder mode)."""

    strategy: Strategy = STRATEGY_REAL
    prompt: Prompt = "P1"


@dataclass(frozen=True)
class AshaSpec:
    """ASHA early stopping of the search trials, in epochs."""

    grace_period: int = 5  # epochs before ASHA may stop a trial
    reduction_factor: float = 3.0
    max_t: int = 100  # epochs at most per search trial


@dataclass(frozen=True)
class LRRange:
    lr_min: Annotated[float, Range(gt=0)]
    lr_max: Annotated[float, Range(gt=0)]


@dataclass(frozen=True)
class LRSearchSpace:
    """Optuna TPE over a log-uniform learning rate per model, on one cell, with ASHA."""

    models: dict[str, LRRange]  # model -> its range
    cell: LRSearchCell = field(default_factory=LRSearchCell)
    metric: Literal["val_dice", "val_loss", "best_val_dice", "train_loss"] = VAL_DICE  # one every epoch reports
    mode: Literal["max", "min"] = "max"
    asha: AshaSpec = field(default_factory=AshaSpec)


def lr_search_space(spec: SweepSpec) -> LRSearchSpace:
    """The search space `spec.lr_search.space` names (relative to the repository), typed."""
    path = Path(spec.lr_search.space)
    path = path if path.is_absolute() else REPO_ROOT / path
    try:
        space = from_mapping(LRSearchSpace, load_yaml(path))
    except ConfigError as err:
        raise SpecError(f"{path}: {err}") from None
    for model in spec.grid.models:
        bounds = space.models.get(model)
        if bounds is None or not bounds.lr_min < bounds.lr_max:
            raise SpecError(f"{path}: models.{model} needs 0 < lr_min < lr_max, got {bounds}")
    return space
