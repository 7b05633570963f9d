"""A lost node: a chained sub-grid on a multi-node Ray cluster on one machine (Ray's own
`ray.cluster_utils.Cluster`: a head without CPUs, so trials land on two worker nodes of one
CPU each), shared `file://` storage, and the synthetic trial's node lost twice while it is
mid-epoch (the second time on the node that replaced the first, as an autoscaler replaces a
preempted spot worker). Each node has its own local cache root (VLSM_REMOTE_CACHE in its
environment), as each machine of a cluster has its own disk.

The first node vanishes as a machine whose power or network is cut: every process of it
stops at once (SIGSTOP: no last report, no upload goes on, no connection closes) and Ray's
health check finds it dead (tuned to ~2 s here). The second is shut down under its
processes: its Ray processes are killed, then its workers. What differs from a real
cluster: docs/faults.md, "A lost node".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pytest

from analysis import schema

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sweeps" / "paper_grid.py"
EPOCHS = 5
SYNTHETIC, REAL, FINETUNE = "cris-synthetic-frozen-p1", "cris-real-frozen-p1", "cris-synth-pt-real-ft-frozen-p1"
# One chain (synthetic -> finetune) plus real, tiny CRIS with its frozen encoder (so each
# trial builds feature stores and publishes them beside the caches), a checkpoint every
# epoch, run.max_failures at its default 1.
SMALL = [
    "--models", "CRIS", "--prompts", "P1", "--encoders", "frozen",
    "--set", "data.demo_patients=8", "--set", "data.demo_test_patients=2",
    "--set", "data.val_patients=2", "--set", "data.demo_image_size=[64, 56]",
    "--set", f"train.max_epochs={EPOCHS}", "--set", "train.min_epochs=1", "--set", "train.checkpoint_interval_s=0",
]
# Columns that differ between any two runs: timings, paths, run ids (as /work/baseline's compare)
VARYING = {schema.TRIALS_FILE: ["mlflow_run_id", "wall_s", "gpu_s", "checkpoint"],
           schema.EPOCHS_FILE: ["images_per_s", "seconds"], schema.PER_IMAGE_FILE: []}


def test_a_lost_node_does_not_count_toward_max_failures(tmp_path: Path) -> None:
    import cloudpickle
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.tune.experiment import Trial
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from sweeps.tuner import MAX_NODE_LOSSES, NodeLossRetry

    callback = NodeLossRetry()
    died = "The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n"
    node = died + "The actor died because its node has died. Node Id: 1e8e7b32\n\tthe actor's node was terminated"
    worker = died + "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR"
    # its worker's connection closed before Ray knew that the node had gone
    unreachable = ActorUnavailableError("RpcError: RPC error: Socket closed rpc_code: 14", b"\x01" * 16)

    def trial(trial_id: str) -> SimpleNamespace:
        return SimpleNamespace(trial_id=trial_id, config={"cell_id": SYNTHETIC}, max_failures=1,
                               run_metadata=_TrainingRunMetadata(), pickled_error_file=str(tmp_path / f"{trial_id}.pkl"))

    def fails(trial: SimpleNamespace, error: str | Exception) -> bool:
        """What Ray does on a failure (count it, pickle the error, decide on a retry), then
        the callback, which sees only retried trials; whether the trial was retried."""
        trial.run_metadata.num_failures += 1
        error = RayActorError(error_msg=error) if isinstance(error, str) else error
        Path(trial.pickled_error_file).write_bytes(cloudpickle.dumps(error))
        retried = Trial.should_recover(trial)
        if retried:
            callback.on_trial_recover(0, [], trial)
        return retried

    spot = trial("t")
    losses = ([node, unreachable] * MAX_NODE_LOSSES)[:MAX_NODE_LOSSES]
    assert all(fails(spot, error) for error in losses)  # preempted again and again: retried each time
    assert fails(spot, worker) and not fails(spot, worker)  # its own failures: one retry (max_failures 1), then failed
    unlucky = trial("u")
    assert all(fails(unlucky, node) for _ in range(MAX_NODE_LOSSES + 1))  # the first loss past the limit: its retry
    assert not fails(unlucky, node)
    restored = NodeLossRetry()
    restored.set_state(callback.get_state())  # with Ray's experiment snapshot
    assert restored.losses == {"t": MAX_NODE_LOSSES, "u": MAX_NODE_LOSSES + 1}


@dataclass
class LostNodes:
    """What the sweep on the cluster left, and what the test saw while it ran."""

    output: Path
    storage: Path
    clean: Path  # the same sweep on a local Ray, never interrupted
    roots: dict[str, Path]  # node name -> its local cache root
    lost: list[str] = field(default_factory=list)  # the nodes lost, in order
    epochs_at_loss: list[int] = field(default_factory=list)  # the synthetic trial's reported epochs then
    frozen: list[psutil.Process] = field(default_factory=list)  # the vanished node's processes


def _records(output: Path) -> dict[str, dict]:
    folder = output / "cells"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


def _runs_synthetic(root: Path) -> bool:
    """Whether a node has fetched the synthetic training cache: only the synthetic trial reads it."""
    return any(root.glob("sdm-train-*"))


def _node_processes(node) -> list[psutil.Process]:
    """The node's Ray processes and their children (its trials' workers among them)."""
    pids = [info.process.pid for infos in node.all_processes.values() for info in infos]
    processes = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
    return processes + [child for p in processes for child in p.children(recursive=True)]


def _vanish(cluster, node) -> list[psutil.Process]:
    """A machine gone silent (its power or network cut): all its processes stop at once and
    never answer again; Ray's are killed. Returns the frozen rest, to kill once the sweep is
    over (a killed process closes its connections, which a vanished machine never does)."""
    processes = _node_processes(node)
    for process in processes:
        process.suspend()
    cluster.remove_node(node, allow_graceful=False)
    return [p for p in processes if p.is_running()]


def _shut_down(cluster, node) -> None:
    """A machine ended under its processes: its Ray processes killed, then its workers. Ray
    then reports the node's death or, when the worker's connection closed first, the worker
    unreachable (ActorUnavailableError): both are a lost node."""
    processes = _node_processes(node)
    cluster.remove_node(node, allow_graceful=False)
    for process in processes:
        if process.is_running():
            process.kill()


def _run_and_lose_nodes(cluster, nodes: dict, state: LostNodes, add_node) -> None:
    """Run the sweep on the cluster; lose the synthetic trial's node twice, mid-epoch after a
    checkpoint of this stay (each epoch's report carries one)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled",  # the test cluster has no token
           "VLSM_REMOTE_CACHE": str(state.storage.parent / "driver")}
    with open(state.output.parent / "driver.log", "w") as log:
        driver = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--output", str(state.output), "--address", cluster.address, "--cpu-only",
             "--storage", state.storage.as_uri(), *SMALL], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while driver.poll() is None and len(state.lost) < 2:
                assert time.time() < deadline, "the sweep did not reach the moments to lose a node"
                synthetic = _records(state.output).get(SYNTHETIC, {})
                reported = len(synthetic.get("epochs", []))
                since = state.epochs_at_loss[-1] if state.epochs_at_loss else 0
                running = [n for n in nodes if n not in state.lost and _runs_synthetic(state.roots[n])]
                if synthetic.get("status") == "running" and reported > since and running:
                    if not state.lost:
                        state.frozen += _vanish(cluster, nodes[running[0]])
                        nodes["c"] = add_node("c")  # a fresh worker replaces it
                    else:
                        _shut_down(cluster, nodes[running[0]])
                    state.lost.append(running[0])
                    state.epochs_at_loss.append(reported)
                time.sleep(0.05)
            driver.wait(timeout=240)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    text = (state.output.parent / "driver.log").read_text()
    assert driver.returncode == 0, text[-4000:]
    assert len(state.lost) == 2, f"lost only {state.lost} before the sweep ended\n{text[-3000:]}"


@pytest.fixture(scope="module")
def lost_nodes(tmp_path_factory) -> Iterator[LostNodes]:
    from ray.cluster_utils import Cluster

    base = tmp_path_factory.mktemp("nodes")
    # each node's local root: short paths, as Ray's socket paths under its temp dir must be
    roots = {name: Path(tempfile.mkdtemp(prefix=f"vlsm-node-{name}-", dir="/tmp")) for name in "abc"}
    state = LostNodes(output=base / "sweep", storage=base / "storage", clean=base / "clean", roots=roots)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 4}})

    def add_node(name: str):
        return cluster.add_node(num_cpus=1, env_vars={"VLSM_REMOTE_CACHE": str(roots[name])})

    try:
        try:
            _run_and_lose_nodes(cluster, {name: add_node(name) for name in "ab"}, state, add_node)
        finally:
            cluster.shutdown()
            for process in state.frozen:
                if process.is_running():
                    process.kill()
        clean = subprocess.run([sys.executable, str(SCRIPT), "--output", str(state.clean), "--num-cpus", "2", *SMALL],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
        assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
        yield state
    finally:
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)


def _reports(storage: Path, cell_id: str) -> pd.DataFrame:
    """Every report Ray received from the cell's trial, in order, from each of its workers
    (its progress.csv on storage; Ray rewrites result.json when a trial restores)."""
    (path,) = storage.glob(f"*/grid/{cell_id}_*/progress.csv")
    return pd.read_csv(path)


@pytest.mark.slow
def test_trials_on_lost_nodes_go_on_from_their_last_checkpoint(lost_nodes: LostNodes) -> None:
    records = _records(lost_nodes.output)
    assert {c: r["status"] for c, r in records.items()} == dict.fromkeys((SYNTHETIC, REAL, FINETUNE), "done")
    assert lost_nodes.lost[0] in "ab" and lost_nodes.lost[1] != lost_nodes.lost[0]
    reports = _reports(lost_nodes.storage, SYNTHETIC)
    # each epoch reported once: after each loss the trial went on from its last checkpoint, not epoch 0
    assert reports["epoch"].tolist() == list(range(1, EPOCHS + 1))
    first, second = lost_nodes.epochs_at_loss
    assert 1 <= first < second < EPOCHS
    restored = reports["epoch"][reports["iterations_since_restore"] == 1].tolist()
    # each worker's first report (after a restore): past the epochs reported before its loss
    assert len(restored) == 3 and restored[0] == 1 and restored[1] > first and restored[2] > second, reports
    assert reports.groupby("pid", sort=False)["epoch"].min().tolist() == restored  # three workers, in turn
    for cell_id in (REAL, FINETUNE):
        assert _reports(lost_nodes.storage, cell_id)["epoch"].tolist() == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_a_finetune_starts_from_its_upstream_best_after_the_upstreams_nodes_were_lost(lost_nodes: LostNodes) -> None:
    records = _records(lost_nodes.output)
    upstream = Path(records[SYNTHETIC]["checkpoint"])
    assert upstream.is_relative_to(lost_nodes.storage) and (upstream / "best").is_dir()  # on shared storage
    finetune = Path(records[FINETUNE]["checkpoint"])
    config = json.loads((finetune / "config.json").read_text())
    assert config["init_from"] == records[FINETUNE]["config"]["init_from"] == f"{upstream}/best"


@pytest.mark.slow
def test_the_exports_equal_an_uninterrupted_runs(lost_nodes: LostNodes) -> None:
    # On CPU a trial is deterministic: the resumed synthetic trial, its finetune (from the
    # upstream's best weights) and the real trial score as in a clean run, to the last bit.
    for name, varying in VARYING.items():
        ours = pd.read_parquet(lost_nodes.output / schema.EXPORTS_DIR / name)
        clean = pd.read_parquet(lost_nodes.clean / schema.EXPORTS_DIR / name)
        assert list(ours.columns) == list(clean.columns) and len(ours) == len(clean) > 0, name
        kept = [c for c in ours.columns if c not in varying]
        pd.testing.assert_frame_equal(ours[kept], clean[kept], check_exact=True, obj=name)
    epochs = pd.read_parquet(lost_nodes.output / schema.EXPORTS_DIR / schema.EPOCHS_FILE)
    assert not epochs.duplicated(["trial_id", "epoch"]).any()


@pytest.mark.slow
def test_mlflow_has_one_run_per_trial_and_one_point_per_epoch(lost_nodes: LostNodes) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{lost_nodes.output / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`vlsm.role` = 'trial'")
    assert sorted(r.info.run_name for r in runs) == sorted((SYNTHETIC, REAL, FINETUNE))
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        for metric in ("val_dice", "train_loss"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.info.run_name, metric, steps)


@pytest.mark.slow
def test_the_lost_nodes_feature_store_is_fetched_whole_by_the_others(lost_nodes: LostNodes) -> None:
    from vlsm.data import remote_cache

    # the synthetic trial's training store: built on the first node, published beside its cache
    built = {p.name for p in lost_nodes.roots[lost_nodes.lost[0]].glob("sdm-train-*.features-*")}
    assert len(built) == 1
    (published,) = lost_nodes.storage.glob(f"*/cache/{next(iter(built))}")
    assert remote_cache.is_published(published.as_uri())
    files = {p.name: p.read_bytes() for p in published.iterdir() if not p.name.startswith(".")}
    holders = [n for n, root in lost_nodes.roots.items() if (root / published.name).is_dir()]
    assert len(holders) == 3  # the two lost nodes and the last one each had it, whole
    for name in holders:
        assert {p.name: p.read_bytes() for p in (lost_nodes.roots[name] / published.name).iterdir()} == files
