"""Accuracy table: every registered model on ml-100k with its default config.

Protocol: ml-100k, ratings >= 3 (the dataset's default), binarized, duplicates dropped.
General, autoencoder and feature models: per-user random split 0.8/0.1/0.1 (split_seed 2020).
Sequential models (their default): chronological leave-one-out. Full ranking over all items with
train (valid) / train+valid (test) history masked; early stopping on validation NDCG@10
(patience 10); test metrics at the best validation epoch. Single seed, CPU.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/accuracy.py [--models BPR,NCF] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--models", help="comma-separated names (default: all registered)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="key=value for all")
    args = parser.parse_args()

    from recstudio.config import parse_set_option
    from recstudio.data import load_spec
    from recstudio.experiment import resolve_config
    from recstudio.model.registry import all_models
    from recstudio.pipeline import RunOptions, run

    names = args.models.split(",") if args.models else [m.__name__ for m in all_models()]
    spec = load_spec(args.dataset)
    overrides = dict(parse_set_option(s) for s in args.sets)
    rows = []
    for name in names:
        cfg = resolve_config(
            model=name, dataset=args.dataset, overrides=overrides, dataset_defaults=spec.defaults
        )
        t0 = time.perf_counter()
        result = run(cfg, RunOptions(tracking=False, quiet=True))
        test = result["test"]
        rows.append(
            {
                "model": name,
                "split": cfg.data.split,
                "epochs": result["epochs"],
                "best_epoch": result["best_epoch"],
                "seconds": round(time.perf_counter() - t0, 1),
                "recall@10": round(test["recall@10"], 4),
                "ndcg@10": round(test["ndcg@10"], 4),
                "mrr@10": round(test["mrr@10"], 4),
                "hit@10": round(test["hit@10"], 4),
                "precision@10": round(test["precision@10"], 4),
                "map@10": round(test["map@10"], 4),
                "auc": round(test["auc"], 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
