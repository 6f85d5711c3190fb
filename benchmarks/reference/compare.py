"""RecStudio vs RecBole 1.2.1 vs the original RecStudio (0.0.2a1), interleaved on the same machine.

Issue 2's speed targets are ratios to those two libraries, but this VM's speed drifts by 2x over
minutes, so numbers measured hours apart cannot be divided. This script runs the three in turn,
round after round, and reports each round's ratios.

    bash benchmarks/reference/setup.sh /tmp/refenvs            # once: two separate virtualenvs
    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/reference/compare.py \\
        --recbole-python /tmp/refenvs/recbole/bin/python \\
        --orig-python /tmp/refenvs/recstudio-0.0.2a1/bin/python [--rounds 3] [--epochs 10]

Protocol for all three (issue 2): BPR, embedding 64, one uniform negative, batch 2048, full-ranking
validation every epoch, per-user random 0.8/0.1/0.1 split. ml-100k keeps ratings >= 3 (RecBole:
``val_interval``; the original RecStudio: its own ml-100k config, ``ranker_rating_threshold: 3``);
ml-1m is the user-item pairs of ``ml-1m/ratings.parquet``. Each library times its epochs its own
way (RecBole: ``_train_epoch``/``_valid_epoch``; RecStudio 0.0.2a1: its fit loop's "Train time";
ours: ``benchmarks/speed.py``); all three include batch building and negative sampling. Reported:
the median over epochs 2..N for the references (their first epoch pays one-off costs) and over
all N epochs for ours (speed.py's median; the first epoch in it can only make ours look slower).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OURS = {"ml-100k": "ml-100k", "ml-1m": str(REPO / "experiments" / "datasets" / "ml-1m-pairs.yaml")}


def data_root(explicit: str | None) -> Path:
    root = explicit or os.environ.get("RECSTUDIO_DATA_DIR")
    if not root:
        raise SystemExit("set --data-dir or RECSTUDIO_DATA_DIR (the folder holding ml-100k/ and ml-1m/)")
    return Path(root)


def write_atomic_files(root: Path, work: Path, datasets: list[str]) -> None:
    """The reference libraries read RecBole's atomic format: write it from the raw files."""
    import pandas as pd

    if "ml-100k" in datasets:
        frame = pd.read_csv(
            root / "ml-100k" / "u.data",
            sep="\t",
            header=None,
            names=["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
        )
        (work / "ml-100k").mkdir(parents=True, exist_ok=True)
        frame.to_csv(work / "ml-100k" / "ml-100k.inter", sep="\t", index=False)
    if "ml-1m" in datasets:
        frame = pd.read_parquet(root / "ml-1m" / "ratings.parquet").iloc[:, :2].astype("int64")
        frame.columns = ["user_id:token", "item_id:token"]
        frame["rating:float"] = 1.0  # the original RecStudio's loader requires both columns
        frame["timestamp:float"] = 0.0
        (work / "ml-1m").mkdir(parents=True, exist_ok=True)
        frame.to_csv(work / "ml-1m" / "ml-1m.inter", sep="\t", index=False)


def steady(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def run_checked(cmd: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure stop with the tail of its stderr, naming ``what`` failed."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return out


def last_json_line(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ours(dataset: str, epochs: int, data_dir: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "RECSTUDIO_DATA_DIR": str(data_dir)}
        cmd = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--dataset", OURS[dataset]]
        cmd += ["--epochs", str(epochs), "--json", out.name]
        run_checked(cmd, "speed.py", env=env)
        row = json.loads(Path(out.name).read_text())["speed"][0]
    return {"train": row["epoch_s"], "valid": row["valid_s"], "ndcg@10": row["test_ndcg@10"]}


def run_reference(
    python: str, script: str, dataset: str, epochs: int, work: Path, extra: list[str] | None = None
) -> dict:
    cmd = [python, str(HERE / script), "--data", str(work), "--dataset", dataset, "--epochs", str(epochs)]
    cmd += extra or []
    result = last_json_line(run_checked(cmd, script))
    return {"train": steady(result["train_epoch_s"]), "valid": steady(result["valid_s"])}


def end_to_end(name: str, python: str | None, script: str | None, work: Path, data_dir: Path) -> dict:
    """Wall seconds of a default ml-100k run (its own epochs and early stopping), imports included;
    ours is the README's main command with an empty cache (so it prepares the data too)."""
    with tempfile.TemporaryDirectory() as cwd:
        if python is None:
            env = {**os.environ, "RECSTUDIO_DATA_DIR": str(data_dir), "RECSTUDIO_CACHE_DIR": cwd + "/cache"}
            cmd = [sys.executable, "-m", "recstudio", "run", "-m", "BPR", "-d", "ml-100k", "--json"]
        else:
            env = dict(os.environ)
            cmd = [python, str(HERE / script), "--data", str(work), "--dataset", "ml-100k", "--epochs", "0"]
        started = time.perf_counter()
        out = run_checked(cmd, f"{name} end to end", env=env, cwd=cwd)
        wall = time.perf_counter() - started
    result = last_json_line(out)
    epochs = result["epochs"] if python is None else len(result["train_epoch_s"])
    test = result["test"]
    if isinstance(test, str):  # RecStudio 0.0.2a1 reports its test line as text
        match = re.search(r"ndcg@10=([0-9.]+)", test)
        test = {"ndcg@10": float(match.group(1))} if match else {}
    return {"library": name, "wall_s": wall, "epochs": epochs, "ndcg@10": test.get("ndcg@10", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recbole-python", help="python of a RecBole 1.2.1 environment (setup.sh)")
    parser.add_argument("--orig-python", help="python of a RecStudio 0.0.2a1 environment (setup.sh)")
    parser.add_argument("--dataset", action="append", choices=sorted(OURS), help="default: both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-dir", help="default: $RECSTUDIO_DATA_DIR")
    parser.add_argument(
        "--end-to-end", action="store_true", help="each round also times a default ml-100k run of each"
    )
    parser.add_argument(
        "--recbole-eval-batch",
        type=int,
        default=4096,
        help="RecBole's eval_batch_size (default 4096, its default; 100000000 scores all users at once)",
    )
    args = parser.parse_args()
    root = data_root(args.data_dir)
    datasets = args.dataset or ["ml-100k", "ml-1m"]
    libraries: list[tuple[str, str | None, str | None, list[str]]] = [("recstudio (this)", None, None, [])]
    if args.recbole_python:
        extra = ["--eval-batch", str(args.recbole_eval_batch)]
        libraries.append(("recbole 1.2.1", args.recbole_python, "recbole_bpr.py", extra))
    if args.orig_python:
        libraries.append(("recstudio 0.0.2a1", args.orig_python, "recstudio_orig_bpr.py", []))
    rows, e2e_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_atomic_files(root, work, datasets)
        for round_no in range(1, args.rounds + 1):
            for dataset in datasets:
                times = {}
                for name, python, script, extra in libraries:
                    started = time.perf_counter()
                    if python is None:
                        times[name] = run_ours(dataset, args.epochs, root)
                    else:
                        times[name] = run_reference(python, script, dataset, args.epochs, work, extra)
                    print(
                        f"round {round_no} {dataset} {name}: train {times[name]['train']:.3f} s/epoch, "
                        f"validation {times[name]['valid']:.3f} s ({time.perf_counter() - started:.0f} s)",
                        file=sys.stderr,
                    )
                ours = times["recstudio (this)"]
                for name, t in times.items():
                    rows.append(
                        {
                            "round": round_no,
                            "dataset": dataset,
                            "library": name,
                            "train_s": t["train"],
                            "valid_s": t["valid"],
                            "train_x_ours": t["train"] / ours["train"],
                            "valid_x_ours": t["valid"] / ours["valid"],
                        }
                    )
            if args.end_to_end and "ml-100k" in datasets:
                for name, python, script, _ in libraries:
                    row = {"round": round_no, **end_to_end(name, python, script, work, root)}
                    print(f"round {round_no} end to end {name}: {row['wall_s']:.1f} s", file=sys.stderr)
                    e2e_rows.append(row)
    print_table(rows)
    if e2e_rows:
        print("\nend to end, ml-100k, each library's defaults (early stopping); wall seconds incl. imports")
        for row in e2e_rows:
            print(
                f"round {row['round']}  {row['library']:<18} {row['wall_s']:6.1f} s"
                f"  {row['epochs']:>3} epochs  test NDCG@10 {row['ndcg@10']:.4f}"
            )


def print_table(rows: list[dict]) -> None:
    print(
        "\nBPR, batch 2048, validation every epoch; median over epochs (references: 2..N, ours: all); "
        "*_x_ours = that library's seconds / ours (higher: we are faster)"
    )
    header = ["round", "dataset", "library", "train_s", "valid_s", "train_x_ours", "valid_x_ours"]
    widths = [5, 7, 17, 8, 8, 12, 12]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        cells = [f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in header]
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))


if __name__ == "__main__":
    main()
