"""One toy entry of each axis (model, prompt, strategy, synthetic format), added from a
plugin module (tests/toy_axes.py, VLSM_PLUGINS) without editing the package, runs a
one-cell sweep end to end: the registries are the only place an axis value lives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
UPSTREAM, FINETUNE = "toy-real-frozen-p8", "toy-real-pt-synth-ft-toyfmt-frozen-p8"

pytestmark = pytest.mark.slow  # one Ray sweep of two tiny trials: about a minute on 2 cores


def test_a_toy_entry_of_each_axis_runs_a_one_cell_sweep(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VLSM_PLUGINS", "toy_axes")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "toy"
    command = [sys.executable, "sweeps/paper_grid.py", "--models", "Toy", "--prompts", "P8",
               "--strategies", "real-PT:synth-FT", "--synthetic-sources", "toyfmt", "--encoders", "frozen",
               "--output", str(out), "--num-cpus", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the grid names one cell; its upstream (the toy strategy's "real") is planned with it
    trials = pd.read_parquet(out / "exports" / "trials.parquet").set_index("trial_id")
    assert set(trials.index) == {UPSTREAM, FINETUNE} and (trials["status"] == "done").all()
    finetune = trials.loc[FINETUNE]
    assert (finetune["model"], finetune["strategy"], finetune["prompt"], finetune["synthetic_source"]) == (
        "Toy", "real-PT:synth-FT", "P8", "toyfmt")
    assert finetune["upstream_trial_id"] == UPSTREAM and trials.loc[UPSTREAM, "synthetic_source"] == ""
    record = json.loads((out / "cells" / f"{FINETUNE}.json").read_text())
    assert record["config"]["init_from"].endswith("/best") and f"/{UPSTREAM}_" in record["config"]["init_from"]
    # it trained and validated on the toy format (the phantom demo wrote it through its entry)
    assert "toyfmt-train" in record["config"]["train_cache"] and "toyfmt-val" in record["config"]["val_cache"]
    assert any((out / "cache" / "demo-data-seed0" / "toyfmt" / "images").glob("*_train_0.png"))
    # the toy prompt's sentences are what the trial was tested with
    per_image = pd.read_parquet(out / "exports" / "per_image.parquet")
    assert len(per_image[per_image["trial_id"] == FINETUNE]) > 0
    cache = Path(record["config"]["test_cache"])
    items = json.loads((cache / "items.json").read_text())
    assert any(" seen in " in json.dumps(item.get("prompts", {})) for item in items[:3])
    # the analysis takes the toy values as the registries' own
    sys.path.insert(0, str(TESTS))
    try:
        from analysis.sweep import load_sweep

        assert set(load_sweep(out)["trial_id"]) == {UPSTREAM, FINETUNE}
    finally:
        sys.path.remove(str(TESTS))
