"""Latency of a served model: p50 / p99 of single-user requests, in process and over HTTP.

Trains one model with `recstudio run` into a fresh tracking store (or takes ``--model-uri``),
then times (1) ``ServedModel.recommend`` for one user at a time in this process and (2)
``POST /invocations`` to ``mlflow models serve --env-manager local`` (one worker), one user per
request, sequentially, plus one request of ``--batch`` users. Users are drawn at random from
the data. Prints a table; ``--json`` prints the numbers.

    RECSTUDIO_DATA_DIR=../shared/datasets taskset -c 0 python benchmarks/serve_latency.py \
        -m BPR -d ml-100k --epochs 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def train(model: str, dataset: str, epochs: int, workdir: Path, extra: list[str]) -> str:
    command = [sys.executable, "-m", "recstudio", "run", "-m", model, "-d", dataset, "--epochs", str(epochs)]
    out = subprocess.run(
        [*command, *extra, "--json", "-q"], cwd=workdir, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"training failed:\n{out.stderr[-3000:]}")
    return f"runs:/{json.loads(out.stdout)['run_id']}/model"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-m", "--model", default="BPR")
    parser.add_argument("-d", "--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--model-uri", help="Time this logged/registered model instead of training one.")
    parser.add_argument("--tracking-uri", help="With --model-uri: where it is.")
    parser.add_argument("--requests", type=int, default=300, help="Single-user requests per mode.")
    parser.add_argument("--batch", type=int, default=100, help="Users in the one batch request.")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from recstudio.serve.registry import load_served
    from recstudio.serve.server import ModelServer

    workdir = Path(tempfile.mkdtemp(prefix="recstudio-serve-bench-"))
    tracking_uri = args.tracking_uri or f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    uri = args.model_uri
    if uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        extra = [a for s in args.sets for a in ("--set", s)]
        t0 = time.perf_counter()
        uri = train(args.model, args.dataset, args.epochs, workdir, extra)
        print(
            f"trained {args.model} on {args.dataset} in {time.perf_counter() - t0:.1f} s: {uri}",
            file=sys.stderr,
        )

    t0 = time.perf_counter()
    served = load_served(uri, tracking_uri)
    load_seconds = time.perf_counter() - t0
    rng = random.Random(0)
    users = [str(u) for u in rng.choices(served.data.user_vocab[1:], k=args.requests)]
    in_process = []
    for user in users:
        t = time.perf_counter()
        served.recommend(users=[user], k=args.k)
        in_process.append(1000 * (time.perf_counter() - t))

    t0 = time.perf_counter()
    with ModelServer(uri, tracking_uri) as server:
        start_seconds = time.perf_counter() - t0
        http = []
        for user in users:
            t = time.perf_counter()
            status, body = server.post({"dataframe_records": [{"user": user}], "params": {"k": args.k}})
            http.append(1000 * (time.perf_counter() - t))
            assert status == 200, body
        batch_users = users[: args.batch]
        t = time.perf_counter()
        status, body = server.post(
            {"dataframe_records": [{"user": u} for u in batch_users], "params": {"k": args.k}}
        )
        batch_ms = 1000 * (time.perf_counter() - t)
        assert status == 200 and len(body["predictions"]) == len(batch_users), body

    rows = {
        "in process (ServedModel.recommend)": in_process,
        "HTTP, mlflow models serve (1 worker)": http,
    }
    result = {
        "model": served.model_name,
        "dataset": served.data.name,
        "items": served.data.num_items - 1,
        "faiss_index": served.index is not None,
        "load_seconds": load_seconds,
        "server_start_seconds": start_seconds,
        "batch_users": len(batch_users),
        "batch_ms": batch_ms,
        **{
            name: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "mean_ms": statistics.mean(v)}
            for name, v in rows.items()
        },
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{served.model_name} on {served.data.name} ({result['items']} items, "
        f"{'faiss index' if result['faiss_index'] else 'full scoring'}), k={args.k}, "
        f"{len(users)} single-user requests per row"
    )
    print(f"{'mode':40s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s}")
    for name in rows:
        r = result[name]
        print(f"{name:40s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['mean_ms']:8.2f}")
    print(
        f"one request of {len(batch_users)} users over HTTP: {batch_ms:.1f} ms; "
        f"model load {load_seconds:.2f} s, server start {start_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
