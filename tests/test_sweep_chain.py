"""Chained trials: the searcher's gating, the recorded outcomes (pure), and a permanently
failing upstream under real Ray."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from ray.tune.search import Searcher

from sweeps.cell import CELL_ID, Cell
from sweeps.chain import ChainSearcher, RecordCallback
from sweeps.grid import expand_grid
from sweeps.record import DONE, FAILED, NOT_RUN, PENDING, CellRecords, trial_outcome
from sweeps.spec import load_spec

SMALL = [
    "grid.models=[CRIS]", "grid.prompts=[P1, P7]", "grid.encoders=[frozen]",
    "data.demo_patients=8", "data.demo_test_patients=2", "data.val_patients=2",
    "data.demo_image_size=[64, 56]", "train.max_epochs=1", "train.min_epochs=1",
]


def _records(tmp_path: Path, cells: list[Cell], configs: dict | None = None) -> CellRecords:
    records = CellRecords(tmp_path / "cells")
    configs = configs or {c.cell_id: {CELL_ID: c.cell_id, "lr": 1e-3} for c in cells}
    records.plan({"grid": cells}, configs, dict.fromkeys(configs, 0.0))
    return records


def _searcher(tmp_path: Path) -> tuple[ChainSearcher, list]:
    cells = expand_grid(load_spec(demo=True, overrides=SMALL))
    return ChainSearcher([c.cell_id for c in cells], _records(tmp_path, cells), metric="best_val_dice"), cells


def _trial(searcher: ChainSearcher, cell_id: str, *, best_epoch: int = 1, stop_reason: str = "max_epochs",
           checkpoint: str | None = "/ckpt") -> SimpleNamespace:
    """A finished Ray trial of the cell, as callbacks see it."""
    return SimpleNamespace(
        config={CELL_ID: cell_id}, trial_id=searcher.records[cell_id].trial_id,
        checkpoint=None if checkpoint is None else SimpleNamespace(path=f"{checkpoint}/{cell_id}", filesystem=None),
        last_result={"best_epoch": best_epoch, "stop_reason": stop_reason},
    )


def _complete(searcher: ChainSearcher, trial: SimpleNamespace, *, error: bool = False) -> None:
    """What Ray does when a trial ends: the searcher first, then the callbacks."""
    searcher.on_trial_complete(trial.trial_id, trial.last_result, error=error)
    callback = RecordCallback(searcher.records, total=5)
    (callback.on_trial_error if error else callback.on_trial_complete)(0, [], trial)


def test_finetunes_wait_for_their_own_upstream_only(tmp_path: Path) -> None:
    searcher, cells = _searcher(tmp_path)
    # synthetic P1, synthetic P6 (for the P7 finetune), real P1, real P7 come first
    first = [searcher.suggest(f"t{i}")[CELL_ID] for i in range(4)]
    assert sorted(first[:2]) == ["cris-synthetic-frozen-p1", "cris-synthetic-frozen-p6"]
    assert searcher.suggest("t4") is None  # both finetunes wait; nothing else is ready
    p1 = _trial(searcher, "cris-synthetic-frozen-p1")
    searcher.on_trial_complete(p1.trial_id, p1.last_result)  # Ray tells the searcher first ...
    assert searcher.suggest("t5") is None  # ... but the checkpoint comes with the callback
    RecordCallback(searcher.records, total=5).on_trial_complete(0, [], p1)
    config = searcher.suggest("t5")
    assert config[CELL_ID] == "cris-synth-pt-real-ft-frozen-p1" and config["lr"] == 1e-3
    assert config["init_from"] == "/ckpt/cris-synthetic-frozen-p1/best"
    assert CellRecords(tmp_path / "cells")["cris-synth-pt-real-ft-frozen-p1"].config == config  # as it ran
    assert searcher.suggest("t6") is None  # the P7 finetune still waits on synthetic P6


def test_failed_upstream_marks_its_finetunes_not_run(tmp_path: Path) -> None:
    searcher, _ = _searcher(tmp_path)
    for i in range(4):
        searcher.suggest(f"t{i}")
    state = searcher.records
    _complete(searcher, _trial(searcher, "cris-synthetic-frozen-p6"), error=True)  # fails for good
    assert state["cris-synthetic-frozen-p6"].status == FAILED
    assert state["cris-synth-pt-real-ft-frozen-p7"].status == NOT_RUN
    assert "cris-synthetic-frozen-p6" in state["cris-synth-pt-real-ft-frozen-p7"].reason
    assert state["cris-synth-pt-real-ft-frozen-p1"].status == PENDING
    for cell in ("cris-synthetic-frozen-p1", "cris-real-frozen-p1", "cris-real-frozen-p7"):
        _complete(searcher, _trial(searcher, cell))
    assert searcher.suggest("t4")[CELL_ID] == "cris-synth-pt-real-ft-frozen-p1"
    _complete(searcher, _trial(searcher, "cris-synth-pt-real-ft-frozen-p1"))
    assert searcher.suggest("t5") == Searcher.FINISHED
    saved = CellRecords(tmp_path / "cells")  # written to disk on every change
    assert saved["cris-synth-pt-real-ft-frozen-p1"].status == DONE
    assert saved["cris-synth-pt-real-ft-frozen-p7"].status == NOT_RUN


def test_the_last_upstream_diverging_ends_the_sweep_with_its_finetune_not_run(tmp_path: Path) -> None:
    # Ray calls the searcher's on_trial_complete before the callbacks and may finish the
    # experiment without another suggest: the saved records must already say not_run.
    searcher, _ = _searcher(tmp_path)
    for i in range(4):
        searcher.suggest(f"t{i}")
    for cell in ("cris-synthetic-frozen-p1", "cris-real-frozen-p1", "cris-real-frozen-p7"):
        _complete(searcher, _trial(searcher, cell))
    searcher.suggest("t4")
    _complete(searcher, _trial(searcher, "cris-synth-pt-real-ft-frozen-p1"))
    _complete(searcher, _trial(searcher, "cris-synthetic-frozen-p6", best_epoch=0,
                               stop_reason="non-finite train_loss at epoch 1"))
    saved = CellRecords(tmp_path / "cells").cells
    assert saved["cris-synthetic-frozen-p6"].status == FAILED
    assert "non-finite train_loss" in saved["cris-synthetic-frozen-p6"].reason
    assert saved["cris-synth-pt-real-ft-frozen-p7"].status == NOT_RUN
    assert "non-finite train_loss" in saved["cris-synth-pt-real-ft-frozen-p7"].reason
    assert all(e.status in (DONE, FAILED, NOT_RUN) for e in saved.values())
    assert searcher.suggest("t5") == Searcher.FINISHED


def test_one_outcome_for_chain_mlflow_and_progress() -> None:
    checkpoint = SimpleNamespace(path="/ckpt/t", filesystem=None)
    diverged = SimpleNamespace(config={CELL_ID: "cris-synthetic-frozen-p6"}, trial_id="t", checkpoint=checkpoint,
                               last_result={"best_epoch": 0, "stop_reason": "non-finite val_loss at epoch 1"})
    outcome = trial_outcome(diverged)
    assert (outcome.status, outcome.checkpoint) == (FAILED, "/ckpt/t")
    assert "non-finite val_loss" in outcome.reason
    fine = SimpleNamespace(**{**vars(diverged), "last_result": {"best_epoch": 3}})
    assert trial_outcome(fine).status == DONE and trial_outcome(fine, error=True).status == FAILED
    no_checkpoint = SimpleNamespace(**{**vars(fine), "checkpoint": None})
    assert trial_outcome(no_checkpoint).reason == "trial finished without a checkpoint"


def test_the_progress_line_says_failed_for_a_trial_without_a_finite_epoch(tmp_path: Path, caplog) -> None:
    import logging

    cell = Cell("CRIS", "synthetic", "frozen", "P6")
    records = _records(tmp_path, [cell])
    trial = SimpleNamespace(config={CELL_ID: cell.cell_id}, trial_id="t", error_file=None, path="/t",
                            checkpoint=SimpleNamespace(path="/ckpt/t", filesystem=None),
                            last_result={"best_epoch": 0, "stop_reason": "non-finite train_loss at epoch 1"})
    with caplog.at_level(logging.INFO, logger="sweep"):
        RecordCallback(records, total=1).on_trial_complete(0, [], trial)
    assert "[1/1] cris-synthetic-frozen-p6: FAILED (no epoch with a finite loss" in caplog.text
    assert records[cell.cell_id].status == FAILED  # the line says what the record holds


def test_a_record_keeps_each_epochs_last_report_and_the_trials_own_best(tmp_path: Path) -> None:
    cell = Cell("CRIS", "real", "frozen", "P1")
    records = _records(tmp_path, [cell])
    trial = SimpleNamespace(config={CELL_ID: cell.cell_id}, trial_id="t")
    callback = RecordCallback(records, total=1)

    def report(epoch: int, val_dice: float, best: int, **more) -> None:
        callback.on_trial_result(0, [], trial, {"epoch": epoch, "val_dice": val_dice, "best_epoch": best,
                                                "best_val_dice": 0.4, "time_total_s": 10.0 * epoch, **more})

    for epoch in (1, 2, 3):
        report(epoch, 0.1 * epoch, 1, seconds=1.0)
    report(2, 0.2, 1, seconds=2.0)  # replayed after a resume from the epoch-1 checkpoint
    report(3, 0.3, 1, seconds=2.0, test_dice_mean=0.5, test_dice_std=0.1)
    saved = CellRecords(tmp_path / "cells")[cell.cell_id]
    assert [(e["epoch"], e["seconds"]) for e in saved.epochs] == [(1, 1.0), (2, 2.0), (3, 2.0)]
    assert (saved.best_epoch, saved.best_val_dice, saved.wall_s) == (1, 0.4, 30.0)
    assert saved.test == {"test_dice_mean": 0.5, "test_dice_std": 0.1}


def test_the_export_takes_the_best_epoch_the_trial_reported_not_the_highest_dice(tmp_path: Path) -> None:
    # The loop keeps the best of the epochs with finite losses: epoch 2's train loss is NaN,
    # so its higher validation Dice is not the trial's best (recomputing it from the
    # epochs, as the export once did, would say epoch 2).
    from sweeps.export import export_sweep
    from sweeps.folder import SweepFolder

    cell = Cell("CRIS", "real", "frozen", "P1")
    folder = SweepFolder(tmp_path)
    folder.write_record(storage=str(folder.ray), mlflow_uri=None, experiments={"grid": [cell.cell_id]})
    records = _records(tmp_path, [cell])
    trial = SimpleNamespace(config={CELL_ID: cell.cell_id}, trial_id="t", path="/t",
                            checkpoint=SimpleNamespace(path=str(tmp_path / "ckpt"), filesystem=None), last_result=None)
    callback = RecordCallback(records, total=1)
    epoch = {"train_loss": 0.9, "val_loss": 0.8, "lr": 1e-3, "images_per_s": 10.0, "seconds": 1.0}
    reports = [
        {**epoch, "epoch": 1, "val_dice": 0.30, "best_val_dice": 0.30, "best_epoch": 1, "stop_reason": ""},
        {**epoch, "epoch": 2, "train_loss": float("nan"), "val_dice": 0.45, "best_val_dice": 0.30, "best_epoch": 1,
         "stop_reason": "non-finite train_loss at epoch 2", "test_dice_mean": 0.28, "test_dice_std": 0.1},
    ]
    for report in reports:
        trial.last_result = {**report, "time_total_s": 2.0}
        callback.on_trial_result(0, [], trial, trial.last_result)
    callback.on_trial_complete(0, [], trial)
    exports = export_sweep(tmp_path)  # from the records alone: no Ray state, no MLflow
    trials = pd.read_parquet(exports / "trials.parquet")
    assert trials[["status", "best_epoch", "best_val_dice", "epochs"]].values.tolist() == [["done", 1, 0.30, 2]]
    epochs = pd.read_parquet(exports / "epochs.parquet")
    assert epochs["val_dice"].tolist() == [0.30, 0.45] and epochs["train_loss"].isna().tolist() == [False, True]


def test_a_restored_searcher_agrees_with_rays_snapshot_and_reads_the_records(tmp_path: Path) -> None:
    import pickle

    searcher, _ = _searcher(tmp_path)
    cell_id = searcher.suggest("t0")[CELL_ID]
    searcher.save(str(tmp_path / "searcher.json"))  # with Ray's experiment snapshot
    later = searcher.suggest("t1")[CELL_ID]  # after the snapshot: Ray will not know t1
    restored = pickle.loads(pickle.dumps(searcher))  # as Ray restores it, reading the records
    assert restored.records[later].trial_id == "t1"
    restored.records.restart(restored.cell_ids)
    restored.restore(str(tmp_path / "searcher.json"))
    assert (restored.records[cell_id].status, restored.records[cell_id].trial_id) == ("running", "t0")
    assert restored.records[later].status == PENDING  # suggested again
    assert restored.suggest("t2")[CELL_ID] == later


def test_cell_ids_name_what_differs_from_the_paper() -> None:
    from vlsm.axes import CELL_AXES, VARIANT_AXES

    cell = Cell("CLIPSeg", "synth-PT:real-FT", "unfrozen", "P7", upstream="clipseg-synthetic-unfrozen-p6")
    assert tuple(cell.axes()) == (*CELL_AXES, *VARIANT_AXES)
    assert cell.synthetic_source == "sdm" and cell.provenance == "" and cell.seed == 42
    assert Cell("CRIS", "real", "unfrozen", "P2", seed=43).cell_id == "cris-real-unfrozen-p2-s43"
    assert Cell("CRIS", "real", "unfrozen", "P2", seed=42).cell_id == "cris-real-unfrozen-p2"
    assert (Cell("CRIS", "synthetic", "frozen", "P3", synthetic_source="diffecho").cell_id
            == "cris-synthetic-diffecho-frozen-p3")
    mixed = Cell("CLIPSeg", "real+synthetic", "frozen", "P1", provenance="none", seed=44)
    assert mixed.cell_id == "clipseg-real-plus-synthetic-no-provenance-frozen-p1-s44"
    assert (mixed.train_data, mixed.val_data, mixed.synthetic_source) == ("camus+sdm", "camus", "sdm")
    assert Cell("CLIPSeg", "real+synthetic", "frozen", "P1").provenance == "prompt"
    with pytest.raises(ValueError, match="has no synthetic source"):
        Cell("CRIS", "real", "frozen", "P1", synthetic_source="sdm")


@pytest.mark.slow
def test_permanently_failing_upstream_under_ray(tmp_path: Path) -> None:
    import ray

    from sweeps.data_setup import prepare_caches, resolve_data
    from sweeps.export import export_sweep
    from sweeps.folder import SweepFolder
    from sweeps.runner import plan_experiments, record_not_run, run_grid
    from sweeps.tracking import SweepTracker
    from sweeps.trials import trial_config

    spec = load_spec(demo=True, overrides=[*SMALL, "grid.prompts=[P1]", "run.max_failures=1"])
    cells = expand_grid(spec)
    cache = tmp_path / "cache"
    caches = prepare_caches(spec, resolve_data(spec, cache), cache, cells)
    configs = {c.cell_id: trial_config(spec, c, caches) for c in cells}
    configs["cris-synthetic-frozen-p1"]["train_cache"] = str(tmp_path / "missing")  # fails on every try
    storage = str(tmp_path / "ray")
    folder = SweepFolder(tmp_path)
    tracker = SweepTracker(folder.default_tracking_uri(), "t", tmp_path)
    experiments = plan_experiments({}, cells)
    folder.write_record(storage=storage, mlflow_uri=tracker.tracking_uri, experiments={"grid": list(configs)})
    CellRecords(folder.cells).plan(experiments, configs, dict.fromkeys(configs, 0.0))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        records = run_grid(spec, experiments, folder, storage=storage, tracker=tracker, use_gpu=False)
    finally:
        ray.shutdown()
    record_not_run(records, tracker)
    assert records["cris-synthetic-frozen-p1"].status == FAILED
    assert records["cris-synth-pt-real-ft-frozen-p1"].status == NOT_RUN
    assert "upstream cris-synthetic-frozen-p1 failed" in records["cris-synth-pt-real-ft-frozen-p1"].reason
    assert records["cris-real-frozen-p1"].status == DONE  # the rest of the sweep went on

    trials = pd.read_parquet(export_sweep(tmp_path) / "trials.parquet").set_index("trial_id")
    assert trials.loc["cris-synth-pt-real-ft-frozen-p1", "status"] == NOT_RUN
    assert "upstream" in trials.loc["cris-synth-pt-real-ft-frozen-p1", "reason"]
    assert trials["mlflow_run_id"].notna().all()  # every cell's run, not run ones included
    run = tracker.client.get_run(trials.loc["cris-synth-pt-real-ft-frozen-p1", "mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["vlsm.status"] == NOT_RUN
    failed = tracker.client.get_run(trials.loc["cris-synthetic-frozen-p1", "mlflow_run_id"])
    assert failed.info.status == "FAILED"
    # the reason is the trial's error itself (its last line), in the exports and in MLflow
    reason = trials.loc["cris-synthetic-frozen-p1", "reason"]
    assert str(tmp_path / "missing") in reason and "after all retries" in reason, reason
    assert failed.data.tags["vlsm.reason"] == reason


def test_checkpoint_locations_keep_their_storage_scheme() -> None:
    from sweeps.record import checkpoint_uri

    s3 = SimpleNamespace(path="bucket/sweeps/grid/t/checkpoint_000004", filesystem=SimpleNamespace(type_name="s3"))
    local = SimpleNamespace(path="/tmp/grid/t/checkpoint_000004", filesystem=SimpleNamespace(type_name="local"))
    assert checkpoint_uri(s3) == "s3://bucket/sweeps/grid/t/checkpoint_000004"
    assert checkpoint_uri(local) == "/tmp/grid/t/checkpoint_000004"
