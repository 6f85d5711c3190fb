"""Exact scoring vs faiss flat / IVF / HNSW retrieval: top-k recall against exact, speed, build time.

Why: serving retrieves each user's top k from an index instead of scoring every item; this table
says when that pays off. Queries are the item-tower model's query vectors for every user of the
test split (history = train+valid), items its item vectors. Methods:

- ``exact torch``: ``scorer.matrix`` + history mask + ``topk``, in blocks of ``eval.batch_size``
  users as evaluation scores them (the reference top k);
- ``faiss flat``: exact faiss search; ``IVF nprobe=n``; ``HNSW efSearch=n`` (one index each,
  search knobs changed without a rebuild).

Each method runs with the history excluded (as evaluation and a recommender exclude it: the
index is asked for k + history + 1 items, see ``ItemIndex.search``) and without (pure top-k
retrieval; the reference is then the unmasked exact top k). Batch mode answers all queries in
blocks (the fastest of ``--repeat`` passes counts: the machine may be shared); single-query
mode answers ``--single`` queries one call each (serving latency: median and p99; "x exact" is
the exact p50 over the method's p50).
Run it pinned to one core so that torch and faiss compare on equal terms::

    RECSTUDIO_DATA_DIR=../shared/datasets taskset -c 0 env OMP_NUM_THREADS=1 \\
        python benchmarks/ann_table.py -d experiments/datasets/ml-1m-pairs.yaml --checkpoint best.ckpt

Without ``--checkpoint``/``--run-id`` it first trains ``-m`` (default BPR) with ``recstudio run``
(``family_table.run_one``). ``--synthetic N`` adds a table over N clustered random item vectors
(labelled synthetic) to show where an index pays off on a large catalogue.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


@dataclass
class Workload:
    """Query vectors [U, d], item vectors [N, d], the ANN metric and the exclusion masks [U, N]."""

    name: str
    query: torch.Tensor
    items: torch.Tensor
    metric: str
    exclude: torch.Tensor | None
    batch_size: int


class Exact:
    """The reference: score every item with the model's scorer, mask, topk (as evaluation does)."""

    kind = "exact torch"

    def __init__(self, scorer: Any, items: torch.Tensor) -> None:
        self.scorer, self.items = scorer, items

    def search(self, q: torch.Tensor, k: int, exclude: torch.Tensor | None) -> torch.Tensor:
        from recstudio.eval.metrics import prepare_scores

        x = prepare_scores(self.scorer.matrix(q, self.items), exclude)
        return torch.topk(x, k, dim=1).indices


class Ann:
    """An ``ItemIndex`` answering with ids only."""

    def __init__(self, index: Any, label: str) -> None:
        self.index, self.kind = index, label

    def search(self, q: torch.Tensor, k: int, exclude: torch.Tensor | None) -> torch.Tensor:
        return self.index.search(q, k, exclude)[1]


def run_method(method: Any, w: Workload, k: int, single: int, repeat: int) -> dict[str, Any]:
    """Batch QPS (fastest of ``repeat`` passes over all queries: the machine is shared) and
    single-query latencies over the first ``single`` queries."""
    rows = w.query.shape[0]
    method.search(w.query[:8], k, None if w.exclude is None else w.exclude[:8])  # warm up
    passes = []
    for _ in range(repeat):
        ids = []
        start = time.perf_counter()
        for lo in range(0, rows, w.batch_size):
            hi = min(lo + w.batch_size, rows)
            ids.append(method.search(w.query[lo:hi], k, None if w.exclude is None else w.exclude[lo:hi]))
        passes.append(time.perf_counter() - start)
    latencies = []
    for i in range(min(single, rows)):
        one = time.perf_counter()
        method.search(w.query[i : i + 1], k, None if w.exclude is None else w.exclude[i : i + 1])
        latencies.append(time.perf_counter() - one)
    latencies.sort()
    return {
        "ids": torch.cat(ids),
        "batch_qps": rows / min(passes),
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)],
    }


def overlap(ids: torch.Tensor, ref: torch.Tensor) -> float:
    """Share of the reference top k that ``ids`` also holds (id 0: nothing found)."""
    hit = (ids[:, :, None] == ref[:, None, :]).any(1) & (ref > 0)
    return float(hit.sum() / (ref > 0).sum())


def table(
    w: Workload, k: int, nprobes: list[int], efs: list[int], single: int, hnsw_m: int, repeat: int
) -> str:
    from recstudio.ann import ItemIndex
    from recstudio.model.scorer import build_scorer

    scorer = build_scorer({"ip": "inner_product", "cosine": "cosine", "l2": "euclidean"}[w.metric])
    rows: list[tuple[str, float, dict[str, Any]]] = []

    def add(method: Any, build: float) -> None:
        rows.append((method.kind, build, run_method(method, w, k, single, repeat)))

    add(Exact(scorer, w.items), 0.0)
    for kind, knob, values in (
        ("flat", None, [None]),
        ("ivf", "nprobe", nprobes),
        ("hnsw", "ef_search", efs),
    ):
        start = time.perf_counter()
        index = ItemIndex(w.items, metric=w.metric, kind=kind, hnsw_m=hnsw_m, use_gpu=False)  # type: ignore[arg-type]
        build = time.perf_counter() - start
        for value in values:
            if knob is not None:
                setattr(index, knob, value)
            label = {"flat": "faiss flat", "ivf": f"IVF{index.params().get('nlist')} nprobe={value}",
                     "hnsw": f"HNSW M={hnsw_m} efSearch={value}"}[kind]  # fmt: skip
            add(Ann(index, label), build)
    ref = rows[0][2]["ids"]
    excl = "history excluded" if w.exclude is not None else "no exclusion"
    lines = [
        f"{w.name}: {w.query.shape[0]} queries x {w.items.shape[0] - 1} items, d={w.items.shape[1]}, "
        f"metric {w.metric}, {excl}, k={k}, batch {w.batch_size}, "
        f"single-query over {min(single, len(w.query))}",
        "",
        f"| method | recall@{k} vs exact | batch QPS | x exact | single p50 ms | x exact (p50) "
        "| single p99 ms | build s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = rows[0][2]
    for label, build, r in rows:
        lines.append(
            f"| {label} | {overlap(r['ids'], ref):.4f} | {r['batch_qps']:,.0f} "
            f"| {r['batch_qps'] / base['batch_qps']:.2f} | {r['p50_ms']:.3f} "
            f"| {base['p50_ms'] / r['p50_ms']:.2f} | {r['p99_ms']:.3f} | {build:.2f} |"
        )
    return "\n".join(lines)


def model_workloads(args: argparse.Namespace) -> list[Workload]:
    """Query and item vectors of a trained model on the test split (history = train + valid)."""
    from recstudio.eval.ann import check_ann_config, load_checkpoint_model
    from recstudio.eval.ranking import build_eval_split
    from recstudio.experiment import resolve_from_cli
    from recstudio.pipeline import RunOptions, prepare_for

    files: tuple[str, ...] = tuple(args.config)
    checkpoint = args.checkpoint
    with tempfile.TemporaryDirectory(prefix="ann-table-") as workdir:
        if args.run_id:
            from recstudio.commands.evaluate import _from_run

            config_path, ckpt = _from_run(args.run_id, args.tracking_uri, workdir)
            files, checkpoint = (str(config_path), *files), str(ckpt)
            model_name, dataset = None, None
        else:
            model_name, dataset = args.model, args.dataset
            if checkpoint is None:
                from family_table import run_one

                print(f"training {args.model} on {args.dataset} ...", file=sys.stderr, flush=True)
                result = run_one(args.model, args.dataset, args.max_minutes, args.set)
                if "error" in result:
                    raise SystemExit(f"training failed: {result['error']}")
                checkpoint = result["checkpoint"]
                print(f"checkpoint {checkpoint} (test {result['test']})", file=sys.stderr, flush=True)
        cfg = resolve_from_cli(model_name, dataset, None, files, tuple(args.set), {})
        check_ann_config(cfg)
        data = prepare_for(cfg, RunOptions(tracking=False))
        model = load_checkpoint_model(cfg, data, checkpoint).eval()
    from recstudio.eval.ann import check_ann_model

    metric = check_ann_model(model)
    split = build_eval_split(data, "test", max_seq_len=model.data_needs.eval_sequence)
    with torch.no_grad():
        model.prepare_evaluation()
        items = model.eval_item_vectors().float()
        queries, masks = [], []
        for batch in split.blocks(cfg.eval.batch_size):
            queries.append(model.query_vectors(batch).float())
            masks.append(batch["history_mask"])
    name = f"{cfg.model_name} on {cfg.dataset} (test split)"
    query, history = torch.cat(queries), torch.cat(masks)
    return [
        Workload(name, query, items, metric, history, cfg.eval.batch_size),
        Workload(name, query, items, metric, None, cfg.eval.batch_size),
    ]


def synthetic_workload(items: int, queries: int, dim: int, seed: int, batch_size: int) -> Workload:
    """SYNTHETIC: clustered Gaussian vectors (256 centres), inner product, no exclusion."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(256, dim, generator=gen)
    vectors = centres[torch.randint(0, 256, (items + 1,), generator=gen)] + 0.5 * torch.randn(
        items + 1, dim, generator=gen
    )
    q = centres[torch.randint(0, 256, (queries,), generator=gen)] + 0.5 * torch.randn(
        queries, dim, generator=gen
    )
    vectors[0] = 0.0  # padding row, as in a model
    return Workload(f"SYNTHETIC clustered vectors (seed {seed})", q, vectors, "ip", None, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "-d", "--dataset", default=str(REPO / "experiments" / "datasets" / "ml-1m-pairs.yaml")
    )
    parser.add_argument("-m", "--model", default="BPR")
    parser.add_argument("-c", "--config", action="append", default=[])
    parser.add_argument("--set", action="append", default=[], help="config override (training and loading)")
    parser.add_argument("--checkpoint", help="trained weights of -m on -d (skip training)")
    parser.add_argument("--run-id", help="an MLflow run to load instead (its config and best checkpoint)")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--max-minutes", type=float, default=5.0, help="training cap when training here")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--nprobe", default="1,2,4,8,16,32")
    parser.add_argument("--ef", default="16,32,64,128,256")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--single", type=int, default=500, help="queries timed one call each")
    parser.add_argument("--repeat", type=int, default=3, help="batch passes (the fastest counts)")
    parser.add_argument("--synthetic", type=int, default=0, help="also N synthetic items (e.g. 200000)")
    parser.add_argument("--synthetic-dim", type=int, default=64)
    parser.add_argument("--synthetic-queries", type=int, default=2000)
    parser.add_argument("--skip-model", action="store_true", help="only the synthetic table")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    args = parser.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads), CPU affinity {affinity}\n"
    )
    nprobes = [int(v) for v in args.nprobe.split(",") if v]
    efs = [int(v) for v in args.ef.split(",") if v]
    workloads = [] if args.skip_model else model_workloads(args)
    if args.synthetic:
        workloads.append(
            synthetic_workload(args.synthetic, args.synthetic_queries, args.synthetic_dim, 0, 2048)
        )
    for w in workloads:
        print(table(w, args.k, nprobes, efs, args.single, args.hnsw_m, args.repeat), flush=True)
        print()


if __name__ == "__main__":
    main()
