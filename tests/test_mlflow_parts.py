"""The parts of the MLflow integration that need no sweep: the system sampler, the
predictor's inputs, a model on shared storage, the saved views' links.

A finished sweep's MLflow store (views, runs, datasets, models, the browser) is checked
end to end in tests/test_sweep_e2e.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sweeps.cell import CELL_ID, Cell
from sweeps.record import DONE, CellRecords


def _records(sweep: Path, cell: Cell, **record) -> CellRecords:
    """The sweep folder's record of one cell, as the driver writes it (`record`: its outcome)."""
    records = CellRecords(sweep / "cells")
    records.plan({"grid": [cell]}, {cell.cell_id: {CELL_ID: cell.cell_id}}, {cell.cell_id: 0.0})
    if record:
        records.update(cell.cell_id, **record)
    return records


def test_the_sampler_reports_means_since_the_last_take(monkeypatch) -> None:
    from vlsm import system_metrics

    busy = iter([(10.0, 100.0), (15.0, 110.0), (15.0, 120.0)])  # (busy, total) CPU seconds
    monkeypatch.setattr(system_metrics, "_cpu_times", lambda: next(busy))
    sampler = system_metrics.SystemSampler(0)  # 0: no thread; samples taken by hand
    assert sampler.take() == {}  # nothing sampled yet: nothing reported
    sampler.sample()  # 5 of 10 s busy
    sampler.sample()  # 0 of 10 s busy
    metrics = sampler.take()
    assert metrics["system/cpu_utilization_percentage"] == 25.0
    assert 0 < metrics["system/system_memory_usage_percentage"] <= 100
    assert sampler.take() == {}


def test_the_sampler_thread_samples_at_its_interval() -> None:
    import time

    from vlsm.system_metrics import SystemSampler

    with SystemSampler(0.05) as sampler:
        time.sleep(0.5)
        metrics = sampler.take()
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert not sampler._thread.is_alive()


def test_the_gpu_is_read_from_nvidia_smi_for_the_card_ray_assigned(tmp_path, monkeypatch) -> None:
    from vlsm import system_metrics

    fake = tmp_path / "nvidia-smi"  # answers like the real one, and records its arguments
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\necho "37, 20480, 81920"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert system_metrics._visible_gpu() == "3"
    assert system_metrics._gpu("3") == {
        "gpu_0_utilization_percentage": 37.0,
        "gpu_0_memory_usage_megabytes": 20480.0,
        "gpu_0_memory_usage_percentage": 25.0,
    }
    assert (tmp_path / "args").read_text().split()[:2] == ["-i", "3"]
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert system_metrics._gpu("3") == {}  # a card that does not answer is no error


@pytest.fixture
def best_folder(tmp_path) -> Path:
    """A tiny CLIPSeg saved as a trial saves best/: weights, spec, tokenizer."""
    from vlsm import checkpoint as ckpt
    from vlsm.models import build_model, build_tokenizer, tiny_config

    model = build_model("clipseg", config=tiny_config("clipseg"), init_seed=3)
    tokenizer = build_tokenizer("clipseg", config=tiny_config("clipseg"))
    ckpt.save_model(model, tmp_path / "best", tokenizer=tokenizer)
    return tmp_path / "best"


def test_the_predictor_names_what_is_wrong_with_its_input(best_folder) -> None:
    from vlsm.predictor import Predictor

    predictor = Predictor(best_folder, device="cpu")
    grey = np.zeros((2, 30, 40), np.uint8)
    assert predictor.predict({"image": grey, "prompt": "left ventricle"}).shape == (2, 30, 40)
    with pytest.raises(ValueError, match='"image" must be uint8'):
        predictor.predict({"image": grey.astype(np.float32), "prompt": "left ventricle"})
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        predictor.predict({"image": grey, "prompt": ["a", "b", "c"]})
    with pytest.raises(ValueError, match='expected {"image"'):
        predictor.predict({"pixels": grey})


def test_the_predictor_scores_like_the_trial_model(best_folder) -> None:
    # The same weights, normalisation and tokens as the training code's ModelInputs.
    import torch

    from vlsm.checkpoint import load_model, load_tokenizer
    from vlsm.predictor import Predictor

    model, tokenizer = load_model(best_folder), load_tokenizer(best_folder)
    size = model.input_size
    grey = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
    prompts = ["left ventricle", "myocardium", "left atrium"]
    x = torch.from_numpy(grey).unsqueeze(1).float() / 255.0
    x = (x - torch.tensor(model.image_mean).view(1, 3, 1, 1)) / torch.tensor(model.image_std).view(1, 3, 1, 1)
    tokens = tokenizer(prompts)
    with torch.no_grad():
        expected = model(x, tokens["input_ids"], tokens["attention_mask"])[:, 0].numpy()
    got = Predictor(best_folder, device="cpu", batch_size=2).predict({"image": grey, "prompt": prompts})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_model_on_shared_storage_gains_its_pyfunc_files_and_loads_from_there(best_folder, tmp_path) -> None:
    import mlflow.pyfunc
    import pyarrow.fs

    from sweeps.folder import SweepFolder
    from sweeps.tracking import TAG_MODEL, MLflowTrialCallback, SweepTracker

    storage = pyarrow.fs.SubTreeFileSystem(str(best_folder.parent), pyarrow.fs.LocalFileSystem())
    assert storage.type_name != "local"  # the tracker treats it as shared storage
    cell = Cell("CLIPSeg", "real", "unfrozen", "P1")
    trial = SimpleNamespace(config={CELL_ID: cell.cell_id}, trial_id="t1", last_result={"best_epoch": 2},
                            checkpoint=SimpleNamespace(path="", filesystem=storage))
    records = _records(tmp_path / "sweep", cell, status=DONE, best_epoch=2, checkpoint=f"subtree://{best_folder.parent}")
    tracker = SweepTracker(SweepFolder(tmp_path / "sweep").default_tracking_uri(), "s", tmp_path / "sweep")
    MLflowTrialCallback(tracker, records).on_trial_complete(0, [], trial)
    run = tracker.client.get_run(records[cell.cell_id].run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_MODEL].endswith("/best")
    assert (best_folder / "MLmodel").is_file() and not list(best_folder.glob(".*.tmp"))
    assert tracker.client.search_logged_models([tracker.experiment_id]) == []  # nothing copied
    model = mlflow.pyfunc.load_model(str(best_folder))
    logits = model.predict({"image": np.zeros((1, 24, 24), np.uint8), "prompt": np.array(["left atrium"])})
    assert logits.shape == (1, 24, 24)


def test_the_views_links_open_the_training_view() -> None:
    from sweeps.mlflow_ui import VIEWS, runs_url

    url = runs_url("http://127.0.0.1:5000/", "7", "by-strategy")
    assert url == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                   "&viewStateShareKey=by-strategy")
    assert runs_url("http://h", "7", "by-prompt", charts=True).endswith("viewStateShareKey=by-prompt&compareRunsMode=CHART")
    assert set(VIEWS) == {"trials", "by-strategy", "by-prompt", "by-model", "by-cell"}
    with pytest.raises(ValueError, match="unknown view 'nope'"):
        runs_url("http://x", "1", "nope")


def test_a_resumed_driver_logs_each_system_metric_of_a_replayed_epoch_once(tmp_path) -> None:
    # A resumed trial replays the epochs after its last checkpoint; its reports carry the
    # system metrics again, which the run holds already at those steps.
    from sweeps.folder import SweepFolder
    from sweeps.tracking import SweepTracker, cell_run

    uri, cell = SweepFolder(tmp_path / "sweep").default_tracking_uri(), Cell("CLIPSeg", "real", "unfrozen", "P1")
    records = _records(tmp_path / "sweep", cell)
    first = SweepTracker(uri, "s", tmp_path / "sweep")
    run_id = cell_run(first, records, cell.cell_id)
    first.log_result(run_id, {"system/cpu_utilization_percentage": 40.0}, 1)
    again = SweepTracker(uri, "s", tmp_path / "sweep")  # the driver after a restart
    assert records[cell.cell_id].run_id == run_id and cell_run(again, records, cell.cell_id) == run_id
    again.log_result(run_id, {"system/cpu_utilization_percentage": 55.0}, 1)  # epoch 1 replayed
    again.log_result(run_id, {"system/cpu_utilization_percentage": 60.0}, 2)
    history = again.client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert sorted((m.step, m.value) for m in history) == [(1, 40.0), (2, 60.0)]


def test_a_finished_trial_reported_again_keeps_its_one_model_among_many(best_folder, tmp_path) -> None:
    # More logged models than one search page (100), the trial's not the newest.
    from sweeps.folder import SweepFolder
    from sweeps.tracking import SweepTracker

    tracker = SweepTracker(SweepFolder(tmp_path / "sweep").default_tracking_uri(), "s", tmp_path / "sweep")
    cell = Cell("CLIPSeg", "real", "unfrozen", "P1")
    run_id = tracker.trial_run(_records(tmp_path / "sweep", cell)[cell.cell_id])
    model_id = tracker.log_best_model(run_id, cell.cell_id, best_folder, 2)
    for _ in range(100):  # other trials' models, logged after it
        tracker.client.create_logged_model(tracker.experiment_id, name="model", source_run_id=tracker.parent_run_id)
    assert tracker.log_best_model(run_id, cell.cell_id, best_folder, 2) == model_id  # Ray restored it
    mine = tracker.client.search_logged_models([tracker.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert [m.model_id for m in mine] == [model_id]


def test_a_report_is_logged_in_one_request(tmp_path, monkeypatch) -> None:
    from sweeps.folder import SweepFolder
    from sweeps.tracking import MLflowTrialCallback, SweepTracker

    tracker = SweepTracker(SweepFolder(tmp_path / "sweep").default_tracking_uri(), "s", tmp_path / "sweep")
    cell = Cell("CLIPSeg", "real", "unfrozen", "P1")
    trial = SimpleNamespace(config={CELL_ID: cell.cell_id}, trial_id="t1")
    records = _records(tmp_path / "sweep", cell)
    run_id = tracker.trial_run(records[cell.cell_id])
    calls = []
    for name in ("log_metric", "log_batch"):
        real = getattr(tracker.client, name)
        monkeypatch.setattr(tracker.client, name, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1])
    result = {"epoch": 3, "val_dice": 0.5, "train_loss": float("nan"), "system/cpu_utilization_percentage": 12.0,
              "note": "not a metric"}
    MLflowTrialCallback(tracker, records).on_trial_result(0, [], trial, result)
    MLflowTrialCallback(tracker, records).on_trial_result(0, [], trial, result)  # the same report again: nothing new
    assert calls == ["log_batch"]
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics == {"val_dice": 0.5, "system/cpu_utilization_percentage": 12.0}
    assert [m.step for m in tracker.client.get_metric_history(run_id, "val_dice")] == [3]
