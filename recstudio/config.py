"""Configuration: typed sections, layered merging and validation.

A resolved config has four typed sections plus the two names that pick what runs::

    model:   {name: BPR, <the model's own hyperparameters>}
    dataset: ml-100k                 (a built-in name or a path to a dataset spec YAML)
    data:    preprocessing and split options (they form the parquet cache key)
    train:   optimisation, early stopping, seeds
    eval:    metrics, cutoffs, ranking options

Layers merge left to right, later wins, without side effects::

    section defaults < model defaults < dataset spec defaults < --config YAML < --set / flags

Every default is written once: in the dataclass below, or in the model's ``Config`` dataclass.
Unknown keys and wrong types raise ``ConfigError`` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from recstudio.errors import ConfigError

SplitMethod = Literal["user_entry", "entry", "user", "loo"]
SplitOrder = Literal["random", "time"]
# No "sparse_adam": torch's SparseAdam needs sparse gradients, which no model here produces. With
# sparse embeddings it measured slower than dense fused Adam (6.2 vs 5.0 ms per ml-1m BPR step).
Learner = Literal["adam", "adamw", "sgd", "adagrad", "rmsprop"]
Scheduler = Literal["none", "step", "exponential", "cosine", "plateau"]
MetricName = Literal["recall", "precision", "map", "ndcg", "mrr", "hit", "auc"]
PointwiseMetricName = Literal["auc", "gauc", "logloss"]
EvalProtocol = Literal["auto", "ranking", "pointwise", "both"]
CandidateSampler = Literal["uniform", "popularity"]


@dataclass
class DataConfig:
    """Preprocessing and splitting. Every field here is part of the parquet cache key."""

    min_rating: float | None = None
    """Drop interactions whose rating is below this value (needs a rating column)."""
    binarize: bool = True
    """Treat every kept interaction as a positive (implicit feedback); ratings become 1."""
    drop_duplicates: bool = True
    """Keep one interaction per (user, item) pair: the latest by time, else the last in the file."""
    min_user_inter: int = 0
    """k-core: users with fewer interactions are removed, iterated with min_item_inter to a fixpoint."""
    min_item_inter: int = 0
    split: SplitMethod = "user_entry"
    """user_entry: per-user ratio; entry: global ratio; user: disjoint users; loo: leave-one-out."""
    split_ratio: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_order: SplitOrder = "random"
    """random (seeded shuffle) or time (chronological; ties keep file order). loo is always time."""
    split_seed: int = 2020
    valid_from_train: float = 0.0
    """For ready-made splits without a valid file (``splits: {train, test}``): the share of each
    user's train rows held out as validation, so early stopping and the best epoch work; ordered
    by ``split_order`` (time: the user's latest rows). 0: no validation split."""
    by_session: bool = False
    """One sequence per session instead of per user, when the dataset spec names a session column
    (``roles: {session: ...}``); no effect without one. Sequential models default to true."""
    label: str | None = None
    """Label rule for pointwise (CTR) data, ``"<column> <op> <number>"`` (op: >=, >, <=, <, ==, !=)
    on a role (``rating``, ``timestamp``) or any column of the interactions file, e.g.
    ``"rating >= 4"``. When set, every row is kept with a 0/1 label (``binarize`` does not apply:
    ratings keep their raw values); ``min_rating`` and ``drop_duplicates`` still apply."""


@dataclass
class TrainConfig:
    """Optimisation and the training loop."""

    epochs: int = 200
    batch_size: int = 2048
    learner: Learner = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    scheduler: Scheduler = "none"
    scheduler_step: int = 10
    scheduler_gamma: float = 0.5
    gradient_clip: float | None = None
    early_stop_patience: int = 10
    """Stop after this many validation checks without improvement of ``monitor``; 0 disables."""
    min_epochs: int = 0
    """Early stopping does not end a run before this many epochs (capped by ``epochs``; the
    ``max_minutes`` cap still applies): for models whose validation sits on a plateau before it
    rises, e.g. UltraGCN's first ~100 ml-100k epochs at popularity level. 0: no minimum."""
    monitor: str = "ndcg@10"
    val_every: int = 1
    """Validate every this many epochs."""
    seed: int = 2022
    static_negatives: int = 0
    """Negatives drawn once at load time per training row (0: draw fresh ones in every batch)."""
    ddp_timeout: float = 1800.0
    """With ``--devices`` > 1: seconds a rank waits in a collective before the run fails."""
    max_minutes: float | None = None
    """Wall-clock cap on training: stop after the epoch that passes it and test the best
    validated weights (the result's ``stopped`` says why training ended)."""


@dataclass
class EvalConfig:
    """Full-ranking evaluation."""

    metrics: list[MetricName] = field(
        default_factory=lambda: ["recall", "precision", "map", "ndcg", "mrr", "hit", "auc"]
    )
    cutoffs: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 2048
    """Users scored per block (one matmul, one masking scatter, one topk per block)."""
    mask_history: bool = True
    """Exclude already-seen items: train for validation, train+validation for test."""
    protocol: EvalProtocol = "auto"
    """ranking: rank items per user (retrievers); pointwise: AUC/GAUC/log loss on labelled rows
    (rankers, CTR models); both; auto: pointwise for models that train on labelled rows."""
    pointwise_metrics: list[PointwiseMetricName] = field(default_factory=lambda: ["auc", "gauc", "logloss"])
    """Metrics of the pointwise protocol (with protocol both, the ranking AUC is ``full_auc``)."""
    candidates: int = 0
    """0: full ranking over all items. N > 0: rank each target among N negatives drawn once per
    user (fixed for every epoch and model), as papers with sampled metrics report."""
    candidate_sampler: CandidateSampler = "uniform"
    """How the N negatives are drawn: uniform, or in proportion to training popularity."""
    candidate_seed: int = 2020
    """Seed of the candidate draw (the same for every model, so runs compare)."""


SECTIONS: dict[str, type] = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


@dataclass
class ResolvedConfig:
    """A fully merged and validated config. ``to_dict`` gives the YAML that reproduces it."""

    model_name: str
    dataset: str
    model: Any
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model_name, **dataclasses.asdict(self.model)},
            "dataset": self.dataset,
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
        }

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for MLflow params."""
        return flatten(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- merging helpers


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return a new dict: ``update`` merged into ``base`` recursively (inputs are not modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def unflatten(dotted: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' conflicts with a scalar at '{part}'")
        node[parts[-1]] = value
    return tree


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a parse error becomes one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}'{where} is not valid YAML: {exc}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping, got {type(content).__name__}")
    return content


def parse_set_option(item: str) -> tuple[str, Any]:
    """Parse one ``key=value`` from ``--set``; the value is read as YAML (``1e-3``, ``[5,10]``)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; users mean a number
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; int->float is the only silent conversion."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"config key '{key}' must be one of {', '.join(map(str, allowed))}; got {value!r}{hint}"
            )
        return value
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value] if not isinstance(value, dict | str) or inner is str else value
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
        return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
    return value


_RANGE_RE = re.compile(
    r"^\s*(?:(?P<op>>=|>|<=|<)\s*(?P<bound>[-+.\deE]+)"
    r"|(?P<lo_b>[\[(])\s*(?P<lo>[-+.\deE]+)\s*,\s*(?P<hi>[-+.\deE]+)\s*(?P<hi_b>[\])]))\s*$"
)


def parse_range(text: str) -> Callable[[float], bool]:
    """A predicate for a declared range: ``">= 1"``, ``"> 0"``, ``"[0, 1)"``, ``"(0, 1]"``."""
    m = _RANGE_RE.match(text)
    if m is None:
        raise ValueError(f"malformed range {text!r}: expected e.g. '>= 1', '> 0' or '[0, 1)'")
    if m["op"]:
        b = float(m["bound"])
        return {
            ">=": lambda v: v >= b,
            ">": lambda v: v > b,
            "<=": lambda v: v <= b,
            "<": lambda v: v < b,
        }[m["op"]]
    lo, hi = float(m["lo"]), float(m["hi"])
    lo_ok = (lambda v: v >= lo) if m["lo_b"] == "[" else (lambda v: v > lo)
    hi_ok = (lambda v: v <= hi) if m["hi_b"] == "]" else (lambda v: v < hi)
    return lambda v: lo_ok(v) and hi_ok(v)


def declared_ranges(cls: type) -> dict[str, str]:
    """The ``ranges`` a config class and its bases declare (field name -> range text)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(klass.__dict__.get("ranges", {}) or {})
    return out


def check_declared_ranges(obj: Any, prefix: str) -> None:
    """Each field with a declared range holds a value in it (a list: every element; None
    passes: it means "the default"); else one ConfigError naming the key and the range."""
    for key, text in declared_ranges(type(obj)).items():
        value = getattr(obj, key)
        values = value if isinstance(value, list) else [value]
        inside = parse_range(text)
        for v in values:
            if v is not None and not (isinstance(v, int | float) and inside(v)):
                where = "must be in" if text.lstrip()[0] in "[(" else "must be"
                each = " (each element)" if isinstance(value, list) else ""
                raise ConfigError(f"config key '{prefix}.{key}'{each} {where} {text}, got {value!r}")


def build_section(cls: type, values: dict[str, Any], prefix: str, owner: str | None = None) -> Any:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys and bad types are ConfigErrors.
    ``owner`` (a model name) is named in the unknown-key error, with the keys it takes."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{prefix}.{close[0]}'?)" if close else ""
            where = f": model {owner} has no such option (its options: {', '.join(names) or 'none'})"
            raise ConfigError(f"unknown config key '{prefix}.{key}'{hint}{where if owner else ''}")
        kwargs[key] = coerce(value, hints[key], f"{prefix}.{key}")
    obj = cls(**kwargs)
    check_declared_ranges(obj, prefix)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def section_field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_ranges(cfg: ResolvedConfig) -> None:
    d, t, e = cfg.data, cfg.train, cfg.eval
    if len(d.split_ratio) not in (2, 3) or any(r < 0 for r in d.split_ratio) or sum(d.split_ratio) <= 0:
        raise ConfigError(
            f"config key 'data.split_ratio' must be 2 or 3 non-negative numbers, got {d.split_ratio}"
        )
    if d.min_user_inter < 0 or d.min_item_inter < 0:
        raise ConfigError("config keys 'data.min_user_inter' and 'data.min_item_inter' must be >= 0")
    if not 0.0 <= d.valid_from_train < 1.0:
        raise ConfigError(f"config key 'data.valid_from_train' must be in [0, 1), got {d.valid_from_train}")
    for key in ("epochs", "batch_size", "val_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"config key 'train.{key}' must be >= 1, got {getattr(t, key)}")
    if t.learning_rate <= 0:
        raise ConfigError(f"config key 'train.learning_rate' must be > 0, got {t.learning_rate}")
    if t.weight_decay < 0:
        raise ConfigError(f"config key 'train.weight_decay' must be >= 0, got {t.weight_decay}")
    if t.min_epochs < 0:
        raise ConfigError(f"config key 'train.min_epochs' must be >= 0, got {t.min_epochs}")
    if t.ddp_timeout <= 0:
        raise ConfigError(f"config key 'train.ddp_timeout' must be > 0, got {t.ddp_timeout}")
    if t.max_minutes is not None and t.max_minutes <= 0:
        raise ConfigError(f"config key 'train.max_minutes' must be > 0, got {t.max_minutes}")
    if not e.cutoffs or any(k < 1 for k in e.cutoffs):
        raise ConfigError(f"config key 'eval.cutoffs' must be positive integers, got {e.cutoffs}")
    if e.batch_size < 1:
        raise ConfigError(f"config key 'eval.batch_size' must be >= 1, got {e.batch_size}")
    if e.candidates < 0:
        raise ConfigError(f"config key 'eval.candidates' must be >= 0, got {e.candidates}")
    metric, _, k = t.monitor.partition("@")
    ranking_metrics = typing.get_args(MetricName)
    pointwise = typing.get_args(PointwiseMetricName)
    ranking_ok = metric in ranking_metrics and (metric == "auc" or (k.isdigit() and int(k) in e.cutoffs))
    pointwise_ok = not k and (metric in pointwise or metric == "full_auc")
    if not (ranking_ok or pointwise_ok):
        raise ConfigError(
            f"config key 'train.monitor' must name a ranking metric at one of eval.cutoffs "
            f"(e.g. ndcg@{e.cutoffs[0]}), 'auc', or a pointwise metric (gauc, logloss), got '{t.monitor}'"
        )
    if ranking_ok and metric != "auc" and metric not in e.metrics:
        raise ConfigError(f"config key 'train.monitor' uses '{metric}', which eval.metrics does not compute")


# --------------------------------------------------------------------------- resolution

_TOP_LEVEL = ("model", "dataset", "data", "train", "eval")


def _resolve_bare_key(key: str, model_cls: type) -> str:
    """Map a section-less key (``epochs``) to its dotted name (``train.epochs``).

    A bare name found in several sections resolves in the order model, train, data, eval
    (``batch_size`` is the training batch size; use ``eval.batch_size`` for the other).
    """
    if "." in key or key in _TOP_LEVEL:
        return key
    if key in section_field_names(model_cls.Config):
        return f"model.{key}"
    for name in ("train", "data", "eval"):
        if key in section_field_names(SECTIONS[name]):
            return f"{name}.{key}"
    raise ConfigError(
        f"unknown config key '{key}': neither model {model_cls.__name__} nor train, data or eval has it"
    )


def read_config_files(config_files: list[str | Path] | tuple = ()) -> dict[str, Any]:
    """The ``--config`` layer: YAML files merged in order (later wins), ``tune:`` sections
    removed (study settings live beside the run config), top-level keys checked."""
    file_layer: dict[str, Any] = {}
    for path in config_files:
        file_layer = deep_merge(file_layer, load_yaml(path))
    file_layer.pop("tune", None)
    for key in file_layer:
        if key not in _TOP_LEVEL:
            close = difflib.get_close_matches(key, _TOP_LEVEL, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{key}' in config file{hint}")
    return file_layer


def model_name_in(file_layer: dict[str, Any]) -> str | None:
    """The model name a config layer sets (``model: BPR`` or ``model: {name: BPR}``), if any."""
    model = file_layer.get("model")
    if isinstance(model, str):
        return model
    if isinstance(model, dict) and model.get("name") is not None:
        return str(model["name"])
    return None


def resolve(
    model_cls: type,
    dataset: str | None = None,
    config_files: list[str | Path] | tuple = (),
    overrides: dict[str, Any] | None = None,
    dataset_defaults: dict[str, Any] | None = None,
    file_layer: dict[str, Any] | None = None,
    model_layer: dict[str, Any] | None = None,
) -> ResolvedConfig:
    """Merge all layers for ``model_cls`` and validate. ``overrides`` holds dotted or bare keys.

    This is the bottom layer: it never looks a model up by name (``recstudio.experiment.
    resolve_config`` does, then calls this). ``model_cls`` supplies ``Config``, ``__name__`` and
    ``default_overrides``. The dataset may come from the argument or a config file; the argument
    wins. ``dataset_defaults`` is the dataset spec's ``defaults`` mapping; ``model_layer`` is an
    optional layer between it and the config files that the caller derives from the model and
    the dataset together (e.g. the spec's label rule for pointwise models). ``file_layer`` is
    ``read_config_files(config_files)`` when the caller has already read them.
    """
    if file_layer is None:
        file_layer = read_config_files(config_files)
    dataset_name = dataset or file_layer.get("dataset")
    if not dataset_name:
        raise ConfigError("no dataset given: pass --dataset or set dataset in the config file")

    cli_layer: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        cli_layer = deep_merge(cli_layer, unflatten({_resolve_bare_key(key, model_cls): value}))

    merged: dict[str, Any] = {name: {} for name in SECTIONS}
    merged["model"] = {}
    layers = [
        unflatten(flatten(getattr(model_cls, "default_overrides", {}) or {})),
        dataset_defaults or {},
        model_layer or {},
        {k: v for k, v in file_layer.items() if k not in ("dataset",)},
        cli_layer,
    ]
    for layer in layers:
        layer = dict(layer)
        if isinstance(layer.get("model"), str):
            layer["model"] = {"name": layer["model"]}
        merged = deep_merge(merged, layer)
    model_params = dict(merged.get("model") or {})
    model_params.pop("name", None)

    for key in merged:
        if key not in ("model", *SECTIONS, "dataset"):
            raise ConfigError(f"unknown config section '{key}'")

    cfg = ResolvedConfig(
        model_name=model_cls.__name__,
        dataset=str(dataset_name),
        model=build_section(model_cls.Config, model_params, "model", owner=model_cls.__name__),
        data=build_section(DataConfig, merged["data"], "data"),
        train=build_section(TrainConfig, merged["train"], "train"),
        eval=build_section(EvalConfig, merged["eval"], "eval"),
    )
    _check_ranges(cfg)
    check_model = getattr(model_cls, "check_config", None)  # checks that need the model class
    if callable(check_model):
        check_model(cfg.model)
    return cfg
