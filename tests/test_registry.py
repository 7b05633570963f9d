"""The registry every grid axis is built on, and entries from VLSM_PLUGINS modules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vlsm import registry
from vlsm.registry import Registry


@dataclass(frozen=True)
class _Entry:
    key: str
    name: str


def test_entries_are_found_by_key_or_alias_in_order_and_unknown_names_list_the_known() -> None:
    shapes = Registry("shape", names_of=lambda e: (e.key, e.name))
    shapes.register(_Entry("circle", "Circle"))
    shapes.register(_Entry("oval", "Oval"))
    assert shapes["Circle"] is shapes["circle"] and shapes.names() == ("circle", "oval")
    assert "Oval" in shapes and [e.key for e in shapes] == ["circle", "oval"]
    with pytest.raises(ValueError, match=r"shape 'square' not found; available shapes = \['circle', 'oval'\]"):
        shapes["square"]
    with pytest.raises(ValueError, match="registered already"):
        shapes.register(_Entry("round", "Circle"))
    shapes.unregister("oval")
    assert shapes.names() == ("circle",)


def test_a_plugin_module_registers_its_entries_on_the_first_lookup(tmp_path, monkeypatch) -> None:
    (tmp_path / "shape_registry.py").write_text(
        "from vlsm.registry import Registry\nSHAPES = Registry('shape')\n")
    (tmp_path / "my_shapes.py").write_text(
        "from types import SimpleNamespace\nfrom shape_registry import SHAPES\n"
        "SHAPES.register(SimpleNamespace(name='hexagon'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.PLUGINS_ENV, " my_shapes , ")
    monkeypatch.setattr(registry, "_imported", set())
    monkeypatch.setattr(registry, "_read_env", [""])
    from shape_registry import SHAPES

    assert SHAPES.names() == ("hexagon",)
    assert SHAPES.names() == ("hexagon",)  # imported once


def test_built_in_entries_keep_the_order_of_their_modules_whichever_is_imported_first() -> None:
    shapes = Registry("shape", names_of=lambda e: (e.key, e.name), modules=("shapes.round", "shapes.square"))
    shapes._modules_loaded = True  # the modules are this test's register calls
    shapes.register(_Entry("plugin", "Plugin"))  # a plugin's entry, registered first
    shapes.register(_Entry("square", "Square"), module="shapes.square")
    shapes.register(_Entry("circle", "Circle"), module="shapes.round")
    assert shapes.names() == ("circle", "square", "plugin")


def test_the_synthetic_source_axis_has_one_order_whichever_format_module_is_imported_first() -> None:
    import subprocess
    import sys

    for module in ("vlsm.data.imagefolder", "vlsm.data.diffecho", "vlsm.data.sdm"):
        names = subprocess.run(
            [sys.executable, "-c", f"import {module}; from vlsm.data.synthetic_sources import source_names; "
             "print(','.join(source_names()))"], capture_output=True, text=True, check=True).stdout.strip()
        assert names == "sdm,diffecho,imagefolder", module
