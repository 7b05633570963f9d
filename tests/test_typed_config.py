"""The one typed-config converter (vlsm.typed_config): annotations are the schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import pytest

from vlsm.registry import Registry
from vlsm.typed_config import Check, Choice, ConfigError, Range, from_mapping, normalise_fields


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int] = (1, 2)
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    required: float
    flag: bool = False
    count: int = 3
    path: str | None = None
    inner: Inner = field(default_factory=Inner)
    by_name: dict[str, Inner] = field(default_factory=dict)
    free: Any = None
    loose: dict = field(default_factory=dict)


def test_values_become_their_annotated_types() -> None:
    value = from_mapping(Outer, {
        "required": 1, "count": np.int64(4), "flag": np.bool_(True), "path": 7,
        "inner": {"size": [3, 4], "names": ["a", "b"]}, "by_name": {"x": {"size": (5, 6)}},
        "free": {"anything": [1]}, "loose": {"k": 1},
    })
    assert value.required == 1.0 and isinstance(value.required, float)
    assert (value.count, value.flag, value.path) == (4, True, "7") and type(value.count) is int
    assert value.inner == Inner((3, 4), ("a", "b")) and value.by_name == {"x": Inner((5, 6))}
    assert value.free == {"anything": [1]} and value.loose == {"k": 1}
    assert from_mapping(Outer, {"required": 2.0, "count": 5.0}).count == 5  # a whole float is an int


def test_every_problem_is_named_at_once_by_its_dotted_key() -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping(Outer, {
            "flag": "yes", "count": 2.5, "bogus": 1,
            "inner": {"size": [1, 2, 3], "names": [1, True], "typo": 0},
            "by_name": {"x": {"size": "big"}},
        }, where="top")
    problems = err.value.problems
    expected = [
        "top: unknown key(s) ['bogus']",
        "top: missing key(s) ['required']",
        "top.flag: expected true or false, got 'yes'",
        "top.count: expected a whole number, got 2.5",
        "top.inner: unknown key(s) ['typo']",
        "top.inner.size: expected a list of 2 values, got [1, 2, 3]",
        "top.inner.names[1]: expected text, got True",
        "top.by_name.x.size: expected a list, got 'big'",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), (line, problems)
    assert len(problems) == len(expected)


def test_a_mapping_is_required_where_a_section_belongs() -> None:
    with pytest.raises(ConfigError, match=r"inner: expected a mapping, got \[1\]"):
        from_mapping(Outer, {"required": 1, "inner": [1]})
    with pytest.raises(ConfigError, match="expected a number, got True"):
        from_mapping(Outer, {"required": True})


def test_direct_construction_is_normalised_too() -> None:
    @dataclass(frozen=True)
    class Checked:
        lr: float = 1.0
        steps: int = 1

        def __post_init__(self) -> None:
            problems = normalise_fields(self)
            if problems:
                raise ValueError("; ".join(problems))

    assert Checked(lr=2, steps=3.0) == Checked(2.0, 3) and isinstance(Checked(lr=2).lr, float)
    with pytest.raises(ValueError, match="lr: expected a number, got 'big'"):
        Checked(lr="big")


@dataclass(frozen=True)
class _Shape:
    name: str


SHAPES: Registry[_Shape] = Registry("shape")
SHAPES.register(_Shape("circle"))


@dataclass(frozen=True)
class Ruled:
    mode: Literal["fast", "exact"] = "fast"
    rate: Annotated[float, Range(gt=0)] = 1.0
    share: Annotated[float, Range(ge=0, le=1)] | None = None
    steps: Annotated[int, Range(ge=1)] = 1
    shape: Annotated[str, Choice(SHAPES.names)] = "circle"
    by_shape: dict[Annotated[str, Choice(SHAPES.names)], float] = field(default_factory=dict)
    even: Annotated[int, Check(lambda n: n % 2 == 0, "an even number")] = 0


def test_rules_name_the_key_the_value_and_what_was_expected() -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping(Ruled, {"mode": "quick", "rate": float("inf"), "share": 1.5, "steps": 0, "shape": "oval",
                             "by_shape": {"blob": 1}, "even": 3}, where="ruled")
    assert err.value.problems == [
        "ruled.mode: expected one of ['fast', 'exact'], got 'quick'",
        "ruled.rate: expected a finite value > 0, got inf",
        "ruled.share: expected 0 <= value <= 1, got 1.5",
        "ruled.steps: expected a finite value >= 1, got 0",
        "ruled.shape: expected one of ['circle'], got 'oval'",
        "ruled.by_shape.blob: expected one of ['circle'], got 'blob'",
        "ruled.even: expected an even number, got 3",
    ]
    with pytest.raises(ConfigError, match=r"rate: expected a number, got 'x'$"):  # the type first, then the rule
        from_mapping(Ruled, {"rate": "x"})
    assert from_mapping(Ruled, {"share": None, "rate": 2, "mode": "exact"}) == Ruled(mode="exact", rate=2.0)


def test_a_choice_is_the_registry_s_names_when_checked() -> None:
    with pytest.raises(ConfigError, match="shape: expected one of"):
        from_mapping(Ruled, {"shape": "square"})
    SHAPES.register(_Shape("square"))  # e.g. a plugin's entry, registered after the class was defined
    try:
        assert from_mapping(Ruled, {"shape": "square", "by_shape": {"square": 2}}).by_shape == {"square": 2.0}
    finally:
        SHAPES.unregister("square")
