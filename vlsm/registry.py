"""Registries: every value of a grid axis (model, strategy, prompt, synthetic source) is
one entry holding all the code decides by its name (docs/design.md, "Registries").

    from vlsm.registry import Registry
    SHAPES = Registry("shape")
    SHAPES.register(Shape("circle"))
    SHAPES["circle"], SHAPES.names()          # unknown names fail listing the known ones

Entries from outside the package live in the modules VLSM_PLUGINS names (comma-separated),
imported on the first lookup in every process.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["PLUGINS_ENV", "LazyFunction", "Registry", "load_plugins", "plugin_modules"]

PLUGINS_ENV = "VLSM_PLUGINS"
Entry = TypeVar("Entry")
_imported: set[str] = set()
_read_env: list[str] = [""]  # the VLSM_PLUGINS value last imported (a lookup is then one comparison)


@dataclass(frozen=True)
class LazyFunction:
    """`module.name`, imported when first called (a module that imports the entry's own, or torch)."""

    module: str
    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)


def load_plugins() -> None:
    """Import the modules VLSM_PLUGINS names (once each); they register their entries."""
    value = os.environ.get(PLUGINS_ENV, "")
    if value == _read_env[0]:
        return
    for module in (m.strip() for m in value.split(",")):
        if module and module not in _imported:
            _imported.add(module)  # first: a plugin that looks an entry up while it imports
            try:
                importlib.import_module(module)
            except BaseException:
                _imported.discard(module)
                raise
    _read_env[0] = value  # only once every module imported: a failing one fails every lookup


def plugin_modules() -> tuple[str, ...]:
    """The plugin modules imported so far (their source keys the caches and stores)."""
    load_plugins()
    return tuple(sorted(_imported))


class Registry(Generic[Entry]):
    """Entries by name, in the order they were registered (the axis order everywhere).
    names_of: an entry's key, then aliases it is also found by; modules: where built-in
    entries register themselves, imported on the first lookup (so they may import this)."""

    def __init__(self, kind: str, names_of: Callable[[Entry], tuple[str, ...]] = lambda e: (e.name,),
                 modules: tuple[str, ...] = ()):
        self.kind = kind
        self._names_of = names_of
        self._modules = modules
        self._modules_loaded = not modules
        self._entries: dict[str, Entry] = {}  # key -> entry
        self._keys: dict[str, str] = {}  # every name and alias -> key
        self._rank: dict[str, int] = {}  # key -> place of its module in `modules` (plugins last)

    def register(self, entry: Entry, *, module: str | None = None) -> Entry:
        """Add an entry (ValueError when one of its names is taken); returns it. A built-in
        entry names its module (one of `modules`): built-ins keep the order of `modules`,
        whichever is imported first, and come before plugins' entries."""
        names = self._names_of(entry)
        taken = [n for n in names if n in self._keys]
        if taken:
            raise ValueError(f"{self.kind} {taken[0]!r} is registered already")
        self._rank[names[0]] = self._modules.index(module) if module in self._modules else len(self._modules)
        self._entries[names[0]] = entry
        self._entries = dict(sorted(self._entries.items(), key=lambda item: self._rank[item[0]]))  # stable
        self._keys.update(dict.fromkeys(names, names[0]))
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry by its key (tests that add a toy entry take it away again)."""
        self._entries.pop(name, None)
        self._rank.pop(name, None)
        self._keys = {n: key for n, key in self._keys.items() if key != name}

    def _load(self) -> None:
        if not self._modules_loaded:
            for module in self._modules:
                importlib.import_module(module)
            self._modules_loaded = True
        load_plugins()

    def __getitem__(self, name: str) -> Entry:
        self._load()
        key = self._keys.get(name)
        if key is None:
            raise ValueError(f"{self.kind} {name!r} not found; available {self.kind}s = {list(self.names())}")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._keys

    def __iter__(self) -> Iterator[Entry]:
        self._load()
        return iter(tuple(self._entries.values()))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The keys, in registration order."""
        self._load()
        return tuple(self._entries)
