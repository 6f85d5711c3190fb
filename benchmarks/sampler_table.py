"""Negative samplers side by side: one item-tower model trained with sampled softmax and each
sampler at the same number of negatives, plus the full softmax as the ceiling.

Columns: test NDCG@10 and Recall@10, seconds per training epoch (median), best / run epochs, and
"gap closed" = (NDCG - uniform's) / (softmax's - uniform's): the share of what the full softmax
gains over uniform negatives that the sampler recovers at a sampled loss's cost. Each row is its
own ``recstudio run --json`` process (``family_table.run_one``), optionally capped in wall-clock
minutes (``--max-minutes``: training stops after the epoch that passes it and the best
validated weights are tested). Rows are appended to ``--out`` (JSON lines), so an interrupted
table resumes.

    RECSTUDIO_DATA_DIR=/work/shared/datasets taskset -c 1 env OMP_NUM_THREADS=1 \\
        python benchmarks/sampler_table.py --epochs 40 --max-minutes 5 --out /tmp/samplers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_table import run_one  # noqa: E402

SAMPLERS = ["uniform", "popularity", "cluster_uni", "cluster_pop", "midx_uni", "midx_pop"]
SOFTMAX = "softmax (full)"


def row_sets(label: str, negatives: int, common: list[str]) -> list[str]:
    """``--set`` overrides of one row: the full softmax, or sampled softmax with ``label``."""
    if label == SOFTMAX:
        return [*common, "model.loss=softmax"]
    sampled = ["model.loss=sampled_softmax", f"model.sampler={label}", f"model.num_negatives={negatives}"]
    return [*common, *sampled]


def table(rows: list[dict], k: int = 10) -> str:
    ndcg = {r["label"]: r["test"].get(f"ndcg@{k}", float("nan")) for r in rows if "error" not in r}
    low, high = ndcg.get("uniform"), ndcg.get(SOFTMAX)
    lines = [
        f"| loss / sampler | test NDCG@{k} | test Recall@{k} | s/epoch (train) | best / epochs "
        "| gap closed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | - | - | - | - | error: {r['error']} |")
            continue
        per_epoch = r.get("timings", {}).get("train_epoch_seconds_median")
        gap = "-"
        if low is not None and high is not None and r["label"] not in ("uniform", SOFTMAX):
            # no gap to close when the full softmax does not beat uniform negatives
            gap = f"{(ndcg[r['label']] - low) / (high - low):+.0%}" if high > low else "n/a"
        stopped = f" ({r['stopped']})" if r.get("stopped") == "max_minutes" else ""
        lines.append(
            f"| {r['label']} | {ndcg[r['label']]:.4f} | {r['test'].get(f'recall@{k}', float('nan')):.4f} "
            f"| {per_epoch:.2f} | {r['best_epoch']} / {r['epochs']}{stopped} | {gap} |"
            if per_epoch is not None
            else f"| {r['label']} | {ndcg[r['label']]:.4f} | - | - | - | {gap} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", "--dataset", default="experiments/datasets/ml-1m-pairs.yaml")
    parser.add_argument("-m", "--model", default="BPR", help="an item-tower model")
    parser.add_argument("--negatives", type=int, default=20, help="model.num_negatives of every sampler")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated")
    parser.add_argument("--no-softmax", action="store_true", help="skip the full-softmax ceiling")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs of every run")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap per run")
    parser.add_argument("--set", action="append", default=[], help="override for every run")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines results (resumable)")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out")
    args = parser.parse_args()

    common = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    labels = [s for s in args.samplers.split(",") if s] + ([] if args.no_softmax else [SOFTMAX])
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if not args.table_only:
        done = {r["label"] for r in rows}
        for label in labels:
            if label in done:
                continue
            print(f"{time.strftime('%H:%M:%S')} {label} ...", file=sys.stderr, flush=True)
            row = run_one(args.model, args.dataset, args.max_minutes, row_sets(label, args.negatives, common))
            row["label"] = label
            rows.append(row)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            status = row.get("error") or f"test ndcg@10 {row['test'].get('ndcg@10', 0):.4f}"
            print(f"{time.strftime('%H:%M:%S')} {label}: {status} ({row['wall_seconds']:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    order = {label: i for i, label in enumerate(labels)}
    print(table(sorted(rows, key=lambda r: order.get(r["label"], len(order)))))


if __name__ == "__main__":
    main()
