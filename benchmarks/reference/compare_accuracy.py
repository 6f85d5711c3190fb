"""Ours vs RecBole 1.2.1, accuracy side by side on the SAME train/valid/test rows (issue 11 pilots).

For each model: prepare our data with the config our model uses (``export_split.model_protocol``),
write it as RecBole benchmark files (``export_split.py``), run RecBole's model on them in its own
environment (``recbole_run.py``, RecBole's defaults with embedding 64, early stopping on valid
NDCG@10 / AUC), then, if the model is registered here, ours on the very same PreparedData
(``recstudio.pipeline.run`` with our defaults). One table: the validation metric at each
library's best epoch and the test metric there.

    bash benchmarks/reference/setup.sh /tmp/refenvs                 # once
    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/reference/compare_accuracy.py \\
        --recbole-python /tmp/refenvs/recbole/bin/python [--models LightGCN,GRU4Rec,DeepFM,CKE] \\
        [--split-seed N] [--seed S] [--skip-ours] [--recbole-results runs.jsonl] [--json out.json]

``--recbole-results`` reuses earlier ``recbole_run.py`` JSON lines (one per model) instead of
running RecBole again. On ml-100k one split's test NDCG@10 moves by a few percent between split
seeds, more than most gaps between the libraries: repeat a close comparison over
``--split-seed`` (new rows for both sides) and ``--seed`` (both libraries' training seed).

Accuracy is what this compares: both run on CPU, and on a shared machine their seconds are not a
speed benchmark (``compare.py`` is).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from export_split import export_split, model_protocol  # noqa: E402

PILOTS = ("LightGCN", "GRU4Rec", "DeepFM", "CKE")
RECBOLE_NAMES: dict[str, str] = {"SLIM": "SLIMElastic"}
"""RecBole's name of our model where they differ (the others share their names)."""
RECBOLE_SETTINGS: dict[str, tuple[str, ...]] = {"MultiDAE": ("latent_dimension=200",)}
"""``--set`` values RecBole gets for a model so that the settings compare ("comparable settings":
RecBole's MultiDAE default latent is 64 against the paper's and ours 200)."""


def protocol_text(data_config: Any, kind: str) -> str:
    """Short description of the split, e.g. ``rating>=3, user_entry random 0.8/0.1/0.1``."""
    parts = []
    if data_config.label:
        parts.append(f"label {data_config.label}")
    if data_config.min_rating is not None:
        parts.append(f"rating>={data_config.min_rating:g}")
    if data_config.split == "loo":
        parts.append("leave-one-out by time")
    else:
        ratio = "/".join(f"{r:g}" for r in data_config.split_ratio)
        parts.append(f"{data_config.split} {data_config.split_order} {ratio} (seed {data_config.split_seed})")
    if kind == "knowledge":
        parts.append("+ KG")
    return ", ".join(parts)


def run_recbole(
    python: str,
    work: Path,
    name: str,
    model: str,
    epochs: int,
    threads: int = 0,
    max_minutes: float = 0,
    settings: tuple[str, ...] = (),
) -> dict[str, Any]:
    """recbole_run.py in the RecBole environment; its stderr goes to ``work/<name>.recbole.log``."""
    cmd = [python, str(HERE / "recbole_run.py"), "--data", str(work), "--dataset", name, "--model", model]
    cmd += ["--workdir", str(work / f"{name}.recbole")]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    if threads:
        cmd += ["--threads", str(threads)]
    if max_minutes:
        cmd += ["--max-minutes", str(max_minutes)]
    for item in settings:
        cmd += ["--set", item]
    log = work / f"{name}.recbole.log"
    with log.open("w") as err:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    if out.returncode != 0:
        tail = log.read_text()[-3000:]
        return {"error": f"recbole_run.py exited {out.returncode}; log {log}:\n{tail}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ours(
    model: str, dataset: str, data: Any, epochs: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Our model with its defaults (plus ``overrides``, dotted keys) on ``data``, the
    PreparedData that was exported."""
    from recstudio.data import load_spec
    from recstudio.experiment import resolve_config
    from recstudio.pipeline import RunOptions, run

    spec = load_spec(dataset)
    overrides = dict(overrides or {})
    if epochs:
        overrides["train.epochs"] = epochs
    cfg = resolve_config(
        model=model,
        dataset=dataset,
        overrides=overrides,
        dataset_defaults=spec.defaults,
        dataset_labels=spec.labels,
    )
    t0 = time.perf_counter()
    result = run(cfg, RunOptions(tracking=False, quiet=True), data=data)
    timings = result.get("timings", {})
    return {
        "valid": result["valid"],
        "test": result["test"],
        "epochs": result["epochs"],
        "best_epoch": result["best_epoch"] + 1,  # ours counts from 0, RecBole's runner from 1
        "train_epoch_s": timings.get("train_epoch_seconds_median"),
        "seconds": round(time.perf_counter() - t0, 1),
        # the process's peak so far (data preparation included): one model per run to read it alone
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def headline(kind: str) -> tuple[str, ...]:
    return ("auc", "gauc", "logloss") if kind == "context" else ("ndcg@10", "recall@10")


def cell(side: dict[str, Any] | None, split: str, keys: tuple[str, ...]) -> str:
    if not side:
        return "-"
    if "error" in side:
        return "failed"
    values = side.get(split, {})
    return " / ".join(f"{values[k]:.4f}" if k in values else "-" for k in keys)


def epochs_cell(side: dict[str, Any] | None) -> str:
    if not side or "error" in side:
        return "-"
    return f"{side.get('best_epoch')}/{side.get('epochs')}"


def seconds_cell(side: dict[str, Any] | None) -> str:
    if not side or "error" in side or side.get("train_epoch_s") is None:
        return "-"
    return f"{side['train_epoch_s']:.2f}"


def memory_cell(side: dict[str, Any] | None) -> str:
    if not side or "error" in side or side.get("peak_rss_mb") is None:
        return "-"
    return str(side["peak_rss_mb"])


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| model | data (our split, exported) | metrics | ours valid | ours test | RecBole valid "
        "| RecBole test | best/epochs ours | best/epochs RecBole | s/epoch ours | s/epoch RecBole "
        "| peak RSS MB ours | peak RSS MB RecBole |"
    )
    print("|" + "---|" * 13)
    for row in rows:
        keys = headline(row["kind"])
        ours, rb = row.get("ours"), row.get("recbole")
        print(
            f"| {row['model']} | {row['dataset']}: {row['protocol']} | {' / '.join(keys)} "
            f"| {cell(ours, 'valid', keys)} | {cell(ours, 'test', keys)} "
            f"| {cell(rb, 'valid', keys)} | {cell(rb, 'test', keys)} "
            f"| {epochs_cell(ours)} | {epochs_cell(rb)} | {seconds_cell(ours)} | {seconds_cell(rb)} "
            f"| {memory_cell(ours)} | {memory_cell(rb)} |"
        )
    for row in rows:
        for side in ("ours", "recbole"):
            if row.get(side) and "error" in row[side]:
                print(f"\n{row['model']} ({side}) failed:\n{row[side]['error']}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recbole-python", help="python of a RecBole 1.2.1 environment (setup.sh)")
    parser.add_argument("--models", default=",".join(PILOTS))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument(
        "--work", help="folder for the exported files and RecBole's logs (default: temporary)"
    )
    parser.add_argument(
        "--epochs", type=int, default=0, help="cap both libraries' epochs (0: their defaults)"
    )
    parser.add_argument(
        "--recbole-threads",
        type=int,
        default=0,
        help="RecBole's torch threads (0: torch's default); 1 on a machine shared with other jobs",
    )
    parser.add_argument(
        "--recbole-max-minutes",
        type=float,
        default=0,
        help="stop RecBole's training after this many minutes and evaluate its best checkpoint",
    )
    parser.add_argument(
        "--recbole-set",
        action="append",
        default=[],
        help="MODEL:key=value for RecBole's config (repeatable), over RECBOLE_SETTINGS",
    )
    parser.add_argument(
        "--ours-epochs", type=int, default=0, help="cap our epochs only (0: --epochs, else our defaults)"
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        help="seed of the random split (both libraries get the same rows; default: the model's "
        "data config, 2020): repeat over seeds to see the split's own spread",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="training seed of both libraries (RecBole's seed, our train.seed; default: each one's own)",
    )
    parser.add_argument(
        "--ours-set",
        action="append",
        default=[],
        help="key=value over our model's config (repeatable, dotted keys as `recstudio run --set`)",
    )
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--recbole-results", help="JSON lines of earlier recbole_run.py runs to reuse")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    from recstudio.data import prepare
    from recstudio.model.registry import all_models

    registered = {cls.__name__ for cls in all_models()}
    extra: dict[str, tuple[str, ...]] = dict(RECBOLE_SETTINGS)
    for item in args.recbole_set:
        target, sep, setting = item.partition(":")
        if not sep or "=" not in setting:
            parser.error(f"--recbole-set {item!r}: expected MODEL:key=value")
        extra[target] = extra.get(target, ()) + (setting,)
    from recstudio.config import parse_set_option
    from recstudio.errors import ConfigError

    try:
        ours_overrides: dict[str, Any] = dict(parse_set_option(item) for item in args.ours_set)
    except ConfigError as exc:
        parser.error(f"--ours-set: {exc}")
    if args.seed is not None:
        ours_overrides["train.seed"] = args.seed
    if args.split_seed is not None:
        ours_overrides["data.split_seed"] = args.split_seed
    reuse: dict[str, dict[str, Any]] = {}
    if args.recbole_results:
        for line in Path(args.recbole_results).read_text().splitlines():
            if line.strip().startswith("{"):
                res = json.loads(line)
                reuse[res["model"]] = res
    work = Path(args.work or tempfile.mkdtemp(prefix="recbole-compare-"))
    rows = []
    for model in args.models.split(","):
        data_config, kind, parts, origin = model_protocol(model, args.dataset)
        if args.split_seed is not None:
            data_config = dataclasses.replace(data_config, split_seed=args.split_seed)
        data = prepare(args.dataset, data_config, parts=parts)
        name = f"{Path(args.dataset).stem}-{model}".lower()
        if args.split_seed is not None:
            name += f"-split{args.split_seed}"
        if args.seed is not None:
            name += f"-seed{args.seed}"
        summary = export_split(data, work, name, kind)
        row: dict[str, Any] = {
            "model": model,
            "dataset": args.dataset,
            "kind": kind,
            "protocol": protocol_text(data_config, kind),
            "protocol_source": origin,
            "seed": args.seed,
            "ours_overrides": ours_overrides,
            "export": summary,
        }
        rb_name = RECBOLE_NAMES.get(model, model)
        if rb_name in reuse:
            row["recbole"] = reuse[rb_name]
        elif args.recbole_python:
            print(f"{model}: RecBole on {summary['folder']} ...", file=sys.stderr, flush=True)
            row["recbole"] = run_recbole(
                args.recbole_python,
                work,
                name,
                rb_name,
                args.epochs,
                args.recbole_threads,
                args.recbole_max_minutes,
                extra.get(model, ()) + ((f"seed={args.seed}",) if args.seed is not None else ()),
            )
        if model in registered and not args.skip_ours:
            print(f"{model}: ours ...", file=sys.stderr, flush=True)
            try:
                row["ours"] = run_ours(
                    model, args.dataset, data, args.ours_epochs or args.epochs, ours_overrides
                )
            except Exception as exc:  # noqa: BLE001 - a colleague's model in progress may fail; keep the table
                row["ours"] = {"error": f"{type(exc).__name__}: {exc}"}
        elif model not in registered:
            row["ours"] = None
        rows.append(row)
        print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    print_table(rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
