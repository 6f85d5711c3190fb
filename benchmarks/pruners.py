"""Pruners on the same budget: does a study beat the model's defaults, and at what cost?

For one model and dataset, runs one study per pruner (``calibrated``, the default, and Optuna's
``hyperband``, ``median``, and ``none``) with the same sampler, sampler seed and budget (``--trials``
and/or ``--timeout``), each with the defaults trial first (issue 12), and prints one row per
pruner: best validation metric and its test value, the defaults' validation and test, the
relative difference, trials complete/pruned, epochs trained in all, and wall time.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/pruners.py -m BPR -d ml-100k \\
        --trials 8 [--pruners calibrated,hyperband,median,none] [--seed 0] [--timeout S] \\
        [--set key=value ...] [--json FILE]

Studies live in a temporary SQLite storage and are not tracked in MLflow (``--tracking`` turns
it on, into ``./mlruns``), so the numbers are the tuner's alone. The dataset cache is the usual
one (``$RECSTUDIO_CACHE_DIR``), prepared once before the first study.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRUNERS = ("calibrated", "hyperband", "median", "none")


def one_study(args: argparse.Namespace, pruner: str, storage: str) -> dict[str, Any]:
    """Run one study with ``pruner``; returns its row."""
    import optuna

    from recstudio.tune.runner import run_study
    from recstudio.tune.settings import build_settings

    settings = build_settings(
        model=args.model,
        dataset=args.dataset,
        data_dir=os.environ.get("RECSTUDIO_DATA_DIR"),
        config_files=[],
        set_items=tuple(args.set),
        config_flags={},
        trials=args.trials,
        timeout=args.timeout,
        study_name=f"{args.model}-{Path(args.dataset).stem}-{pruner}-seed{args.seed}",
        storage=storage,
        sampler=args.sampler,
        pruner=pruner,
        metric=args.metric,
        defaults_trial=not args.no_defaults_trial,
    )
    settings.seed = args.seed
    settings.tracking = args.tracking
    settings.quiet = True
    t0 = time.perf_counter()
    summary = run_study(settings)
    seconds = time.perf_counter() - t0
    study = optuna.load_study(study_name=settings.study_name, storage=storage)
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    best = summary.get("best") or {}
    vs = summary.get("vs_defaults") or {}
    metric = settings.metric
    return {
        "pruner": pruner,
        "metric": metric,
        "trials": summary["invocation"]["trials"],
        "epochs_trained": epochs,
        "seconds": seconds,
        "best_trial": best.get("number"),
        "best_valid": best.get("value"),
        "best_test": (best.get("test") or {}).get(metric),
        "best_params": best.get("params"),
        "defaults_valid": (vs.get("valid") or {}).get("defaults"),
        "defaults_test": (vs.get("test") or {}).get("defaults"),
        "valid_rel": (vs.get("valid") or {}).get("rel"),
        "test_rel": (vs.get("test") or {}).get("rel"),
    }


def fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}%"


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    metric = rows[0]["metric"] if rows else args.metric
    budget = f"{args.trials} trials" if args.trials else ""
    if args.timeout:
        budget += f"{', ' if budget else ''}timeout {args.timeout:.0f} s"
    print(f"{args.model} on {args.dataset}, {budget}, sampler {args.sampler} seed {args.seed}; {metric}")
    header = (
        f"{'pruner':11s} {'best valid':>10s} {'its test':>9s} {'defaults':>17s} {'vs defaults':>17s} "
        f"{'done/pruned':>11s} {'epochs':>7s} {'wall':>7s}"
    )
    print(header)
    for r in rows:
        t = r["trials"]
        defaults = f"{fmt(r['defaults_valid'])}/{fmt(r['defaults_test'])}"
        rel = f"{pct(r['valid_rel'])}/{pct(r['test_rel'])}"
        done = f"{t['COMPLETE']}/{t['PRUNED']}"
        print(
            f"{r['pruner']:11s} {fmt(r['best_valid']):>10s} {fmt(r['best_test']):>9s} {defaults:>17s} "
            f"{rel:>17s} {done:>11s} {r['epochs_trained']:>7d} {r['seconds']:>6.0f}s"
        )
    print("vs defaults: relative difference of the best trial, validation/test (test never chooses)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-m", "--model", default="BPR")
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per study (the same for each)")
    parser.add_argument("--pruners", default=",".join(PRUNERS), help="comma-separated pruner names")
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (the same for every pruner)")
    parser.add_argument("--metric", default=None, help="validation metric (default: the model's monitor)")
    parser.add_argument("--set", action="append", default=[], help="fixed KEY=VALUE, as recstudio tune --set")
    parser.add_argument("--no-defaults-trial", action="store_true")
    parser.add_argument("--tracking", action="store_true", help="log trials to MLflow (./mlruns)")
    parser.add_argument("--json", dest="json_path", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    pruners = [p.strip() for p in args.pruners.split(",") if p.strip()]
    from recstudio.tune.strategies import PRUNERS as KNOWN

    unknown = [p for p in pruners if p not in KNOWN]
    if unknown:
        print(
            f"error: unknown pruner {', '.join(unknown)}; expected some of {', '.join(KNOWN)}",
            file=sys.stderr,
        )
        return 2

    from recstudio.cli import setup_logging

    setup_logging(quiet=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="recstudio-pruners-") as tmp:
        storage = f"sqlite:///{Path(tmp) / 'optuna.db'}"
        for pruner in pruners:
            rows.append(one_study(args, pruner, storage))
            print(f"# {pruner}: {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    print_table(args, rows)
    if args.json_path:
        import torch

        out = {
            "model": args.model,
            "dataset": args.dataset,
            "trials": args.trials,
            "timeout": args.timeout,
            "sampler": args.sampler,
            "seed": args.seed,
            "set": args.set,
            "rows": rows,
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available(),
            },
        }
        Path(args.json_path).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
