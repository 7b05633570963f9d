"""Data for a sweep: the dataset folders (or the phantom demo), their checks, and the
preprocessing caches trials read by path, one per dataset as cells name them (`sweeps.cell`:
"camus", each synthetic source, "camus+<source>" for a real+synthetic training set).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sweeps.cell import REAL_DATA, Cell
from sweeps.spec import SweepSpec, grid_sources, synthetic_roots
from vlsm.axes import SOURCE_SDM
from vlsm.model_registry import model_key
from vlsm.strategies import uses_synthetic

logger = logging.getLogger(__name__)

__all__ = ["DataError", "DataRoots", "check_data", "model_input_size",
           "prepare_caches", "publish_caches", "resolve_data", "source_prompts"]


class DataError(ValueError):
    """The configured data cannot be used; the message lists every problem with its file."""


@dataclass(frozen=True)
class DataRoots:
    camus_root: Path | None
    synthetic: dict[str, Path] = field(default_factory=dict)  # source -> its folder
    demo: bool = False


def resolve_data(spec: SweepSpec, cache_dir: Path) -> DataRoots:
    """The dataset folders; for the demo, phantom data written once into cache_dir."""
    data = spec.data
    if data.demo:
        from vlsm.data.phantom import write_demo_data

        sources = grid_sources(spec)
        demo = write_demo_data(
            cache_dir / f"demo-data-seed{data.demo_seed}", seed=data.demo_seed, n_patients=data.demo_patients,
            n_test=data.demo_test_patients, n_val=data.val_patients, sdm_per_image=data.demo_sdm_per_image,
            size=tuple(data.demo_image_size), synthetic_formats=sources)
        return DataRoots(Path(demo.camus_root), {s: Path(demo.synthetic_roots[s]) for s in sources}, demo=True)
    camus = Path(data.camus_root).expanduser() if data.camus_root else None
    return DataRoots(camus, {s: Path(root).expanduser() for s, root in synthetic_roots(spec).items()})


def check_data(roots: DataRoots, spec: SweepSpec) -> None:
    """`vlsm validate-data`'s checks with the sweep's split; DataError listing every error."""
    from vlsm.data.synthetic_sources import validate_synthetic
    from vlsm.data.validate import validate_data

    if roots.camus_root is None:
        raise DataError("no CAMUS folder: give --camus-root (every strategy is tested on real CAMUS)")
    sources = grid_sources(spec) if any(uses_synthetic(s) for s in spec.grid.strategies) else ()
    missing = [s for s in sources if s not in roots.synthetic]
    if missing:
        option = "--sdm-root" if missing[0] == SOURCE_SDM else f"--synthetic-root --synthetic-format {missing[0]}"
        raise DataError(f"the grid has synthetic strategies on {missing[0]} but no folder for it: give {option}")
    others = [s for s in sources if s != SOURCE_SDM]  # beside SDM one more, or (the demo) several
    problems = validate_data(roots.camus_root, roots.synthetic[SOURCE_SDM] if SOURCE_SDM in sources else None,
                             synthetic_root=roots.synthetic[others[0]] if others else None,
                             synthetic_format=others[0] if others else SOURCE_SDM,
                             split_scheme=spec.data.split_scheme, n_val=spec.data.val_patients)
    for source in others[1:]:
        problems.add(validate_synthetic(source, roots.synthetic[source], n_val=spec.data.val_patients))
    for root, counts in problems.codings.items():  # the label codings found, as validate-data prints them
        logger.info("%s: label codings: %s", root, ", ".join(f"{c} in {n} mask(s)" for c, n in sorted(counts.items())))
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        if problem.severity != "error":
            logger.warning("%s: %s", problem.path, problem.message)
    if errors:
        listing = "\n".join(f"  {p.path}: {p.message}" for p in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        raise DataError(f"{len(errors)} data problem(s); fix them or run `python -m vlsm validate-data`:\n{listing}{more}")


def source_prompts(spec: SweepSpec) -> dict[str, tuple[str, ...]]:
    """source -> the prompts its records can build, from metadata headers (no images)."""
    from vlsm.data.prompts import buildable_prompts
    from vlsm.data.synthetic_sources import source_attributes

    if spec.data.demo:  # not written yet: the phantom's records, with its CAMUS patients' data
        return {s: buildable_prompts(source_attributes(s, None, with_camus=True)) for s in grid_sources(spec)}
    roots, with_camus = synthetic_roots(spec), bool(spec.data.camus_root)
    return {source: buildable_prompts(source_attributes(source, Path(roots[source]).expanduser(), with_camus=with_camus))
            for source in grid_sources(spec) if source in roots}


def model_input_size(spec: SweepSpec, model: str) -> int:
    """Input size of a model as configured (352 CLIPSeg, 416 CRIS, smaller when tiny)."""
    from sweeps.trials import model_config
    from vlsm.models import input_size

    return int(input_size(model_key(model), model_config(spec, model), pretrained=spec.models[model].pretrained))


def _datasets(cells: list[Cell]) -> list[str]:
    """The datasets the cells train, validate and test on, real CAMUS first."""
    return list(dict.fromkeys([REAL_DATA, *(name for c in cells for name in (c.train_data, c.val_data))]))


def _needed_splits(name: str) -> tuple[str, ...]:
    """The splits trials read of a dataset (real CAMUS tests every cell; camus+<source> only trains)."""
    if name == REAL_DATA:
        return ("train", "val", "test")
    return ("train",) if "+" in name else ("train", "val")


def prepare_caches(spec: SweepSpec, roots: DataRoots, cache_dir: Path,
                   cells: list[Cell]) -> dict[str, dict[str, dict[str, str]]]:
    """dataset -> model -> split -> cache folder, one per input size (records read once)."""
    from vlsm.data.cache import load_records, prepare_records

    records: dict[str, list] = {}

    def records_of(name: str) -> list:
        if name not in records:
            if name == REAL_DATA or name in roots.synthetic:
                root = roots.camus_root if name == REAL_DATA else roots.synthetic[name]
                # synthetic images carry no sex or age: P4-P6 take them from CAMUS where they can
                records[name] = load_records(name, root, spec.data.split_scheme, spec.data.val_patients,
                                             roots.camus_root if name != REAL_DATA else None)
            else:  # camus+<source>
                source = name.split("+", 1)[1]
                records[name] = [r for r in records_of(REAL_DATA) + records_of(source) if r.split == "train"]
        return records[name]

    sizes = {model: model_input_size(spec, model) for model in spec.grid.models}
    caches: dict[str, dict[str, dict[str, str]]] = {}
    for name in _datasets(cells):
        needed = _needed_splits(name)
        by_size: dict[int, dict[str, str]] = {}
        for size in dict.fromkeys(sizes.values()):
            paths = prepare_records(records_of(name), size, cache_dir, name=name)
            missing = [split for split in needed if split not in paths]
            if missing:  # every trial is tested on real CAMUS; synthetic ones train on their source
                root = roots.camus_root if name == REAL_DATA else roots.synthetic.get(name.split("+")[-1])
                raise DataError(f"{root}: the {name} data has no {', '.join(missing)} split with ground truth "
                                f"(an old CAMUS 2019 download ships its test patients without _gt masks: use "
                                f"the 2023 release or a 2019 copy with the test annotations)")
            by_size[size] = {split: str(path) for split, path in paths.items()}
        caches[name] = {model: by_size[size] for model, size in sizes.items()}
    return caches


def publish_caches(caches: dict[str, dict[str, dict[str, str]]], storage: str) -> dict[str, dict[str, dict[str, str]]]:
    """The same caches on shared storage, so that trials on any node can read them."""
    from vlsm.data.remote_cache import publish

    published: dict[str, str] = {}  # models of one input size share their caches

    def published_copy(folder: str) -> str:
        if folder not in published:
            published[folder] = publish(Path(folder), storage)
        return published[folder]

    return {kind: {model: {split: published_copy(folder) for split, folder in splits.items()}
                   for model, splits in by_model.items()} for kind, by_model in caches.items()}


