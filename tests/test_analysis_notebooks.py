"""The notebooks in analysis/notebooks: generated from code, stripped, and they run headless."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from scipy import stats

from analysis import build_notebooks, write_example_exports
from analysis.notebook_builder import DEFAULT_OUTPUT, NOTEBOOKS, OUTPUT_ENV, PUBLISHED_ENV

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "analysis" / "notebooks"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_generated_and_stripped(name: str, tmp_path: Path) -> None:
    build_notebooks(tmp_path)
    committed = NOTEBOOK_DIR / name
    assert committed.read_text(encoding="utf-8") == (tmp_path / name).read_text(encoding="utf-8"), (
        f"{committed} differs from the builder's output: run `python -m analysis notebooks`"
    )
    notebook = nbformat.read(committed, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    write_example_exports(out, prompts=("P1", "P2"), n_patients=1)
    return out


# Appended to the executed copy (never to the committed notebook): the notebook's own
# results, as JSON, for the test to check against values it computes itself.
_PROBE = """import json
found = {name: value.to_dict("records") for name, value in globals().items()
         if name in ("table", "tests", "per_trial", "claims") and isinstance(value, pd.DataFrame)}
if "per_trial" in globals():
    found["speedup"] = analysis.speedup(per_trial).to_dict("records")
print("PROBE" + json.dumps(found, default=float))"""


def _run(name: str, cwd: Path) -> tuple[nbformat.NotebookNode, dict]:
    """Execute a notebook in a python3 kernel whose working folder is `cwd`; its outputs
    and the values the probe read from the kernel.

    The kernel imports this checkout's `analysis` (PYTHONPATH, set by the tests), not
    whatever an older editable install maps the name to. nbclient raises on a cell error.
    """
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(_PROBE))
    client = NotebookClient(notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    probe = notebook.cells.pop()
    text = "".join(o.get("text", "") for o in probe.outputs)
    return notebook, json.loads(text[text.index("PROBE") + len("PROBE"):])


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]


def _cells(export: Path) -> pd.DataFrame:
    """Per-image Dice x 100 with each trial's cell, read with plain pandas (not analysis)."""
    trials = pd.read_parquet(export / "exports" / "trials.parquet")
    per_image = pd.read_parquet(export / "exports" / "per_image.parquet")
    frame = per_image.merge(trials[["trial_id", "model", "strategy", "encoder", "prompt"]], on="trial_id")
    return frame.assign(dice=frame["dice"] * 100)


def test_tables_notebook_computes_the_papers_tables_and_tests(export: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OUTPUT_ENV, str(export))
    monkeypatch.setenv("PYTHONPATH", _pythonpath())
    monkeypatch.delenv(PUBLISHED_ENV, raising=False)
    notebook, found = _run(NOTEBOOKS[0], tmp_path)
    outputs = _outputs(notebook)
    # Table 2/3 numbers: mean and sample std of Dice x 100 per cell
    expected = _cells(export).groupby(["model", "strategy", "encoder", "prompt"])["dice"].agg(["count", "mean", "std"])
    table = pd.DataFrame(found["table"]).set_index(["model", "strategy", "encoder", "prompt"])
    assert len(table) == len(expected) == 2 * 3 * 2 * 2
    assert (table["n"] == expected.loc[table.index, "count"]).all()
    assert np.allclose(table["mean"], expected.loc[table.index, "mean"], atol=1e-9)
    assert np.allclose(table["std"], expected.loc[table.index, "std"], atol=1e-9)
    # the paper's layout shows every cell as "mean ± std", the best of each column in bold
    markdown = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    for (model, strategy, encoder, prompt), row in expected.iterrows():
        assert f"{row['mean']:.2f} ± {row['std']:.2f}" in markdown, (model, strategy, encoder, prompt)
    unfrozen = expected.xs("unfrozen", level="encoder")
    best = unfrozen["mean"].groupby(level="prompt").idxmax()
    for prompt, (model, strategy) in ((p, i[:2]) for p, i in best.items()):
        row = unfrozen.loc[(model, strategy, prompt)]
        assert f"**{row['mean']:.2f} ± {row['std']:.2f}**" in markdown
    # best real vs best synthetic, one-sided Wilcoxon over paired images, per model
    frame = _cells(export)
    tests = pd.DataFrame(found["tests"]).set_index(["family", "model"])
    for model in ("CLIPSeg", "CRIS"):
        cells = unfrozen.xs(model, level="model")["mean"]
        real = cells.xs("real", level="strategy").idxmax()
        synthetic = cells.xs("synthetic", level="strategy").idxmax()

        def dice(strategy: str, prompt: str, model: str = model) -> pd.Series:
            rows = frame[(frame.model == model) & (frame.strategy == strategy) & (frame.encoder == "unfrozen")
                         & (frame.prompt == prompt)]
            return rows.set_index(["image", "structure"])["dice"].sort_index()

        a, b = dice("real", real), dice("synthetic", synthetic)
        p_value = stats.wilcoxon(a.to_numpy(), b.loc[a.index].to_numpy(), alternative="greater").pvalue
        row = tests.loc[("real vs synthetic", model)]
        assert row["a"] == f"{model} real unfrozen {real}" and row["p_value"] == pytest.approx(p_value, rel=1e-12)
    # the claims come first: best prompts chosen on validation, intervals over the images (one seed)
    claims = pd.DataFrame(found["claims"])
    assert list(dict.fromkeys(claims["claim"]))[:2] == ["synthetic alone is worse than real",
                                                        "synth-PT:real-FT is better than real"]
    worse = claims[claims["claim"] == "synthetic alone is worse than real"]
    assert len(worse) == 2 * 2 and worse["holds"].all() and (worse["chosen_on"] == "validation").all()
    assert (claims.loc[claims["unit"] == "Dice x100", "interval"] == "images only (one seed)").all()
    headings = [c.source for c in notebook.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert headings[0].startswith("## Claims") and headings[1].startswith("## Per cell")
    for row in table.reset_index().itertuples():  # each cell's mean over seeds and its interval
        assert f"{row.seed_mean:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]" in markdown
    assert str(export.resolve()) in "".join(str(o.get("text", "")) for o in outputs)
    assert not list(tmp_path.iterdir())  # nothing written into the kernel's working folder


def test_figures_notebook_draws_the_figures_and_the_convergence(export: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OUTPUT_ENV, str(export))
    monkeypatch.setenv("PYTHONPATH", _pythonpath())
    notebook, found = _run(NOTEBOOKS[1], tmp_path)
    images = [o for o in _outputs(notebook) if "image/png" in o.get("data", {})]
    assert len(images) == 2 + 1 + 2  # Fig. 2 per encoder, Fig. 3, validation Dice per encoder
    # epochs to the best validation Dice, read with plain pandas: real over finetune
    epochs = pd.read_parquet(export / "exports" / "epochs.parquet")
    trials = pd.read_parquet(export / "exports" / "trials.parquet").set_index("trial_id")
    best_epoch = epochs.loc[epochs.groupby("trial_id")["val_dice"].idxmax()].set_index("trial_id")["epoch"]
    per_trial = trials.join(best_epoch.rename("best"))
    for row in found["speedup"]:
        group = per_trial[(per_trial.model == row["model"]) & (per_trial.encoder == row["encoder"])]
        real = group[group.strategy == "real"]["best"].mean()
        finetune = group[group.strategy == "synth-PT:real-FT"]["best"].mean()
        assert (row["real_epochs"], row["finetune_epochs"]) == (real, finetune)
        assert row["speedup"] == pytest.approx(real / finetune)
    assert len(found["speedup"]) == 4


@pytest.mark.parametrize("setting", [None, "runs/elsewhere"])
def test_a_relative_output_dir_is_read_from_the_repository_root(setting: str | None, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Jupyter starts the kernel in the notebook's folder, analysis/notebooks of a checkout;
    # the default (the demo's folder) and a relative setting mean folders of that checkout
    clone = tmp_path / "clone"
    (clone / "analysis" / "notebooks").mkdir(parents=True)
    sweep = clone / (setting or DEFAULT_OUTPUT)
    write_example_exports(sweep, prompts=("P1", "P2"), n_patients=1)
    if setting:
        monkeypatch.setenv(OUTPUT_ENV, setting)
    else:
        monkeypatch.delenv(OUTPUT_ENV, raising=False)
    monkeypatch.setenv("PYTHONPATH", _pythonpath())
    monkeypatch.delenv(PUBLISHED_ENV, raising=False)
    notebook, found = _run(NOTEBOOKS[0], clone / "analysis" / "notebooks")
    assert f"sweep output: {sweep}" in "".join(str(o.get("text", "")) for o in _outputs(notebook))
    assert len(found["table"]) == 2 * 3 * 2 * 2


def test_the_default_output_dir_is_where_the_demo_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeps.options import plan_sweep
    from sweeps.paper_grid import build_parser

    monkeypatch.chdir(tmp_path)  # the sweep's default folder is relative to where it runs
    plan = plan_sweep(build_parser().parse_args(["--dry-run"]))  # no dataset configured: the demo
    assert plan.spec.data.demo and plan.folder.root == tmp_path / DEFAULT_OUTPUT
