"""Tuning overhead: what a trial costs outside training and evaluation.

A trial of ``recstudio tune`` is ``pipeline.run`` plus bookkeeping: sampling and resolving the
config, trial attributes in the Optuna storage, reading the dataset from the parquet cache, the
MLflow child run (params, config, checkpoint, tags), Optuna's ask/tell and heartbeat, and the
parent-run update. This script runs a small study (BPR on ml-100k by default, no pruning so
every trial trains fully) in one process with embedded storage (SQLite for Optuna and MLflow),
times each part, and prints the breakdown per trial. Target: overhead < 10% of trial time.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/tune_overhead.py [--trials 4]
        [--epochs 5] [--model BPR] [--dataset ml-100k] [--device cpu|gpu] [--json FILE]

One-off costs of an invocation (storage and study creation, dataset preparation, opening the
MLflow parent run, the final summary and plots) are reported separately: they do not grow
with the number of trials. A fresh folder is used, so they include creating both stores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class Timers:
    """Accumulated wall time per label, filled by wrapping functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label].append(time.perf_counter() - t0)

        setattr(owner, name, timed)

    def total(self, label: str) -> float:
        return sum(self.seconds.get(label, []))


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    os.chdir(workdir)
    os.environ.setdefault("RECSTUDIO_CACHE_DIR", str(workdir / "cache"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("RECSTUDIO_OPTUNA_STORAGE", None)

    import optuna

    from recstudio.cli import setup_logging
    from recstudio.tune import objective as objective_mod
    from recstudio.tune import plots as plots_mod
    from recstudio.tune import runner as runner_mod
    from recstudio.tune.parent import ParentRun, TrialRecorder
    from recstudio.tune.settings import build_settings

    setup_logging(quiet=True)
    timers = Timers()
    timers.wrap(optuna.study.Study, "optimize", "optimize_call")
    timers.wrap(objective_mod.Objective, "__call__", "objective")
    timers.wrap(TrialRecorder, "__call__", "parent_update")
    timers.wrap(runner_mod, "create_or_load", "oneoff_study")  # the names run_study calls
    timers.wrap(runner_mod, "prepare_data_once", "oneoff_prepare")
    timers.wrap(ParentRun, "open", "oneoff_parent")
    timers.wrap(plots_mod, "log_study_plots", "oneoff_plots")

    flags = {"train.epochs": args.epochs, "train.early_stop_patience": 0}
    settings = build_settings(
        model=args.model,
        dataset=args.dataset,
        data_dir=None,
        config_files=[],
        set_items=(),
        config_flags=flags,
        trials=args.trials,
        sampler="random",
        pruner="none",
        heartbeat_interval=60,
    )
    settings.seed = 0
    settings.quiet = True
    settings.accelerator = args.device
    t0 = time.perf_counter()
    summary = runner_mod.run_study(settings)
    invocation = time.perf_counter() - t0

    study = optuna.load_study(study_name=settings.study_name, storage=settings.storage)
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    rows: dict[str, list[float]] = defaultdict(list)
    for t in trials:
        tm = t.user_attrs["result"]["timings"]
        core = tm["fit_seconds"] + tm["test_seconds"] + tm.get("closed_form_seconds", 0.0)
        rows["training (fit, incl. validation passes)"].append(
            tm["fit_seconds"] + tm.get("closed_form_seconds", 0.0)
        )
        rows["evaluation (test, once)"].append(tm["test_seconds"])
        rows["data loading (parquet cache read)"].append(tm["data_seconds"])
        rows["suggest + config + trial attrs"].append(tm["setup_seconds"])
        rows["pipeline bookkeeping (MLflow run, params, config, checkpoint, model/trainer)"].append(
            tm["total_seconds"] - core - tm["data_seconds"]
        )
        rows["child-run tags + result attrs"].append(tm["record_seconds"])
    n = len(trials)
    pipeline_outside = sum(t.user_attrs["result"]["timings"]["pipeline_seconds"] for t in trials) - sum(
        t.user_attrs["result"]["timings"]["total_seconds"] for t in trials
    )
    rows["pipeline entry (imports on first trial, options)"] = [pipeline_outside / n]
    optuna_side = timers.total("optimize_call") - timers.total("objective") - timers.total("parent_update")
    rows["Optuna ask/tell/heartbeat (storage)"] = [optuna_side / n]
    rows["parent-run update (callback)"] = [timers.total("parent_update") / n]

    per_trial = {k: statistics.fmean(v) for k, v in rows.items()}
    training = per_trial["training (fit, incl. validation passes)"] + per_trial["evaluation (test, once)"]
    trial_time = timers.total("optimize_call") / n
    overhead = trial_time - training  # exact; the rows above attribute it
    attributed = sum(v for k, v in per_trial.items() if not k.startswith(("training", "evaluation")))
    per_trial["other (result attr write after the run, timer gaps)"] = overhead - attributed
    oneoff = {
        "storage + study": timers.total("oneoff_study"),
        "dataset prepare (once)": timers.total("oneoff_prepare"),
        "MLflow parent run (incl. store creation)": timers.total("oneoff_parent"),
        "summary + plots": timers.total("oneoff_plots"),
    }
    return {
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "trials": n,
        "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "per_trial_seconds": per_trial,
        "trial_seconds": trial_time,
        "training_and_evaluation_seconds": training,
        "overhead_seconds": overhead,
        "overhead_fraction": overhead / trial_time,
        "oneoff_seconds": oneoff,
        "invocation_seconds": invocation,
        "best_value": (summary.get("best") or {}).get("value"),
    }


def print_table(r: dict[str, Any]) -> None:
    trial = r["trial_seconds"]
    print(
        f"\nTuning overhead: {r['model']} on {r['dataset']}, {r['epochs']} epochs, "
        f"{r['trials']} trials, {r['device']}"
    )
    print(f"machine: {r['machine']}\n")
    print(f"{'per trial':78s} {'seconds':>9s} {'share':>7s}")
    for key, value in r["per_trial_seconds"].items():
        if key.startswith(("training", "evaluation")):
            print(f"{key:78s} {value:9.3f} {value / trial:7.1%}")
    print("-- overhead --")
    for key, value in r["per_trial_seconds"].items():
        if not key.startswith(("training", "evaluation")):
            print(f"{key:78s} {value:9.3f} {value / trial:7.1%}")
    print(f"{'total overhead':78s} {r['overhead_seconds']:9.3f} {r['overhead_fraction']:7.1%}")
    print(f"{'trial (wall, study.optimize per trial)':78s} {trial:9.3f}")
    print("\none-off per invocation (does not grow with trials)")
    for key, value in r["oneoff_seconds"].items():
        print(f"{key:78s} {value:9.3f}")
    print(f"{'invocation total':78s} {r['invocation_seconds']:9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="BPR")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu", "auto"])
    parser.add_argument("--json", dest="json_path", help="Also write the numbers to this file.")
    parser.add_argument("--workdir", help="Folder for the stores and cache (default: a temporary one).")
    args = parser.parse_args()
    if args.json_path:
        args.json_path = str(Path(args.json_path).resolve())
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="recstudio-tune-bench-") as tmp:
            result = run(args, Path(tmp))
    print_table(result)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
