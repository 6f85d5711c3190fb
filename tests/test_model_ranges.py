"""Contract over every registered model: each numeric hyperparameter declares its allowed range,
and a value outside it fails when the config is built, with one line naming the key (issue 13)."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from recstudio.config import build_section, declared_ranges, parse_range
from recstudio.errors import ConfigError
from recstudio.model.registry import all_models

MODELS = all_models()


def _numeric_kind(tp: typing.Any) -> type | None:
    """int or float for numeric fields (optional ones and lists of numbers too), else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list or (len(args) == 1 and typing.get_origin(tp) is not typing.Literal):
        return _numeric_kind(args[0]) if args else None
    return tp if tp in (int, float) else None


def _outside(text: str, kind: type) -> float:
    """A value just outside the declared range."""
    m = re.match(r"^\s*(>=|>|<=|<)\s*(\S+)\s*$", text)
    if m:
        op, b = m[1], float(m[2])
        value = {">=": b - 1, ">": b, "<=": b + 1, "<": b}[op]
    else:
        lo_b, lo, hi, hi_b = re.match(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$", text).groups()
        value = float(hi) + 1 if hi_b == "]" else float(hi)
    return kind(value)


@pytest.mark.parametrize("cls", MODELS, ids=[m.__name__ for m in MODELS])
def test_every_numeric_hyperparameter_declares_a_range_that_holds_its_default(cls: type) -> None:
    ranges = declared_ranges(cls.Config)
    hints = typing.get_type_hints(cls.Config)
    numeric = {f.name for f in dataclasses.fields(cls.Config) if _numeric_kind(hints[f.name])}
    assert numeric <= set(ranges), f"{cls.__name__}: no range for {sorted(numeric - set(ranges))}"
    assert set(ranges) <= {f.name for f in dataclasses.fields(cls.Config)}
    build_section(cls.Config, {}, "model")  # the defaults are inside their ranges


@pytest.mark.parametrize("cls", MODELS, ids=[m.__name__ for m in MODELS])
def test_a_value_outside_a_range_names_the_key_and_the_range(cls: type) -> None:
    hints = typing.get_type_hints(cls.Config)
    for key, text in declared_ranges(cls.Config).items():
        parse_range(text)  # well formed
        kind = _numeric_kind(hints[key])
        bad = _outside(text, kind)
        value = [bad] if typing.get_origin(hints[key]) is list else bad
        with pytest.raises(ConfigError) as err:
            build_section(cls.Config, {key: value}, "model")
        message = str(err.value)
        assert f"'model.{key}'" in message and text in message and "\n" not in message, message


def test_parse_range() -> None:
    assert parse_range(">= 1")(1) and not parse_range(">= 1")(0)
    assert parse_range("[0, 1)")(0) and not parse_range("[0, 1)")(1)
    assert parse_range("(0, 1]")(1) and not parse_range("(0, 1]")(0)
    with pytest.raises(ValueError):
        parse_range("positive")
