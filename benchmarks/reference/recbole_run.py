"""Train and evaluate one RecBole 1.2.1 model on benchmark files written by ``export_split.py``.
Runs inside a RecBole environment (``setup.sh``), never in ours.

    /tmp/refenvs/recbole/bin/python benchmarks/reference/recbole_run.py \\
        --data /tmp/recbole-data --dataset ml-100k-lightgcn --model LightGCN [--epochs 0]

Settings: RecBole's defaults for the model (its ``properties/model/<Model>.yaml``, 300 epochs,
Adam 1e-3, batch 2048, seed 2020, early stopping after ``stopping_step`` = 10 validations without
gain, validation every epoch), except: ``benchmark_filename: [train, valid, test]`` (our rows, no
RecBole filtering or splitting); ``embedding_size: 64`` where the model has one (context models
such as DeepFM keep RecBole's default); top-k models: full ranking (``mode: full``) with
Recall/NDCG/MRR/Hit/Precision@10, early stopping on NDCG@10; labelled (context) models:
``mode: labeled``, AUC and LogLoss, early stopping on AUC, no negative sampling; CPU.

Departures needed by benchmark files, all in RecBole's own terms:

- sequential models: ``alias_of_item_id: [item_id_list]`` (else RecBole remaps the input
  sequences in a vocabulary of their own) and ``train_neg_sample_args: None`` for the CE loss.
  RecBole does not mask history for sequential models; our evaluator does (train for valid,
  train + valid for test). By default the history is masked here too (the same protocol, so
  the numbers compare); ``--sequence-history unmasked`` keeps RecBole's behaviour, and the
  test split is always also reported unmasked (``test_unmasked``).
- labelled models: RecBole's GAUC is a full-ranking metric, so GAUC (the same formula as ours:
  per-user AUC with average ranks for ties, weighted by the user's positives, over users with
  both labels) is computed here from the scores of RecBole's own evaluation pass.

Prints one JSON line: valid metrics at the best epoch (re-evaluated from RecBole's best
checkpoint), test metrics, epochs run, best epoch, and seconds per training epoch and per
validation (timed around RecBole's ``_train_epoch`` / ``_valid_epoch``). RecBole writes log/,
log_tensorboard/ and its checkpoint into a scratch folder (``--workdir``, default a temporary one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOPK_METRICS = ["Recall", "NDCG", "MRR", "Hit", "Precision"]
NON_SAMPLING = frozenset(
    ("ENMF", "MultiDAE", "MultiVAE", "RecVAE", "MacridVAE", "CDAE", "EASE", "SLIMElastic", "ItemKNN")
)
"""General models that read whole user rows (or fit in closed form): RecBole trains them without
negative sampling (``train_neg_sample_args: None``); its global default would sample anyway."""


class TimeBudget(Exception):
    """Raised before an epoch once ``--max-minutes`` is spent (after at least one validation)."""


def header_fields(path: Path) -> list[str]:
    """Field names (without types) of an atomic file's header, [] when the file is absent."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [col.split(":")[0] for col in f.readline().rstrip("\n").split("\t")]


ALWAYS_BPR = {"FPMC", "TransRec"}
"""Sequential models whose RecBole loss is BPR whatever ``loss_type`` says: they read a sampled
negative per training instance."""


def build_config(args: argparse.Namespace, kind: str, ckpt: str, has_embedding: bool) -> dict[str, Any]:
    """RecBole config dict for one run (see the module docstring for each departure)."""
    folder = Path(args.data) / args.dataset
    inter_fields = header_fields(folder / f"{args.dataset}.train.inter")
    config: dict[str, Any] = {
        "data_path": os.path.abspath(args.data),
        "dataset": args.dataset,
        "benchmark_filename": ["train", "valid", "test"],
        "eval_step": 1,
        "device": args.device,
        "use_gpu": args.device == "cuda",
        "gpu_id": "0" if args.device == "cuda" else "",
        "show_progress": False,
        "checkpoint_dir": ckpt,
        "metric_decimal_place": 6,
        "load_col": {"inter": ["user_id", "item_id"]},
    }
    if has_embedding and kind != "context":
        config["embedding_size"] = 64
    if kind == "context":
        config.update(
            eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": None, "mode": "labeled"},
            metrics=["AUC", "LogLoss"],
            valid_metric="AUC",
            train_neg_sample_args=None,
        )
        config["load_col"]["inter"].append("label")
        for side in ("user", "item"):
            fields = header_fields(folder / f"{args.dataset}.{side}")
            if fields:
                config["load_col"][side] = fields
    else:
        config.update(metrics=TOPK_METRICS, topk=[10], valid_metric="NDCG@10")
        if kind == "sequential":
            config.update(
                eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
                alias_of_item_id=["item_id_list"],
                repeatable=True,
                train_neg_sample_args=None,  # the CE loss (RecBole's default); BPR gets it back below
            )
            config["load_col"]["inter"] += [f for f in ("timestamp", "item_id_list") if f in inter_fields]
        else:
            config["eval_args"] = {
                "split": {"RS": [0.8, 0.1, 0.1]},
                "order": "RO",
                "group_by": "user",
                "mode": "full",
            }
        if kind == "knowledge":
            config["load_col"].update(kg=["head_id", "relation_id", "tail_id"], link=["item_id", "entity_id"])
    if kind == "general" and args.model in NON_SAMPLING:
        config["train_neg_sample_args"] = None
    if args.epochs > 0:
        config["epochs"] = args.epochs
    for item in args.set:
        key, _, value = item.partition("=")
        import yaml

        config[key] = yaml.safe_load(value)
    if kind == "sequential" and (config.get("loss_type") == "BPR" or args.model in ALWAYS_BPR):
        config["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}
    return config


def model_kind(model_class: Any) -> str:
    from recbole.utils import ModelType

    return {
        ModelType.SEQUENTIAL: "sequential",
        ModelType.CONTEXT: "context",
        ModelType.KNOWLEDGE: "knowledge",
    }.get(model_class.type, "general")


def gauc(users: Any, labels: Any, scores: Any) -> float:
    """Per-user AUC (average ranks for ties) weighted by positives, over users with both labels."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"u": users, "y": np.asarray(labels) > 0.5, "s": scores})
    frame["r"] = frame.groupby("u")["s"].rank(method="average")
    frame["rp"] = frame["r"] * frame["y"]
    g = frame.groupby("u").agg(pos=("y", "sum"), n=("y", "size"), rsum=("rp", "sum"))
    neg = g["n"] - g["pos"]
    ok = (g["pos"] > 0) & (neg > 0)
    if not ok.any():
        return float("nan")
    pos, rsum, neg = g["pos"][ok], g["rsum"][ok], neg[ok]
    auc = (rsum - pos * (pos + 1) / 2.0) / (pos * neg)
    return float((auc * pos).sum() / pos.sum())


def sequence_histories(train: Any, valid: Any, n_users: int, n_items: int) -> tuple[Any, Any]:
    """bool [users, items] masks in RecBole's ids: train items (targets and input sequences) per
    user for validation; train + valid items for test."""
    import torch

    def pairs(dataset: Any) -> tuple[Any, Any]:
        inter = dataset.inter_feat
        users, items = [inter[dataset.uid_field]], [inter[dataset.iid_field]]
        seq = inter[dataset.item_id_list_field]
        keep = seq > 0
        users.append(inter[dataset.uid_field][:, None].expand_as(seq)[keep])
        items.append(seq[keep])
        return torch.cat(users), torch.cat(items)

    valid_mask = torch.zeros(n_users, n_items, dtype=torch.bool)
    valid_mask[pairs(train)] = True
    test_mask = valid_mask.clone()
    test_mask[pairs(valid)] = True
    return valid_mask, test_mask


def patch_scipy_dok() -> None:
    """RecBole 1.2.1's graph models (LightGCN, NGCF, KGAT...) fill a ``dok_matrix`` through its
    private ``_update``, which scipy 1.13 removed; setup.sh pins scipy<1.13, and where an
    environment has a newer scipy (the GPU image) the same update goes to the dict it wraps."""
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, data: self._dict.update(data)


def patch_sequential_masking() -> None:
    """FullSortEvalDataLoader returns no history for sequential models; give it the loader's
    ``history_mask`` (when set) so the trainer's own ``scores[history] = -inf`` applies."""
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    original = FullSortEvalDataLoader.collate_fn

    def collate_fn(self, index):  # noqa: ANN001, ANN202 - RecBole's signature
        interaction, history, positive_u, positive_i = original(self, index)
        mask = getattr(self, "history_mask", None)
        if self.is_sequential and mask is not None:
            history = mask[interaction[self.uid_field]].nonzero(as_tuple=True)
        return interaction, history, positive_u, positive_i

    FullSortEvalDataLoader.collate_fn = collate_fn


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="folder holding <dataset>/ (export_split.py --out)")
    parser.add_argument("--dataset", required=True, help="the exported name, e.g. ml-100k-lightgcn")
    parser.add_argument("--model", required=True, help="RecBole model name")
    parser.add_argument("--epochs", type=int, default=0, help="0: RecBole's default (300, early stopping)")
    parser.add_argument("--sequence-history", choices=("masked", "unmasked"), default="masked")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=0,
        help="stop training after the first epoch that ends past this wall time and report the best "
        "checkpoint so far (0: no limit); the JSON says so in 'stopped'",
    )
    parser.add_argument("--workdir", help="scratch folder for log/ and saved/ (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], help="key=value (YAML value) over the config")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config also parses --key=value from the command line
    # RecBole 1.2.1 reloads its own pickled checkpoint, which torch >= 2.6 refuses by default
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    patch_scipy_dok()
    patch_sequential_masking()
    model_class = get_model(args.model)
    kind = model_kind(model_class)
    workdir = args.workdir or tempfile.mkdtemp(prefix=f"recbole-{args.model}-")
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    os.chdir(workdir)
    ckpt = os.path.join(workdir, "saved")
    probe = Config(model=args.model, dataset=args.dataset, config_dict=build_config(args, kind, ckpt, False))
    config_dict = build_config(args, kind, ckpt, "embedding_size" in probe.final_config_dict)
    config = Config(model=args.model, dataset=args.dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    log = logging.getLogger()
    dataset = create_dataset(config)
    log.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    if kind == "sequential" and args.sequence_history == "masked":
        valid_data.history_mask, test_data.history_mask = sequence_histories(
            train_data._dataset, valid_data._dataset, dataset.user_num, dataset.item_num
        )
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    log.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    train_s: list[float] = []
    valid_s: list[float] = []
    valid_scores: list[float] = []
    captured: list[tuple[Any, Any, Any]] | None = None

    def train_epoch(*a: Any, _fn: Any = trainer._train_epoch, **kw: Any) -> Any:
        if args.max_minutes and valid_scores and time.perf_counter() - started > 60 * args.max_minutes:
            raise TimeBudget
        t0 = time.perf_counter()
        out = _fn(*a, **kw)
        train_s.append(time.perf_counter() - t0)
        return out

    def valid_epoch(*a: Any, _fn: Any = trainer._valid_epoch, **kw: Any) -> Any:
        t0 = time.perf_counter()
        score, result = _fn(*a, **kw)
        valid_s.append(time.perf_counter() - t0)
        valid_scores.append(score)
        return score, result

    def labelled_eval(batched: Any, _fn: Any = trainer._neg_sample_batch_eval) -> Any:
        interaction, scores, positive_u, positive_i = _fn(batched)
        if captured is not None:
            captured.append(
                (interaction[config["USER_ID_FIELD"]], interaction[config["LABEL_FIELD"]], scores)
            )
        return interaction, scores, positive_u, positive_i

    trainer._train_epoch = train_epoch
    trainer._valid_epoch = valid_epoch
    trainer._neg_sample_batch_eval = labelled_eval
    stopped = "early stopping or the epoch limit"
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    except TimeBudget:  # the best checkpoint so far is on disk: evaluate it like a finished run
        stopped = f"time budget ({args.max_minutes:g} min) after epoch {len(train_s)}"
        log.warning("stopped: %s", stopped)

    def evaluate(data: Any) -> dict[str, float]:
        nonlocal captured
        captured = [] if kind == "context" else None
        result = {k: float(v) for k, v in trainer.evaluate(data, load_best_model=True).items()}
        if captured:
            users, labels, scores = (torch.cat(parts).detach().cpu().numpy() for parts in zip(*captured))
            result["gauc"] = round(gauc(users, labels, scores), 6)
        captured = None
        return result

    valid = evaluate(valid_data)
    test = evaluate(test_data)
    out: dict[str, Any] = {
        "model": args.model,
        "dataset": args.dataset,
        "kind": kind,
        "valid": valid,
        "test": test,
    }
    if kind == "sequential":
        test_data.history_mask = None
        out["test_unmasked"] = evaluate(test_data)
        out["sequence_history"] = args.sequence_history
    bigger = config["valid_metric_bigger"]
    best = max(valid_scores) if bigger else min(valid_scores)
    out.update(
        epochs=len(train_s),
        stopped=stopped,
        best_epoch=valid_scores.index(best) + 1 if valid_scores else None,
        train_epoch_s=statistics.median(train_s) if train_s else None,
        valid_s=statistics.median(valid_s) if valid_s else None,
        seconds=round(time.perf_counter() - started, 1),
        settings={
            k: config[k]
            for k in (
                "embedding_size",
                "learning_rate",
                "train_batch_size",
                "epochs",
                "stopping_step",
                "seed",
            )
            if k in config.final_config_dict
        },
        device=args.device,
        workdir=workdir,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )
    print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
