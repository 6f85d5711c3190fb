"""Speed benchmark: training epoch, validation pass, cache miss vs hit, end to end, peak memory.

Protocol (issue 2): BPR, embedding 64, one uniform negative, batch 2048, full-ranking validation
every epoch. ml-100k: ratings >= 3, per-user random 0.8/0.1/0.1. ml-1m: the user-item pairs
(experiments/datasets/ml-1m-pairs.yaml), per-user random 0.8/0.1/0.1.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/speed.py [--device cpu|cuda]
        [--dataset ml-100k --dataset experiments/datasets/ml-1m-pairs.yaml] [--model BPR]
        [--epochs 10] [--end-to-end]

Prints a table; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ["ml-100k", str(REPO / "experiments" / "datasets" / "ml-1m-pairs.yaml")]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_dataset(
    model: str, dataset: str, device: str, epochs: int, cache_dir: str, batch_size: int = 2048
) -> dict:
    import torch

    from recstudio.data import load_spec, prepare
    from recstudio.experiment import resolve_config
    from recstudio.pipeline import RunOptions, run

    spec = load_spec(dataset)
    cfg = resolve_config(
        model=model,
        dataset=dataset,
        overrides={
            "epochs": epochs,
            "early_stop_patience": 0,
            **({"batch_size": batch_size} if batch_size > 0 else {}),
        },
        dataset_defaults=spec.defaults,
    )
    t0 = time.perf_counter()
    prepare(dataset, cfg.data, cache_dir=cache_dir)
    miss = time.perf_counter() - t0
    hits = []
    for _ in range(3):
        t0 = time.perf_counter()
        data = prepare(dataset, cfg.data, cache_dir=cache_dir)
        hits.append(time.perf_counter() - t0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = run(
        cfg,
        RunOptions(
            tracking=False, quiet=True, accelerator="gpu" if device == "cuda" else "cpu", cache_dir=cache_dir
        ),
        data=data,
    )
    t = result["timings"]
    # the first epoch pays one-off costs (optimizer state, allocator warm-up): report the rest
    row = {
        "dataset": Path(dataset).stem,
        "model": model,
        "device": device,
        "users": result["data"]["users"],
        "items": result["data"]["items"],
        "train_rows": result["data"]["train"],
        "epoch_s": t.get("train_epoch_seconds_median", t.get("train_epoch_seconds_mean")),
        "epoch_min_s": t.get("train_epoch_seconds_min"),  # least disturbed by this VM's drift
        "valid_s": t.get("valid_pass_seconds_median", t.get("valid_pass_seconds_mean")),
        "whole_epoch_s": t.get("whole_epoch_seconds_median"),  # + validation, checkpointing, hooks
        "prepare_miss_s": miss,
        "cache_hit_s": min(hits),
        "miss_over_hit": miss / min(hits),
        "peak_rss_mb": peak_rss_mb(),
        "test_ndcg@10": result["test"].get("ndcg@10"),
    }
    if device == "cuda":
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def end_to_end(model: str, dataset: str, cache_dir: str) -> dict:
    """Wall time of the real CLI with default config (imports, MLflow, early stopping included)."""
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "RECSTUDIO_CACHE_DIR": cache_dir}
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "recstudio", "run", "-m", model, "-d", dataset, "--json"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"end-to-end run failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout)
    return {
        "dataset": Path(dataset).stem,
        "wall_s": wall,
        "epochs": res["epochs"],
        "best_epoch": res["best_epoch"],
        "test_ndcg@10": res["test"]["ndcg@10"],
        "test_recall@10": res["test"]["recall@10"],
        "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def print_table(rows: list[dict], title: str) -> None:
    if not rows:
        return
    cols = list(rows[0])
    fmt = {
        c: (
            lambda v: (
                f"{v:.4f}"
                if isinstance(v, float) and v < 10
                else f"{v:.1f}"
                if isinstance(v, float)
                else str(v)
            )
        )
        for c in cols
    }
    widths = {c: max(len(c), *(len(fmt[c](r.get(c, ""))) for r in rows)) for c in cols}
    print(f"\n{title}")
    print(" | ".join(c.ljust(widths[c]) for c in cols))
    print("-+-".join("-" * widths[c] for c in cols))
    for r in rows:
        print(" | ".join(fmt[c](r.get(c, "")).ljust(widths[c]) for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="BPR")
    parser.add_argument("--dataset", action="append", help="repeatable; default ml-100k and ml-1m pairs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--batch-size", type=int, default=2048, help="training batch (default 2048; 0: the model's default)"
    )
    parser.add_argument("--end-to-end", action="store_true", help="also time `recstudio run` with defaults")
    parser.add_argument("--json", dest="json_out", help="write the rows to this JSON file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows, e2e = [], []
    with tempfile.TemporaryDirectory() as cache_dir:
        for dataset in args.dataset or DEFAULT_DATASETS:
            rows.append(
                bench_dataset(args.model, dataset, args.device, args.epochs, cache_dir, args.batch_size)
            )
            if args.end_to_end:
                e2e.append(end_to_end(args.model, dataset, cache_dir))
    batch = args.batch_size if args.batch_size > 0 else "model default"
    title = f"speed: {args.model}, batch {batch}, validation every epoch ({args.epochs} epochs"
    print_table(rows, title + "; epoch_s median, epoch_min_s fastest)")
    print_table(e2e, "end to end: `recstudio run` with defaults (early stopping), wall seconds incl. imports")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"speed": rows, "end_to_end": e2e}, indent=2))


if __name__ == "__main__":
    main()
