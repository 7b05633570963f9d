"""The plan of a sweep as text: trials, dependencies, resources and a GPU-hour estimate
from measured rates (`python sweeps/paper_grid.py --dry-run [--rates FILE|FOLDER]`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sweeps.cell import REAL_DATA, Cell, mixed_data
from sweeps.grid import dependents
from sweeps.rates import Rate
from sweeps.spec import SweepSpec, grid_sources
from sweeps.trials import trial_resources
from vlsm.model_registry import model_key
from vlsm.strategies import REAL_AND_SYNTHETIC, STRATEGY_REGISTRY


def dataset_sizes(spec: SweepSpec, camus_root: Path | None,
                  synthetic: Mapping[str, Path | None] | None = None) -> dict[str, int]:
    """Training image-structure pairs per dataset of the grid ("camus", each synthetic
    source, "camus+<source>" when it has real+synthetic cells), from file listings only."""
    data = spec.data
    sources = grid_sources(spec)
    if data.demo:
        train_images = (data.demo_patients - data.demo_test_patients - data.val_patients) * 4
        sizes = {REAL_DATA: train_images * 3, **{s: train_images * data.demo_sdm_per_image * 3 for s in sources}}
    else:
        sizes = {REAL_DATA: 4800, **dict.fromkeys(sources, 8000 * 3)}  # the paper's: 1600 real, 8000 SDM images
        if camus_root is not None and camus_root.exists():
            from vlsm.data.camus import empty_split, load_camus

            records = load_camus(camus_root, split_scheme=data.split_scheme, n_val=data.val_patients)
            why = empty_split(records, camus_root, data.split_scheme, data.val_patients)
            if why:  # the dry run says so too, rather than plan a grid with nothing to train
                raise ValueError(why)
            sizes[REAL_DATA] = 3 * sum(r.split == "train" for r in records)
        for source in sources:
            root = (synthetic or {}).get(source)
            if root is not None and root.exists():
                from vlsm.data.cache import load_records

                records = load_records(source, root, data.split_scheme, data.val_patients, camus_root)
                sizes[source] = 3 * sum(r.split == "train" for r in records)
    share = spec.train.get("synthetic_share")
    mixed = any(STRATEGY_REGISTRY[s].train == REAL_AND_SYNTHETIC for s in spec.grid.strategies)
    for source in sources if mixed else ():  # all real pairs and the share
        extra = sizes[source] if share is None else round(share / (1 - share) * sizes[REAL_DATA])
        sizes[mixed_data(source)] = sizes[REAL_DATA] + extra
    return sizes


def cell_gpu_hours(image_steps: float, rate: Rate | None, gpu_share: float) -> float | None:
    """GPU-hours of a trial of image_steps training images at rate (None: no rate); a rate
    measured on a GPU share (`Rate.per_share`) costs wall time x share."""
    if rate is None:
        return None
    share = gpu_share if rate.per_share and gpu_share > 0 else 1.0
    return image_steps / rate.images_per_s / 3600 * share


def expected_epochs(spec: SweepSpec) -> int:
    """Epochs a trial is assumed to run: run.expected_epochs (early stopping), at most max_epochs."""
    return min(spec.run.expected_epochs, int(spec.train.get("max_epochs", spec.run.expected_epochs)))


def format_plan(spec: SweepSpec, cells: list[Cell], sizes: dict[str, int], *, use_gpu: bool,
                rates: dict[tuple[str, str], Rate] | None = None, skipped: Mapping[str, str] | None = None) -> str:
    """The planned trials and a GPU-hour estimate from measured rates (none: counted, never guessed)."""
    rates = rates or {}
    waiting = dependents(cells)
    epochs = expected_epochs(spec)
    lines = [f"{'trial':44} {'upstream':40} {'cpu':>4} {'gpu':>5} {'items':>6} {'est. GPU-h':>10}"]
    total_gpu_h, unrated, used = 0.0, 0, {}
    for cell in cells:
        resources = trial_resources(spec, cell.model, cell.encoder, use_gpu=use_gpu)
        items = sizes[cell.train_data]
        key = (model_key(cell.model), cell.encoder)
        gpu_h = cell_gpu_hours(items * epochs, rates.get(key), resources["gpu"])
        if gpu_h is None:
            unrated += 1
            estimate = f"{'?':>10}"
        else:
            used[key] = rates[key]
            total_gpu_h += gpu_h
            estimate = f"{gpu_h:>10.2f}"
        note = f"  -> {len(waiting[cell.cell_id])} finetune(s) wait on it" if waiting[cell.cell_id] else ""
        lines.append(
            f"{cell.cell_id:44} {cell.upstream or '-':40} {resources['cpu']:>4g} {resources['gpu']:>5g} "
            f"{items:>6} {estimate}{note}"
        )
    for cell_id, reason in (skipped or {}).items():
        lines.append(f"skipped {cell_id}: {reason}")
    for (model, encoder), rate in sorted(used.items()):
        lines.append(f"rate {model} {encoder}: {rate.images_per_s:.1f} images/s from {rate.source}")
    seeds = len({c.seed for c in cells})
    summary = (f"{len(cells)} trials{f' ({seeds} seeds)' if seeds > 1 else ''}, "
               f"{sum(c.upstream is not None for c in cells)} chained"
               f"{f', {len(skipped)} skipped' if skipped else ''}; about "
               f"{total_gpu_h:.1f} GPU-hours at {epochs} epochs each")
    if unrated:
        summary += (f", {unrated} trial(s) without a measured rate left out (measure them with "
                    f"bench/gpu_suite.py and pass --rates FILE, or --rates an earlier sweep folder)")
    lines.append(summary)
    return "\n".join(lines)
