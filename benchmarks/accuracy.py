"""Accuracy table: every registered model on ml-100k with its default config.

Protocol: ml-100k, ratings >= 3 (the dataset's default), binarized, duplicates dropped.
General, autoencoder and feature models: per-user random split 0.8/0.1/0.1 (split_seed 2020).
Sequential models (their default): chronological leave-one-out. Pointwise (CTR) models: the
labelled rows (the spec's label rule), judged by AUC / GAUC / log loss. Social models run on
lastfm-2k (its friendship graph) instead of ml-100k. Full ranking over all items with
train (valid) / train+valid (test) history masked; early stopping on the model's monitor
(validation NDCG@10, AUC for pointwise models) with each model's default patience; test metrics
at the best validation epoch. Single seed, CPU.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/accuracy.py [--models BPR,NCF] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

COLUMNS = (
    "recall@10",
    "ndcg@10",
    "mrr@10",
    "hit@10",
    "precision@10",
    "map@10",
    "auc",
    "gauc",
    "logloss",
    "full_auc",
)


def default_dataset(name: str) -> str:
    """ml-100k for every model, except lastfm-2k (its friendship graph) for social models."""
    from recstudio.model.registry import get_model_class

    cls = get_model_class(name)
    return "lastfm-2k" if "social" in cls.data_contract(cls.Config()).parts else "ml-100k"


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--models", help="comma-separated names (default: all registered)")
    parser.add_argument(
        "--dataset",
        default="auto",
        help="dataset for every model; auto: ml-100k, or lastfm-2k for models that need a social graph",
    )
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="key=value for all")
    args = parser.parse_args()

    from recstudio.config import parse_set_option
    from recstudio.data import load_spec
    from recstudio.experiment import resolve_config
    from recstudio.model.registry import all_models
    from recstudio.pipeline import RunOptions, run

    names = args.models.split(",") if args.models else [m.__name__ for m in all_models()]
    overrides = dict(parse_set_option(s) for s in args.sets)
    rows = []
    for name in names:
        dataset = args.dataset if args.dataset != "auto" else default_dataset(name)
        spec = load_spec(dataset)
        cfg = resolve_config(
            model=name,
            dataset=dataset,
            overrides=overrides,
            dataset_defaults=spec.defaults,
            dataset_labels=spec.labels,
        )
        t0 = time.perf_counter()
        result = run(cfg, RunOptions(tracking=False, quiet=True))
        test = result["test"]
        rows.append(
            {
                "model": name,
                "dataset": dataset,
                "split": cfg.data.split,
                "epochs": result["epochs"],
                "best_epoch": result["best_epoch"],
                "seconds": round(time.perf_counter() - t0, 1),
                **{key: round(test[key], 4) for key in COLUMNS if key in test},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    cols = list(dict.fromkeys(key for row in rows for key in row))
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
