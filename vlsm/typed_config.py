"""Typed configs from plain mappings: one converter for every config dataclass, whose
annotations are the schema (docs/design.md, "Settings").

    from_mapping(Cfg, {"lr": 0})     # ConfigError: "lr: expected a finite value > 0, got 0"

Besides the plain types: `X | None`, `Literal[...]`, nested dataclasses, `tuple[X, ...]`,
`dict[K, X]` and `Annotated[X, Range | Choice | Check]`; numpy scalars count as numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["Check", "Choice", "ConfigError", "Range", "from_mapping", "normalise_fields"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """`Annotated[float, Range(gt=0)]`: a finite number within the bounds given."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def expected(self, value: float) -> str | None:
        """What was expected when value does not fit, else None."""
        fits = (math.isfinite(value) and (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))
        if fits:
            return None
        lower = (">", self.gt) if self.gt is not None else (">=", self.ge) if self.ge is not None else None
        upper = ("<", self.lt) if self.lt is not None else ("<=", self.le) if self.le is not None else None
        if lower and upper:  # "0 < value < 1"
            return f"{lower[1]} {lower[0].replace('>', '<')} value {upper[0]} {upper[1]}"
        op, bound = lower or upper or ("", "")
        return f"a finite value {op} {bound}".rstrip()


@dataclasses.dataclass(frozen=True)
class Choice:
    """`Annotated[str, Choice(names)]`: one of `names()`, asked when a value is checked (plugin
    entries count). A module-level function or bound method: a lambda in a postponed
    annotation would see the class's namespace as its globals."""

    names: Callable[[], Iterable[Any]]

    def expected(self, value: Any) -> str | None:
        names = list(self.names())
        return None if value in names else f"one of {names}"


@dataclasses.dataclass(frozen=True)
class Check:
    """`Annotated[X, Check(test, "what")]`: a value for which test(value) is true."""

    test: Callable[[Any], bool]
    what: str

    def expected(self, value: Any) -> str | None:
        return None if self.test(value) else self.what


class ConfigError(ValueError):
    """Values that do not fit a typed config; `problems` holds one line per key."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def from_mapping(cls: type[T], raw: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `raw` (None = all defaults); ConfigError names every unknown
    or missing key and bad value, prefixed by `where` ("models.CRIS")."""
    problems: list[str] = []
    value = _build(cls, raw, where, problems)
    if problems:
        raise ConfigError(problems)
    return value


def normalise_fields(obj: Any) -> list[str]:
    """Convert a dataclass's fields to their annotated types in place, from its `__post_init__`
    (`TrainConfig(lr=1)` bypasses `from_mapping`); returns what does not fit."""
    problems: list[str] = []
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = _convert(getattr(obj, f.name), hints[f.name], f.name, problems)
        object.__setattr__(obj, f.name, value)  # frozen dataclasses too
    return problems


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


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
    kwargs = {key: _convert(value, hints[key], _join(where, key), problems) for key, value in raw.items()
              if key in names}
    if len(problems) > before or unknown or missing:
        return None
    return cls(**kwargs)  # the class's own checks (__post_init__) raise as they are


def _convert(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    """`value` as type `hint`; on a mismatch a line is added to problems and value returned."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Annotated:
        return _convert_checked(value, args[0], args[1:], where, problems)
    if origin is typing.Literal:
        return value if value in args else _bad(value, f"one of {list(args)}", where, problems)
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
        keys = {k: str(k) if args[0] is str else _convert(k, args[0], _join(where, k), problems) for k in value}
        return {keys[k]: _convert(v, args[1], _join(where, k), problems) for k, v in value.items()}
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


def _convert_checked(value: Any, hint: Any, rules: tuple, where: str, problems: list[str]) -> Any:
    """`value` as type `hint`, then held to each rule (unless None or already wrong)."""
    before = len(problems)
    value = _convert(value, hint, where, problems)
    if value is None or len(problems) > before:
        return value
    for rule in rules:
        expected = rule.expected(value)
        if expected is not None:
            return _bad(value, expected, where, problems)
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
