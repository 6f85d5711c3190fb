"""``recstudio tune``, ``recstudio studies`` and ``recstudio best``: Optuna studies from the CLI.

``tune`` shares ``run``'s flags and config resolution (``common_run_options``,
``config_flags``, ``resolve_from_cli``), so a trial and ``recstudio run`` with the same
values are the same experiment. What ``--set``/flags fix is not tuned; ``--config`` files are
the base that the search space varies.

An experiment file may carry a ``tune:`` section (trials, timeout, sampler, pruner, metric,
workers, search_space, ...); command-line options win over it.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from recstudio.commands.options import config_flags
from recstudio.commands.run import build_overrides, common_run_options, parse_devices, resolve_from_cli

log = logging.getLogger("recstudio.tune")

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "grid")
PRUNERS = ("median", "hyperband", "successive-halving", "none")
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
    "baseline",
)


# --------------------------------------------------------------------------- helpers


def default_pruner(sampler: str | None) -> str:
    """Hyperband for model-based samplers, median for random search: the pairs Optuna's own
    benchmarks found best ("Which Sampler and Pruner Should be Used?", Optuna tutorial 003).
    With NCF on ml-100k, the median pruner's 5 full start-up trials took most of the budget;
    Hyperband ran 50 trials in 11-22 minutes (benchmarks/README.md)."""
    return "median" if sampler == "random" else "hyperband"


def split_tune_sections(config_files: tuple[str, ...], workdir: Path) -> tuple[list[str], dict[str, Any]]:
    """Take the ``tune:`` section out of experiment files (later files win).

    ``config.resolve`` knows only the run sections; files with a ``tune:`` section are passed
    on as copies without it (written to ``workdir``).
    """
    import yaml

    from recstudio.config import load_yaml
    from recstudio.errors import ConfigError

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
            content["dataset"] = _absolute_spec(content["dataset"], Path(path).parent)
        copy = workdir / f"{i}-{Path(path).name}"
        copy.write_text(yaml.safe_dump(content, sort_keys=False))
        files.append(str(copy))
    return files, section


def _absolute_spec(dataset: str, base: Path) -> str:
    """A dataset given as a spec file path, made absolute (exports and workers elsewhere find it)."""
    for candidate in (Path(dataset), base / dataset):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return str(candidate.resolve())
    return dataset


def _named(value: Any, what: str, choices: tuple[str, ...]) -> tuple[str | None, dict[str, Any]]:
    """``"tpe"`` or ``{name: tpe, n_startup_trials: 5}`` -> (name, options)."""
    from recstudio.errors import ConfigError

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


def default_study_name(model: str, dataset: str) -> str:
    name = Path(dataset).name
    if name.endswith((".yaml", ".yml")):
        name = Path(name).stem
    return f"{model}-{name}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# --------------------------------------------------------------------------- tune


@click.command("tune")
@common_run_options
@click.option(
    "-n",
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="New trials this invocation runs (a resumed study keeps its earlier trials). Default 20, or "
    "unlimited with --timeout.",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), help="Start no new trial after S seconds."
)
@click.option("--study-name", help="Study name (default MODEL-DATASET); an existing name resumes that study.")
@click.option(
    "--storage",
    help="Optuna RDB URL, e.g. postgresql://user@host/db (default $RECSTUDIO_OPTUNA_STORAGE, else "
    "sqlite:///./optuna.db).",
)
@click.option("--sampler", type=click.Choice(SAMPLERS), help="Sampler (default tpe).")
@click.option(
    "--pruner",
    type=click.Choice(PRUNERS),
    help="Pruner over validation epochs (default hyperband; median with --sampler random).",
)
@click.option("--metric", help="Validation metric to maximize, e.g. ndcg@10 (sets train.monitor).")
@click.option(
    "--search-space",
    type=click.Path(dir_okay=False),
    help="YAML/JSON search space (RecStudio or NNI format); replaces the model's default space.",
)
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes sharing the study (default 1).")
@click.option(
    "--heartbeat-interval",
    type=click.IntRange(min=0),
    default=None,
    help="Seconds between trial heartbeats; a trial silent for 2x this is FAIL and retried once (0: off). "
    "Default 60.",
)
@click.option(
    "--baseline",
    is_flag=True,
    default=None,
    help="A new study's first trial uses the model's defaults (and --set values) for the searched keys "
    "that lie inside the space, so the study starts from the untuned config.",
)
@config_flags()
def tune_command(
    model,
    dataset,
    data_dir,
    config_files,
    set_items,
    tracking_uri,
    experiment,
    accelerator,
    devices,
    as_json,
    quiet,
    verbose,
    trials,
    timeout,
    study_name,
    storage,
    sampler,
    pruner,
    metric,
    search_space,
    workers,
    heartbeat_interval,
    baseline,
    config_flags,
) -> None:
    """Tune a model's hyperparameters with Optuna; every trial is a `recstudio run`.

    Each trial trains with the pipeline of `recstudio run`, is pruned on its validation metric
    epoch by epoch, and is logged as an MLflow child run under one parent run per study. The
    objective is the validation metric at the trial's best epoch; test metrics are recorded,
    never used to choose. Running the same command again resumes the study; --seed also seeds
    the sampler.

    \b
    Examples:
      recstudio tune -m NCF -d ml-100k --trials 50
      recstudio tune -c experiments/ncf-ml-100k.yaml --workers 2
      recstudio tune -m BPR -d ml-100k --search-space space.json --pruner hyperband --epochs 30
      recstudio tune -m BPR -d ml-100k --set embed_dim=64 --storage postgresql://optuna@db/optuna
    """
    from recstudio.cli import setup_logging
    from recstudio.errors import TrainingError

    setup_logging(quiet=quiet or as_json, verbose=verbose)
    with tempfile.TemporaryDirectory(prefix="recstudio-tune-") as tmp:
        files, section = split_tune_sections(config_files, Path(tmp))
        settings = build_settings(
            model=model,
            dataset=dataset,
            data_dir=data_dir,
            config_files=files,
            set_items=set_items,
            config_flags=config_flags,
            section=section,
            trials=trials,
            timeout=timeout,
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            metric=metric,
            search_space=search_space,
            workers=workers,
            heartbeat_interval=heartbeat_interval,
            baseline=baseline,
        )
    settings.tracking_uri = tracking_uri
    settings.experiment = experiment or "recstudio"
    settings.accelerator = accelerator
    settings.devices = parse_devices(devices)
    settings.quiet = quiet or as_json
    settings.verbose = verbose

    from recstudio.tune.runner import run_study

    redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with redirect:
        summary = run_study(settings)
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        print_tune_summary(summary, settings.metric)
    invocation = summary.get("invocation", {})
    mine = invocation.get("trials", {})
    if invocation.get("failed_workers") and not mine.get("COMPLETE"):
        raise TrainingError(f"worker processes failed: {', '.join(invocation['failed_workers'])}")
    if mine.get("COMPLETE", 0) == 0 and mine.get("FAIL", 0) > 0:
        raise TrainingError(f"every trial of this invocation failed ({mine['FAIL']}); see the errors above")
    if not sum(mine.values()):
        log.warning("no trial ran: the timeout elapsed first, or every grid point was already tried")


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
    baseline: bool | None = None,
) -> Any:
    """Resolve the fixed config and the search space into ``TuneSettings`` (CLI > tune section)."""
    from recstudio.errors import ConfigError
    from recstudio.model.registry import get_model_class
    from recstudio.tune.settings import DEFAULT_TRIALS, TuneSettings
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
        dataset = _absolute_spec(dataset, Path.cwd())
    cfg = resolve_from_cli(model, dataset, data_dir, tuple(config_files), set_items, flags)
    cfg.dataset = _absolute_spec(cfg.dataset, Path.cwd())
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

    sampler_name, sampler_options = _named(sampler or section.get("sampler") or "tpe", "sampler", SAMPLERS)
    pruner_name, pruner_options = _named(
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
    seed = flags.get("train.seed", section.get("seed"))
    trials = trials if trials is not None else section.get("trials")
    timeout = timeout if timeout is not None else section.get("timeout")
    if trials is None and timeout is None:
        trials = DEFAULT_TRIALS
    if heartbeat_interval is None:
        heartbeat_interval = section.get("heartbeat_interval", 60)
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
        pruner_options=pruner_options,
        seed=int(seed) if seed is not None else None,
        workers=int(workers or section.get("workers") or 1),
        heartbeat_interval=int(heartbeat_interval),
        baseline=bool(baseline if baseline is not None else section.get("baseline", False)),
        fixed=fixed,
        data_dir=data_dir,
    )


def print_tune_summary(summary: dict[str, Any], metric: str) -> None:
    inv = summary.get("invocation", {})
    counts = inv.get("trials", {})
    total = summary.get("trials", {})
    click.echo(
        f"study {summary['study']}: {sum(counts.values())} new trials "
        f"({counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, "
        f"{counts.get('FAIL', 0)} failed) "
        f"in {_duration(inv.get('seconds'))}; {sum(total.values())} trials in the study"
    )
    best = summary.get("best")
    if best is None:
        click.echo("  no completed trial yet")
        return
    click.echo(
        f"  best trial {best['number']}: {metric} = {best['value']:.4f} "
        f"(validation, epoch {best['best_epoch']})"
    )
    for key, value in sorted((best.get("params") or {}).items()):
        click.echo(f"    {key} = {_format_value(value)}")
    if best.get("run_id"):
        click.echo(f"  MLflow run {best['run_id']} (parent run {summary.get('parent_run_id')})")
    click.echo(f"  export it: recstudio best {summary['study']} --export best.yaml")


# --------------------------------------------------------------------------- studies


def _open_storage(storage: str | None) -> tuple[str, Any]:
    from recstudio.errors import ConfigError
    from recstudio.tune.storage import default_storage, make_storage

    url = storage or default_storage()
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url[len("sqlite:///") :])
        if not path.is_file():
            raise ConfigError(f"no Optuna storage at {path} (run `recstudio tune` first, or pass --storage)")
    return url, make_storage(url, heartbeat_interval=None)


def list_studies(storage: Any) -> list[dict[str, Any]]:
    """Every study in ``storage``: facts, trial counts by state, best value."""
    import optuna

    from recstudio.tune.results import state_counts

    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
        best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
        rows.append(
            {
                "study": summary.study_name,
                "model": study.user_attrs.get("model"),
                "dataset": study.user_attrs.get("dataset"),
                "metric": study.user_attrs.get("metric"),
                "direction": study.direction.name.lower(),
                "trials": state_counts(trials),
                "best_value": best.value if best else None,
                "best_trial": best.number if best else None,
                "started": str(summary.datetime_start) if summary.datetime_start else None,
                "parent_run_id": study.user_attrs.get("mlflow_parent_run_id"),
            }
        )
    return rows


@click.command("studies")
@click.option(
    "--storage", help="Optuna RDB URL (default $RECSTUDIO_OPTUNA_STORAGE, else sqlite:///./optuna.db)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def studies_command(storage: str | None, as_json: bool) -> None:
    """List the studies in an Optuna storage: trials by state and best value."""
    from recstudio.tune.storage import redact

    url, store = _open_storage(storage)
    rows = list_studies(store)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    if not rows:
        click.echo(f"no studies in {redact(url)}")
        return
    columns = ("DONE", "PRUNED", "FAIL", "RUN")
    header = f"{'STUDY':28s} {'MODEL':10s} {'METRIC':9s} " + " ".join(f"{c:>6s}" for c in columns) + "  BEST"
    click.echo(header)
    for r in rows:
        t = r["trials"]
        best = f"{r['best_value']:.4f} (trial {r['best_trial']})" if r["best_value"] is not None else "-"
        click.echo(
            f"{r['study'][:28]:28s} {str(r['model'] or '-')[:10]:10s} {str(r['metric'] or '-')[:9]:9s} "
            f"{t['COMPLETE']:6d} {t['PRUNED']:6d} {t['FAIL']:6d} {t['RUNNING'] + t['WAITING']:6d}  {best}"
        )
    click.echo(f"storage: {redact(url)}")


# --------------------------------------------------------------------------- best


def best_trial(storage: Any, study_name: str) -> tuple[Any, Any]:
    """(study, best completed trial) or a ConfigError naming what is missing."""
    import optuna

    from recstudio.errors import ConfigError

    names = optuna.get_all_study_names(storage)
    if study_name not in names:
        close = difflib.get_close_matches(study_name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"no study named '{study_name}' in this storage{hint}; `recstudio studies` lists them"
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    complete = [
        t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
    ]
    if not complete:
        raise ConfigError(f"study '{study_name}' has no completed trial yet")
    return study, max(complete, key=lambda t: (t.value, -t.number))


def export_config(study: Any, trial: Any, path: str | Path) -> Path:
    """Write the trial's full resolved config as YAML that ``recstudio run --config`` reproduces."""
    import yaml

    from recstudio.errors import ConfigError

    config = trial.user_attrs.get("config")
    if not isinstance(config, dict):
        raise ConfigError(
            f"trial {trial.number} of study '{study.study_name}' has no recorded config "
            "(it was not run by recstudio tune)"
        )
    metric = study.user_attrs.get("metric", "value")
    run_id = trial.user_attrs.get("mlflow_run_id") or "-"
    header = (
        f"# Best trial {trial.number} of Optuna study '{study.study_name}': {metric} = {trial.value:.6g} "
        "(validation).\n"
        f"# MLflow run {run_id}. The full resolved config; reproduce with:\n"
        f"#   recstudio run --config {Path(path).name}\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


@click.command("best")
@click.argument("study_name", metavar="STUDY")
@click.option(
    "--storage", help="Optuna RDB URL (default $RECSTUDIO_OPTUNA_STORAGE, else sqlite:///./optuna.db)."
)
@click.option(
    "--export",
    "export",
    type=click.Path(dir_okay=False),
    help="Write the best trial's full config as YAML (recstudio run --config FILE reproduces it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def best_command(study_name: str, storage: str | None, export: str | None, as_json: bool) -> None:
    """Show a study's best trial: value, params, MLflow run id; optionally export its config."""
    from recstudio.tune.results import trial_summary

    _, store = _open_storage(storage)
    study, trial = best_trial(store, study_name)
    info = trial_summary(trial)
    info["study"] = study.study_name
    info["metric"] = study.user_attrs.get("metric")
    info["parent_run_id"] = study.user_attrs.get("mlflow_parent_run_id")
    if export:
        info["exported"] = str(export_config(study, trial, export))
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    metric = info["metric"] or "value"
    click.echo(
        f"study {study.study_name}: best trial {trial.number}, {metric} = {trial.value:.4f} (validation)"
    )
    for key, value in sorted((info.get("params") or {}).items()):
        click.echo(f"  {key} = {_format_value(value)}")
    if info.get("best_epoch") is not None:
        click.echo(f"  best epoch {info['best_epoch']}")
    test = info.get("test") or {}
    if metric in test:
        click.echo(f"  test {metric} = {test[metric]:.4f} (reported, not used to choose)")
    click.echo(f"  MLflow run {info.get('run_id') or '-'}")
    if export:
        click.echo(f"  config written to {export}; reproduce with: recstudio run --config {export}")
