"""The main job end to end: sweeps/paper_grid.py under a real local Ray and a real MLflow
store, on phantom data with tiny models. Slow by nature (each run starts Ray), so few."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import schema
from vlsm.axes import ENCODERS
from vlsm.data.prompts import prompt_names
from vlsm.model_registry import model_names
from vlsm.strategies import paper_strategies

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sweeps" / "paper_grid.py"

# A tiny demo: 8 phantom patients at 64 x 56 px, 2 epochs; one chain (synthetic -> finetune) plus real.
# A checkpoint every epoch (the default interval would write one, at the end), so that
# retention has superseded checkpoints to delete and a killed driver resumes mid-trial.
SMALL = [
    "--models", "CRIS", "--prompts", "P1", "--encoders", "frozen", "--num-cpus", "2",
    "--set", "data.demo_patients=8", "--set", "data.demo_test_patients=2",
    "--set", "data.val_patients=2", "--set", "data.demo_image_size=[64, 56]",
    "--set", "train.max_epochs=2", "--set", "train.min_epochs=1", "--set", "train.checkpoint_interval_s=0",
    "--set", "train.system_metrics_interval_s=0.2",
]

pytestmark = pytest.mark.slow


def _run(output: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(output), *SMALL, *extra],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _records(output: Path) -> dict[str, dict]:
    """Every cell's record in the sweep folder (cells/<cell_id>.json), by cell id."""
    return {path.stem: json.loads(path.read_text()) for path in (output / "cells").glob("*.json")}


def _mlflow_runs(output: Path) -> pd.DataFrame:
    """Every run of the sweep's MLflow store: id, status, tags and val_dice history length."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    rows = []
    for run in client.search_runs(experiments):
        rows.append({
            "run_id": run.info.run_id,
            "status": run.info.status,
            **{f"tags.{k}": v for k, v in run.data.tags.items()},
            "val_dice_steps": len(client.get_metric_history(run.info.run_id, "val_dice")),
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("sweep")
    proc = _run(output)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return output


def test_small_grid_exports(small_sweep: Path) -> None:
    exports = small_sweep / schema.EXPORTS_DIR
    trials = pd.read_parquet(exports / schema.TRIALS_FILE)
    assert list(trials.columns[: len(schema.TRIALS_COLUMNS)]) == list(schema.TRIALS_COLUMNS)
    assert len(trials) == 3 and set(trials["status"]) == {"done"}
    assert set(trials["model"]) <= set(model_names()) and set(trials["strategy"]) == set(paper_strategies())
    assert set(trials["encoder"]) <= set(ENCODERS) and set(trials["prompt"]) <= set(prompt_names())
    finetune = trials[trials["strategy"] == "synth-PT:real-FT"].iloc[0]
    assert finetune["upstream_trial_id"] == "cris-synthetic-frozen-p1"
    assert trials["mlflow_run_id"].notna().all() and trials["mlflow_run_id"].is_unique
    assert ((trials["test_dice_mean"] >= 0) & (trials["test_dice_mean"] <= 1)).all()
    assert (trials["epochs"] == 2).all() and trials["best_epoch"].between(1, 2).all()

    epochs = pd.read_parquet(exports / schema.EPOCHS_FILE)
    assert list(epochs.columns) == list(schema.EPOCHS_COLUMNS)
    assert len(epochs) == 3 * 2 and (epochs["images_per_s"] > 0).all()

    per_image = pd.read_parquet(exports / schema.PER_IMAGE_FILE)
    assert list(per_image.columns) == list(schema.PER_IMAGE_EXPORT_COLUMNS)
    assert len(per_image) == 3 * (2 * 4) * 3  # trials x (2 test patients x 4 images) x structures
    assert per_image["dice"].between(0, 1).all() and per_image["iou"].between(0, 1).all()
    # the analysis package reads the same exports
    import analysis

    frame = analysis.load_sweep(small_sweep)
    assert len(analysis.dice_table(frame)) == 3


def test_finetune_starts_from_its_upstream_best_checkpoint(small_sweep: Path) -> None:
    state = _records(small_sweep)
    upstream_ckpt = state["cris-synthetic-frozen-p1"]["checkpoint"]
    finetune_ckpt = Path(state["cris-synth-pt-real-ft-frozen-p1"]["checkpoint"])
    config = json.loads((finetune_ckpt / "config.json").read_text())
    assert config["init_from"] == f"{upstream_ckpt}/best"
    assert state["cris-synth-pt-real-ft-frozen-p1"]["config"]["init_from"] == config["init_from"]  # as it ran
    # Real and finetune trials differ only in their initial weights (same data, prompt
    # and seed), so identical curves would mean the upstream weights were never loaded.
    epochs = pd.read_parquet(small_sweep / schema.EXPORTS_DIR / schema.EPOCHS_FILE)
    real = epochs[epochs["trial_id"] == "cris-real-frozen-p1"]["val_loss"].to_numpy()
    finetune = epochs[epochs["trial_id"] == "cris-synth-pt-real-ft-frozen-p1"]["val_loss"].to_numpy()
    assert len(real) == len(finetune) == 2 and (real != finetune).all()


def test_each_trial_keeps_only_its_latest_checkpoint(small_sweep: Path) -> None:
    # Ray keeps every checkpoint (num_to_keep=None); CheckpointRetention deletes the
    # superseded ones after Ray's final snapshot, so each trial folder ends with one.
    state = _records(small_sweep)
    trial_dirs = sorted(d for d in (small_sweep / "ray" / "grid").iterdir() if d.is_dir())
    assert len(trial_dirs) == 3  # each named after its cell: cris-real-frozen-p1_<ray trial id>
    assert {d.name.rsplit("_", 1)[0] for d in trial_dirs} == set(state)
    for trial_dir in trial_dirs:
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        assert len(checkpoints) == 1, checkpoints
        assert str(checkpoints[0]) in {s["checkpoint"] for s in state.values()}


def test_mlflow_has_one_parent_and_nested_linked_runs(small_sweep: Path) -> None:
    runs = _mlflow_runs(small_sweep)
    parents = runs[runs["tags.vlsm.role"] == "sweep"]
    trials = runs[runs["tags.vlsm.role"] == "trial"]
    assert len(parents) == 1 and len(trials) == 3
    assert (trials["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    assert (trials["status"] == "FINISHED").all() and (trials["val_dice_steps"] == 2).all()
    by_cell = trials.set_index("tags.vlsm.cell_id")
    finetune = by_cell.loc["cris-synth-pt-real-ft-frozen-p1"]
    assert finetune["tags.vlsm.upstream_run_id"] == by_cell.loc["cris-synthetic-frozen-p1", "run_id"]
    artifacts = small_sweep / "mlartifacts"
    assert any(artifacts.rglob("per_image.parquet")) and any(artifacts.rglob("weights.safetensors"))


def _client(output: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")


def _trial_runs(output: Path) -> dict[str, object]:
    client = _client(output)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.run_name: run for run in client.search_runs(experiments, "tags.`vlsm.role` = 'trial'")}


def test_the_experiment_opens_on_its_runs_with_saved_views(small_sweep: Path) -> None:
    from mlflow.entities import ViewType

    client = _client(small_sweep)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    active = [e for e in experiments if e.lifecycle_stage == "active"]
    assert [e.name for e in active] == ["paper-grid"]  # MLflow's Default is not left for the UI
    default = next(e for e in experiments if e.name == "Default")
    assert default.artifact_location.startswith((small_sweep / "mlartifacts").as_uri())  # not the cwd
    tags = active[0].tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert "python sweeps/paper_grid.py --output" in tags["mlflow.note.content"]
    view = json.loads(tags["mlflow.sharedViewState.trials"])
    assert {"params.`strategy`", "metrics.`test_dice_mean`", "metrics.`best_epoch`"} <= set(view["selectedColumns"])
    assert json.loads(tags["mlflow.sharedViewState.by-strategy"])["groupBy"]["groupByKeys"][0]["groupByData"] == "strategy"
    parent = client.search_runs([active[0].experiment_id], "tags.`vlsm.role` = 'sweep'")[0]
    assert parent.info.run_name == f"paper-grid ({small_sweep.name})"


def test_each_trial_run_has_its_axes_headline_numbers_data_and_system_metrics(small_sweep: Path) -> None:
    from vlsm.axes import CELL_AXES

    trials = pd.read_parquet(small_sweep / schema.EXPORTS_DIR / schema.TRIALS_FILE).set_index("trial_id")
    runs = _trial_runs(small_sweep)
    assert set(runs) == set(trials.index)  # each run is named after its cell
    digests = {}
    for cell_id, run in runs.items():
        params, metrics, row = run.data.params, run.data.metrics, trials.loc[cell_id]
        assert {axis: params[axis] for axis in CELL_AXES} == {axis: row[axis] for axis in CELL_AXES}
        assert {axis: run.data.tags[axis] for axis in CELL_AXES} == {axis: row[axis] for axis in CELL_AXES}
        for name in ("test_dice_mean", "test_dice_std", "best_val_dice", "best_epoch"):
            assert metrics[name] == pytest.approx(row[name]), name
        assert metrics["system/cpu_utilization_percentage"] >= 0
        assert metrics["system/system_memory_usage_megabytes"] > 0
        inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation", "testing"}
        config = json.loads((Path(row["checkpoint"]) / "config.json").read_text())
        for context, field in (("training", "train_cache"), ("validation", "val_cache"), ("testing", "test_cache")):
            meta = json.loads((Path(config[field]) / "meta.json").read_text())
            assert inputs[context].digest == meta["key"][:16]
            assert json.loads(inputs[context].profile)["num_pairs"] == meta["n_items"]
            assert json.loads(inputs[context].source)["uri"] == config[field]
        digests[cell_id] = inputs["training"].digest
    # a synthetic trial saw other data than a real one, and the UI can tell
    assert digests["cris-synthetic-frozen-p1"] != digests["cris-real-frozen-p1"]


def test_a_trial_model_loads_through_mlflow_and_scores_as_its_test(small_sweep: Path) -> None:
    import mlflow
    import numpy as np
    import torch

    from vlsm.axes import STRUCTURES
    from vlsm.data.cache import open_split
    from vlsm.metrics import dice_iou, predict_masks

    trials = pd.read_parquet(small_sweep / schema.EXPORTS_DIR / schema.TRIALS_FILE).set_index("trial_id")
    run = _trial_runs(small_sweep)["cris-real-frozen-p1"]
    client = _client(small_sweep)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"per_image.parquet"}  # the weights are logged once: as the model
    mlflow.set_tracking_uri(f"sqlite:///{small_sweep / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    assert [i.name for i in model.metadata.signature.inputs.inputs] == ["image", "prompt"]

    checkpoint = Path(trials.loc["cris-real-frozen-p1", "checkpoint"])
    config = json.loads((checkpoint / "config.json").read_text())
    split = open_split(Path(config["test_cache"]))
    rows = pd.read_parquet(checkpoint / "per_image.parquet")  # what the trial's test scored
    index = {name: i for i, name in enumerate(split.names)}
    label = {name: value for value, name in STRUCTURES.items()}
    images = np.stack([split.images[index[name]] for name in rows["image"]])
    logits = model.predict({"image": images, "prompt": rows["prompt"].to_numpy(dtype=str)})
    assert logits.shape == images.shape and logits.dtype == np.float32
    masks = predict_masks(torch.from_numpy(logits)[:, None], config["threshold"])  # as the test did
    truth = np.stack([split.eval_labels[index[n]] == label[s] for n, s in zip(rows["image"], rows["structure"], strict=True)])
    dice, _ = dice_iou(masks, torch.from_numpy(truth))
    np.testing.assert_allclose(dice.numpy(), rows["dice"].to_numpy(), atol=1e-6)
    # the same folder is what vlsm.checkpoint.load_model reads
    from vlsm.checkpoint import load_model

    assert type(load_model(checkpoint / "best")).__name__ == "CRIS"
    assert (checkpoint / "best" / "MLmodel").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rendered_text(url: str, chromium: str, until: str) -> str:
    """The text of a page after its scripts ran, from headless Chromium; rendered again
    with more time while it lacks `until` (charts draw after the table, later on a busy CPU)."""
    import html
    import re
    import tempfile

    for budget_ms in (20_000, 40_000, 80_000):
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:  # a first visit, every time
            dom = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1200",
                 f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                capture_output=True, text=True, timeout=180,
            ).stdout
        text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", dom, flags=re.S)
        text = html.unescape(re.sub(r"\s+", " ", text))
        if until in text:
            break
    return text


def test_the_runs_page_shows_trials_and_test_dice_in_a_browser(small_sweep: Path) -> None:
    import shutil
    import urllib.request

    from sweeps.mlflow_ui import runs_url

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
         f"sqlite:///{small_sweep / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        ui = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{ui}/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow ui did not start"
                time.sleep(0.5)
        experiment = _client(small_sweep).get_experiment_by_name("paper-grid").experiment_id
        trials = pd.read_parquet(small_sweep / schema.EXPORTS_DIR / schema.TRIALS_FILE)
        text = _rendered_text(runs_url(ui, experiment), chromium, until=trials["trial_id"].iloc[-1])
        assert "Training runs" in text or "Runs" in text
        for cell_id in trials["trial_id"]:
            assert cell_id in text, text[:2000]
        best = trials.sort_values("test_dice_mean").iloc[-1]["test_dice_mean"]
        assert str(best)[:6] in text, text[:2000]  # the test Dice column is shown
        grouped = _rendered_text(runs_url(ui, experiment, "by-strategy"), chromium, until="(average)")
        assert "Group: synth-PT:real-FT" in grouped and "(average)" in grouped, grouped[:2000]
        charts = _rendered_text(runs_url(ui, experiment, "by-strategy", charts=True), chromium, until="(best_val_dice)")
        for strategy in trials["strategy"]:  # a best_val_dice chart (per epoch) with one line per strategy
            assert f"{strategy} (best_val_dice)" in charts, charts[:3000]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_export_command_writes_the_same_exports(small_sweep: Path) -> None:
    from sweeps.__main__ import main

    names = (schema.TRIALS_FILE, schema.EPOCHS_FILE, schema.PER_IMAGE_FILE)
    before = {name: pd.read_parquet(small_sweep / schema.EXPORTS_DIR / name) for name in names}
    assert main(["export", str(small_sweep)]) == 0
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(small_sweep / schema.EXPORTS_DIR / name), before[name])


def test_a_refused_resume_shuts_ray_down_and_leaves_the_sweep_as_it_was(small_sweep: Path, capsys) -> None:
    import ray

    from sweeps.paper_grid import main

    record = (small_sweep / "sweep.json").read_text()
    runs = _mlflow_runs(small_sweep).set_index("run_id")["status"]
    assert main(["--output", str(small_sweep), *SMALL, "--set", "train.max_epochs=3"]) == 2
    assert "holds a sweep started with other settings" in capsys.readouterr().err
    assert not ray.is_initialized()  # the session shut Ray down on the way out
    assert (small_sweep / "sweep.json").read_text() == record
    pd.testing.assert_series_equal(_mlflow_runs(small_sweep).set_index("run_id")["status"], runs)


def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    output = tmp_path / "sweep"
    args = [sys.executable, str(SCRIPT), "--output", str(output), *SMALL, "--set", "train.max_epochs=4"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    done_before: set[str] = set()
    try:
        while time.time() < deadline and proc.poll() is None:
            state = _records(output)
            if state:
                done_before = {c for c, s in state.items() if s["status"] == "done"}
                if done_before and any(s["status"] == "running" for s in state.values()):
                    break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert done_before, "the sweep finished no trial before the deadline"
    before = _records(output)

    resumed = _run(output, "--set", "train.max_epochs=4")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = _records(output)
    assert all(s["status"] == "done" for s in after.values())
    for cell in done_before:  # finished trials are not rerun
        assert after[cell]["trial_id"] == before[cell]["trial_id"]
        assert after[cell]["checkpoint"] == before[cell]["checkpoint"]
        assert after[cell]["run_id"] == before[cell]["run_id"]
    epochs = pd.read_parquet(output / schema.EXPORTS_DIR / schema.EPOCHS_FILE)
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert (epochs.groupby("trial_id")["epoch"].max() == 4).all()
    runs = _mlflow_runs(output)
    assert (runs["tags.vlsm.role"] == "sweep").sum() == 1  # the same parent run continues
    assert (runs["tags.vlsm.role"] == "trial").sum() == 3  # no duplicate trial runs
    client = _client(output)
    models = client.search_logged_models([e.experiment_id for e in client.search_experiments()])
    assert sorted(m.source_run_id for m in models) == sorted(runs.loc[runs["tags.vlsm.role"] == "trial", "run_id"])


def test_ctrl_c_ends_with_the_right_instruction_last(tmp_path: Path) -> None:
    # Ray's own last words on an interrupted experiment are "Resume experiment with:
    # Tuner.restore(...)"; a sweep resumes by running the same command again
    output = tmp_path / "sweep"
    args = [sys.executable, str(SCRIPT), "--output", str(output), *SMALL, "--set", "train.max_epochs=6"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(s["status"] == "done" for s in _records(output).values()):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C in the driver's terminal
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("interrupted with ") and last.endswith("run the same command again to resume"), text[-3000:]
    assert "Tuner.restore" not in text


def test_lr_search_picks_a_rate_for_the_grid(tmp_path: Path) -> None:
    output = tmp_path / "sweep"
    space = tmp_path / "lr.yaml"
    space.write_text(
        "cell: {strategy: real, prompt: P1}\nmetric: val_dice\nmode: max\n"
        "asha: {grace_period: 1, reduction_factor: 2, max_t: 2}\n"
        "models:\n  CRIS: {lr_min: 1.0e-4, lr_max: 1.0e-2}\n  CLIPSeg: {lr_min: 1.0e-4, lr_max: 1.0e-2}\n"
    )
    proc = _run(output, "--strategies", "real", "--lr-search", "2", "--set", f"lr_search.space={space}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((output / "lr_search.json").read_text())
    best = results["CRIS/frozen"]
    assert len(best["tried"]) == 2 and 1e-4 <= best["lr"] <= 1e-2 and best["lr"] in best["tried"]
    trials = pd.read_parquet(output / schema.EXPORTS_DIR / schema.TRIALS_FILE)
    assert trials["lr"].tolist() == pytest.approx([best["lr"]])
    search_trials = [d for d in output.rglob("lr-search-*/cris-real-frozen-p1_*") if d.is_dir()]
    assert len(search_trials) == 2
    assert all(len(list(d.glob("checkpoint_*"))) == 1 for d in search_trials)  # only the latest kept
