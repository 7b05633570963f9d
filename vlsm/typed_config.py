"""Typed configs from plain mappings: one converter for every config dataclass.

A trial's `TrainConfig` comes from a Ray Tune dict, the sweep's `SweepSpec` from YAML
files and `--set` overrides. Both are frozen dataclasses whose field annotations are
the schema: `from_mapping` converts each value to its annotated type and names every
unknown key and every value that does not fit, by its dotted key, all at once. Nothing
is silently absorbed (`config.get(key, default)` would run a trial with a default
nobody chose when a key is mistyped).

    from vlsm.typed_config import ConfigError, from_mapping
    spec = from_mapping(SweepSpec, yaml.safe_load(text))     # ConfigError lists every problem

Types understood: bool, int (whole numbers only), float, str (paths and numbers become
text), Any, `X | None`, nested dataclasses, `tuple[X, ...]` and `tuple[X, Y]`,
`dict[str, X]` and bare `dict`. numpy scalars count as the numbers they hold.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["ConfigError", "from_mapping", "normalise_fields"]

T = TypeVar("T")


class ConfigError(ValueError):
    """Values that do not fit a typed config; `problems` holds one line per key."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def from_mapping(cls: type[T], raw: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `raw` (None = all defaults); ConfigError names every
    unknown or missing key and every bad value. `where` prefixes the keys in messages
    ("models.CRIS")."""
    problems: list[str] = []
    value = _build(cls, raw, where, problems)
    if problems:
        raise ConfigError(problems)
    return value


def normalise_fields(obj: Any) -> list[str]:
    """Convert the fields of a dataclass being built to their annotated types, in place
    (from its `__post_init__`: direct calls such as `TrainConfig(lr=1)` bypass
    `from_mapping`); returns what does not fit."""
    problems: list[str] = []
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = _convert(getattr(obj, f.name), hints[f.name], f.name, problems)
        object.__setattr__(obj, f.name, value)  # frozen dataclasses too
    return problems


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _build(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where or cls.__name__}: expected a mapping, got {raw!r}")
        return None
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    prefix = f"{where}: " if where else ""
    unknown = sorted(str(k) for k in raw if k not in names)
    if unknown:
        problems.append(f"{prefix}unknown key(s) {unknown}; expected some of {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        problems.append(f"{prefix}missing key(s) {missing}")
    hints = _hints(cls)
    before = len(problems)
    kwargs = {
        key: _convert(value, hints[key], _join(where, key), problems)
        for key, value in raw.items() if key in names
    }
    if len(problems) > before or unknown or missing:
        return None
    return cls(**kwargs)  # the class's own checks (__post_init__) raise as they are


def _convert(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    """`value` as type `hint`; on a mismatch a line is added to problems and value returned."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), where, problems)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, where, problems)
    if origin is tuple or hint is tuple:
        return _convert_tuple(value, args, where, problems)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            return _bad(value, "a mapping", where, problems)
        if len(args) != 2:
            return dict(value)
        return {str(k): _convert(v, args[1], _join(where, k), problems) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool) or _is_numpy_bool(value):
            return bool(value)
        return _bad(value, "true or false", where, problems)
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return _bad(value, "a number", where, problems)
        if hint is int and float(value) != int(value):
            return _bad(value, "a whole number", where, problems)
        return hint(value)
    if hint is str:
        if isinstance(value, str | os.PathLike):
            return os.fspath(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return str(value)
        return _bad(value, "text", where, problems)
    return value


def _convert_tuple(value: Any, args: tuple, where: str, problems: list[str]) -> Any:
    if not isinstance(value, list | tuple):
        return _bad(value, "a list", where, problems)
    if len(args) == 2 and args[1] is Ellipsis:
        item_hints = [args[0]] * len(value)
    elif args:
        if len(value) != len(args):
            return _bad(value, f"a list of {len(args)} values", where, problems)
        item_hints = list(args)
    else:
        item_hints = [Any] * len(value)
    return tuple(_convert(v, h, f"{where}[{i}]", problems)
                 for i, (v, h) in enumerate(zip(value, item_hints, strict=True)))


def _is_numpy_bool(value: Any) -> bool:
    """numpy's bool scalar (`bool_`, `bool` since numpy 2), without importing numpy."""
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def _bad(value: Any, expected: str, where: str, problems: list[str]) -> Any:
    problems.append(f"{where}: expected {expected}, got {value!r}")
    return value
