"""Repeated runs (``recstudio run --repeat N``): one configuration trained with N seeds.

A single run's test metric moves with the training seed (initial weights, batch order,
negatives) by about as much as many published differences between models, so comparisons
want several seeds. The N runs share the prepared data (same split: ``data.split_seed`` is not
varied) and train with ``train.seed``, ``train.seed + 1``, ... Tracked, they are the children
of one MLflow parent run whose test metrics are the mean over the seeds under the children's
own keys (``test_ndcg_at_10``: the runs table lines the parent up with its children) plus
``<key>_std``, the sample standard deviation.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from recstudio.config import ResolvedConfig


def seeds_for(cfg: ResolvedConfig, repeat: int) -> list[int]:
    """The training seeds of ``repeat`` runs: ``train.seed`` and the ones after it."""
    return [cfg.train.seed + i for i in range(repeat)]


def with_seed(cfg: ResolvedConfig, seed: int) -> ResolvedConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def summarize(results: list[dict[str, Any]], monitor: str) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, sample standard deviation) over the runs of every test metric (``test/<m>``), the
    validation monitor at the best epoch (``valid/<monitor>``), ``best_epoch`` and ``epochs``;
    the deviation is 0 for a single run."""
    columns: dict[str, list[float]] = {}
    for result in results:
        for key, value in result["test"].items():
            columns.setdefault(f"test/{key}", []).append(float(value))
        if monitor in result.get("valid", {}):
            columns.setdefault(f"valid/{monitor}", []).append(float(result["valid"][monitor]))
        columns.setdefault("best_epoch", []).append(float(result["best_epoch"]))
        columns.setdefault("epochs", []).append(float(result["epochs"]))
    mean = {k: statistics.fmean(v) for k, v in columns.items()}
    std = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in columns.items()}
    return mean, std


def run_repeated(cfg: ResolvedConfig, options: Any, repeat: int) -> dict[str, Any]:
    """Train ``cfg`` with ``repeat`` seeds (``recstudio.pipeline.run`` each, on data prepared
    once); returns {parent_run_id, seeds, runs, mean, std}. A failed or interrupted run ends the
    parent run as FAILED or KILLED; the runs before it stay as they are."""
    from recstudio.pipeline import prepare_for, run

    seeds = seeds_for(cfg, repeat)
    data = prepare_for(cfg, options)
    parent = _parent_run(cfg, options, seeds) if options.tracking else None
    results: list[dict[str, Any]] = []
    name = options.run_name or f"{cfg.model_name}-{Path(cfg.dataset).stem}"
    try:
        for seed in seeds:
            child = dataclasses.replace(
                options,
                parent_run_id=parent.run_id if parent is not None else options.parent_run_id,
                run_name=f"{name}-seed{seed}",
                progress_prefix=f"seed {seed}: ",
            )
            results.append(run(with_seed(cfg, seed), child, data=data))
    except BaseException as exc:
        if parent is not None:
            parent.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    mean, std = summarize(results, cfg.train.monitor)
    if parent is not None:
        _log_summary(parent, mean, std)
        parent.end("FINISHED")
    return {
        "parent_run_id": parent.run_id if parent is not None else None,
        "model": cfg.model_name,
        "dataset": cfg.dataset,
        "seeds": seeds,
        "runs": results,
        "mean": mean,
        "std": std,
    }


def _parent_run(cfg: ResolvedConfig, options: Any, seeds: list[int]) -> Any:
    from recstudio import __version__
    from recstudio.track.tracker import Tracker

    name = options.run_name or f"{cfg.model_name}-{Path(cfg.dataset).stem}"
    parent = Tracker(
        options.tracking_uri,
        experiment=options.experiment,
        run_name=f"{name}-x{len(seeds)}",
        parent_run_id=options.parent_run_id,
        tags={
            "model": cfg.model_name,
            "dataset": cfg.dataset,
            "recstudio.version": __version__,
            "recstudio.repeat": str(len(seeds)),
            **options.extra_tags,
        },
    )
    params = {k: v for k, v in cfg.flat().items() if k != "train.seed"}
    parent.log_params({**params, "train.seeds": ",".join(str(s) for s in seeds)})
    parent.log_text(cfg.to_yaml(), "config.yaml")
    return parent


def _log_summary(parent: Any, mean: dict[str, float], std: dict[str, float]) -> None:
    from recstudio.track.tracker import best_valid_key, test_metric_key

    metrics: dict[str, float] = {}
    for key, value in mean.items():
        if key.startswith("test/"):
            name = test_metric_key(key.removeprefix("test/"))
        elif key.startswith("valid/"):
            name = best_valid_key(key.removeprefix("valid/"))
        else:
            name = key
        metrics[name] = value
        metrics[f"{name}_std"] = std[key]
    parent.log_metrics(metrics)
