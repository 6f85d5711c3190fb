"""Time RecBole 1.2.1's BPR under issue 2's protocol; runs inside a RecBole environment (setup.sh).

    python recbole_bpr.py --data WORK --dataset ml-100k --epochs 10 [--eval-batch 4096]

``--epochs 0`` keeps RecBole's own defaults (300 epochs, early stopping after 10 without gain).

WORK holds ``<dataset>/<dataset>.inter`` in RecBole's atomic format (``compare.py`` writes it).
Prints one JSON line: per-epoch training and validation seconds, timed around RecBole's own
``_train_epoch`` / ``_valid_epoch`` (what its log reports), and the test metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--epochs", type=int, default=10, help="0: RecBole's defaults (300, early stopping)")
    parser.add_argument("--eval-batch", type=int, default=4096)
    args = parser.parse_args()
    # RecBole 1.2.1 reloads its own pickled checkpoint, which torch >= 2.6 refuses by default
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import torch
    from recbole.trainer import Trainer

    torch.set_num_threads(os.cpu_count() or 1)
    times: dict[str, list[float]] = {"train": [], "valid": []}

    def timed(name: str, fn):  # noqa: ANN001, ANN202 - wraps RecBole's bound methods
        def wrapper(self, *a, **kw):  # noqa: ANN001, ANN202
            t0 = time.perf_counter()
            out = fn(self, *a, **kw)
            times[name].append(time.perf_counter() - t0)
            return out

        return wrapper

    Trainer._train_epoch = timed("train", Trainer._train_epoch)
    Trainer._valid_epoch = timed("valid", Trainer._valid_epoch)
    from recbole.quick_start import run_recbole

    with_ratings = args.dataset == "ml-100k"
    data_path = os.path.abspath(args.data)
    with tempfile.TemporaryDirectory() as ckpt:
        os.chdir(ckpt)  # RecBole writes log/ and log_tensorboard/ under the working directory
        config = {
            "data_path": data_path,
            "dataset": args.dataset,
            "load_col": {"inter": ["user_id", "item_id"] + (["rating"] if with_ratings else [])},
            "embedding_size": 64,
            "train_batch_size": 2048,
            "eval_batch_size": args.eval_batch,
            "eval_step": 1,
            "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
            "eval_args": {
                "split": {"RS": [0.8, 0.1, 0.1]},
                "order": "RO",
                "group_by": "user",
                "mode": "full",
            },
            "metrics": ["Recall", "NDCG"],
            "topk": [10],
            "valid_metric": "NDCG@10",
            "device": "cpu",
            "use_gpu": False,
            "show_progress": False,
            "checkpoint_dir": ckpt,
        }
        if args.epochs > 0:  # a fixed number of epochs; else its defaults (300, stop after 10 flat)
            config.update(epochs=args.epochs, stopping_step=10**6)
        if with_ratings:
            config["val_interval"] = {"rating": "[3,inf)"}
        result = run_recbole(model="BPR", config_dict=config)
    print(
        json.dumps(
            {"train_epoch_s": times["train"], "valid_s": times["valid"], "test": dict(result["test_result"])}
        )
    )


if __name__ == "__main__":
    main()
