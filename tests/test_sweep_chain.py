"""Chained trials: the searcher's gating (pure) and a permanently failing upstream under real Ray."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from ray.tune.search import Searcher

from sweeps.chain import DONE, FAILED, NOT_RUN, PENDING, ChainSearcher, ChainState
from sweeps.grid import expand_grid
from sweeps.spec import load_spec

SMALL = [
    "grid.models=[CRIS]", "grid.prompts=[P1, P7]", "grid.encoders=[frozen]",
    "data.demo_patients=8", "data.demo_test_patients=2", "data.demo_val_patients=2",
    "data.demo_image_size=[64, 56]", "train.max_epochs=1", "train.min_epochs=1",
]


def _searcher(tmp_path: Path) -> tuple[ChainSearcher, list]:
    cells = expand_grid(load_spec(demo=True, overrides=SMALL))
    configs = {c.cell_id: {"tags": {"cell_id": c.cell_id}} for c in cells}
    state = ChainState(path=str(tmp_path / "chain_state.json"))
    return ChainSearcher(cells, configs, state, metric="best_val_dice"), cells


def test_finetunes_wait_for_their_own_upstream_only(tmp_path: Path) -> None:
    searcher, cells = _searcher(tmp_path)
    # synthetic P1, synthetic P6 (for the P7 finetune), real P1, real P7 come first
    first = [searcher.suggest(f"t{i}")["tags"]["cell_id"] for i in range(4)]
    assert sorted(first[:2]) == ["cris-synthetic-frozen-p1", "cris-synthetic-frozen-p6"]
    assert searcher.suggest("t4") is None  # both finetunes wait; nothing else is ready
    p1_trial = searcher.state.cells["cris-synthetic-frozen-p1"].trial_id
    searcher.on_trial_complete(p1_trial, {"best_val_dice": 0.5})  # synthetic P1 done ...
    assert searcher.suggest("t5") is None  # ... but its checkpoint is not recorded yet
    searcher.state.cells["cris-synthetic-frozen-p1"].checkpoint = "/ckpt/p1"
    config = searcher.suggest("t5")
    assert config["tags"]["cell_id"] == "cris-synth-pt-real-ft-frozen-p1"
    assert config["init_from"] == "/ckpt/p1/best"
    assert searcher.suggest("t6") is None  # the P7 finetune still waits on synthetic P6


def test_failed_upstream_marks_its_finetunes_not_run(tmp_path: Path) -> None:
    searcher, _ = _searcher(tmp_path)
    for i in range(4):
        searcher.suggest(f"t{i}")
    state = searcher.state.cells
    searcher.on_trial_complete(state["cris-synthetic-frozen-p6"].trial_id, None, error=True)  # fails for good
    assert state["cris-synthetic-frozen-p6"].status == FAILED
    assert state["cris-synth-pt-real-ft-frozen-p7"].status == NOT_RUN
    assert "cris-synthetic-frozen-p6" in state["cris-synth-pt-real-ft-frozen-p7"].reason
    assert state["cris-synth-pt-real-ft-frozen-p1"].status == PENDING
    for cell in ("cris-synthetic-frozen-p1", "cris-real-frozen-p1", "cris-real-frozen-p7"):
        searcher.on_trial_complete(state[cell].trial_id, {})
    state["cris-synthetic-frozen-p1"].checkpoint = "/ckpt/p1"
    assert searcher.suggest("t4")["tags"]["cell_id"] == "cris-synth-pt-real-ft-frozen-p1"
    searcher.on_trial_complete("t4", {})
    assert searcher.suggest("t5") == Searcher.FINISHED
    saved = ChainState.load(tmp_path / "chain_state.json")  # mirrored to disk on every change
    assert saved.cells["cris-synth-pt-real-ft-frozen-p1"].status == DONE


def test_an_upstream_without_a_finite_epoch_fails_and_its_finetune_is_not_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from sweeps.chain import ChainCallback

    searcher, _ = _searcher(tmp_path)
    for i in range(4):
        searcher.suggest(f"t{i}")
    state = searcher.state.cells
    p6 = state["cris-synthetic-frozen-p6"]
    searcher.on_trial_complete(p6.trial_id, {"best_epoch": 0})  # Ray: the trial ended normally
    diverged = SimpleNamespace(
        config={"tags": {"cell_id": "cris-synthetic-frozen-p6"}}, trial_id=p6.trial_id,
        checkpoint=SimpleNamespace(path="/ckpt/p6", filesystem=None),
        last_result={"best_epoch": 0, "stop_reason": "non-finite train_loss at epoch 1"},
    )
    ChainCallback(searcher.state).on_trial_complete(0, [], diverged)
    assert p6.status == FAILED and "non-finite train_loss" in p6.reason
    searcher.suggest("t4")
    finetune = state["cris-synth-pt-real-ft-frozen-p7"]
    assert finetune.status == NOT_RUN and "non-finite train_loss" in finetune.reason


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
    from sweeps.export import export_sweep, write_sweep_file
    from sweeps.runner import record_not_run, run_grid
    from sweeps.trials import trial_config
    from vlsm.tracking import SweepTracker, default_tracking_uri

    spec = load_spec(demo=True, overrides=[*SMALL, "grid.prompts=[P1]", "run.max_failures=1"])
    cells = expand_grid(spec)
    cache = tmp_path / "cache"
    caches = prepare_caches(spec, resolve_data(spec, cache), cache, spec.grid.strategies)
    configs = {c.cell_id: trial_config(spec, c, caches) for c in cells}
    configs["cris-synthetic-frozen-p1"]["train_cache"] = str(tmp_path / "missing")  # fails on every try
    storage = str(tmp_path / "ray")
    tracker = SweepTracker(default_tracking_uri(tmp_path), "t", tmp_path)
    write_sweep_file(tmp_path, storage=storage, mlflow_uri=tracker.tracking_uri, configs=configs, gpu_share={})
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        state = run_grid(spec, cells, configs, storage=storage, state_path=tmp_path / "chain_state.json",
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


def test_checkpoint_locations_keep_their_storage_scheme() -> None:
    from types import SimpleNamespace

    from vlsm.tracking import checkpoint_uri

    s3 = SimpleNamespace(path="bucket/sweeps/grid/t/checkpoint_000004", filesystem=SimpleNamespace(type_name="s3"))
    local = SimpleNamespace(path="/tmp/grid/t/checkpoint_000004", filesystem=SimpleNamespace(type_name="local"))
    assert checkpoint_uri(s3) == "s3://bucket/sweeps/grid/t/checkpoint_000004"
    assert checkpoint_uri(local) == "/tmp/grid/t/checkpoint_000004"
