"""One table of many models on one dataset: test Recall@K / NDCG@K, epochs and seconds per epoch.

Each model runs in its own ``recstudio run --json`` process with its defaults (plus ``--set``
overrides for all), optionally under a wall-clock cap per model (``--max-minutes``: training stops
after the epoch that passes it and the best validated weights are tested; the table marks
those rows). Results are appended to a JSON-lines file, so an interrupted table resumes where it
stopped and a later call with more models extends it.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/family_table.py \\
        -d experiments/datasets/ml-1m-pairs.yaml --family general --max-minutes 20 \\
        --out /tmp/ml1m-general.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def family_models(family: str) -> list[str]:
    from recstudio.model.registry import all_models

    return [cls.__name__ for cls in all_models() if cls.family == family]


def run_one(model: str, dataset: str, max_minutes: float | None, sets: list[str]) -> dict:
    cmd = [sys.executable, "-m", "recstudio", "run", "-m", model, "-d", dataset, "--json", "-q",
           "--no-tracking", "--progress", "none"]
    if max_minutes:
        cmd += ["--max-minutes", str(max_minutes)]
    for item in sets:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1].removeprefix("Error: ")
        return {"model": model, "error": last, "wall_seconds": wall}
    result = json.loads(proc.stdout)
    result["wall_seconds"] = wall
    return result


def table(rows: list[dict], k: int) -> str:
    done = [r for r in rows if "error" not in r]
    done.sort(key=lambda r: -r["test"].get(f"ndcg@{k}", 0.0))
    lines = [
        f"| model | test Recall@{k} | test NDCG@{k} | valid NDCG@10 | best / epochs | stopped | "
        "s/epoch (train) | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in done:
        t = r.get("timings", {})
        per_epoch = t.get("train_epoch_seconds_median")
        closed = per_epoch is None or r["epochs"] == 0
        epochs = "closed form" if closed else f"{r['best_epoch']} / {r['epochs']}"
        seconds = "-" if closed else f"{per_epoch:.2f}"
        lines.append(
            f"| {r['model']} | {r['test'].get(f'recall@{k}', float('nan')):.4f} "
            f"| {r['test'].get(f'ndcg@{k}', float('nan')):.4f} "
            f"| {r['valid'].get('ndcg@10', float('nan')):.4f} "
            f"| {epochs} | {r.get('stopped', '-')} | {seconds} | {r['wall_seconds']:.0f} s |"
        )
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | - | - | - | - | error: {r['error']} | - | - |")
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
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if not args.table_only:
        models = [m for m in args.models.split(",") if m] or family_models(args.family)
        finished = {r["model"] for r in rows}
        for model in models:
            if model in finished:
                continue
            print(f"{time.strftime('%H:%M:%S')} {model} ...", file=sys.stderr, flush=True)
            row = run_one(model, args.dataset, args.max_minutes, args.set)
            rows.append(row)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            status = row.get("error") or f"test ndcg@{args.k} {row['test'].get(f'ndcg@{args.k}', 0):.4f}"
            print(f"{time.strftime('%H:%M:%S')} {model}: {status} ({row['wall_seconds']:.0f} s)",
                  file=sys.stderr, flush=True)
    print(table(rows, args.k))


if __name__ == "__main__":
    main()
