"""Time the original RecStudio (0.0.2a1)'s BPR; runs inside its own environment (setup.sh).

    python recstudio_orig_bpr.py --data WORK --dataset ml-100k --epochs 10

``--epochs 0`` keeps its own defaults (100 epochs, early stopping after 10 without gain).

WORK holds ``<dataset>/<dataset>.inter`` in atomic format (``compare.py`` writes it; the ml-1m
pairs get constant rating and timestamp columns, which its loader requires and the random split
ignores). Prints one
JSON line with the per-epoch "Train time" / "Valid time" that its own fit loop logs.

Its wheel needs three shims on today's Python/torch, applied here and nowhere else: ``dgl`` is
imported by graph modules BPR never uses (a placeholder module stands in), and Python 3.11
removed ``inspect.getargspec`` (aliased to ``getfullargspec``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import types

TIMES = re.compile(r"Train time: ([0-9.]+)s\. Valid time: ([0-9.]+)s")


def _placeholder_attribute(name: str) -> type:
    """Any public name of the placeholder ``dgl`` is ``object`` (used only in annotations)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return object


def install_shims() -> None:
    inspect.getargspec = inspect.getfullargspec  # type: ignore[attr-defined]
    for name in ("dgl", "dgl.function", "dgl.nn", "dgl.nn.pytorch", "dgl.nn.pytorch.conv"):
        module = types.ModuleType(name)
        module.__getattr__ = _placeholder_attribute  # type: ignore[method-assign]
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


class TimeCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.train: list[float] = []
        self.valid: list[float] = []
        self.test: str = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        match = TIMES.search(message)
        if match:
            self.train.append(float(match.group(1)))
            self.valid.append(float(match.group(2)))
        elif "Testing" in message:
            self.test = re.sub(r"\x1b\[[0-9;]*m", "", message)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--epochs", type=int, default=10, help="0: its defaults (100, early stopping)")
    args = parser.parse_args()
    data_root = os.path.abspath(args.data)
    with tempfile.TemporaryDirectory() as work:
        # it writes logs, TensorBoard files and checkpoints under the working directory, some of
        # them at import time: run it in a scratch folder
        os.chdir(work)
        os.makedirs("log", exist_ok=True)
        result = run_bpr(args.dataset, args.epochs, data_root)
    print(json.dumps(result))


def run_bpr(dataset: str, epochs: int, data_root: str) -> dict:
    install_shims()
    import torch

    # the package re-exports a function named run over its submodule: fetch the module itself
    run_module = importlib.import_module("recstudio.quickstart.run")

    torch.set_num_threads(os.cpu_count() or 1)
    data_config: dict = {"url": os.path.join(data_root, dataset), "save_cache": False}
    if dataset != "ml-100k":  # user-item pairs; its loader insists on rating and time columns
        data_config.update(
            inter_feat_name=f"{dataset}.inter",
            user_id_field="user_id:token",
            item_id_field="item_id:token",
            rating_field="rating:float",
            time_field="timestamp:float",
            inter_feat_field=["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
            inter_feat_header=0,
            field_separator="\t",
            encoding_method="utf-8",
            rating_threshold=None,
            ranker_rating_threshold=None,
            drop_low_rating=None,
            user_feat_name=None,
            item_feat_name=None,
        )
    else:
        data_config.update(user_feat_name=None)
    # a fixed number of epochs; else its defaults (100 epochs, stop after 10 without gain)
    fixed_epochs = {"epochs": epochs, "early_stop_patience": 10**6} if epochs > 0 else {}
    collector = TimeCollector()
    original_get_logger = run_module.get_logger

    def get_logger(*a, **kw) -> logging.Logger:  # noqa: ANN002, ANN003 - its signature
        logger = original_get_logger(*a, **kw)  # clears the logger's handlers, then adds its own
        logger.addHandler(collector)
        return logger

    run_module.get_logger = get_logger
    run_module.run(
        model="BPR",
        dataset=dataset,
        data_config=data_config,
        gpu=None,
        accelerator="cpu",
        num_threads=os.cpu_count() or 1,
        **fixed_epochs,
    )
    return {"train_epoch_s": collector.train, "valid_s": collector.valid, "test": collector.test}


if __name__ == "__main__":
    main()
