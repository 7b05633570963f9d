"""A trial whose worker process is killed more often than `run.max_failures`: it ends
`failed` with one readable line saying so (record, exports, MLflow), its finetune `not_run`
naming it, the rest of the sweep done, exit status 1; the same command again reruns nothing.
The kill is real under Ray (tests/kill_worker.py, a VLSM_PLUGINS module); the wording is
checked on Ray's own messages without Ray."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from sweeps.cell import CELL_ID, Cell
from sweeps.chain import RecordCallback
from sweeps.record import DONE, FAILED, NOT_RUN, CellRecords, trial_outcome

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
UPSTREAM, FINETUNE, REAL = "cris-synthetic-frozen-p1", "cris-synth-pt-real-ft-frozen-p1", "cris-real-frozen-p1"
DIED = "the trial's worker process died (killed, out of memory or a lost node)"


def _actor_died() -> str:
    """Ray's message for a trial whose worker process was SIGKILLed (as Ray 2.x words it)."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext
    from ray.exceptions import ActorDiedError

    return str(ActorDiedError(ActorDiedErrorContext(
        class_name="ImplicitFunc", actor_id=bytes(16), pid=4242, node_ip_address="127.0.0.1",
        error_message="The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR "
                      "Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file.")))


def _raised() -> str:
    return ("ray::ImplicitFunc.train() (pid=4242, ip=127.0.0.1)\n  File \"vlsm/train.py\", line 1, in run_training\n"
            "ValueError: train_cache: /data/missing not found")


def _failed_trial(tmp_path: Path, *errors: str, cell_id: str = UPSTREAM) -> SimpleNamespace:
    """A trial Ray gave up on, its error file written as Ray's Trial.handle_error writes it."""
    local = tmp_path / "session" / "driver_artifacts" / f"{cell_id}_t" / "error.txt"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text("".join(f"Failure # {i} (occurred at 2026-01-01_00-00-0{i})\n{error}\n"
                             for i, error in enumerate(errors, 1)))
    return SimpleNamespace(
        config={CELL_ID: cell_id}, trial_id="t", last_result={"best_epoch": 1},
        checkpoint=SimpleNamespace(path=str(tmp_path / "ray" / "ckpt"), filesystem=None),
        error_file=str(local), path=str(tmp_path / "ray" / "grid" / f"{cell_id}_t"),
        storage=SimpleNamespace(storage_filesystem=SimpleNamespace(type_name="local")),
        max_failures=len(errors) - 1, num_failures=len(errors), get_error=lambda: None)


def test_a_worker_killed_on_every_try_fails_with_one_line_saying_so(tmp_path: Path) -> None:
    trial = _failed_trial(tmp_path, _actor_died(), _actor_died())
    outcome = trial_outcome(trial, error=True)
    assert outcome.status == FAILED and outcome.checkpoint == str(tmp_path / "ray" / "ckpt")
    stays = f"{trial.path}/error.txt"  # on storage: the driver's copy goes with Ray's session folder
    assert outcome.reason == f"{DIED} 2 times; run.max_failures=1 (Ray's messages in {stays})"


def test_a_worker_death_after_an_error_counts_both(tmp_path: Path) -> None:
    reason = trial_outcome(_failed_trial(tmp_path, _raised(), _actor_died()), error=True).reason
    assert reason.startswith(f"{DIED} once and it failed once with an error; run.max_failures=1 (")
    # the last try raised: its exception is the reason, as before
    reason = trial_outcome(_failed_trial(tmp_path, _actor_died(), _raised()), error=True).reason
    assert reason.startswith("ValueError: train_cache: /data/missing not found (after all retries; traceback in ")
    assert reason.endswith(f"/ray/grid/{UPSTREAM}_t/error.txt)")


def test_the_finetune_of_a_killed_upstream_is_not_run_naming_it(tmp_path: Path, caplog) -> None:
    cells = [Cell("CRIS", "synthetic", "frozen", "P1"),
             Cell("CRIS", "synth-PT:real-FT", "frozen", "P1", upstream=UPSTREAM)]
    records = CellRecords(tmp_path / "cells")
    records.plan({"grid": cells}, {c.cell_id: {CELL_ID: c.cell_id} for c in cells}, {c.cell_id: 0.0 for c in cells})
    callback = RecordCallback(records, total=2)
    first = _failed_trial(tmp_path, _actor_died())
    first.num_failures, first.max_failures = 1, 1
    with caplog.at_level(logging.WARNING, logger="sweep"):
        callback.on_trial_recover(0, [], first)  # Ray retries it from its last checkpoint
    assert (f"{UPSTREAM}: try 1 failed (its worker process died (killed, out of memory or a lost node)); "
            "Ray retries it from its last checkpoint (run.max_failures=1)") in caplog.text
    callback.on_trial_error(0, [], _failed_trial(tmp_path, _actor_died(), _actor_died()))
    saved = CellRecords(tmp_path / "cells")
    assert saved[UPSTREAM].status == FAILED and saved[UPSTREAM].reason.startswith(f"{DIED} 2 times;")
    assert saved[FINETUNE].status == NOT_RUN
    assert saved[FINETUNE].reason == f"upstream {UPSTREAM} failed: {saved[UPSTREAM].reason}"


# --- under Ray: the driver, twice ------------------------------------------------------

SMALL = [
    "--models", "CRIS", "--prompts", "P1", "--encoders", "frozen", "--num-cpus", "2",
    "--set", "data.demo_patients=8", "--set", "data.demo_test_patients=2",
    "--set", "data.val_patients=2", "--set", "data.demo_image_size=[64, 56]",
    "--set", "train.max_epochs=2", "--set", "train.min_epochs=1", "--set", "train.checkpoint_interval_s=0",
    "--set", "run.max_failures=1",
]


def _run(output: Path) -> subprocess.CompletedProcess:
    """The driver with the upstream's worker SIGKILLed as it starts epoch 2, every try."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VLSM_PLUGINS": "kill_worker", "VLSM_KILL_CELL": UPSTREAM,
           "VLSM_KILL_EPOCH": "2", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "paper_grid.py"), "--output", str(output), *SMALL],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def _records(output: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in (output / "cells").glob("*.json")}


def _runs(output: Path) -> dict[str, SimpleNamespace]:
    """The trial runs of the sweep's MLflow store by cell: status, tags, val_dice steps."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {run.data.tags["vlsm.cell_id"]: SimpleNamespace(
        run_id=run.info.run_id, status=run.info.status, tags=run.data.tags,
        steps=[m.step for m in client.get_metric_history(run.info.run_id, "val_dice")])
        for run in runs if run.data.tags.get("vlsm.role") == "trial"}


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory) -> SimpleNamespace:
    """The sweep run once (the upstream killed twice: max_failures=1), then again."""
    output = tmp_path_factory.mktemp("killed") / "sweep"
    first = _run(output)
    before = SimpleNamespace(records=_records(output), runs=_runs(output),
                             trials=pd.read_parquet(output / "exports" / "trials.parquet").set_index("trial_id"))
    again = _run(output)
    return SimpleNamespace(output=output, first=first, again=again, before=before)


@pytest.mark.slow
def test_a_trial_killed_beyond_its_retries_fails_the_rest_goes_on(killed_sweep: SimpleNamespace) -> None:
    first, before = killed_sweep.first, killed_sweep.before
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    records = before.records
    assert {c: r["status"] for c, r in records.items()} == {UPSTREAM: FAILED, FINETUNE: NOT_RUN, REAL: DONE}
    reason = records[UPSTREAM]["reason"]
    error_file = next((killed_sweep.output / "ray" / "grid").glob(f"{UPSTREAM}_*")) / "error.txt"
    assert reason == f"{DIED} 2 times; run.max_failures=1 (Ray's messages in {error_file})", reason
    assert error_file.read_text().count("The actor died unexpectedly") == 2  # killed on both tries
    assert records[FINETUNE]["reason"] == f"upstream {UPSTREAM} failed: {reason}"
    assert records[FINETUNE]["trial_id"] is None  # never started
    assert f"  {UPSTREAM}: failed: {reason}\n" in first.stdout  # the summary says it too
    assert f"{UPSTREAM}: try 1 failed (its worker process died" in first.stderr  # and the retry, when it came
    # the exports
    trials = before.trials
    assert trials["status"].to_dict() == {c: r["status"] for c, r in records.items()}
    assert trials["reason"].to_dict()[UPSTREAM] == reason
    assert trials["reason"].to_dict()[FINETUNE] == records[FINETUNE]["reason"]
    epochs = pd.read_parquet(killed_sweep.output / "exports" / "epochs.parquet")
    assert epochs.groupby("trial_id")["epoch"].apply(list).to_dict() == {UPSTREAM: [1], REAL: [1, 2]}
    # MLflow: one run per cell, ended as the record says, with the reason
    runs = before.runs
    assert {c: (r.status, r.tags["vlsm.status"]) for c, r in runs.items()} == {
        UPSTREAM: ("FAILED", FAILED), FINETUNE: ("KILLED", NOT_RUN), REAL: ("FINISHED", DONE)}
    assert runs[UPSTREAM].tags["vlsm.reason"] == reason and runs[FINETUNE].tags["vlsm.reason"] == records[FINETUNE]["reason"]
    assert runs[UPSTREAM].steps == [1] and runs[REAL].steps == [1, 2]  # the replayed epoch logged once
    assert {c: r.run_id for c, r in runs.items()} == {c: r["run_id"] for c, r in records.items()}


@pytest.mark.slow
def test_the_same_command_again_reruns_nothing_and_keeps_the_failure(killed_sweep: SimpleNamespace) -> None:
    # docs/sweeps.md: finished trials are not rerun, and a failed one is finished (errored
    # trials stay errored): the failure stays, said again, until the sweep runs in a new --output
    again, before = killed_sweep.again, killed_sweep.before
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert _records(killed_sweep.output) == before.records  # trial ids, checkpoints, run ids, reasons
    assert f"  {UPSTREAM}: failed: {before.records[UPSTREAM]['reason']}\n" in again.stdout
    assert "sweeps.chain: starting" not in again.stderr  # no trial started
    runs = _runs(killed_sweep.output)
    assert {c: (r.run_id, r.status, r.steps) for c, r in runs.items()} == {
        c: (r.run_id, r.status, r.steps) for c, r in before.runs.items()}
    trials = pd.read_parquet(killed_sweep.output / "exports" / "trials.parquet").set_index("trial_id")
    pd.testing.assert_frame_equal(trials, before.trials)
