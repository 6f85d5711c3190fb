"""Training-step time of models on a dataset: milliseconds per optimizer step, no evaluation.

For comparing implementations of the same model (run it from two checkouts, or before and
after a change): builds the model and its training batches as ``recstudio run`` does, takes
warm-up steps, then times rounds of steps and prints the best and the median round.

    RECSTUDIO_DATA_DIR=../shared/datasets taskset -c 1 env OMP_NUM_THREADS=1 \\
        python benchmarks/step_time.py -m XSimGCL,DGCF -d experiments/datasets/ml-1m-pairs.yaml

``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step_times(model_name: str, dataset: str, warmup: int, steps: int, rounds: int) -> dict:
    import torch

    from recstudio.data import load_spec, prepare
    from recstudio.experiment import resolve_config
    from recstudio.pipeline import build_model, training_batches

    spec = load_spec(dataset)
    cfg = resolve_config(model=model_name, dataset=dataset, overrides={}, dataset_defaults=spec.defaults)
    data = prepare(dataset, cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, data)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate)
    batches = iter(training_batches(model, data, cfg))
    pending: list = []

    def step() -> None:
        nonlocal batches
        if not pending:
            try:
                group = next(batches)
            except StopIteration:
                batches = iter(training_batches(model, data, cfg))
                group = next(batches)
            pending.extend(group if isinstance(group, list) else [group])
        loss = model.training_loss(pending.pop(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        per_round.append((time.perf_counter() - t0) / steps * 1000)
    return {
        "model": model_name,
        "dataset": Path(dataset).stem,
        "batch_size": cfg.train.batch_size,
        "ms_best": min(per_round),
        "ms_median": statistics.median(per_round),
        "rounds": per_round,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--models", required=True, help="Comma-separated model names.")
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="Steps per timed round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    names = args.models.split(",")
    rows = [step_times(name, args.dataset, args.warmup, args.steps, args.rounds) for name in names]
    rounds = f"{args.rounds} rounds of {args.steps}"
    print(f"| model | dataset | batch | ms/step best | ms/step median ({rounds}) |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [r["model"], r["dataset"], str(r["batch_size"])]
        cells += [f"{r['ms_best']:.0f}", f"{r['ms_median']:.0f}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
