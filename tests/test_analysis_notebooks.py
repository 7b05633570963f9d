"""The notebooks in analysis/notebooks: generated from code, stripped, and they run headless."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from analysis import build_notebooks, write_example_exports
from analysis.notebook_builder import NOTEBOOKS, OUTPUT_ENV, PUBLISHED_ENV

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


def _run(name: str, cwd: Path) -> nbformat.NotebookNode:
    """Execute a notebook in a python3 kernel whose working folder is `cwd`.

    The kernel imports this checkout's `analysis` (PYTHONPATH, set by the tests), not
    whatever an older editable install maps the name to.
    """
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return notebook


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]


def test_tables_notebook_runs(export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OUTPUT_ENV, str(export))
    monkeypatch.setenv("PYTHONPATH", _pythonpath())
    monkeypatch.delenv(PUBLISHED_ENV, raising=False)
    outputs = _outputs(_run(NOTEBOOKS[0], tmp_path))
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "| synth-PT:real-FT | CRIS |" in text and "**" in text  # the paper layout, best in bold
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "real vs synthetic" in html and "PT-FT vs real" in html
    assert str(export.resolve()) in "".join(str(o.get("text", "")) for o in outputs)
    assert not list(tmp_path.iterdir())  # nothing written into the kernel's working folder


def test_figures_notebook_runs(export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OUTPUT_ENV, str(export))
    monkeypatch.setenv("PYTHONPATH", _pythonpath())
    outputs = _outputs(_run(NOTEBOOKS[1], tmp_path))
    assert not [o for o in outputs if o["output_type"] == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2 + 1 + 2  # Fig. 2 per encoder, Fig. 3, validation Dice per encoder
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "speedup" in html and "3.0" in html  # example: real peaks at epoch 9, finetune at 3
