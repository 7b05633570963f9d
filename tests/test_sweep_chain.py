"""Chained trials: the searcher's gating, the recorded outcomes (pure), and a permanently
failing upstream under real Ray."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from ray.tune.search import Searcher

from sweeps.cell import Cell
from sweeps.chain import ChainCallback, ChainSearcher, ChainState
from sweeps.grid import expand_grid
from sweeps.outcome import DONE, FAILED, NOT_RUN, PENDING, trial_outcome
from sweeps.spec import load_spec

SMALL = [
    "grid.models=[CRIS]", "grid.prompts=[P1, P7]", "grid.encoders=[frozen]",
    "data.demo_patients=8", "data.demo_test_patients=2", "data.val_patients=2",
    "data.demo_image_size=[64, 56]", "train.max_epochs=1", "train.min_epochs=1",
]


def _searcher(tmp_path: Path) -> tuple[ChainSearcher, list]:
    cells = expand_grid(load_spec(demo=True, overrides=SMALL))
    configs = {c.cell_id: {"tags": c.tags()} for c in cells}
    state = ChainState(path=str(tmp_path / "chain_state.json"))
    return ChainSearcher(cells, configs, state, metric="best_val_dice"), cells


def _trial(searcher: ChainSearcher, cell_id: str, *, best_epoch: int = 1, stop_reason: str = "max_epochs",
           checkpoint: str | None = "/ckpt") -> SimpleNamespace:
    """A finished Ray trial of the cell, as callbacks see it."""
    entry = searcher.state.cells[cell_id]
    cell = next(c for c in searcher.cells if c.cell_id == cell_id)
    return SimpleNamespace(
        config={"tags": cell.tags()}, trial_id=entry.trial_id,
        checkpoint=None if checkpoint is None else SimpleNamespace(path=f"{checkpoint}/{cell_id}", filesystem=None),
        last_result={"best_epoch": best_epoch, "stop_reason": stop_reason},
    )


def _complete(searcher: ChainSearcher, trial: SimpleNamespace, *, error: bool = False) -> None:
    """What Ray does when a trial ends: the searcher first, then the callbacks."""
    searcher.on_trial_complete(trial.trial_id, trial.last_result, error=error)
    callback = ChainCallback(searcher.state)
    (callback.on_trial_error if error else callback.on_trial_complete)(0, [], trial)


def test_finetunes_wait_for_their_own_upstream_only(tmp_path: Path) -> None:
    searcher, cells = _searcher(tmp_path)
    # synthetic P1, synthetic P6 (for the P7 finetune), real P1, real P7 come first
    first = [searcher.suggest(f"t{i}")["tags"]["cell_id"] for i in range(4)]
    assert sorted(first[:2]) == ["cris-synthetic-frozen-p1", "cris-synthetic-frozen-p6"]
    assert searcher.suggest("t4") is None  # both finetunes wait; nothing else is ready
    p1 = _trial(searcher, "cris-synthetic-frozen-p1")
    searcher.on_trial_complete(p1.trial_id, p1.last_result)  # Ray tells the searcher first ...
    assert searcher.suggest("t5") is None  # ... but the checkpoint comes with the callback
    ChainCallback(searcher.state).on_trial_complete(0, [], p1)
    config = searcher.suggest("t5")
    assert config["tags"]["cell_id"] == "cris-synth-pt-real-ft-frozen-p1"
    assert config["init_from"] == "/ckpt/cris-synthetic-frozen-p1/best"
    assert searcher.suggest("t6") is None  # the P7 finetune still waits on synthetic P6


def test_failed_upstream_marks_its_finetunes_not_run(tmp_path: Path) -> None:
    searcher, _ = _searcher(tmp_path)
    for i in range(4):
        searcher.suggest(f"t{i}")
    state = searcher.state.cells
    _complete(searcher, _trial(searcher, "cris-synthetic-frozen-p6"), error=True)  # fails for good
    assert state["cris-synthetic-frozen-p6"].status == FAILED
    assert state["cris-synth-pt-real-ft-frozen-p7"].status == NOT_RUN
    assert "cris-synthetic-frozen-p6" in state["cris-synth-pt-real-ft-frozen-p7"].reason
    assert state["cris-synth-pt-real-ft-frozen-p1"].status == PENDING
    for cell in ("cris-synthetic-frozen-p1", "cris-real-frozen-p1", "cris-real-frozen-p7"):
        _complete(searcher, _trial(searcher, cell))
    assert searcher.suggest("t4")["tags"]["cell_id"] == "cris-synth-pt-real-ft-frozen-p1"
    _complete(searcher, _trial(searcher, "cris-synth-pt-real-ft-frozen-p1"))
    assert searcher.suggest("t5") == Searcher.FINISHED
    saved = ChainState.load(tmp_path / "chain_state.json")  # mirrored to disk on every change
    assert saved.cells["cris-synth-pt-real-ft-frozen-p1"].status == DONE
    assert saved.cells["cris-synth-pt-real-ft-frozen-p7"].status == NOT_RUN


def test_the_last_upstream_diverging_ends_the_sweep_with_its_finetune_not_run(tmp_path: Path) -> None:
    # Ray calls the searcher's on_trial_complete before the callbacks and may finish the
    # experiment without another suggest: the saved state must already say not_run.
    searcher, _ = _searcher(tmp_path)
    for i in range(4):
        searcher.suggest(f"t{i}")
    for cell in ("cris-synthetic-frozen-p1", "cris-real-frozen-p1", "cris-real-frozen-p7"):
        _complete(searcher, _trial(searcher, cell))
    searcher.suggest("t4")
    _complete(searcher, _trial(searcher, "cris-synth-pt-real-ft-frozen-p1"))
    _complete(searcher, _trial(searcher, "cris-synthetic-frozen-p6", best_epoch=0,
                               stop_reason="non-finite train_loss at epoch 1"))
    saved = ChainState.load(tmp_path / "chain_state.json").cells
    assert saved["cris-synthetic-frozen-p6"].status == FAILED
    assert "non-finite train_loss" in saved["cris-synthetic-frozen-p6"].reason
    assert saved["cris-synth-pt-real-ft-frozen-p7"].status == NOT_RUN
    assert "non-finite train_loss" in saved["cris-synth-pt-real-ft-frozen-p7"].reason
    assert all(e.status in (DONE, FAILED, NOT_RUN) for e in saved.values())
    assert searcher.suggest("t5") == Searcher.FINISHED


def test_one_outcome_for_chain_mlflow_and_progress() -> None:
    cell = Cell("CRIS", "synthetic", "frozen", "P6")
    checkpoint = SimpleNamespace(path="/ckpt/t", filesystem=None)
    diverged = SimpleNamespace(config={"tags": cell.tags()}, trial_id="t", checkpoint=checkpoint,
                               last_result={"best_epoch": 0, "stop_reason": "non-finite val_loss at epoch 1"})
    outcome = trial_outcome(diverged)
    assert (outcome.status, outcome.checkpoint) == (FAILED, "/ckpt/t")
    assert "non-finite val_loss" in outcome.reason
    fine = SimpleNamespace(**{**vars(diverged), "last_result": {"best_epoch": 3}})
    assert trial_outcome(fine).status == DONE and trial_outcome(fine, error=True).status == FAILED
    no_checkpoint = SimpleNamespace(**{**vars(fine), "checkpoint": None})
    assert trial_outcome(no_checkpoint).reason == "trial finished without a checkpoint"


def test_the_progress_line_says_failed_for_a_trial_without_a_finite_epoch(caplog) -> None:
    import logging

    from sweeps.progress import ProgressCallback

    cell = Cell("CRIS", "synthetic", "frozen", "P6")
    trial = SimpleNamespace(config={"tags": cell.tags()}, trial_id="t", error_file=None, path="/t",
                            checkpoint=SimpleNamespace(path="/ckpt/t", filesystem=None),
                            last_result={"best_epoch": 0, "stop_reason": "non-finite train_loss at epoch 1"})
    with caplog.at_level(logging.INFO, logger="sweep"):
        ProgressCallback(total=1).on_trial_complete(0, [], trial)
    assert "cris-synthetic-frozen-p6: FAILED (no epoch with a finite loss" in caplog.text


def test_cell_tags_round_trip_and_name_the_axes() -> None:
    from vlsm.axes import CELL_AXES, VARIANT_AXES

    cell = Cell("CLIPSeg", "synth-PT:real-FT", "unfrozen", "P7", upstream="clipseg-synthetic-unfrozen-p6")
    assert Cell.of_config({"tags": cell.tags()}) == cell
    assert tuple(cell.axes()) == (*CELL_AXES, *VARIANT_AXES)
    assert cell.synthetic_source == "sdm" and cell.provenance == "" and cell.seed == 42
    assert Cell.of_config({"tags": {}}) is None and Cell.of_config({}) is None
    # tags of a sweep made before sources and seeds read as the paper's cells
    old = {k: v for k, v in cell.tags().items() if k not in (*VARIANT_AXES, "seed")}
    assert Cell.of_config({"tags": old}) == cell


def test_cell_ids_name_what_differs_from_the_paper() -> None:
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


def test_searcher_state_round_trips(tmp_path: Path) -> None:
    searcher, _ = _searcher(tmp_path)
    cell_id = searcher.suggest("t0")["tags"]["cell_id"]
    (tmp_path / "other").mkdir()
    fresh, _ = _searcher(tmp_path / "other")
    fresh.set_state(searcher.get_state())
    assert fresh.state.cells[cell_id].trial_id == "t0"
    assert fresh.state.cells[cell_id].status == "running"


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
    folder.write_record(storage=storage, mlflow_uri=tracker.tracking_uri, configs=configs, gpu_share={})
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        state = run_grid(spec, plan_experiments({}, cells), configs, storage=storage, state_path=folder.chain_state,
                         tracker=tracker, use_gpu=False)
    finally:
        ray.shutdown()
    record_not_run(state, tracker, configs)
    assert state.cells["cris-synthetic-frozen-p1"].status == FAILED
    assert state.cells["cris-synth-pt-real-ft-frozen-p1"].status == NOT_RUN
    assert "upstream cris-synthetic-frozen-p1 failed" in state.cells["cris-synth-pt-real-ft-frozen-p1"].reason
    assert state.cells["cris-real-frozen-p1"].status == DONE  # the rest of the sweep went on

    trials = pd.read_parquet(export_sweep(tmp_path) / "trials.parquet").set_index("trial_id")
    assert trials.loc["cris-synth-pt-real-ft-frozen-p1", "status"] == NOT_RUN
    assert "upstream" in trials.loc["cris-synth-pt-real-ft-frozen-p1", "reason"]
    run = tracker.client.get_run(tracker.trial_run("cris-synth-pt-real-ft-frozen-p1"))
    assert run.info.status == "KILLED" and run.data.tags["vlsm.status"] == NOT_RUN
    failed = tracker.client.get_run(tracker.trial_run("cris-synthetic-frozen-p1"))
    assert failed.info.status == "FAILED"
    # the reason is the trial's error itself (its last line), in the exports and in MLflow
    reason = trials.loc["cris-synthetic-frozen-p1", "reason"]
    assert str(tmp_path / "missing") in reason and "after all retries" in reason, reason
    assert failed.data.tags["vlsm.reason"] == reason


def test_checkpoint_locations_keep_their_storage_scheme() -> None:
    from sweeps.outcome import checkpoint_uri

    s3 = SimpleNamespace(path="bucket/sweeps/grid/t/checkpoint_000004", filesystem=SimpleNamespace(type_name="s3"))
    local = SimpleNamespace(path="/tmp/grid/t/checkpoint_000004", filesystem=SimpleNamespace(type_name="local"))
    assert checkpoint_uri(s3) == "s3://bucket/sweeps/grid/t/checkpoint_000004"
    assert checkpoint_uri(local) == "/tmp/grid/t/checkpoint_000004"
