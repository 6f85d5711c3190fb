"""Speed and accuracy of the working tree against an earlier commit, interleaved on one machine.

This VM's speed drifts by up to 2x within minutes, so a ratio to numbers measured on another day
means little: each round runs every model once in the reference tree (a ``git worktree`` of
``--base``) and once in this tree, back to back, and the table reports the median over rounds
of the per-epoch training seconds, the validation-pass seconds and test NDCG@10.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/regression.py --base 2d504d1 \
        [--models BPR,NCF] [--epochs 8] [--rounds 3] [--set model.exclude_positives=false] \
        [--full]    # --full: each model's default early stopping (accuracy), else fixed epochs

``--set`` applies to this tree only (e.g. to switch a new default off for a like-for-like run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_RUNNER = r"""
import json, sys, logging
logging.disable(logging.WARNING)
model, dataset, epochs, sets = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
from recstudio.data import load_spec
from recstudio.pipeline import RunOptions, run
spec = load_spec(dataset)
overrides = dict(sets)
if epochs > 0:
    overrides.update({"train.epochs": epochs, "train.early_stop_patience": 0})
try:
    from recstudio.experiment import resolve_config
    cfg = resolve_config(model=model, dataset=dataset, overrides=overrides,
                         dataset_defaults=spec.defaults, dataset_labels=getattr(spec, "labels", None))
except ImportError:  # before the resolve split
    from recstudio.config import resolve
    cfg = resolve(model=model, dataset=dataset, overrides=overrides, dataset_defaults=spec.defaults)
result = run(cfg, RunOptions(tracking=False, quiet=True))
t = result["timings"]
print(json.dumps({
    "epochs": result["epochs"], "best_epoch": result["best_epoch"],
    "train_epoch": t.get("train_epoch_seconds_median"), "valid_pass": t.get("valid_pass_seconds_median"),
    "ndcg@10": result["test"].get("ndcg@10"), "recall@10": result["test"].get("recall@10"),
}))
"""


def run_one(tree: Path, model: str, dataset: str, epochs: int, sets: dict, cache: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "RECSTUDIO_CACHE_DIR": cache}
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, model, dataset, str(epochs), json.dumps(sets)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    if out.returncode != 0:
        raise SystemExit(f"{model} in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="reference commit")
    parser.add_argument("--models", default="BPR,NCF,FM,MultiVAE,EASE,WRMF,SASRec,BERT4Rec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="default early stopping (accuracy)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="key=value, this tree only")
    args = parser.parse_args()
    sets = dict(item.split("=", 1) for item in args.sets)
    sets = {
        k: json.loads(v) if v.lower() in ("true", "false", "null") or v[:1].isdigit() else v
        for k, v in sets.items()
    }
    epochs = 0 if args.full else args.epochs

    base_tree = Path(tempfile.mkdtemp(prefix="recstudio-base-"))
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base],
        check=True,
        capture_output=True,
    )
    cache = tempfile.mkdtemp(prefix="recstudio-regression-cache-")
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        for r in range(args.rounds):
            for model in args.models.split(","):
                for label, tree, extra in (("base", base_tree, {}), ("head", REPO, sets)):
                    res = run_one(tree, model, args.dataset, epochs, extra, cache)
                    rows.setdefault((model, label), []).append(res)
                    print(json.dumps({"round": r, "model": model, "tree": label, **res}), flush=True)
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], capture_output=True
        )

    def med(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    print(
        f"\nbase {args.base} vs working tree {json.dumps(sets) if sets else ''}; "
        f"medians over {args.rounds} rounds"
    )
    print(
        "| model | epoch s base | epoch s head | ratio | valid s base | valid s head | ratio "
        "| NDCG@10 base | NDCG@10 head |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        b, h = rows[(model, "base")], rows[(model, "head")]
        eb, eh = med([x["train_epoch"] for x in b]), med([x["train_epoch"] for x in h])
        vb, vh = med([x["valid_pass"] for x in b]), med([x["valid_pass"] for x in h])
        nb, nh = med([x["ndcg@10"] for x in b]), med([x["ndcg@10"] for x in h])

        def fmt(x: float | None, d: int = 4) -> str:
            return "-" if x is None else f"{x:.{d}f}"

        ratio_e = f"{eh / eb:.2f}" if eb and eh else "-"
        ratio_v = f"{vh / vb:.2f}" if vb and vh else "-"
        print(
            f"| {model} | {fmt(eb)} | {fmt(eh)} | {ratio_e} | {fmt(vb)} | {fmt(vh)} | {ratio_v} "
            f"| {fmt(nb)} | {fmt(nh)} |"
        )


if __name__ == "__main__":
    main()
