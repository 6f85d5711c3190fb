"""Search spaces: parsing, validation against the config schema, NNI conversion, suggestion.

A search space is data: a mapping from a config key to a distribution spec::

    embed_dim:             {type: categorical, choices: [32, 64, 128]}
    train.learning_rate:   {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    num_negatives:         {type: int, low: 1, high: 8, step: 1}
    mlp_layers:            [[64, 32], [128, 64, 32]]      # a bare list is shorthand for categorical

Keys are the model's own fields (``embed_dim``), dotted section keys (``train.learning_rate``,
``data.min_user_inter``), or bare section fields that name exactly one key, as ``--set`` accepts.
``normalize`` resolves every key to its dotted form (``model.embed_dim``), checks the spec
against the field's type, and returns the canonical space that the rest of ``recstudio.tune``
uses. Errors name the key and state the rule with the value received, because a typo in a
search space otherwise only shows up as a failed trial hours later.

NNI's ``search_space.json`` (``{"_type": "choice", "_value": [...]}``) is converted by
``from_nni``; what has no Optuna equivalent (unbounded normal distributions, nested choices)
is rejected with the reason rather than approximated silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

from recstudio.errors import ConfigError

SearchSpace = dict[str, dict[str, Any]]
"""Canonical space: dotted config key -> normalized spec (``type`` plus its fields)."""

TYPES = ("float", "int", "categorical")
_FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
# keys whose value defines what is measured: tuning them would make trial values incomparable
UNTUNABLE = {
    "train.monitor": "it defines the objective (use --metric)",
    "eval.metrics": "it changes what is measured",
    "eval.cutoffs": "it changes what is measured",
    "eval.mask_history": "it changes what is measured",
    "model.name": "one study tunes one model",
}
_PLAIN_CHOICE = (type(None), bool, int, float, str)


# --------------------------------------------------------------------------- loading


def load_search_space(path: str | Path) -> dict[str, Any]:
    """Read a search space file (YAML or JSON; RecStudio's format or NNI's), not yet validated.

    The file may hold the mapping itself, or a mapping with a ``search_space`` (or NNI's
    ``searchSpace``) entry, or an experiment file whose ``tune.search_space`` holds it.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file '{path}' does not exist")
    text = path.read_text()
    try:
        content = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"search space file '{path}' cannot be parsed: {exc}") from None
    if isinstance(content, dict) and isinstance(content.get("tune"), dict):
        content = content["tune"]
    if isinstance(content, dict):
        for key in ("search_space", "searchSpace"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not content:
        raise ConfigError(f"search space file '{path}' must hold a non-empty mapping of config key -> spec")
    return content


def is_nni(space: Mapping[str, Any]) -> bool:
    """True when the space uses NNI's ``{"_type": ..., "_value": ...}`` specs."""
    return any(isinstance(spec, Mapping) and "_type" in spec for spec in space.values())


# --------------------------------------------------------------------------- NNI


_NNI_UNSUPPORTED = {
    "normal": "it is unbounded",
    "qnormal": "it is unbounded",
    "lognormal": "it is unbounded",
    "qlognormal": "it is unbounded",
}


def from_nni(space: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Convert an NNI search space to RecStudio's format (keys unchanged, not yet validated).

    ``choice`` -> categorical; ``randint [lo, hi)`` -> int [lo, hi-1]; ``uniform`` -> float;
    ``quniform [lo, hi, q]`` -> int with step q when all three are integers, else float with
    step q; ``loguniform`` -> float with log; ``qloguniform`` with q=1 on integers -> int with
    log. Unbounded distributions, nested choices and log scales with a step have no Optuna
    equivalent and raise ``ConfigError`` naming the key.
    """
    out: dict[str, dict[str, Any]] = {}
    for key, spec in space.items():
        if not isinstance(spec, Mapping) or "_type" not in spec:
            raise ConfigError(
                f"NNI search space '{key}': expected {{_type: ..., _value: [...]}}, got {spec!r}"
            )
        kind = spec["_type"]
        values = spec.get("_value")
        if kind in _NNI_UNSUPPORTED:
            raise ConfigError(
                f"NNI search space '{key}': _type '{kind}' has no Optuna equivalent "
                f"({_NNI_UNSUPPORTED[kind]}); "
                "rewrite it as uniform or loguniform over a range"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f"NNI search space '{key}': _value must be a non-empty list, got {values!r}")
        if kind == "choice":
            if any(isinstance(v, Mapping) and "_name" in v for v in values):
                raise ConfigError(
                    f"NNI search space '{key}': nested choices (options with _name) have no equivalent here; "
                    "tune each option's parameters as separate keys and choose the option with a categorical"
                )
            out[key] = {"type": "categorical", "choices": list(values)}
            continue
        numbers = _nni_numbers(key, kind, values)
        if kind == "randint":
            _nni_arity(key, kind, numbers, 2)
            low, high = numbers
            if not (_integral(low) and _integral(high)):
                raise ConfigError(f"NNI search space '{key}': randint bounds must be integers, got {values}")
            if high <= low:
                raise ConfigError(
                    f"NNI search space '{key}': randint is [lower, upper) so `lower < upper` must hold, "
                    f"but got lower={low}, upper={high}"
                )
            out[key] = {"type": "int", "low": int(low), "high": int(high) - 1}
        elif kind == "uniform":
            _nni_arity(key, kind, numbers, 2)
            out[key] = {"type": "float", "low": numbers[0], "high": numbers[1]}
        elif kind == "loguniform":
            _nni_arity(key, kind, numbers, 2)
            out[key] = {"type": "float", "low": numbers[0], "high": numbers[1], "log": True}
        elif kind == "quniform":
            _nni_arity(key, kind, numbers, 3)
            low, high, q = numbers
            if all(_integral(v) for v in numbers):
                out[key] = {"type": "int", "low": int(low), "high": int(high), "step": int(q)}
            else:
                out[key] = {"type": "float", "low": low, "high": high, "step": q}
        elif kind == "qloguniform":
            _nni_arity(key, kind, numbers, 3)
            low, high, q = numbers
            if q == 1 and _integral(low) and _integral(high):
                out[key] = {"type": "int", "low": int(low), "high": int(high), "log": True}
            else:
                raise ConfigError(
                    f"NNI search space '{key}': qloguniform with q={q} has no Optuna equivalent "
                    "(a log-scale distribution cannot have a step); "
                    "use loguniform, or quniform on a linear scale"
                )
        else:
            raise ConfigError(
                f"NNI search space '{key}': unknown _type '{kind}'; supported: choice, randint, uniform, "
                "quniform, loguniform, qloguniform"
            )
    return out


def _nni_numbers(key: str, kind: str, values: list[Any]) -> list[float]:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"NNI search space '{key}': _value of {kind} must be numbers, got {values}")
    return list(values)


def _nni_arity(key: str, kind: str, values: list[Any], n: int) -> None:
    if len(values) != n:
        raise ConfigError(f"NNI search space '{key}': {kind} takes {n} values in _value, got {values}")


def _integral(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


# --------------------------------------------------------------------------- keys


def config_fields(model_cls: type) -> dict[str, dict[str, Any]]:
    """Section -> {field name: annotation} for ``model``, ``data``, ``train`` and ``eval``."""
    from recstudio.config import SECTIONS

    classes = {"model": model_cls.Config, **SECTIONS}
    out: dict[str, dict[str, Any]] = {}
    for section, cls in classes.items():
        hints = typing.get_type_hints(cls)
        out[section] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return out


def resolve_key(key: str, fields: dict[str, dict[str, Any]]) -> str:
    """Map a search-space key to its dotted config key, or raise naming the key and a close match.

    Bare keys are the model's fields first (``embed_dim`` -> ``model.embed_dim``), then a
    section field that exists in exactly one section (``learning_rate`` -> ``train.learning_rate``).
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"search space key must be a non-empty string, got {key!r}")
    all_keys = [f"{s}.{name}" for s, names in fields.items() for name in names]
    if "." in key:
        section, name = key.split(".", 1)
        if section in fields and name in fields[section]:
            return key
        close = difflib.get_close_matches(key, all_keys, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"search space: unknown config key '{key}'{hint}")
    if key in fields["model"]:
        return f"model.{key}"
    owners = [s for s in fields if s != "model" and key in fields[s]]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if len(owners) > 1:
        raise ConfigError(
            f"search space: key '{key}' is ambiguous: use one of {', '.join(o + '.' + key for o in owners)}"
        )
    close = difflib.get_close_matches(key, [*fields["model"], *all_keys], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"search space: unknown config key '{key}' for this model{hint}")


# --------------------------------------------------------------------------- validation


def normalize(space: Mapping[str, Any], model_cls: type) -> SearchSpace:
    """Validate ``space`` for ``model_cls`` and return the canonical form (dotted keys, full specs).

    NNI specs are converted first. Each spec is checked against the annotation of the config
    field it sets: every choice and bound must be a value the config accepts, so a trial never
    fails on a value the space itself allowed.
    """
    if not isinstance(space, Mapping):
        raise ConfigError(f"search space must be a mapping of config key -> spec, got {type(space).__name__}")
    if is_nni(space):
        space = from_nni(space)
    fields = config_fields(model_cls)
    out: SearchSpace = {}
    for raw_key, raw_spec in space.items():
        key = resolve_key(raw_key, fields)
        if key in UNTUNABLE:
            raise ConfigError(f"search space: '{key}' cannot be tuned: {UNTUNABLE[key]}")
        if key in out:
            raise ConfigError(f"search space: '{raw_key}' and another entry both set '{key}'")
        section, name = key.split(".", 1)
        out[key] = _normalize_spec(key, raw_spec, fields[section][name])
    return out


def _normalize_spec(key: str, spec: Any, annotation: Any) -> dict[str, Any]:
    if isinstance(spec, list | tuple):
        spec = {"type": "categorical", "choices": list(spec)}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"search space '{key}': expected a mapping with 'type' (float, int, categorical) "
            "or a list of choices, "
            f"got {spec!r}"
        )
    kind = spec.get("type")
    if kind is None:
        raise ConfigError(f"search space '{key}': missing 'type' (one of {', '.join(TYPES)})")
    if kind not in TYPES:
        close = difflib.get_close_matches(str(kind), TYPES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"search space '{key}': unknown type '{kind}'; expected one of {', '.join(TYPES)}{hint}"
        )
    for field_name in spec:
        if field_name not in _FIELDS[kind]:
            close = difflib.get_close_matches(str(field_name), sorted(_FIELDS[kind]), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"search space '{key}': unknown field '{field_name}' for type {kind}{hint}")
    if kind == "categorical":
        return _categorical(key, spec, annotation)
    return _numeric(key, kind, spec, annotation)


def _categorical(key: str, spec: Mapping[str, Any], annotation: Any) -> dict[str, Any]:
    from recstudio.config import coerce

    choices = spec.get("choices")
    if not isinstance(choices, list | tuple) or not choices:
        raise ConfigError(
            f"search space '{key}': categorical needs a non-empty list 'choices', got {choices!r}"
        )
    checked = [coerce(choice, annotation, key) for choice in choices]
    if len({json.dumps(c, sort_keys=True) for c in checked}) != len(checked):
        raise ConfigError(f"search space '{key}': choices must be distinct, got {list(choices)}")
    encoded = not all(isinstance(c, _PLAIN_CHOICE) for c in checked)
    out: dict[str, Any] = {"type": "categorical", "choices": checked}
    if encoded:  # Optuna stores None/bool/int/float/str choices; lists and mappings travel as JSON
        out["encoded"] = True
    return out


def _numeric(key: str, kind: str, spec: Mapping[str, Any], annotation: Any) -> dict[str, Any]:
    base = _numeric_base(annotation)
    if base is None:
        raise ConfigError(
            f"search space '{key}': the config key takes {_describe(annotation)}, so use type categorical"
        )
    if kind == "float" and base is int:
        raise ConfigError(
            f"search space '{key}': the config key takes an integer, so use type int (or categorical)"
        )
    for bound in ("low", "high"):
        if bound not in spec:
            raise ConfigError(f"search space '{key}': type {kind} needs '{bound}'")
        value = spec[bound]
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"search space '{key}': '{bound}' must be a finite number, got {spec[bound]!r}")
        if kind == "int" and not _integral(value):
            raise ConfigError(
                f"search space '{key}': '{bound}' of type int must be an integer, got {value!r}"
            )
    low, high = _number(spec["low"]), _number(spec["high"])
    if not low <= high:
        raise ConfigError(f"search space '{key}': `low <= high` must hold, but got low={low}, high={high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"search space '{key}': 'log' must be true or false, got {log!r}")
    step = spec.get("step")
    out: dict[str, Any] = {"type": kind, "low": low, "high": high, "log": log}
    if kind == "int":
        out["low"], out["high"] = int(low), int(high)
        step = 1 if step is None else step
        if not _integral(step) or step < 1:
            raise ConfigError(
                f"search space '{key}': 'step' of type int must be an integer >= 1, got {step!r}"
            )
        out["step"] = int(step)
        if log and out["step"] != 1:
            raise ConfigError(
                f"search space '{key}': `step == 1` must hold when log is true, but got step={step}"
            )
        if log and low < 1:
            raise ConfigError(
                f"search space '{key}': `low >= 1` must hold when log is true, but got low={low}"
            )
    else:
        out["low"], out["high"] = float(low), float(high)
        if step is not None:
            step = _number(step)
            if not isinstance(step, int | float) or isinstance(step, bool) or not step > 0:
                raise ConfigError(f"search space '{key}': 'step' must be a number > 0, got {spec['step']!r}")
            if log:
                raise ConfigError(
                    f"search space '{key}': 'step' and 'log' cannot both be set (Optuna has no such scale)"
                )
            out["step"] = float(step)
        if log and low <= 0:
            raise ConfigError(
                f"search space '{key}': `low > 0` must hold when log is true, but got low={low}"
            )
    return out


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _numeric_base(annotation: Any) -> type | None:
    """int or float when the field takes numbers (``float | None`` counts as float), else None."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _numeric_base(args[0]) if len(args) == 1 else None
    if annotation is int:
        return int
    if annotation is float:
        return float
    return None


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    if origin is list:
        return "a list"
    return getattr(annotation, "__name__", str(annotation))


def pin(space: SearchSpace, fixed: Mapping[str, Any]) -> tuple[SearchSpace, list[str]]:
    """Drop the keys fixed on the command line (``--set``, flags) from the space.

    A value given explicitly for one run of ``tune`` means "keep this fixed"; tuning it anyway
    would silently ignore the user. Returns the remaining space and the removed keys.
    """
    removed = [key for key in space if key in fixed]
    return {k: v for k, v in space.items() if k not in fixed}, removed


# --------------------------------------------------------------------------- Optuna


def distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna distributions of a canonical space (param name = dotted config key)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            out[key] = CategoricalDistribution(_optuna_choices(spec))
        elif spec["type"] == "int":
            out[key] = IntDistribution(spec["low"], spec["high"], log=spec["log"], step=spec["step"])
        else:
            out[key] = FloatDistribution(spec["low"], spec["high"], log=spec["log"], step=spec.get("step"))
    return out


def _optuna_choices(spec: dict[str, Any]) -> list[Any]:
    if spec.get("encoded"):
        return [json.dumps(c) for c in spec["choices"]]
    return list(spec["choices"])


def decode(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    """Turn Optuna params (``trial.params``) back into config overrides (JSON-encoded choices decoded)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        spec = space.get(key)
        out[key] = json.loads(value) if spec and spec.get("encoded") and isinstance(value, str) else value
    return out


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Sample every parameter of ``space`` on ``trial``; returns dotted config overrides."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, _optuna_choices(spec))
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(
                key, spec["low"], spec["high"], step=spec["step"], log=spec["log"]
            )
        else:
            params[key] = trial.suggest_float(
                key, spec["low"], spec["high"], step=spec.get("step"), log=spec["log"]
            )
    return decode(space, params)


def grid(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid of a space for ``GridSampler``: choices, or every step of a bounded range.

    Continuous floats have no grid; the error says which key needs ``step`` or ``choices``.
    """
    out: dict[str, list[Any]] = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            out[key] = _optuna_choices(spec)
        elif spec["type"] == "int":
            if spec["log"]:
                raise ConfigError(f"grid sampler: '{key}' is on a log scale; give it explicit choices")
            out[key] = list(range(spec["low"], spec["high"] + 1, spec["step"]))
        elif spec.get("step"):
            n = int(math.floor((spec["high"] - spec["low"]) / spec["step"] + 1e-9)) + 1
            out[key] = [round(spec["low"] + i * spec["step"], 12) for i in range(n)]
        else:
            raise ConfigError(
                f"grid sampler: '{key}' is a continuous float; "
                "give it 'step' or use type categorical with choices"
            )
    return out


def grid_size(space: SearchSpace) -> int:
    size = 1
    for values in grid(space).values():
        size *= len(values)
    return size


def describe(space: SearchSpace) -> dict[str, str]:
    """One short line per key (``float [0.0001, 0.01] log``), for parent-run params and logs."""
    out = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            out[key] = "choice " + json.dumps(spec["choices"])
        else:
            text = f"{spec['type']} [{spec['low']}, {spec['high']}]"
            if spec.get("log"):
                text += " log"
            if spec.get("step") not in (None, 1) or (spec["type"] == "float" and spec.get("step")):
                text += f" step {spec['step']}"
            out[key] = text
    return out


def defaults_params(space: SearchSpace, base_config: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna params of the fixed config's own values for the searched keys (the defaults trial).

    ``base_config`` is the nested resolved config (defaults plus ``--set``). A key whose value lies
    outside its distribution (possible only in a user's ``--search-space``; the built-in spaces
    contain every default, which ``register`` checks) is left out: the defaults trial then keeps
    the config's value for it without sampling (``Objective``).
    """
    dists = distributions(space)
    params: dict[str, Any] = {}
    for key, spec in space.items():
        node = config_value(base_config, key, _MISSING)
        if node is _MISSING:
            continue
        value = json.dumps(node) if spec.get("encoded") else node
        try:
            inside = dists[key]._contains(dists[key].to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if inside:
            params[key] = value
    return params


baseline_params = defaults_params


# --------------------------------------------------------------------------- enqueued trials

_CONFIG_SECTIONS = ("model", "data", "train", "eval")


def load_enqueue_file(path: str | Path) -> list[Any]:
    """The entries of an ``--enqueue`` file (YAML or JSON): one mapping or a list of them.

    A mapping is either search-space keys -> values (``{lr: 0.003, embed_dim: 128}``) or a full
    nested config (``recstudio best --export``'s file, an experiment file); ``enqueue_params``
    tells them apart. Not validated here.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--enqueue file '{path}' does not exist")
    try:
        content = yaml.safe_load(path.read_text())  # JSON is YAML
    except yaml.YAMLError as exc:
        raise ConfigError(f"--enqueue file '{path}' cannot be parsed: {exc}") from None
    entries = content if isinstance(content, list) else [content]
    if not entries or not all(isinstance(e, Mapping) and e for e in entries):
        raise ConfigError(
            f"--enqueue file '{path}' must hold a mapping of config key -> value, or a list of them"
        )
    return entries


def enqueue_params(
    entry: Mapping[str, Any], space: SearchSpace, model_cls: type, source: str
) -> dict[str, Any]:
    """Optuna params of one trial to run first (``study.enqueue_trial``), checked against ``space``.

    Why: warm-starting a study from a known good configuration (a neighbouring model's best
    trial, a paper's setting) finds a good region in a few trials where the sampler's random
    start may spend many. Two forms: a flat mapping (every key must be searched in this study:
    a fixed key cannot vary per trial, so it is an error rather than silently ignored), or a
    nested config with ``model``/``train``/... sections, of which only the searched keys are
    taken. Every value must be one the space can produce; errors name ``source`` and the key.
    Keys the entry leaves out are sampled as usual.
    """
    fields = config_fields(model_cls)
    nested = any(isinstance(entry.get(s), Mapping) for s in _CONFIG_SECTIONS)
    values: dict[str, Any] = {}
    if nested:
        for key in space:
            value = config_value(entry, key, _MISSING)
            if value is not _MISSING:
                values[key] = value
        if not values:
            raise ConfigError(f"{source}: the config sets none of the searched keys ({', '.join(space)})")
    else:
        for raw_key, value in entry.items():
            try:
                key = resolve_key(raw_key, fields)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            if key not in space:
                raise ConfigError(
                    f"{source}: '{raw_key}' is not searched in this study (searched: {', '.join(space)}); "
                    "a fixed value belongs in --set"
                )
            values[key] = value
    params: dict[str, Any] = {}
    for key, value in values.items():
        spec = space[key]
        if not contains(spec, value):
            raise ConfigError(
                f"{source}: {key} = {value!r} is outside the search space ({describe({key: spec})[key]})"
            )
        if spec.get("encoded"):  # the choice's own encoding: a mapping's key order must not matter
            wanted = json.dumps(value, sort_keys=True)
            choices = _optuna_choices(spec)
            value = next(c for c in choices if json.dumps(json.loads(c), sort_keys=True) == wanted)
        params[key] = value
    return params
"""The name before issue 12 (``--baseline``)."""


_MISSING = object()


def config_value(config: Mapping[str, Any], key: str, missing: Any = None) -> Any:
    """``config["model"]["embed_dim"]`` for ``"model.embed_dim"`` (``missing`` when absent)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


def contains(spec: Mapping[str, Any], value: Any) -> bool:
    """Whether a normalized spec can produce ``value`` (no Optuna import: ``register`` uses it)."""
    if spec["type"] == "categorical":
        encoded = json.dumps(value, sort_keys=True)
        return any(json.dumps(c, sort_keys=True) == encoded for c in spec["choices"])
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    if not spec["low"] <= value <= spec["high"]:
        return False
    step = spec.get("step")
    if step:
        k = (value - spec["low"]) / step
        return abs(k - round(k)) < 1e-9
    return True


def model_defaults(model_cls: type) -> dict[str, Any]:
    """The nested config a model runs with before any dataset or user layer: section defaults,
    the model's ``default_overrides``, and its ``Config`` defaults."""
    from recstudio.config import SECTIONS

    out: dict[str, Any] = {"model": dataclasses.asdict(model_cls.Config())}
    overrides = getattr(model_cls, "default_overrides", None) or {}
    for section, cls in SECTIONS.items():
        values = dataclasses.asdict(cls())
        values.update(overrides.get(section) or {})
        out[section] = values
    return out


def check_defaults_inside(model_cls: type) -> None:
    """Raise one ``ModelError`` when the model's own search space excludes one of its defaults.

    The defaults trial reproduces the untuned model only if every searched default is a value
    the space can produce, and a space that cannot reach the defaults is a space that was never
    checked against them (issue 12).
    """
    from recstudio.errors import ModelError

    space = getattr(model_cls, "search_space", None) or {}
    if not space:
        return
    try:
        canonical = normalize(space, model_cls)
    except ConfigError as exc:
        raise ModelError(f"model '{model_cls.__name__}': invalid search space: {exc}") from None
    defaults = model_defaults(model_cls)
    for key, spec in canonical.items():
        value = config_value(defaults, key)
        if not contains(spec, value):
            shown = describe({key: spec})[key]
            raise ModelError(
                f"model '{model_cls.__name__}': search space '{key}' ({shown}) excludes the default "
                f"{value!r}; the space must contain every default it searches"
            )
