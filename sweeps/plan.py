"""The plan of a sweep as text: trials, dependencies, resources and a GPU-hour estimate
(`python sweeps/paper_grid.py --dry-run`)."""

from __future__ import annotations

from pathlib import Path

from sweeps.cell import Cell
from sweeps.grid import dependents
from sweeps.spec import SweepSpec
from sweeps.trials import trial_resources


def dataset_sizes(spec: SweepSpec, camus_root: Path | None, sdm_root: Path | None) -> dict[str, int]:
    """Training image-structure pairs per dataset ("camus", "sdm"), from file listings only."""
    data = spec.data
    if data.demo:
        train_patients = data.demo_patients - data.demo_test_patients - data.val_patients
        train_images = train_patients * 4
        return {"camus": train_images * 3, "sdm": train_images * data.demo_sdm_per_image * 3}
    sizes = {"camus": 4800, "sdm": 8000 * 3}  # the paper's: 1600 real, 8000 synthetic training images
    if camus_root is not None and camus_root.exists():
        from vlsm.data.camus import empty_split, load_camus

        records = load_camus(camus_root, split_scheme=data.split_scheme, n_val=data.val_patients)
        why = empty_split(records, camus_root, data.split_scheme, data.val_patients)
        if why:  # the dry run says so too, rather than plan a grid with nothing to train
            raise ValueError(why)
        sizes["camus"] = 3 * sum(r.split == "train" for r in records)
    if sdm_root is not None and sdm_root.exists():
        from vlsm.data.sdm import load_sdm

        sizes["sdm"] = 3 * sum(r.split == "train" for r in load_sdm(sdm_root))
    return sizes


def measured_throughput(output: Path) -> dict[tuple[str, str], float]:
    """Median training images/s per (model, encoder) from an earlier export, if any."""
    epochs_file = output / "exports" / "epochs.parquet"
    trials_file = output / "exports" / "trials.parquet"
    if not (epochs_file.exists() and trials_file.exists()):
        return {}
    import pandas as pd

    epochs = pd.read_parquet(epochs_file).merge(
        pd.read_parquet(trials_file)[["trial_id", "model", "encoder"]], on="trial_id"
    )
    medians = epochs.groupby(["model", "encoder"])["images_per_s"].median()
    return {key: float(value) for key, value in medians.items() if value > 0}


def format_plan(
    spec: SweepSpec,
    cells: list[Cell],
    sizes: dict[str, int],
    *,
    use_gpu: bool,
    measured: dict[tuple[str, str], float] | None = None,
) -> str:
    """A table of the planned trials and a total GPU-hour estimate."""
    measured = measured or {}
    waiting = dependents(cells)
    epochs = min(spec.run.expected_epochs, int(spec.train.get("max_epochs", spec.run.expected_epochs)))
    lines = [
        f"{'trial':34} {'upstream':30} {'cpu':>4} {'gpu':>5} {'items':>6} {'est. GPU-h':>10}",
    ]
    total_gpu_h = 0.0
    for cell in cells:
        resources = trial_resources(spec, cell.model, cell.encoder, use_gpu=use_gpu)
        items = sizes[cell.train_data]
        # Configured rates are per full GPU; a measured rate is that of a trial holding
        # its GPU share, so its GPU time is wall time x share.
        measured_rate = measured.get((cell.model, cell.encoder))
        rate = measured_rate or spec.models[cell.model].images_per_s.get(cell.encoder)
        share = resources["gpu"] if measured_rate and resources["gpu"] > 0 else 1.0
        gpu_h = items * epochs / rate / 3600 * share if rate else float("nan")
        total_gpu_h += 0 if gpu_h != gpu_h else gpu_h
        note = f"  -> {len(waiting[cell.cell_id])} finetune(s) wait on it" if waiting[cell.cell_id] else ""
        lines.append(
            f"{cell.cell_id:34} {cell.upstream or '-':30} {resources['cpu']:>4g} {resources['gpu']:>5g} "
            f"{items:>6} {gpu_h:>10.2f}{note}"
        )
    source = "measured (earlier export)" if measured else "configured (models.*.images_per_s)"
    lines.append(
        f"{len(cells)} trials, {sum(c.upstream is not None for c in cells)} chained; about {total_gpu_h:.1f} "
        f"GPU-hours at {epochs} epochs each, throughput {source}"
    )
    return "\n".join(lines)
