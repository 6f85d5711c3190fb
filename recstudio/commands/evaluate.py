"""``recstudio evaluate``: full-ranking metrics of a saved checkpoint, on one or several devices.

Either name an MLflow run (its ``config.yaml`` and best checkpoint are downloaded from the
tracking store), or give a checkpoint file with the model, dataset and config that trained it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from recstudio.commands.run import TRACKING_URI_HELP, parse_devices, summary_lines
from recstudio.errors import ConfigError
from recstudio.experiment import resolve_from_cli


def _from_run(run_id: str, tracking_uri: str | None, workdir: str) -> tuple[Path, Path]:
    """(config.yaml, checkpoint) of a tracked run, downloaded into ``workdir``."""
    from mlflow.exceptions import MlflowException

    from recstudio.track.tracker import mlflow_client, resolve_tracking_uri

    client = mlflow_client(resolve_tracking_uri(tracking_uri))
    try:
        client.get_run(run_id)
        checkpoints = [
            a.path for a in client.list_artifacts(run_id, "checkpoints") if a.path.endswith(".ckpt")
        ]
        if not checkpoints:
            raise ConfigError(f"MLflow run {run_id} has no checkpoint artifact (checkpoints/*.ckpt)")
        config = Path(client.download_artifacts(run_id, "config.yaml", workdir))
        checkpoint = Path(client.download_artifacts(run_id, checkpoints[0], workdir))
    except MlflowException as exc:
        raise ConfigError(f"cannot read MLflow run {run_id}: {exc.message}") from None
    return config, checkpoint


@click.command("evaluate")
@click.option("--run-id", help="MLflow run whose config and best checkpoint to evaluate.")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    help="Checkpoint file (with -m/-d/--config/--set as it was trained) instead of --run-id.",
)
@click.option("-m", "--model", help="Model name (with --checkpoint).")
@click.option("-d", "--dataset", help="Dataset name or spec YAML (with --checkpoint).")
@click.option("-c", "--config", "config_files", multiple=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-s", "--set", "set_items", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the raw files.")
@click.option("--tracking-uri", help=f"Of --run-id. {TRACKING_URI_HELP}")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Folder of the prepared-data cache (default $RECSTUDIO_CACHE_DIR, else ./datasets/.cache).",
)
@click.option(
    "--split",
    "splits",
    type=click.Choice(["valid", "test"]),
    multiple=True,
    help="Split(s) to evaluate (default both).",
)
@click.option("--accelerator", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@click.option(
    "--devices",
    default="auto",
    show_default=True,
    help="N > 1 evaluates as N DDP processes, each scoring a share of the users.",
)
@click.option(
    "--ann",
    type=click.Choice(["flat", "ivf", "hnsw"]),
    help="Also retrieve each user's top-k from a faiss index over the item vectors: its metrics, "
    "ann_recall@K against exact ranking, and queries per second of both (item-tower models).",
)
@click.option(
    "--ann-metric",
    type=click.Choice(["ip", "cosine", "l2"]),
    help="Index metric (default: the model's scorer: inner_product=ip, cosine, euclidean=l2).",
)
@click.option("--ann-nlist", type=click.IntRange(min=1), help="IVF lists (default ~sqrt(items)).")
@click.option(
    "--ann-nprobe", type=click.IntRange(min=1), default=8, show_default=True, help="IVF lists scanned."
)
@click.option("--ann-ef", type=click.IntRange(min=1), default=64, show_default=True, help="HNSW efSearch.")
@click.option(
    "--ann-m", type=click.IntRange(min=2), default=32, show_default=True, help="HNSW links per node."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def evaluate_command(
    run_id: str | None,
    checkpoint: str | None,
    model: str | None,
    dataset: str | None,
    config_files: tuple[str, ...],
    set_items: tuple[str, ...],
    data_dir: str | None,
    tracking_uri: str | None,
    cache_dir: str | None,
    splits: tuple[str, ...],
    accelerator: str,
    devices: str,
    ann: str | None,
    ann_metric: str | None,
    ann_nlist: int | None,
    ann_nprobe: int,
    ann_ef: int,
    ann_m: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Full-ranking metrics of a saved model (the best checkpoint of a run, or a file).

    \b
    Examples:
      recstudio evaluate --run-id 3f2c...            # a run in ./mlruns
      recstudio evaluate --run-id 3f2c... --devices 2 --json
      recstudio evaluate --checkpoint best.ckpt -m BPR -d ml-100k --split test
      recstudio evaluate --run-id 3f2c... --ann hnsw --ann-ef 128   # + ANN retrieval metrics
    """
    from recstudio.cli import setup_logging

    setup_logging(quiet=quiet or as_json)
    if bool(run_id) == bool(checkpoint):
        raise ConfigError("give exactly one of --run-id and --checkpoint")
    with tempfile.TemporaryDirectory(prefix="recstudio-eval-") as workdir:
        if run_id:
            if model or dataset:
                raise ConfigError("--run-id takes model and dataset from the run; drop -m/-d")
            config_path, ckpt = _from_run(run_id, tracking_uri, workdir)
            files = (str(config_path), *config_files)
        else:
            if not model and not config_files:
                raise ConfigError("--checkpoint needs the model: -m MODEL or a --config naming it")
            ckpt, files = Path(checkpoint or ""), config_files
        cfg = resolve_from_cli(model, dataset, data_dir, files, set_items, {})
        split_names = tuple(splits) or ("valid", "test")

        from recstudio.pipeline import RunOptions, evaluate_checkpoint, prepare_for

        options = RunOptions(
            data_dir=data_dir,
            cache_dir=cache_dir,
            tracking=False,
            quiet=True,
            accelerator=accelerator,
            devices=parse_devices(devices),
        )
        redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
        ann_result = None
        with redirect:
            data = None
            if ann:  # first, so that a model without item vectors fails before any scoring
                from recstudio.eval.ann import AnnSettings, check_ann_config, evaluate_checkpoint_ann

                check_ann_config(cfg)
                settings = AnnSettings(
                    ann, ann_metric, nlist=ann_nlist, nprobe=ann_nprobe, ef_search=ann_ef, hnsw_m=ann_m
                )
                data = prepare_for(cfg, options)
                ann_result = evaluate_checkpoint_ann(
                    cfg, str(ckpt), settings, split_names, data=data, accelerator=accelerator
                )
            metrics = evaluate_checkpoint(cfg, str(ckpt), options, data=data, splits=split_names)
    result: dict[str, Any] = {"model": cfg.model_name, "dataset": cfg.dataset, "run_id": run_id, **metrics}
    if ann_result is not None:
        result["ann"] = ann_result
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"model {cfg.model_name} on {cfg.dataset}")
    for split, values in metrics.items():
        _echo_block(split, values)
    if ann_result is not None:
        from recstudio.eval.ann import describe_index

        click.echo(f"ANN retrieval: {describe_index(ann_result)}")
        for split in split_names:
            _echo_block(split, ann_result[split])


def _echo_block(label: str, values: dict[str, float]) -> None:
    lines = summary_lines(values) or ["(no metrics)"]
    click.echo(f"  {label:5s} {lines[0]}")
    for line in lines[1:]:
        click.echo(f"  {'':5s} {line}")
