"""The layering rules of docs/design.md, checked on the source: imports point one way,
nothing imports in a circle, one home for the names every layer shares, short functions.

These read the code (AST), they import nothing of it; a failure names the file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vlsm", "sweeps", "analysis", "bench")
# What each top-level folder may import from the project (docs/design.md, "Layers").
ALLOWED = {
    "vlsm": {"vlsm"},
    "analysis": {"analysis", "vlsm"},
    "sweeps": {"sweeps", "analysis", "vlsm"},
    "bench": {"bench", "sweeps", "analysis", "vlsm"},
}
MAX_FUNCTION_LINES = 60


def _sources() -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every project module outside tests."""
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "notebooks" in path.parts:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


MODULES = dict(_sources())


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import in the file, lazy ones included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            # `from pkg import sub` names the submodule when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                yield name, node.lineno


def test_imports_point_one_way() -> None:
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for module, path in MODULES.items()
        for name, line in _imports(module, path)
        if name.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert not wrong, "imports running back up a layer:\n" + "\n".join(wrong)


def test_no_modules_import_each_other() -> None:
    graph = {m: {n for n, _ in _imports(m, p) if n in MODULES and n != m} for m, p in MODULES.items()}
    cycles = []
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            cycles.append(" -> ".join([*stack[stack.index(module):], module]))
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_library_imports_ray_only_in_its_trainable() -> None:
    users = sorted(
        f"{path.relative_to(REPO)}:{node.lineno}"
        for module, path in MODULES.items() if module.startswith("vlsm") and module != "vlsm.trainable"
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray")
    )
    assert not users, f"vlsm/ imports Ray outside vlsm/trainable.py (sweep code belongs in sweeps/): {users}"


def _string_constants(path: Path) -> Iterator[tuple[str, int]]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value, node.lineno


@pytest.mark.parametrize(
    ("literals", "home"),
    [
        ({"cell_id", "upstream_cell_id", "vlsm.cell_id"}, "sweeps/cell.py"),
        ({"sweep.json", "chain_state.json", "lr_search.json", "mlflow.db", "mlartifacts"}, "sweeps/folder.py"),
    ],
)
def test_shared_names_are_spelled_in_one_module(literals: set[str], home: str) -> None:
    elsewhere = sorted(
        f"{path.relative_to(REPO)}:{line} {value!r}"
        for path in MODULES.values() if path != REPO / home
        for value, line in _string_constants(path) if value in literals
    )
    assert not elsewhere, f"spelled outside {home}: {elsewhere}"


def test_no_function_is_longer_than_a_hundred_lines() -> None:
    long = sorted(
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    )
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_docstrings_cite_the_design_document_of_this_repository() -> None:
    design = REPO / "docs" / "design.md"
    assert design.is_file()
    citing_outside = sorted(
        str(path.relative_to(REPO)) for path in [*MODULES.values(), *REPO.glob("bench/*.md")]
        if "DESIGN.md" in path.read_text()
    )
    assert not citing_outside, f"cite DESIGN.md, a file outside this repository: {citing_outside}"
    # every module is placed in the design document's layout
    text = design.read_text()
    missing = sorted(
        str(path.relative_to(REPO)) for path in MODULES.values()
        if path.name != "__init__.py" and path.relative_to(REPO).as_posix() not in text and path.name not in text
    )
    assert not missing, f"docs/design.md does not place: {missing}"


# The only renames outside vlsm/atomic.py (for .mhd, the data file SimpleITK wrote beside
# its header): a file or a folder is written through vlsm.atomic.
RENAMES = {
    "vlsm/atomic.py": "the helper itself",
    "vlsm/data/io.py": "the .raw beside an .mhd header",
}


def test_files_are_written_through_the_atomic_helper() -> None:
    hand_rolled = sorted(
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in MODULES.values() if path.relative_to(REPO).as_posix() not in RENAMES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("replace", "rename")
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
    )
    assert not hand_rolled, f"hand-rolled temp-file-and-rename writes (use vlsm.atomic): {hand_rolled}"
