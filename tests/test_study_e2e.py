"""The study's axes end to end on the phantom, under Ray: two synthetic sources (SDM and
DiffEcho's layout), the real+synthetic strategy with and without provenance, and a seed
added to the finished sweep, which runs only the new trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import schema

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sweeps" / "paper_grid.py"

STUDY = [
    "--models", "CRIS", "--prompts", "P1", "--encoders", "frozen", "--num-cpus", "2",
    "--strategies", "real", "synthetic", "synth-PT:real-FT", "real+synthetic",
    "--synthetic-sources", "sdm", "diffecho", "--set", "grid.provenance=[prompt, none]",
    "--set", "train.synthetic_share=0.5",
    "--set", "data.demo_patients=8", "--set", "data.demo_test_patients=2",
    "--set", "data.val_patients=2", "--set", "data.demo_image_size=[64, 56]",
    "--set", "train.max_epochs=1", "--set", "train.min_epochs=1", "--set", "train.system_metrics_interval_s=0",
]
FIRST = {"cris-real-frozen-p1", "cris-synthetic-frozen-p1", "cris-synthetic-diffecho-frozen-p1",
         "cris-synth-pt-real-ft-frozen-p1", "cris-synth-pt-real-ft-diffecho-frozen-p1",
         "cris-real-plus-synthetic-frozen-p1", "cris-real-plus-synthetic-no-provenance-frozen-p1",
         "cris-real-plus-synthetic-diffecho-frozen-p1", "cris-real-plus-synthetic-diffecho-no-provenance-frozen-p1"}

pytestmark = pytest.mark.slow


def _records(output: Path) -> dict[str, dict]:
    """Every cell's record in the sweep folder (cells/<cell_id>.json), by cell id."""
    return {path.stem: json.loads(path.read_text()) for path in (output / "cells").glob("*.json")}


def _run(output: Path, *extra: str) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output", str(output), *STUDY, *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("study")
    _run(output)
    first = {"state": _records(output),
             "trials": pd.read_parquet(output / schema.EXPORTS_DIR / schema.TRIALS_FILE)}
    _run(output, "--seeds", "42", "43")  # a seed added to the finished sweep
    return {"output": output, "first": first, "state": _records(output)}


def test_two_sources_and_the_mixed_strategy_run_and_export(study: dict) -> None:
    trials = study["first"]["trials"].set_index("trial_id")
    assert set(trials.index) == FIRST and (trials["status"] == "done").all()
    assert trials.loc["cris-synth-pt-real-ft-diffecho-frozen-p1", "upstream_trial_id"] == "cris-synthetic-diffecho-frozen-p1"
    assert trials.loc["cris-real-plus-synthetic-diffecho-frozen-p1", ["strategy", "synthetic_source", "provenance"]].tolist() == [
        "real+synthetic", "diffecho", "prompt"]
    assert trials.loc["cris-real-frozen-p1", ["synthetic_source", "provenance"]].tolist() == ["", ""]
    assert (trials["seed"] == 42).all()


def test_an_added_seed_runs_only_the_new_trials_each_from_its_own_upstream(study: dict) -> None:
    output, before, after = study["output"], study["first"]["state"], study["state"]
    assert set(after) == FIRST | {f"{cell}-s43" for cell in FIRST}
    assert all(s["status"] == "done" for s in after.values())
    for cell in FIRST:  # the finished trials are kept, not rerun
        assert (after[cell]["trial_id"], after[cell]["checkpoint"]) == (before[cell]["trial_id"], before[cell]["checkpoint"])
    assert after["cris-synth-pt-real-ft-frozen-p1-s43"]["upstream"] == "cris-synthetic-frozen-p1-s43"
    assert {after[c]["experiment"] for c in FIRST} == {"grid"} and after["cris-real-frozen-p1-s43"]["experiment"] == "grid-2"
    record = json.loads((output / "sweep.json").read_text())
    assert {name: sorted(ids) for name, ids in record["experiments"].items()} == {
        "grid": sorted(FIRST), "grid-2": sorted(f"{c}-s43" for c in FIRST)}
    trials = pd.read_parquet(output / schema.EXPORTS_DIR / schema.TRIALS_FILE)
    assert trials.groupby("seed").size().to_dict() == {42: 9, 43: 9}
    per_image = pd.read_parquet(output / schema.EXPORTS_DIR / schema.PER_IMAGE_FILE)
    assert set(per_image["trial_id"]) == set(after)


def test_mlflow_has_the_seed_and_source_of_every_trial(study: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study['output'] / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`vlsm.role` = 'trial'")
    params = {run.data.tags["vlsm.cell_id"]: run.data.params for run in runs}
    assert set(params) == set(study["state"])  # one run per trial, none twice
    assert params["cris-synthetic-diffecho-frozen-p1-s43"]["seed"] == "43"
    assert params["cris-synthetic-diffecho-frozen-p1-s43"]["synthetic_source"] == "diffecho"
    assert params["cris-real-plus-synthetic-no-provenance-frozen-p1"]["provenance"] == "none"


def test_the_analysis_reads_the_seeds_sources_and_mixed_strategy(study: dict) -> None:
    import analysis

    output = study["output"]
    per_image = analysis.load_sweep(output)
    assert set(per_image["seed"]) == {42, 43} and set(per_image["synthetic_source"]) == {"", "sdm", "diffecho"}
    table = analysis.dice_table(per_image, n_boot=200).set_index(["strategy", "synthetic_source", "provenance"])
    assert (table["n_seeds"] == 2).all() and (table["ci_low"] <= table["ci_high"]).all()
    assert ("real+synthetic", "diffecho", "none") in table.index
    claims = analysis.claims(per_image, analysis.read_trials(output), analysis.read_epochs(output), n_boot=200)
    assert {"sdm", "diffecho"} <= set(claims["synthetic_source"])
    assert set(claims["verdict"]) <= {"holds", "opposite", "not shown"}
    report = analysis.build_report(output, fmt="md", n_boot=200).read_text()
    assert "real+synthetic (diffecho" in report and "synthetic (diffecho)" in report
