"""The README and the reference pages in docs/, kept honest: every shell command and Python
snippet in them runs as written, or says, in a marker this test reads, why a test cannot run
it; every relative link and #anchor between them leads somewhere; and the README stays a
first hour (at most 300 lines) that links every page, each of which links back.

Blocks: every fenced block of README.md and docs/*.md (``` or ~~~, at any indentation,
inside list items too) with its language. `bash` (`sh`, `shell`, `console`) blocks are shell, `python`
blocks Python: each is either executed here or preceded by a marker, an HTML comment on the
line above it (invisible on GitHub) that gives the reason:

    <!-- readme-test: not run: needs the CAMUS data and GPUs -->

`json` blocks are data (they must parse); `text` blocks are output or listings and may not
hold commands. A block without a language, an unmarked shell or Python block that RUNS
does not name, a RUNS entry that names no block or a marked one, a marker without a
reason or that marks no block, and a command outside any block (an indented code block)
all fail `test_every_block_is_run_or_marked`. docs/design.md alone may hold blocks without
a language (its diagrams); a shell or Python block there follows the same rules.

How a block runs: its text as written, `bash -e -o pipefail -c TEXT` or `python -c TEXT`,
in a workspace prepared as the pages assume, with only these substitutions:

- the working folder: a temporary copy of the repository's files (those git tracks or
  would track), as a fresh clone has them;
- `.venv`: `make setup`'s, made of the interpreter running this test (its `bin/` programs
  and its packages) and an `.installed` newer than `pyproject.toml`; PATH starts with
  `.venv/bin`, as after `source .venv/bin/activate`, so `python` and `.venv/bin/python` are
  this test's interpreter;
- `data/CAMUS` and `data/SDM_CAMUS`, where the pages assume the real data: phantom data
  from the project's own generator (58 patients at 64 x 56 px, enough for the paper
  split's 50 validation patients);
- the environment: the hub off (`HF_HUB_OFFLINE=1`, conftest.py), no MAKEFLAGS of an outer
  make;
- the MLflow UI's `--port 5000`: a free port; the UI is stopped (its process group, by the
  pid this test started) once it has answered.

Fast blocks, of every page, share one workspace and its phantom data, and run in RUNS'
order (a block that reads or replaces what another wrote names it in `after`, so it also
runs alone with `-k`); the `slow` ones follow the README's quick start in a workspace of
their own: the first run (`make demo ARGS=...`), its report, the MLflow UI, an executed
notebook, a checkpoint loaded from it, then the sweep folder checked against the layout
docs/sweeps.md gives.
What the blocks write must be ignored by `.gitignore`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
DESIGN = DOCS / "design.md"  # another kind of page: its diagrams are blocks without a language
PAGES = [README, *sorted(DOCS.glob("*.md"))]  # every page a reader is sent to
REFERENCE = [p for p in PAGES if p not in (README, DESIGN)]  # the README's reference pages
README_MAX_LINES = 300

SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
DATA = {"json", "text"}
MARKER = re.compile(r"^\s*<!--\s*readme-test:(.*?)-->\s*$")
NOT_RUN = re.compile(r"^\s*not run:\s*(\S.*\S)\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]*)(?:\s+\"[^\"]*\")?\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto: (not checked here)
# how a line that is a command starts (outside a shell block it would escape this test)
COMMAND = re.compile(r"^(\$ |python3? |\.venv/bin/|make |mlflow |jupyter |ray |aws |pip |uv |git |cd )")
PHANTOM_PATIENTS = 58  # 50 validate (the paper split), 4 train, 4 test


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository: README.md, docs/sweeps.md
    line: int  # of the opening fence, 1-based
    end: int  # of the closing fence
    lang: str
    text: str  # dedented to the fence's indentation
    marker: str | None  # the readme-test comment right above, if any

    def where(self) -> str:
        first = (self.text.strip().splitlines() or [""])[0]
        return f"{self.page}:{self.line} ({self.lang or 'no language'}: {first[:60]!r})"


@dataclass(frozen=True)
class Run:
    """How the test runs one block: `key` is text found in exactly that block of all pages."""

    key: str
    slow: bool = False
    after: tuple[str, ...] = ()  # keys of blocks whose files this one reads
    expect: tuple[str, ...] = ()  # text its output must hold
    creates: tuple[str, ...] = ()  # paths it must leave in the workspace
    serve: str | None = None  # a server: the URL path that must answer before it is stopped


RUNS = (
    # --- fast: one workspace for every page; README.md, real data
    Run("--camus-root data/CAMUS --sdm-root data/SDM_CAMUS --dry-run",
        expect=("0 error(s), 0 warning(s)", "92 trials, 32 chained")),
    # docs/data.md, the real-data steps on phantom data
    Run("--set data.val_patients=4 --dry-run",
        expect=("official, the release's split files", "12 train / 4 val / 4 test", "0 error(s)", "92 trials"),
        creates=("demo_data/camus", "demo_data/sdm")),
    # docs/sweeps.md
    Run("--synthetic-sources sdm diffecho --set grid.provenance",
        expect=("skipped cris-synthetic-diffecho-frozen-p4: diffecho builds prompts P0, P1, P2, P3 only",
                "(3 seeds)")),
    # docs/data.md: synthetic sources, the data tools, the authors' layout (which replaces the tools' export)
    Run("--out demo_data/sources --synthetic-format sdm", expect=("0 error(s)", "grey"),
        creates=("demo_data/sources/diffecho/metadata.csv", "demo_data/sources/imagefolder/metadata.csv")),
    Run("--n-val 4 --size 352 --size 416 --cache-dir cache/", creates=("cache", "data/sb/camus/.vlsm-export.json")),
    Run("--out data/sb/camus --overwrite", after=("--n-val 4 --size 352 --size 416 --cache-dir cache/",),
        creates=("data/sb/camus/anns/test.json",)),
    # docs/analysis.md
    Run("python -m analysis example-export runs/example",
        creates=("runs/example/report.html", "runs/example/figures", "report.md", "figures")),
    Run('sweep = "runs/example"', after=("python -m analysis example-export runs/example",),
        expect=("speedup",), creates=("runs/example/fig2.png", "runs/example/fig2.pdf")),
    Run("VLSM_OUTPUT_DIR=runs/example jupyter execute", after=("python -m analysis example-export runs/example",)),
    # docs/models.md
    Run("tiny_config(name)", expect=("torch.Size([2, 1, 64, 64])",)),
    # --- slow: the README's quick start (and docs/sweeps.md's loaders), in a workspace of its own
    Run('make demo ARGS="--models CLIPSeg --prompts P1 P2"', slow=True, expect=("12/12 trials done",)),
    Run("python -m analysis report runs/paper-grid-demo", slow=True,
        creates=("runs/paper-grid-demo/report.html", "runs/paper-grid-demo/figures")),
    Run("mlflow ui --backend-store-uri sqlite:///$PWD/runs/paper-grid-demo/mlflow.db", slow=True,
        serve="/api/2.0/mlflow/experiments/search?max_results=10"),
    Run("jupyter execute analysis/notebooks/tables_and_tests.ipynb --output", slow=True,
        creates=("runs/paper-grid-demo/tables_and_tests.ipynb",)),
    Run("load_model(Path(trials.loc", slow=True, expect=("eval mode",)),
    Run("mlflow.pyfunc.load_model(f\"runs:/", slow=True, expect=("(1, 512, 512) bool",)),
)
FAST = [r for r in RUNS if not r.slow]
SLOW = [r for r in RUNS if r.slow]


# --- reading the pages --------------------------------------------------------------------


def page_blocks(text: str, page: str = "README.md") -> tuple[list[Block], list[str]]:
    """Every fenced block of one page, and the problems found outside them (stray markers,
    commands that are in no fenced block)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            if MARKER.match(lines[i]):
                following = next((line for line in lines[i + 1:] if line.strip()), "")
                if not FENCE.match(following):
                    problems.append(f"{page}:{i + 1}: a readme-test marker that marks no block")
            elif lines[i].startswith("    ") and COMMAND.match(lines[i].lstrip()):
                problems.append(f"{page}:{i + 1}: a command outside any fenced block: {lines[i].strip()!r}")
            i += 1
            continue
        indent, fence, lang = opening.groups()
        end = next((j for j in range(i + 1, len(lines))
                    if lines[j].strip().startswith(fence[0] * len(fence)) and not lines[j].strip().strip(fence[0])), None)
        if end is None:
            problems.append(f"{page}:{i + 1}: a fence that never closes")
            break
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above)
        blocks.append(Block(page, i + 1, end + 1, lang.lower(), "\n".join(body) + "\n",
                            marker.group(1).strip() if marker else None))
        i = end + 1
    return blocks, problems


def _name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


BLOCKS: list[Block] = []
OUTSIDE: list[str] = []
for _page in PAGES:
    _blocks, _problems = page_blocks(_page.read_text(encoding="utf-8"), _name(_page))
    BLOCKS += _blocks
    OUTSIDE += _problems


def block_of(run: Run) -> Block:
    found = [b for b in BLOCKS if run.key in b.text]
    assert len(found) == 1, f"RUNS entry {run.key!r} is in {len(found)} blocks of the pages, expected exactly 1"
    return found[0]


def test_every_block_is_run_or_marked() -> None:
    problems = list(OUTSIDE)
    claimed: dict[int, Run] = {}
    for run in RUNS:
        found = [b for b in BLOCKS if run.key in b.text]
        if len(found) != 1:
            problems.append(f"RUNS entry {run.key!r} is in {len(found)} blocks of the pages, expected exactly 1")
        elif found[0].marker is not None:
            problems.append(f"{found[0].where()}: marked ({found[0].marker!r}) but RUNS runs it")
        else:
            claimed[found[0].line] = run
    for block in BLOCKS:
        if block.marker is not None:
            reason = NOT_RUN.match(block.marker)
            if not reason or len(reason.group(1).split()) < 3:
                problems.append(f"{block.where()}: marker {block.marker!r}; expected 'not run: <the reason>'")
        if block.lang in SHELL | PYTHON:
            if block.marker is None and block.line not in claimed:
                problems.append(f"{block.where()}: neither run by this test (RUNS) nor marked "
                                "'<!-- readme-test: not run: <why> -->'")
        elif block.lang == "json":
            try:
                json.loads(block.text)
            except ValueError as err:
                problems.append(f"{block.where()}: not JSON ({err})")
        elif block.lang == "text":
            commands = [line for line in block.text.splitlines() if COMMAND.match(line.strip())]
            if commands:
                problems.append(f"{block.where()}: commands in a text block ({commands[0]!r}); make it a bash block")
        elif not (block.lang == "" and block.page == _name(DESIGN)):  # design.md's diagrams
            problems.append(f"{block.where()}: give the block a language: one of {sorted(SHELL | PYTHON | DATA)}")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_must() -> None:
    # the parser and the rules, on a page of their own
    text = "\n".join([
        "    python sweeps/paper_grid.py",  # an indented code block
        "<!-- readme-test: not run: -->",
        "```bash", "make demo", "```",
        "<!-- readme-test: not run: needs the CAMUS data -->",
        "text between",
        "```", "python -m vlsm", "```",
        "- a list item:", "", "   ```json", "   {\"a\": 1}", "   ```",
    ])
    blocks, problems = page_blocks(text)
    assert [(b.line, b.end, b.lang, b.marker) for b in blocks] == [
        (3, 5, "bash", "not run:"), (8, 10, "", None), (13, 15, "json", None)]
    assert blocks[2].text == '{"a": 1}\n'
    assert any("a command outside any fenced block" in p for p in problems)
    assert any("README.md:6: a readme-test marker that marks no block" in p for p in problems)
    assert NOT_RUN.match(blocks[0].marker) is None


# --- the workspace -------------------------------------------------------------------------


def _repository_files() -> list[str]:
    """The files a fresh clone has: what git tracks or would track (not ignored)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, capture_output=True, check=True).stdout.decode()
        return [f for f in listed.split("\0") if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # no git, or not a clone: all but outputs
        skip = {".git", ".venv", ".pytest_cache", ".ruff_cache", "__pycache__", "runs", "cache", "data",
                "demo_data", "figures"}
        return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(REPO).parts) and ".egg-info" not in str(p)]


def _venv(root: Path) -> Path:
    """`.venv` as `make setup` leaves it, made of this test's interpreter."""
    venv = root / ".venv"
    (venv / "bin").mkdir(parents=True)
    prefix, bin_dir = Path(sys.prefix), Path(sys.executable).parent
    if sys.prefix != sys.base_prefix:  # a virtualenv: its packages, found through pyvenv.cfg
        shutil.copy(prefix / "pyvenv.cfg", venv / "pyvenv.cfg")
        for lib in ("lib", "lib64"):
            if (prefix / lib).exists():
                (venv / lib).symlink_to(prefix / lib)
    (venv / "bin" / "python").symlink_to(sys.executable)
    for tool in ("python3", "mlflow", "jupyter", "jupyter-execute", "ray", "pip"):
        if (bin_dir / tool).exists():
            (venv / "bin" / tool).symlink_to(bin_dir / tool)
    (venv / ".installed").touch()  # newer than pyproject.toml: make sees setup done
    return venv


def _phantom_data(root: Path) -> None:
    """data/CAMUS and data/SDM_CAMUS, where the pages assume the real data."""
    from vlsm.data.phantom import write_demo_data

    data = write_demo_data(root / "data" / "phantom", seed=0, n_patients=PHANTOM_PATIENTS, n_test=4, n_val=4,
                           size=(64, 56), sdm_per_image=1)
    data.camus_root.rename(root / "data" / "CAMUS")
    data.sdm_root.rename(root / "data" / "SDM_CAMUS")
    shutil.rmtree(root / "data" / "phantom")


class Workspace:
    """A clone-like folder where the pages' blocks run, each once, dependencies first."""

    def __init__(self, root: Path, phantom: bool) -> None:
        self.root = root
        for name in _repository_files():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
        venv = _venv(root)
        if phantom:
            _phantom_data(root)
        self.given = set(self.files())  # what the pages assume is there
        drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PWD", "OLDPWD", "VIRTUAL_ENV", "PYTHONHOME"}
        self.env = {k: v for k, v in os.environ.items() if k not in drop}
        self.env.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv),
                        HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.done: dict[str, str] = {}

    def files(self) -> Iterator[str]:
        """Every file and symlink under the workspace, relative (symlinks not followed)."""
        for folder, dirs, files in os.walk(self.root):
            here = Path(folder)
            if here == self.root:
                dirs[:] = [d for d in dirs if d != ".git"]
            for name in files + [d for d in dirs if (here / d).is_symlink()]:
                yield str((here / name).relative_to(self.root))

    def run(self, run: Run, timeout: float) -> str:
        """Run the block `run` names (after the ones it reads), check it; its output."""
        for key in run.after:
            if key not in self.done:
                self.run(next(r for r in RUNS if r.key == key), timeout)
        if run.key in self.done:
            return self.done[run.key]
        block = block_of(run)
        if run.serve:
            out = self._serve(block.text, run.serve, timeout)
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", block.text] if block.lang in SHELL \
                else [str(self.root / ".venv" / "bin" / "python"), "-c", block.text]
            proc = subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{block.where()} exited with {proc.returncode}:\n{out[-4000:]}"
        for text in run.expect:
            assert text in out, f"{block.where()}: {text!r} not in its output:\n{out[-4000:]}"
        for path in run.creates:
            assert (self.root / path).exists(), f"{block.where()}: wrote no {path}"
        self.done[run.key] = out
        return out

    def _serve(self, text: str, path: str, timeout: float) -> str:
        """Start the server the block runs (on a free port instead of 5000), ask `path`
        until it answers, stop it; what it answered."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        assert text.count("--port 5000") == 1, text
        proc = subprocess.Popen(["bash", "-e", "-c", text.replace("--port 5000", f"--port {port}")], cwd=self.root,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{proc.stdout.read()[-4000:]}"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                        return answer.read().decode()
                except OSError:
                    assert time.monotonic() < deadline, f"nothing answered on port {port} in {timeout:.0f} s"
                    time.sleep(1)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group this test started
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def unignored(self) -> list[str]:
        """What the blocks wrote that `.gitignore` does not cover (git in a scratch repo)."""
        new = sorted(set(self.files()) - self.given)
        if not new:
            return []
        subprocess.run(["git", "init", "-q"], cwd=self.root, check=True, capture_output=True)
        ignored = subprocess.run(["git", "-c", "core.excludesFile=/dev/null", "check-ignore", "--stdin", "-z"],
                                 cwd=self.root, input="\0".join(new),
                                 capture_output=True, text=True).stdout.split("\0")
        return sorted(set(new) - set(ignored))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("clone"), phantom=True)


@pytest.mark.parametrize("run", FAST, ids=lambda r: r.key[:40])
def test_block_runs_as_written(run: Run, workspace: Workspace) -> None:
    workspace.run(run, timeout=300)


def test_what_the_blocks_write_is_ignored_by_git(workspace: Workspace) -> None:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    for run in FAST:
        workspace.run(run, timeout=300)
    assert workspace.unignored() == []


# --- the quick start, slow -----------------------------------------------------------------


def _layout_entries() -> list[str]:
    """The sweep folder's entries as docs/sweeps.md lists them (placeholders and --lr-search
    ones left out): `mlflow.db, mlartifacts/` gives two."""
    block = next(b for b in BLOCKS if b.lang == "text" and b.text.startswith("<output>/"))
    entries = []
    for line in block.text.splitlines()[1:]:
        names = re.split(r"\s{2,}", line.strip())[0]
        if line.startswith("  ") and not line.startswith("   ") and "<" not in names and "--lr-search" not in line:
            entries += [n.strip() for n in names.split(",")]
    return entries


@pytest.mark.slow
def test_a_new_users_first_hour(tmp_path: Path) -> None:
    """The quick start from a fresh clone: a finished first run, its report, the MLflow UI
    and an executed notebook, and the sweep folder as docs/sweeps.md describes it."""
    import nbformat
    import pandas as pd

    space = Workspace(tmp_path, phantom=False)
    for run in SLOW:
        out = space.run(run, timeout=600)
        if run.serve:  # the UI shows the sweep's experiment
            assert "paper-grid" in [e["name"] for e in json.loads(out)["experiments"]], out
    sweep = tmp_path / "runs" / "paper-grid-demo"
    entries = _layout_entries()
    assert {"sweep.json", "cells/", "ray/grid/", "exports/", "report.html", "figures/"} <= set(entries)
    for entry in entries:
        assert (sweep / entry).exists(), f"docs/sweeps.md's sweep folder lists {entry}; not in {sorted(os.listdir(sweep))}"
    # trial folders are named after their cells, and the exports say where a cell's checkpoint is
    trials = pd.read_parquet(sweep / "exports" / "trials.parquet")
    state = {p.stem: json.loads(p.read_text()) for p in (sweep / "cells").glob("*.json")}
    folders = {p.name for p in (sweep / "ray" / "grid").iterdir() if p.is_dir()}
    assert folders == {f"{t}_{state[t]['trial_id']}" for t in trials["trial_id"]}
    for row in trials.itertuples():
        assert Path(row.checkpoint).parent.name == f"{row.trial_id}_{state[row.trial_id]['trial_id']}"
        assert row.checkpoint == state[row.trial_id]["checkpoint"] and (Path(row.checkpoint) / "best").is_dir()
    notebook = nbformat.read(sweep / "tables_and_tests.ipynb", as_version=4)
    printed = "".join(str(o.get("text", "")) for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert f"sweep output: {sweep}" in printed
    if shutil.which("git"):
        assert space.unignored() == []


def test_the_tests_the_pages_cite_exist() -> None:
    missing, count = [], 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        cited = set(re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text))
        cited |= set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", text))
        count += len(cited)
        missing += [f"{_name(page)}: {path}::{name}" if name else f"{_name(page)}: {path}" for path, name in sorted(cited)
                    if not (REPO / path).is_file()
                    or (name and not re.search(rf"^\s*def {name}\(", (REPO / path).read_text(), re.M))]
    assert count > 20  # the claims table (docs/development.md) names its tests
    assert not missing, f"the pages cite tests that do not exist: {missing}"


# --- links between the pages ---------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation gone, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def outside_blocks(text: str, page: str = "README.md") -> list[str]:
    """The page's lines, those of its fenced blocks blanked."""
    lines = text.splitlines()
    for block in page_blocks(text, page)[0]:
        lines[block.line - 1:block.end] = [""] * (block.end - block.line + 1)
    return lines


def prose(text: str, page: str = "README.md") -> str:
    """The page without its fenced blocks and its inline code spans: where links are."""
    return re.sub(r"`[^`\n]*`", "", "\n".join(outside_blocks(text, page)))


def anchors(text: str) -> set[str]:
    """The #anchors a page's headings make (a repeated one gets -1, -2, ... as on GitHub)."""
    found: set[str] = set()
    for line in outside_blocks(text):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def broken_links(page: Path, name: str) -> list[str]:
    """Each relative link of `page` (called `name` in the problems) whose file or #anchor
    does not exist."""
    text = page.read_text(encoding="utf-8")
    problems = []
    for _, target in LINK.findall(prose(text, name)):
        if not target or SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            problems.append(f"{name}: ({target}): no such file")
        elif anchor and linked.suffix != ".md":
            problems.append(f"{name}: ({target}): an anchor into a file that is not a page")
        elif anchor and anchor not in anchors(linked.read_text(encoding="utf-8")):
            problems.append(f"{name}: ({target}): no heading makes #{anchor} in {linked.name}")
    return problems


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = [problem for page in PAGES for problem in broken_links(page, _name(page))]
    assert not problems, "\n".join(problems)


def test_the_link_checks_catch_what_they_must(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Cloud cluster (`ray_cluster.yaml`)\n\n## A\n\n## A\n")
    page = tmp_path / "README.md"
    page.write_text("\n".join([
        "# Title", "## Seeds, synthetic sources and real+synthetic", "### What `make demo` prints", "",
        "[ok](#seeds-synthetic-sources-and-realsynthetic) [ok](docs/other.md#cloud-cluster-ray_clusteryaml)",
        "[ok](#what-make-demo-prints)",
        "[ok](docs/other.md#a-1) [ok](https://example.org/x#y) [split over",
        "two lines](docs/other.md#a) `[in code](nowhere.md)`",
        "[gone](#no-such-heading) [gone](docs/missing.md) [gone](docs/other.md#a-2)",
        "```bash", "# Not a heading", "[in a block](nowhere.md)", "```",
        "[gone](#not-a-heading)",
    ]))
    assert anchors(page.read_text()) == {"title", "seeds-synthetic-sources-and-realsynthetic", "what-make-demo-prints"}
    assert broken_links(page, "README.md") == [f"README.md: {problem}" for problem in (
        "(#no-such-heading): no heading makes #no-such-heading in README.md",
        "(docs/missing.md): no such file",
        "(docs/other.md#a-2): no heading makes #a-2 in other.md",
        "(#not-a-heading): no heading makes #not-a-heading in README.md",
    )]


def test_the_readme_is_a_first_hour_that_links_every_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    linked = {(README.parent / target.partition("#")[0]).resolve()
              for _, target in LINK.findall(prose(text)) if not SCHEME.match(target)}
    assert set(PAGES) - {README} <= linked, f"README.md links none of {sorted(map(_name, set(PAGES) - linked - {README}))}"
    assert REFERENCE, "no reference pages in docs/"
    for page in REFERENCE:  # each opens with what it is for, and the way back
        first = page.read_text(encoding="utf-8").split("\n\n")[1]
        assert "](../README.md" in first, f"{_name(page)}: its first paragraph does not link back to the README"
