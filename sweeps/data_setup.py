"""Data for a sweep: the dataset folders (or the phantom demo), their checks, and the
preprocessing caches every trial reads by path."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sweeps.spec import SweepSpec
from vlsm.model_registry import model_key

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """The configured data cannot be used; the message lists every problem with its file."""


@dataclass(frozen=True)
class DataRoots:
    camus_root: Path | None
    sdm_root: Path | None
    demo: bool


def resolve_data(spec: SweepSpec, cache_dir: Path) -> DataRoots:
    """The dataset folders; for the demo, phantom data generated once into cache_dir."""
    data = spec.data
    if data.demo:
        from vlsm.data.phantom import write_demo_data

        demo = write_demo_data(
            cache_dir / f"demo-data-seed{data.demo_seed}",
            seed=data.demo_seed,
            n_patients=data.demo_patients,
            n_test=data.demo_test_patients,
            n_val=data.val_patients,
            sdm_per_image=data.demo_sdm_per_image,
            size=tuple(data.demo_image_size),
        )
        return DataRoots(Path(demo.camus_root), Path(demo.sdm_root), demo=True)
    camus = Path(data.camus_root).expanduser() if data.camus_root else None
    sdm = Path(data.sdm_root).expanduser() if data.sdm_root else None
    return DataRoots(camus, sdm, demo=False)


def check_data(roots: DataRoots, spec: SweepSpec) -> None:
    """Run `vlsm validate-data`'s checks with the sweep's split; raise DataError listing
    every error."""
    from vlsm.data.validate import validate_data

    if roots.camus_root is None:
        raise DataError("no CAMUS folder: give --camus-root (every strategy is tested on real CAMUS)")
    needs_sdm = any(s != "real" for s in spec.grid.strategies)
    if needs_sdm and roots.sdm_root is None:
        raise DataError("the grid has synthetic strategies but no SDM folder: give --sdm-root")
    problems = validate_data(roots.camus_root, roots.sdm_root if needs_sdm else None,
                             split_scheme=spec.data.split_scheme, n_val=spec.data.val_patients)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        if problem.severity != "error":
            logger.warning("%s: %s", problem.path, problem.message)
    if errors:
        listing = "\n".join(f"  {p.path}: {p.message}" for p in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        raise DataError(f"{len(errors)} data problem(s); fix them or run `python -m vlsm validate-data`:\n{listing}{more}")


def model_input_size(spec: SweepSpec, model: str) -> int:
    """Input size of a model as configured (352 CLIPSeg, 416 CRIS, smaller when tiny)."""
    from sweeps.trials import model_config
    from vlsm.models import input_size

    return int(input_size(model_key(model), model_config(spec, model), pretrained=spec.models[model].pretrained))


def prepare_caches(
    spec: SweepSpec, roots: DataRoots, cache_dir: Path, strategies: tuple[str, ...]
) -> dict[str, dict[str, dict[str, str]]]:
    """dataset ("camus" | "sdm") -> model -> split -> cache folder, one per input size."""
    from vlsm.data.cache import prepare_dataset

    datasets = {"camus": roots.camus_root}
    if any(s != "real" for s in strategies):
        datasets["sdm"] = roots.sdm_root
    caches: dict[str, dict[str, dict[str, str]]] = {}
    by_size: dict[tuple[str, int], dict[str, str]] = {}
    for kind, root in datasets.items():
        caches[kind] = {}
        for model in spec.grid.models:
            size = model_input_size(spec, model)
            if (kind, size) not in by_size:
                paths = prepare_dataset(
                    kind,
                    root,
                    size,
                    cache_dir,
                    split_scheme=spec.data.split_scheme,
                    n_val=spec.data.val_patients,
                    # SDM images carry no sex or age: P4-P6 take them from CAMUS
                    camus_root=roots.camus_root if kind == "sdm" else None,
                )
                by_size[(kind, size)] = {split: str(path) for split, path in paths.items()}
                needed = ("train", "val", "test") if kind == "camus" else ("train", "val")
                missing = [split for split in needed if split not in paths]
                if missing:  # every trial is tested on real CAMUS; synthetic ones train on SDM
                    raise DataError(
                        f"{root}: the {kind.upper()} data has no {', '.join(missing)} split with ground truth "
                        f"(an old CAMUS 2019 download ships its test patients without _gt masks: use the "
                        f"2023 release or a 2019 copy with the test annotations)"
                    )
            caches[kind][model] = by_size[(kind, size)]
    return caches


def publish_caches(caches: dict[str, dict[str, dict[str, str]]], storage: str) -> dict[str, dict[str, dict[str, str]]]:
    """The same caches on shared storage, so that trials on any node can read them."""
    from vlsm.data.remote_cache import publish

    published: dict[str, str] = {}
    out: dict[str, dict[str, dict[str, str]]] = {}
    for kind, by_model in caches.items():
        out[kind] = {}
        for model, splits in by_model.items():
            out[kind][model] = {}
            for split, folder in splits.items():
                if folder not in published:
                    published[folder] = publish(Path(folder), storage)
                out[kind][model][split] = published[folder]
    return out
