"""One table of many models on one dataset: test Recall@K / NDCG@K, epochs and seconds per epoch.

Each model runs in its own ``recstudio run --json`` process with its defaults (plus ``--set``
overrides for all), optionally under a wall-clock cap per model (``--max-minutes``: training stops
after the epoch that passes it and the best validated weights are tested; the table marks
those rows). Results are appended to a JSON-lines file, so an interrupted table resumes where it
stopped and a later call with more models extends it. ``--top-seeds 5 --seeds 2023,2024`` then
reruns the five best models of the first pass with more training seeds (``train.seed``); their
rows show the mean and the range over all seeds. Each row records the run's peak resident memory.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/family_table.py \\
        -d experiments/datasets/ml-1m-pairs.yaml --family general --max-minutes 20 \\
        --out /tmp/ml1m-general.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def family_models(family: str) -> list[str]:
    from recstudio.model.registry import all_models

    return [cls.__name__ for cls in all_models() if cls.family == family]


def run_one(
    model: str, dataset: str, max_minutes: float | None, sets: list[str], seed: int | None = None
) -> dict:
    """One ``recstudio run`` process; its peak RSS comes from ``wait4`` (this child alone)."""
    cmd = [sys.executable, "-m", "recstudio", "run", "-m", model, "-d", dataset, "--json", "-q",
           "--no-tracking", "--progress", "none"]
    if max_minutes:
        cmd += ["--max-minutes", str(max_minutes)]
    for item in sets + ([f"train.seed={seed}"] if seed is not None else []):
        cmd += ["--set", item]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        # reap the child here (not with proc.wait) so that its own resource usage comes back
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    wall = time.perf_counter() - t0
    row: dict = {"model": model, "seed": seed, "wall_seconds": wall,
                 "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        last = last.split(": ", 1)[1] if last.lower().startswith("error: ") else last
        return {**row, "error": last}
    return {**json.loads(stdout), **row}


def merge_seeds(rows: list[dict], k: int) -> list[dict]:
    """One row per model: the first seed's fields, with the test metrics' mean over its seeds
    and their spread (``seeds``, ``ndcg_range``, ``recall_range``)."""
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            by_model.setdefault(r["model"], []).append(r)
    merged = []
    for runs in by_model.values():
        row = dict(runs[0])
        if len(runs) > 1:
            ndcg = [r["test"].get(f"ndcg@{k}", 0.0) for r in runs]
            recall = [r["test"].get(f"recall@{k}", 0.0) for r in runs]
            row["test"] = {f"ndcg@{k}": statistics.mean(ndcg), f"recall@{k}": statistics.mean(recall)}
            row["seeds"] = len(runs)
            row["ndcg_range"] = (min(ndcg), max(ndcg))
            row["recall_range"] = (min(recall), max(recall))
        merged.append(row)
    return merged


def table(rows: list[dict], k: int) -> str:
    done = merge_seeds(rows, k)
    done.sort(key=lambda r: -r["test"].get(f"ndcg@{k}", 0.0))
    lines = [
        f"| model | test Recall@{k} | test NDCG@{k} | seeds (NDCG range) | valid NDCG@10 | best / epochs "
        "| stopped | s/epoch (train) | peak RSS MB | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in done:
        t = r.get("timings", {})
        per_epoch = t.get("train_epoch_seconds_median")
        closed = per_epoch is None or r["epochs"] == 0
        epochs = "closed form" if closed else f"{r['best_epoch']} / {r['epochs']}"
        seconds = "-" if closed else f"{per_epoch:.2f}"
        spread = "1"
        if r.get("seeds"):
            low, high = r["ndcg_range"]
            spread = f"{r['seeds']} ({low:.4f}-{high:.4f})"
        lines.append(
            f"| {r['model']} | {r['test'].get(f'recall@{k}', float('nan')):.4f} "
            f"| {r['test'].get(f'ndcg@{k}', float('nan')):.4f} | {spread} "
            f"| {r['valid'].get('ndcg@10', float('nan')):.4f} "
            f"| {epochs} | {r.get('stopped', '-')} | {seconds} | {r.get('peak_rss_mb', '-')} "
            f"| {r['wall_seconds']:.0f} s |"
        )
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | - | - | - | - | - | error: {r['error']} | - | - | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("-m", "--models", default="", help="comma-separated; default: --family")
    parser.add_argument("--family", default="general")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap per model")
    parser.add_argument("--set", action="append", default=[], help="override for every model")
    parser.add_argument("-k", type=int, default=20, help="cutoff of the table's metrics")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines results (resumable)")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out")
    parser.add_argument("--top-seeds", type=int, default=0, help="rerun the best N models with --seeds")
    parser.add_argument("--seeds", default="", help="comma-separated extra train.seed values")
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if not args.table_only:
        models = [m for m in args.models.split(",") if m] or family_models(args.family)
        finished = {(r["model"], r.get("seed")) for r in rows}
        queue = [(m, None) for m in models]
        if args.top_seeds:
            first = [r for r in rows if r.get("seed") is None and "error" not in r]
            first.sort(key=lambda r: -r["test"].get(f"ndcg@{args.k}", 0.0))
            seeds = [int(s) for s in args.seeds.split(",") if s]
            queue += [(r["model"], seed) for r in first[: args.top_seeds] for seed in seeds]
        for model, seed in queue:
            if (model, seed) in finished:
                continue
            label = model if seed is None else f"{model} seed {seed}"
            print(f"{time.strftime('%H:%M:%S')} {label} ...", file=sys.stderr, flush=True)
            row = run_one(model, args.dataset, args.max_minutes, args.set, seed)
            rows.append(row)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            status = row.get("error") or f"test ndcg@{args.k} {row['test'].get(f'ndcg@{args.k}', 0):.4f}"
            print(f"{time.strftime('%H:%M:%S')} {label}: {status} ({row['wall_seconds']:.0f} s)",
                  file=sys.stderr, flush=True)
    print(table(rows, args.k))


if __name__ == "__main__":
    main()
