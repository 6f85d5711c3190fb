"""``recstudio run``: train and evaluate one model, tracked as one MLflow run."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import click

from recstudio.commands.options import config_flags
from recstudio.experiment import resolve_from_cli

TRACKING_URI_HELP = (
    "MLflow tracking URI: sqlite:///PATH/mlflow.db, http://HOST:5000 or postgresql+psycopg://USER@HOST/DB "
    "(default $MLFLOW_TRACKING_URI, else sqlite:///./mlruns/mlflow.db; MLflow 3 refuses a plain folder "
    "such as ./mlruns)."
)


def common_run_options(func: Any) -> Any:
    """Options shared by ``run`` and ``tune``."""
    for option in reversed(
        [
            click.option("-m", "--model", help="Model name (see `recstudio models`)."),
            click.option(
                "-d", "--dataset", help="Built-in dataset name (ml-100k, ml-1m) or a dataset spec YAML."
            ),
            click.option(
                "--data-dir",
                type=click.Path(file_okay=False),
                envvar=None,
                help="Folder with the raw files (else $RECSTUDIO_DATA_DIR/<name>, then ./datasets/<name>).",
            ),
            click.option(
                "-c",
                "--config",
                "config_files",
                multiple=True,
                type=click.Path(dir_okay=False),
                help="Experiment YAML (sections model/dataset/data/train/eval); repeatable, later wins.",
            ),
            click.option(
                "-s",
                "--set",
                "set_items",
                multiple=True,
                metavar="KEY=VALUE",
                help="Override any config key.",
            ),
            click.option(
                "--tracking-uri",
                help=TRACKING_URI_HELP,
            ),
            click.option(
                "--cache-dir",
                type=click.Path(file_okay=False),
                help="Folder of the prepared-data cache (default $RECSTUDIO_CACHE_DIR, else "
                "./datasets/.cache).",
            ),
            click.option("--experiment", default=None, help="MLflow experiment name."),
            click.option(
                "--accelerator",
                type=click.Choice(["auto", "cpu", "gpu"]),
                default="auto",
                show_default=True,
                help="Where to train; auto picks a GPU when CUDA is available.",
            ),
            click.option(
                "--devices",
                default="auto",
                show_default=True,
                help="Devices for one run: N > 1 trains with DDP, one process per GPU (or N CPU "
                "processes with --accelerator cpu); train.batch_size is per device. auto = 1.",
            ),
            click.option(
                "--json", "as_json", is_flag=True, help="Print one JSON result on stdout (logs go to stderr)."
            ),
            click.option(
                "-q", "--quiet", is_flag=True, help="Only warnings and errors (progress lines still show)."
            ),
            click.option(
                "--progress",
                type=click.Choice(["auto", "bar", "lines", "none"]),
                default="auto",
                show_default=True,
                help="auto: a live bar on a terminal (without -q), else one line per epoch (and every "
                "10 s in long epochs) with loss, validation monitor and ETA on stderr; none: silent.",
            ),
            click.option("-v", "--verbose", is_flag=True, help="Debug logs and Lightning's own messages."),
        ]
    ):
        func = option(func)
    return func


def parse_devices(devices: str) -> int | str:
    from recstudio.errors import ConfigError

    if devices == "auto":
        return devices
    try:
        value = int(devices)
    except ValueError:
        raise ConfigError(f"--devices expects a positive integer or 'auto', got '{devices}'") from None
    if value < 1:
        raise ConfigError(f"--devices expects a positive integer or 'auto', got '{devices}'")
    return value


@click.command("run")
@common_run_options
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow (the result is only printed).")
@click.option(
    "--no-log-model",
    is_flag=True,
    help="Do not log the servable MLflow model (runs:/RUN_ID/model: weights, config, id vocabularies, "
    "data and item index); metrics and the checkpoint are still logged.",
)
@click.option(
    "--resume",
    "resume_source",
    metavar="RUN_ID|PATH",
    help="Continue a run from its last saved epoch: an MLflow run id (its resume/last.ckpt) or a "
    "last.ckpt file. Model, dataset and config come from the checkpoint; only train.epochs, "
    "train.max_minutes, train.early_stop_patience and train.min_epochs may change. Trains as the "
    "uninterrupted run would have, as a new run tagged recstudio.resumed_from.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train N times with seeds train.seed, train.seed+1, ... on the same data and report each "
    "run and the mean +- standard deviation (tracked: N child runs under one parent run whose "
    "test_* metrics are the means, with *_std beside them).",
)
@config_flags()
def run_command(
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
    no_tracking,
    no_log_model,
    resume_source,
    repeat,
    config_flags,
) -> None:
    """Train and evaluate one model with full-ranking metrics, tracked as an MLflow run.

    \b
    Examples:
      recstudio run -m BPR -d ml-100k
      recstudio run -m SASRec -d ml-100k --epochs 50 --set model.num_layers=1
      recstudio run -m BPR -d my_spec.yaml --config exp.yaml --json
      recstudio run --resume RUN_ID --max-minutes 60
      recstudio run -m LightGCN -d ml-100k --repeat 3
    """
    from recstudio.cli import setup_logging

    setup_logging(quiet=quiet or as_json, verbose=verbose)
    resume = None
    if resume_source and repeat > 1:
        from recstudio.errors import ConfigError

        raise ConfigError("--resume continues one run: it does not go with --repeat")
    if resume_source:
        import tempfile
        from pathlib import Path

        from recstudio.errors import ConfigError
        from recstudio.resume import locate, resolve_resumed

        if parse_devices(devices) not in ("auto", 1):
            raise ConfigError("--resume continues a run on one device (--devices 1)")
        workdir = Path(tempfile.mkdtemp(prefix="recstudio-resume-"))
        resume = locate(resume_source, tracking_uri, workdir)
        cfg = resolve_resumed(
            resume, model, dataset, data_dir, config_files, set_items, config_flags, workdir
        )
    else:
        cfg = resolve_from_cli(model, dataset, data_dir, config_files, set_items, config_flags)

    from recstudio.pipeline import RunOptions, run

    options = RunOptions(
        data_dir=data_dir,
        cache_dir=cache_dir,
        tracking=not no_tracking,
        log_model=not no_log_model,
        tracking_uri=tracking_uri,
        experiment=experiment or "recstudio",
        accelerator=accelerator,
        devices=parse_devices(devices),
        quiet=quiet or as_json,
        verbose=verbose,
        progress=progress,
        resume=resume,
        resumed_from=resume_source,
    )
    # Lightning writes its progress bar to stdout; keep stdout for the JSON result only
    redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    if repeat > 1:
        from recstudio.repeat import run_repeated

        with redirect:
            repeated = run_repeated(cfg, options, repeat)
        if as_json:
            click.echo(json.dumps(repeated, default=str))
        else:
            print_repeat_summary(repeated)
        return
    with redirect:
        result = run(cfg, options)
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        print_summary(result)


def summary_lines(metrics: dict[str, float]) -> list[str]:
    """A compact table of one split's metrics: one row per ranking metric with a column per
    cutoff the run computed (every one of ``eval.cutoffs``), then the metrics without a cutoff
    (auc, gauc, logloss) on one line."""
    cutoffs = sorted({int(k.rsplit("@", 1)[1]) for k in metrics if "@" in k})
    names = sorted({k.rsplit("@", 1)[0] for k in metrics if "@" in k})
    lines = []
    if cutoffs:
        lines.append(f"{'':10s}" + "".join(f"{'@' + str(c):>9s}" for c in cutoffs))
        for name in names:
            cells = (metrics.get(f"{name}@{c}") for c in cutoffs)
            row = "".join(f"{v:9.4f}" if v is not None else f"{'-':>9s}" for v in cells)
            lines.append(f"{name:10s}{row}")
    plain = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "@" not in k)
    if plain:
        lines.append(plain)
    return lines


def print_summary(result: dict[str, Any]) -> None:
    best = result["best_epoch"]
    where = "no best epoch"
    if best is not None:  # 1-based like the progress lines; MLflow steps and --json count from 0
        where = f"best epoch {best + 1} of {result['epochs']} (step {best} in MLflow and --json)"
    click.echo(f"model {result['model']} on {result['dataset']}: {where}")
    for split in ("valid", "test"):
        metrics = result.get(split) or {}
        lines = summary_lines(metrics) or ["(not evaluated)"]
        click.echo(f"  {split:5s} {lines[0]}")
        for line in lines[1:]:
            click.echo(f"  {'':5s} {line}")
    if result.get("run_id"):
        click.echo(f"  MLflow run {result['run_id']}  (recstudio ui to browse)")
    click.echo(f"  checkpoint {result['checkpoint']}")
    if result.get("model_uri"):
        click.echo(f"  model {result['model_uri']}  (recstudio recommend --model URI; mlflow models serve)")
    if result.get("resume_checkpoint") and result.get("stopped") in ("max_minutes", "epochs"):
        source = result.get("run_id") or result["resume_checkpoint"]
        hint = f"recstudio run --resume {source} [--epochs N]"
        click.echo(f"  stopped by {result['stopped']}; to train on: {hint}")


def print_repeat_summary(repeated: dict[str, Any]) -> None:
    """One line per seed, then every test metric as mean +- sample standard deviation."""
    seeds = repeated["seeds"]
    click.echo(f"model {repeated['model']} on {repeated['dataset']}: {len(seeds)} seeds")
    for seed, result in zip(seeds, repeated["runs"], strict=True):
        test = result["test"]
        shown = "  ".join(f"{k} {test[k]:.4f}" for k in ("ndcg@10", "recall@10", "auc") if k in test)
        where = f"best epoch {result['best_epoch'] + 1} of {result['epochs']}"
        click.echo(f"  seed {seed}: {where}  test {shown}")
    mean, std = repeated["mean"], repeated["std"]
    test = {k.removeprefix("test/"): k for k in mean if k.startswith("test/")}
    cutoffs = sorted({int(k.rsplit("@", 1)[1]) for k in test if "@" in k})
    names = sorted({k.rsplit("@", 1)[0] for k in test if "@" in k})
    click.echo("  test, mean +- standard deviation over the seeds:")
    click.echo(f"    {'':12s}" + "".join(f"{'@' + str(c):>19s}" for c in cutoffs))
    for name in names:
        cells = [test.get(f"{name}@{c}") for c in cutoffs]
        row = "".join(f"{mean[k]:9.4f} +- {std[k]:.4f}" if k else f"{'-':>19s}" for k in cells)
        click.echo(f"    {name:12s}{row}")
    for metric, key in sorted(test.items()):
        if "@" not in metric:
            click.echo(f"    {metric:12s}{mean[key]:9.4f} +- {std[key]:.4f}")
    if repeated.get("parent_run_id"):
        click.echo(f"  MLflow parent run {repeated['parent_run_id']}  (recstudio ui to browse)")
