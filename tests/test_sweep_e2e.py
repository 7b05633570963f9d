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
from vlsm.axes import ENCODERS, MODELS, PROMPTS, STRATEGIES

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
]

pytestmark = pytest.mark.slow


def _run(output: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(output), *SMALL, *extra],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


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
    assert set(trials["model"]) <= set(MODELS) and set(trials["strategy"]) == set(STRATEGIES)
    assert set(trials["encoder"]) <= set(ENCODERS) and set(trials["prompt"]) <= set(PROMPTS)
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
    state = json.loads((small_sweep / "chain_state.json").read_text())
    upstream_ckpt = state["cris-synthetic-frozen-p1"]["checkpoint"]
    finetune_ckpt = Path(state["cris-synth-pt-real-ft-frozen-p1"]["checkpoint"])
    config = json.loads((finetune_ckpt / "config.json").read_text())
    assert config["init_from"] == f"{upstream_ckpt}/best"
    # Real and finetune trials differ only in their initial weights (same data, prompt
    # and seed), so identical curves would mean the upstream weights were never loaded.
    epochs = pd.read_parquet(small_sweep / schema.EXPORTS_DIR / schema.EPOCHS_FILE)
    real = epochs[epochs["trial_id"] == "cris-real-frozen-p1"]["val_loss"].to_numpy()
    finetune = epochs[epochs["trial_id"] == "cris-synth-pt-real-ft-frozen-p1"]["val_loss"].to_numpy()
    assert len(real) == len(finetune) == 2 and (real != finetune).all()


def test_each_trial_keeps_only_its_latest_checkpoint(small_sweep: Path) -> None:
    # Ray keeps every checkpoint (num_to_keep=None); CheckpointRetention deletes the
    # superseded ones after Ray's final snapshot, so each trial folder ends with one.
    state = json.loads((small_sweep / "chain_state.json").read_text())
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
    state_file = output / "chain_state.json"
    deadline = time.time() + 300
    done_before: set[str] = set()
    try:
        while time.time() < deadline and proc.poll() is None:
            if state_file.exists():
                state = json.loads(state_file.read_text())
                done_before = {c for c, s in state.items() if s["status"] == "done"}
                if done_before and any(s["status"] == "running" for s in state.values()):
                    break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert done_before, "the sweep finished no trial before the deadline"
    before = json.loads(state_file.read_text())

    resumed = _run(output, "--set", "train.max_epochs=4")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = json.loads(state_file.read_text())
    assert all(s["status"] == "done" for s in after.values())
    for cell in done_before:  # finished trials are not rerun
        assert after[cell]["trial_id"] == before[cell]["trial_id"]
        assert after[cell]["checkpoint"] == before[cell]["checkpoint"]
    epochs = pd.read_parquet(output / schema.EXPORTS_DIR / schema.EPOCHS_FILE)
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert (epochs.groupby("trial_id")["epoch"].max() == 4).all()
    runs = _mlflow_runs(output)
    assert (runs["tags.vlsm.role"] == "sweep").sum() == 1  # the same parent run continues
    assert (runs["tags.vlsm.role"] == "trial").sum() == 3  # no duplicate trial runs


def test_ctrl_c_ends_with_the_right_instruction_last(tmp_path: Path) -> None:
    # Ray's own last words on an interrupted experiment are "Resume experiment with:
    # Tuner.restore(...)"; a sweep resumes by running the same command again
    output = tmp_path / "sweep"
    args = [sys.executable, str(SCRIPT), "--output", str(output), *SMALL, "--set", "train.max_epochs=6"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    state_file = output / "chain_state.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if state_file.exists() and any(s["status"] == "done" for s in json.loads(state_file.read_text()).values()):
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
