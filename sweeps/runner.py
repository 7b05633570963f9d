"""Run (or resume) the planned grid as Ray Tune experiments: "grid", then "grid-2", ... for
cells added later (docs/design.md, "A sweep that grows: experiments")."""

from __future__ import annotations

from typing import Any

from ray import tune

from sweeps.cell import CELL_ID, Cell
from sweeps.chain import ChainSearcher, RecordCallback
from sweeps.folder import SweepFolder
from sweeps.record import FINISHED_STATUSES, NOT_RUN, CellRecords
from sweeps.spec import SweepSpec
from sweeps.tracking import MLflowTrialCallback, SweepTracker, cell_run
from sweeps.trials import trial_resources
from sweeps.tuner import GRID_EXPERIMENT, build_tuner, fit
from vlsm import axes


def _trainable(spec: SweepSpec, cells: dict[str, Cell], use_gpu: bool):
    from vlsm.trainable import train_vlsm

    def resources(config: dict[str, Any]) -> dict[str, float]:
        cell = cells[config[CELL_ID]]
        return trial_resources(spec, cell.model, cell.encoder, use_gpu=use_gpu)

    return tune.with_resources(train_vlsm, resources=resources)


def plan_experiments(recorded: dict[str, list[str]], cells: list[Cell]) -> dict[str, list[Cell]]:
    """The recorded experiments (name -> cell ids), then one of the cells none holds, if any."""
    by_id = {cell.cell_id: cell for cell in cells}
    experiments = {name: [by_id[i] for i in ids if i in by_id] for name, ids in recorded.items()}
    placed = {i for ids in recorded.values() for i in ids}
    added = [cell for cell in cells if cell.cell_id not in placed]
    if added:
        name = GRID_EXPERIMENT if not experiments else f"{GRID_EXPERIMENT}-{len(experiments) + 1}"
        experiments[name] = added
    return experiments


def run_grid(spec: SweepSpec, experiments: dict[str, list[Cell]], folder: SweepFolder, *, storage: str,
             tracker: SweepTracker, use_gpu: bool) -> CellRecords:
    """Run the experiments in order on the cells' records; returns every record as it ended.
    A finished experiment is not restored; an interrupted one stops the run. Ray restores its
    own pickled searcher and callbacks, so the ones built here serve a new experiment only."""
    trainable = _trainable(spec, {c.cell_id: c for cells in experiments.values() for c in cells}, use_gpu)
    for name, cells in experiments.items():
        ids = [cell.cell_id for cell in cells]
        records = CellRecords(folder.cells)
        if all(records[i].status in FINISHED_STATUSES for i in ids):
            continue
        records.restart(ids)
        fit(build_tuner(
            trainable, name=name, storage=storage, run=spec.run,
            callbacks=[RecordCallback(records, len(cells)), MLflowTrialCallback(tracker, records)],
            search_alg=ChainSearcher(ids, records, metric=axes.BEST_VAL_DICE, mode="max"),
            num_samples=len(cells), max_concurrent_trials=spec.run.max_concurrent or None))
        if any(CellRecords(folder.cells)[i].status not in FINISHED_STATUSES for i in ids):
            break  # interrupted: the later experiments wait for the next run
    return CellRecords(folder.cells)


def record_not_run(records: CellRecords, tracker: SweepTracker) -> None:
    """An MLflow run saying why for every cell that never ran (its upstream failed)."""
    for record in list(records.cells.values()):
        if record.status == NOT_RUN:
            tracker.finish_trial(cell_run(tracker, records, record.cell_id), NOT_RUN, reason=record.reason)
