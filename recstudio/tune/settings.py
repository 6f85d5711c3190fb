"""What one invocation of a study runs: ``TuneSettings``, and building them from the command line
and the ``tune:`` section of experiment files.

The settings are the single value passed from the command line (or a notebook) to the study
and on to every spawned worker, so they are a plain picklable dataclass. ``build_settings``
resolves the fixed part of every trial exactly as ``recstudio run`` resolves a run (the same
function), then the search space, sampler, pruner and budget; command-line values win over the
``tune:`` section.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recstudio.errors import ConfigError
from recstudio.tune.space import SearchSpace
from recstudio.tune.strategies import PRUNERS, SAMPLERS, default_pruner

log = logging.getLogger("recstudio.tune")

DEFAULT_TRIALS = 20
TUNE_KEYS = (
    "trials",
    "timeout",
    "study_name",
    "storage",
    "sampler",
    "pruner",
    "metric",
    "workers",
    "seed",
    "search_space",
    "heartbeat_interval",
    "defaults_trial",
    "baseline",
    "costs",
    "enqueue",
)
"""The keys a ``tune:`` section may hold."""


@dataclass
class TuneSettings:
    """Everything a worker needs to run trials of one study (picklable: workers are spawned)."""

    model: str
    dataset: str
    base_config: dict[str, Any]
    """The fixed part, fully resolved (``ResolvedConfig.to_dict()``, ``train.monitor = metric``)."""
    space: SearchSpace
    metric: str
    study_name: str
    storage: str
    trials: int | None = DEFAULT_TRIALS
    """New trials this invocation runs (resumed studies keep their old trials on top)."""
    timeout: float | None = None
    """Seconds after which no new trial starts (running ones finish)."""
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    """Sampler seed (``--seed``); worker i and a resumed study derive their own from it."""
    seed_offset: int = 0
    workers: int = 1
    defaults_trial: bool = True
    """The study's first trial is the fixed config itself (the model's defaults with ``--set``
    values), evaluated in full and never pruned, so the best trial is never below it."""
    costs: tuple[str, ...] = ()
    """Costs minimised beside the metric (``recstudio.tune.objectives.COSTS``): a multi-objective
    study whose result is the Pareto front; empty: the metric alone."""
    heartbeat_interval: int = 60
    grace_period: int | None = None
    max_retry: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)
    """Keys fixed on the command line (``--set``/flags), for the record."""
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    """Optuna params of trials to run first (``--enqueue``, ``tune.enqueue``), after the defaults
    trial; a point the study has already tried is not queued again."""
    # run options
    data_dir: str | None = None
    cache_dir: str | None = None
    tracking: bool = True
    log_model: bool = True
    """Trials log their servable MLflow model (``RunOptions.log_model``)."""
    tracking_uri: str | None = None
    experiment: str = "recstudio"
    accelerator: str = "auto"
    devices: int | str = "auto"
    quiet: bool = False
    verbose: bool = False
    progress: str = "auto"
    """Trials' progress (``recstudio.progress``): auto, bar, lines or none."""
    data: Any = None
    """An in-memory PreparedData used instead of the dataset spec (tests, notebooks)."""


def warn_baseline(name: str) -> None:
    """``--baseline`` (``tune.baseline``) is deprecated: the defaults trial is now on by default."""
    import warnings

    message = (
        f"{name} is deprecated and will be removed: a study's first trial is now the defaults trial "
        "by default (opt out with --no-defaults-trial / tune.defaults_trial: false)"
    )
    log.warning(message)
    warnings.warn(message, DeprecationWarning, stacklevel=3)


def split_tune_sections(config_files: tuple[str, ...], workdir: Path) -> tuple[list[str], dict[str, Any]]:
    """Take the ``tune:`` section out of experiment files (later files win).

    ``config.resolve`` knows only the run sections; files with a ``tune:`` section are passed
    on as copies without it (written to ``workdir``).
    """
    import yaml

    from recstudio.config import load_yaml

    files: list[str] = []
    section: dict[str, Any] = {}
    for i, path in enumerate(config_files):
        content = load_yaml(path)
        tune = content.pop("tune", None)
        if tune is None:
            files.append(path)
            continue
        if not isinstance(tune, dict):
            raise ConfigError(f"config file '{path}': 'tune' must be a mapping, got {tune!r}")
        for key in tune:
            if key not in TUNE_KEYS:
                close = difflib.get_close_matches(key, TUNE_KEYS, n=1)
                hint = f" (did you mean 'tune.{close[0]}'?)" if close else ""
                raise ConfigError(f"config file '{path}': unknown key 'tune.{key}'{hint}")
        section.update(tune)
        if isinstance(content.get("dataset"), str):
            content["dataset"] = absolute_spec(content["dataset"], Path(path).parent)
        copy = workdir / f"{i}-{Path(path).name}"
        copy.write_text(yaml.safe_dump(content, sort_keys=False))
        files.append(str(copy))
    return files, section


def absolute_spec(dataset: str, base: Path) -> str:
    """A dataset given as a spec file path, made absolute (exports and workers elsewhere find it)."""
    for candidate in (Path(dataset), base / dataset):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return str(candidate.resolve())
    return dataset


def named(value: Any, what: str, choices: tuple[str, ...]) -> tuple[str | None, dict[str, Any]]:
    """``"tpe"`` or ``{name: tpe, n_startup_trials: 5}`` -> (name, options)."""
    if value is None:
        return None, {}
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        options = dict(value)
        name = options.pop("name")
    else:
        raise ConfigError(f"tune.{what} must be a name or a mapping with 'name', got {value!r}")
    if name not in choices:
        raise ConfigError(f"tune.{what}: unknown {what} '{name}'; expected one of {', '.join(choices)}")
    return name, options


def _costs(costs: tuple[str, ...] | None, section: dict[str, Any]) -> tuple[str, ...]:
    """``--cost`` values (they win), else ``tune.costs`` (a name or a list of names)."""
    from recstudio.tune.objectives import check_costs

    if costs:
        return check_costs(costs)
    value = section.get("costs")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"tune.costs must be a cost name or a list of them, got {value!r}")
    return check_costs(value)


def default_study_name(model: str, dataset: str) -> str:
    """``MODEL-DATASET``; a dataset given as a spec path contributes its file stem."""
    name = Path(dataset).name
    if name.endswith((".yaml", ".yml")):
        name = Path(name).stem
    return f"{model}-{name}"


def build_settings(
    model: str | None,
    dataset: str | None,
    data_dir: str | None,
    config_files: list[str],
    set_items: tuple[str, ...],
    config_flags: dict[str, Any],
    section: dict[str, Any] | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    metric: str | None = None,
    search_space: str | None = None,
    workers: int | None = None,
    heartbeat_interval: int | None = None,
    defaults_trial: bool | None = None,
    baseline: bool | None = None,
    costs: tuple[str, ...] | None = None,
    enqueue: tuple[str, ...] = (),
) -> TuneSettings:
    """Resolve the fixed config and the search space into ``TuneSettings`` (CLI > tune section).

    ``set_items`` are ``--set KEY=VALUE`` strings and ``config_flags`` the values of the
    dedicated flags (``{"train.epochs": 20}``), as ``recstudio run`` takes them.
    """
    # the config is resolved by the very function `recstudio run` uses, so that a trial and a
    # run with the same values are the same experiment
    from recstudio.experiment import build_overrides, resolve_from_cli
    from recstudio.model.registry import get_model_class
    from recstudio.tune.space import config_fields, load_search_space, normalize, pin, resolve_key
    from recstudio.tune.storage import default_storage

    section = dict(section or {})
    flags = dict(config_flags)
    metric = metric or section.get("metric")
    if metric is not None:
        monitor = flags.get("train.monitor")
        if monitor is not None and monitor != metric:
            raise ConfigError(
                f"--metric {metric} and --monitor {monitor} disagree; the tuned metric is the monitor"
            )
        flags["train.monitor"] = metric
    if dataset is not None:
        dataset = absolute_spec(dataset, Path.cwd())
    cfg = resolve_from_cli(model, dataset, data_dir, tuple(config_files), set_items, flags)
    cfg.dataset = absolute_spec(cfg.dataset, Path.cwd())
    model_cls = get_model_class(cfg.model_name)

    if search_space is not None:
        raw_space = load_search_space(search_space)
    elif section.get("search_space") is not None:
        raw_space = section["search_space"]
    else:
        raw_space = dict(model_cls.search_space)
    space = normalize(raw_space, model_cls)
    fields = config_fields(model_cls)
    fixed = {}
    for key, value in build_overrides(set_items, flags).items():
        with contextlib.suppress(ConfigError):
            fixed[resolve_key(key, fields)] = value
    space, removed = pin(space, fixed)
    if removed:
        log.info("fixed on the command line, so not tuned: %s", ", ".join(removed))

    sampler_name, sampler_options = named(sampler or section.get("sampler") or "tpe", "sampler", SAMPLERS)
    pruner_name, pruner_options = named(
        pruner or section.get("pruner") or default_pruner(sampler_name), "pruner", PRUNERS
    )
    if (
        sampler is not None
        and isinstance(section.get("sampler"), dict)
        and section["sampler"].get("name") != sampler
    ):
        sampler_options = {}
    if (
        pruner is not None
        and isinstance(section.get("pruner"), dict)
        and section["pruner"].get("name") != pruner
    ):
        pruner_options = {}
    costs = _costs(costs, section)
    if costs:
        if pruner_name not in (None, "none") and (pruner is not None or section.get("pruner") is not None):
            raise ConfigError(
                f"pruner '{pruner_name}' cannot run a multi-objective study "
                f"(--cost {' --cost '.join(costs)}): "
                "Optuna prunes single-objective trials only; leave --pruner out or use --pruner none"
            )
        pruner_name, pruner_options = "none", {}
        if sampler_name == "cmaes":
            raise ConfigError(
                "sampler 'cmaes' is single-objective; a study with --cost needs tpe, random, qmc or grid"
            )
    seed = flags.get("train.seed", section.get("seed"))
    trials = trials if trials is not None else section.get("trials")
    timeout = timeout if timeout is not None else section.get("timeout")
    if trials is None and timeout is None:
        trials = DEFAULT_TRIALS
    if heartbeat_interval is None:
        heartbeat_interval = section.get("heartbeat_interval", 60)
    for key in ("defaults_trial", "baseline"):
        if section.get(key) is not None and not isinstance(section[key], bool):
            raise ConfigError(f"tune.{key} must be true or false, got {section[key]!r}")
    if defaults_trial is None:
        defaults_trial = section.get("defaults_trial")
    if baseline is None and section.get("baseline") is not None:
        baseline = section["baseline"]
        warn_baseline("tune.baseline")
    if defaults_trial is None:
        # --baseline / tune.baseline: the old opt-in; true is now the default, false opts out
        defaults_trial = True if baseline is None else bool(baseline)
    queued = _enqueued(enqueue, section, space, model_cls)
    return TuneSettings(
        model=cfg.model_name,
        dataset=cfg.dataset,
        base_config=cfg.to_dict(),
        space=space,
        metric=cfg.train.monitor,
        study_name=study_name or section.get("study_name") or default_study_name(cfg.model_name, cfg.dataset),
        storage=storage or section.get("storage") or default_storage(),
        trials=int(trials) if trials is not None else None,
        timeout=float(timeout) if timeout is not None else None,
        sampler=sampler_name or "tpe",
        sampler_options=sampler_options,
        pruner=pruner_name or default_pruner(sampler_name),
        costs=costs,
        pruner_options=pruner_options,
        seed=int(seed) if seed is not None else None,
        workers=int(workers or section.get("workers") or 1),
        heartbeat_interval=int(heartbeat_interval),
        defaults_trial=bool(defaults_trial),
        fixed=fixed,
        enqueue=queued,
        data_dir=data_dir,
    )


def _enqueued(
    files: tuple[str, ...], section: dict[str, Any], space: SearchSpace, model_cls: type
) -> list[dict[str, Any]]:
    """Optuna params of the trials to run first: ``--enqueue`` files, else ``tune.enqueue``."""
    from recstudio.tune.space import enqueue_params, load_enqueue_file

    entries: list[tuple[str, Any]] = []
    for path in files:
        entries += [(f"--enqueue file '{path}'", e) for e in load_enqueue_file(path)]
    if not files and section.get("enqueue") is not None:
        raw = section["enqueue"]
        listed = raw if isinstance(raw, list) else [raw]
        if not listed or not all(isinstance(e, dict) and e for e in listed):
            raise ConfigError("tune.enqueue must be a mapping of config key -> value, or a list of them")
        entries += [("tune.enqueue", e) for e in listed]
    if entries and not space:
        raise ConfigError("--enqueue: the search space is empty (every key is fixed), nothing to enqueue")
    return [enqueue_params(entry, space, model_cls, source) for source, entry in entries]
