"""``recstudio tune``, ``recstudio studies`` and ``recstudio best``: Optuna studies from the CLI.

Only the command line lives here: options, calls into ``recstudio.tune`` and printing.
``tune`` shares ``run``'s flags (``common_run_options``, ``config_flags``) and its config
resolution (``recstudio.tune.settings.build_settings``), so a trial and ``recstudio run`` with
the same values are the same experiment. What ``--set``/flags fix is not tuned; ``--config``
files are the base that the search space varies.

An experiment file may carry a ``tune:`` section (trials, timeout, sampler, pruner, metric,
workers, search_space, ...); command-line options win over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from recstudio.commands.options import config_flags
from recstudio.commands.run import TRACKING_URI_HELP, common_run_options, parse_devices
from recstudio.tune.objectives import COSTS
from recstudio.tune.strategies import PRUNER_HELP, PRUNERS, SAMPLERS

log = logging.getLogger("recstudio.tune")


# --------------------------------------------------------------------------- printing


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
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Start no new trial after S seconds, nor when the time left is shorter than the median "
    "completed trial.",
)
@click.option("--study-name", help="Study name (default MODEL-DATASET); an existing name resumes that study.")
@click.option(
    "--storage",
    help="Optuna RDB URL, e.g. postgresql+psycopg://user@host/db (default $RECSTUDIO_OPTUNA_STORAGE, else "
    "sqlite:///./optuna.db).",
)
@click.option("--sampler", type=click.Choice(SAMPLERS), help="Sampler (default tpe).")
@click.option(
    "--pruner",
    type=click.Choice(PRUNERS),
    help="Pruner over validation epochs. " + PRUNER_HELP,
)
@click.option(
    "--metric",
    help="Validation metric to optimise, e.g. ndcg@10 (sets train.monitor; logloss is minimised, others "
    "maximised).",
)
@click.option(
    "--cost",
    "costs",
    multiple=True,
    type=click.Choice(list(COSTS)),
    help="Multi-objective study: also minimise this cost of a trial (fit_seconds: training seconds; "
    "model_size: floats in the trained model); repeatable. The study keeps the Pareto front of the "
    "metric against the costs (on the parent run); its trials are not pruned.",
)
@click.option(
    "--search-space",
    type=click.Path(dir_okay=False),
    help="YAML/JSON search space (RecStudio or NNI format); replaces the model's default space.",
)
@click.option(
    "--enqueue",
    "enqueue",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Run these points first, after the defaults trial (Optuna's enqueue_trial): a YAML/JSON file "
    "of search-space keys -> values, a list of such mappings, or a full config such as "
    "`recstudio best --export`'s (its searched keys are taken). Keys left out are sampled; points "
    "the study already holds are skipped. Repeatable.",
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
    "--defaults-trial/--no-defaults-trial",
    "defaults_trial",
    default=None,
    help="The study's first trial runs the model's defaults (with --set values), in full and never "
    "pruned, and the summary compares the best trial with it. Default: on.",
)
@click.option(
    "--no-log-model",
    is_flag=True,
    help="Trials do not log their servable MLflow model (runs:/RUN_ID/model, which holds the "
    "prepared data: about the size of the dataset's cache entry per trial); best --register then "
    "has nothing to register.",
)
@click.option(
    "--baseline",
    is_flag=True,
    default=None,
    hidden=True,
    help="Deprecated alias of --defaults-trial (now the default).",
)
@config_flags()
def tune_command(
    model,
    dataset,
    data_dir,
    config_files,
    set_items,
    tracking_uri,
    cache_dir,
    experiment,
    accelerator,
    devices,
    as_json,
    quiet,
    progress,
    verbose,
    trials,
    timeout,
    study_name,
    storage,
    sampler,
    pruner,
    metric,
    costs,
    search_space,
    enqueue,
    workers,
    heartbeat_interval,
    defaults_trial,
    no_log_model,
    baseline,
    config_flags,
) -> None:
    """Tune a model's hyperparameters with Optuna; every trial is a `recstudio run`.

    Each trial trains with the pipeline of `recstudio run`, is pruned on its validation metric
    epoch by epoch, and is logged as an MLflow child run under one parent run per study. The
    objective is the validation metric at the trial's best epoch; test metrics are recorded,
    never used to choose. Running the same command again resumes the study; --seed also seeds
    the sampler.

    Trial 0 runs the model's defaults (the defaults trial), so the study never ends below them;
    the summary (and --json: `defaults`, `vs_defaults`) compares the best trial with it on
    validation and test. `recstudio models NAME` shows a model's search space and pruning.

    \b
    Examples:
      recstudio tune -m NCF -d ml-100k --trials 50
      recstudio tune -c experiments/ncf-ml-100k.yaml --workers 2
      recstudio tune -m BPR -d ml-100k --search-space space.json --pruner hyperband --epochs 30
      recstudio tune -m BPR -d ml-100k --set embed_dim=64 --storage postgresql+psycopg://optuna@db/optuna
      recstudio tune -m NCF -d ml-100k --trials 30 --cost fit_seconds
      recstudio best XSimGCL-ml-100k --export xsimgcl.yaml
      recstudio tune -m SimGCL -d ml-100k --enqueue xsimgcl.yaml   # start from a neighbour's best
    """
    from recstudio.cli import setup_logging
    from recstudio.errors import TrainingError
    from recstudio.tune.runner import run_study
    from recstudio.tune.settings import build_settings, split_tune_sections, warn_baseline

    setup_logging(quiet=quiet or as_json, verbose=verbose)
    if baseline:
        warn_baseline("--baseline")
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
            defaults_trial=defaults_trial,
            baseline=baseline,
            costs=tuple(costs),
            enqueue=tuple(enqueue),
        )
    settings.tracking_uri = tracking_uri
    settings.cache_dir = cache_dir
    settings.experiment = experiment or "recstudio"
    settings.accelerator = accelerator
    settings.devices = parse_devices(devices)
    settings.quiet = quiet or as_json
    settings.progress = progress
    settings.verbose = verbose
    settings.log_model = not no_log_model

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
        f"(validation, best epoch {_epoch_1based(best.get('best_epoch'))})"
    )
    for key, value in sorted((best.get("params") or {}).items()):
        click.echo(f"    {key} = {_format_value(value)}")
    if best.get("run_id"):
        click.echo(f"  MLflow run {best['run_id']} (parent run {summary.get('parent_run_id')})")
    for line in comparison_lines(summary, metric):
        click.echo(line)
    for line in pareto_lines(summary):
        click.echo(line)
    click.echo(f"  export it: recstudio best {summary['study']} --export best.yaml")
    view = summary.get("mlflow_view")
    if view:
        where = view["url"] or f"`recstudio ui` prints its link (view {view['key']})"
        click.echo(f"  compare the trials in MLflow: {where}")


def pareto_lines(summary: dict[str, Any]) -> list[str]:
    """A multi-objective study's Pareto front, one line per trial (best metric first)."""
    front = summary.get("pareto_front")
    if not front:
        return []
    names = summary.get("objectives") or []
    lines = [f"  Pareto front ({' vs '.join(names)}; tag pareto_front=true in MLflow): {len(front)} trials"]
    for t in front:
        shown = ", ".join(f"{n} {_format_value(v)}" for n, v in zip(names, t.get("values") or []))
        lines.append(f"    trial {t['number']}: {shown}")
    return lines


def _epoch_1based(epoch: Any) -> str:
    """Epochs are counted from 1 on screen (as the progress lines do), from 0 in MLflow steps."""
    return str(int(epoch) + 1) if isinstance(epoch, int | float) else "-"


def comparison_lines(summary: dict[str, Any], metric: str) -> list[str]:
    """The end summary's "best vs defaults" lines (valid and test, absolute and relative)."""
    vs = summary.get("vs_defaults")
    if not vs:
        if summary.get("defaults") is None:
            return ["  no completed defaults trial in this study: no comparison with the defaults"]
        return []
    lines = [
        f"  vs the defaults (trial {vs['defaults_trial']})"
        + (": the defaults are the best trial" if vs["best_is_defaults"] else ":")
    ]
    for split, label in (("valid", "validation"), ("test", "test (not used to choose)")):
        part = vs.get(split)
        if not part:
            lines.append(f"    {label}: -")
            continue
        rel = f" ({100 * part['rel']:+.2f}%)" if part.get("rel") is not None else ""
        lines.append(
            f"    {label}: {metric} {part['best']:.4f} vs {part['defaults']:.4f}, {part['abs']:+.4f}{rel}"
        )
    return lines


# --------------------------------------------------------------------------- studies


@click.command("studies")
@click.option(
    "--storage", help="Optuna RDB URL (default $RECSTUDIO_OPTUNA_STORAGE, else sqlite:///./optuna.db)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def studies_command(storage: str | None, as_json: bool) -> None:
    """List the studies in an Optuna storage: trials by state and best value."""
    from recstudio.tune.results import list_studies
    from recstudio.tune.storage import open_existing, redact

    url, store = open_existing(storage)
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
@click.option(
    "--register",
    "register",
    metavar="NAME",
    help="Register the best trial's model in the MLflow Model Registry as NAME (a new version); "
    "serve it with: mlflow models serve --env-manager local -m models:/NAME/latest.",
)
@click.option("--tracking-uri", help=f"Where the trials' runs are (for --register). {TRACKING_URI_HELP}")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def best_command(
    study_name: str,
    storage: str | None,
    export: str | None,
    register: str | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Show a study's best trial: value, params, MLflow run id; optionally export its config
    and register its model."""
    from recstudio.tune.objectives import primary_value
    from recstudio.tune.results import best_trial, export_config, trial_summary
    from recstudio.tune.storage import open_existing

    _, store = open_existing(storage)
    study, trial = best_trial(store, study_name)
    info = trial_summary(trial)
    info["study"] = study.study_name
    info["metric"] = study.user_attrs.get("metric")
    info["parent_run_id"] = study.user_attrs.get("mlflow_parent_run_id")
    if export:
        info["exported"] = str(export_config(study, trial, export))
    if register:
        from recstudio.serve.registry import register_run_model

        version = register_run_model(info.get("run_id"), register, tracking_uri, f"trial {trial.number}")
        info["registered"] = {"name": register, "version": version, "uri": f"models:/{register}/{version}"}
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    metric = info["metric"] or "value"
    click.echo(
        f"study {study.study_name}: best trial {trial.number}, "
        f"{metric} = {primary_value(trial):.4f} (validation)"
    )
    for key, value in sorted((info.get("params") or {}).items()):
        click.echo(f"  {key} = {_format_value(value)}")
    if info.get("best_epoch") is not None:
        click.echo(f"  best epoch {info['best_epoch'] + 1} (step {info['best_epoch']} in MLflow)")
    test = info.get("test") or {}
    if metric in test:
        click.echo(f"  test {metric} = {test[metric]:.4f} (reported, not used to choose)")
    click.echo(f"  MLflow run {info.get('run_id') or '-'}")
    if export:
        click.echo(f"  config written to {export}; reproduce with: recstudio run --config {export}")
    if register:
        reg = info["registered"]
        click.echo(f"  registered as {reg['uri']}")
        click.echo(f"  serve it: mlflow models serve --env-manager local -m {reg['uri']}")
