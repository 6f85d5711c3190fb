"""Write one of OUR prepared splits as RecBole 1.2.1 benchmark files, so that RecBole trains and
evaluates on exactly our train / valid / test rows.

    RECSTUDIO_DATA_DIR=../shared/datasets python benchmarks/reference/export_split.py \\
        --model LightGCN --dataset ml-100k --out /tmp/recbole-data      # -> /tmp/recbole-data/<name>/

The data config is the one our model uses: ``resolve_config`` with the dataset's defaults and
label rule when the model is registered, else the protocol of ``PILOTS`` (issue 11) built by
hand. RecBole reads the files with ``benchmark_filename: [train, valid, test]``: it skips its own
filtering and splitting and cuts the concatenated rows back at the file boundaries.

What is written under ``<out>/<name>/`` (tab-separated, RecBole's typed header, raw ids = our
vocabularies, so RecBole's own remapping sees the same users and items):

- ``<name>.{train,valid,test}.inter``: ``user_id:token item_id:token timestamp:float`` per row of
  our split, in our row order; labelled data adds ``label:float`` (our 0/1 label).
- sequential models: RecBole does no augmentation on benchmark files, so every row carries its
  input sequence, ``item_id_list:token_seq`` (the runner aliases it to item ids), as RecBole's
  own augmentation would build it: a train row is the next-item target after the user's earlier
  train rows (a user's first train row is only input); a valid (test) row's sequence is the
  user's train (train + valid) history in time order. Sequences keep the last ``max_seq_len``
  items. Valid/test rows without any history cannot be fed to a sequence model and are dropped
  (counted in the summary); our leave-one-out split never produces them.
- labelled (feature) models: ``<name>.user`` / ``<name>.item`` with our encoded side features
  written back as their values (categorical: the raw value; bucket: the bucket's label such as
  ``[18,25)``; multi-hot: a ``token_seq`` of the set labels), so both libraries see the same
  features; code 0 (unknown) is an empty field.
- models that need the knowledge graph: ``<name>.kg`` (our triples, exact duplicates already
  dropped, raw entity and relation ids) and ``<name>.link`` (item -> entity of our linked items).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from recstudio.config import DataConfig
    from recstudio.data.dataset import FeatureTable, Interactions, PreparedData

KINDS = ("general", "sequential", "context", "knowledge")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Protocol:
    """How a pilot model's data is prepared when it is not registered (yet)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    """DataConfig values over the dataset spec's defaults; ``label: spec`` takes the spec's rule."""
    parts: tuple[str, ...] = ()


PILOTS: dict[str, Protocol] = {
    # ratings >= 3 (ml-100k's default), per-user random 0.8/0.1/0.1, split_seed 2020
    "LightGCN": Protocol("general"),
    # chronological leave-one-out
    "GRU4Rec": Protocol("sequential", {"split": "loo"}),
    # every row kept with the spec's label (rating >= 4), global random 80/10/10, side features
    "DeepFM": Protocol(
        "context", {"label": "spec", "min_rating": None, "split": "entry", "split_order": "random"}
    ),
    # the default protocol plus the knowledge graph
    "CKE": Protocol("knowledge", parts=("kg",)),
}


def model_protocol(model: str, dataset: str) -> tuple[DataConfig, str, tuple[str, ...], str]:
    """(data config, kind, parts, where from) of ``model`` on ``dataset``: the resolved config of
    a registered model, else ``PILOTS``."""
    from recstudio.data import load_spec, resolve_data_config
    from recstudio.experiment import resolve_config
    from recstudio.model.registry import all_models

    spec = load_spec(dataset)
    cls = next((c for c in all_models() if c.__name__ == model), None)
    if cls is not None:
        cfg = resolve_config(
            model=model, dataset=dataset, dataset_defaults=spec.defaults, dataset_labels=spec.labels
        )
        contract = cls.data_contract(cfg.model)
        if contract.labelled:
            kind = "context"
        elif "kg" in contract.parts:
            kind = "knowledge"
        elif cls.family == "sequential":
            kind = "sequential"
        else:
            kind = "general"
        return cfg.data, kind, tuple(contract.parts), "resolved config of the registered model"
    if model not in PILOTS:
        raise SystemExit(f"{model} is neither registered nor one of the pilots ({', '.join(PILOTS)})")
    proto = PILOTS[model]
    layer = {k: (spec.labels if v == "spec" else v) for k, v in proto.data.items()}
    return resolve_data_config(spec, layer), proto.kind, proto.parts, "pilot protocol (model not registered)"


# --------------------------------------------------------------------------- writing


def _clean(token: Any) -> str:
    """A token RecBole can read back: no separators (tab, newline, the space of token_seq) or quotes."""
    text = "" if token is None else str(token)
    for ch in ("\t", "\n", "\r", '"', " "):
        text = text.replace(ch, "_")
    return text


def _write(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")


def _raw(vocab: list[Any]) -> np.ndarray:
    """Raw id of each internal id as a clean token (index 0, padding, stays empty)."""
    return np.array([""] + [_clean(v) for v in vocab[1:]], dtype=object)


def _sequences(
    history: Interactions, rows: Interactions, tokens: np.ndarray, max_len: int, shift: bool
) -> list[str]:
    """Space-joined item tokens of each row's input sequence (``tokens[i]``: raw id of item i).

    ``shift``: ``rows`` is ``history`` itself (train): row i's input is the user's rows before it.
    Otherwise each row's input is the user's whole ``history`` (time order). Both keep the last
    ``max_len`` items; an empty string means no input.
    """
    if not len(rows):
        return []
    n_users = int(max(int(history.user.max()) if len(history) else 0, int(rows.user.max()))) + 1
    counts = np.bincount(history.user.numpy(), minlength=n_users)
    starts = np.cumsum(counts) - counts
    hist = tokens[history.item.numpy()]
    user = rows.user.numpy()
    if shift:
        lo = np.maximum(starts[user], np.arange(len(rows)) - max_len)
        hi = np.arange(len(rows))
    else:
        hi = starts[user] + counts[user]
        lo = np.maximum(starts[user], hi - max_len)
    return [" ".join(hist[a:b]) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]


def export_split(
    data: PreparedData, out: str | Path, name: str, kind: str, max_seq_len: int = 50
) -> dict[str, Any]:
    """Write ``data``'s splits as RecBole benchmark files under ``out/name``; returns a summary
    (rows per file, dropped rows, files written)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "context" and not data.labelled:
        raise ValueError("kind 'context' exports labelled data (data.label must be set)")
    if kind == "knowledge" and data.kg is None:
        raise ValueError("kind 'knowledge' needs the knowledge graph (prepare(..., parts=('kg',)))")
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    users, items = _raw(data.user_vocab), _raw(data.item_vocab)
    summary: dict[str, Any] = {"name": name, "kind": kind, "folder": str(folder), "rows": {}, "dropped": {}}

    histories = {"train": data.train}
    if kind == "sequential":
        from recstudio.data.dataset import Interactions

        histories["valid"] = data.train
        histories["test"] = Interactions.concat([data.train, data.valid])

    for split in SPLITS:
        inter = data.split(split)
        frame = pd.DataFrame(
            {
                "user_id:token": users[inter.user.numpy()],
                "item_id:token": items[inter.item.numpy()],
                "timestamp:float": inter.time.numpy(),
            }
        )
        if kind == "context":
            assert inter.label is not None
            frame["label:float"] = inter.label.numpy().astype(np.float64)
        if kind == "sequential":
            seqs = _sequences(histories[split], inter, items, max_seq_len, shift=split == "train")
            frame["item_id_list:token_seq"] = seqs
            # a train row with no earlier train row is input only; valid/test rows need a history
            keep = np.array([s != "" for s in seqs], dtype=bool)
            summary["dropped"][split] = int((~keep).sum())
            frame = frame[keep]
        _write(frame, folder / f"{name}.{split}.inter")
        summary["rows"][split] = len(frame)

    if kind == "context":
        features = data.manifest.get("features", {})
        for side, table, vocab in (
            ("user", data.user_features, users),
            ("item", data.item_features, items),
        ):
            if table.is_empty():
                continue
            labels = {f: info.get("labels") for f, info in features.get(side, {}).get("fields", {}).items()}
            frame = feature_frame(table, vocab, f"{side}_id", labels)
            _write(frame, folder / f"{name}.{side}")
            summary["rows"][side] = len(frame)

    if kind == "knowledge":
        kg = data.kg
        assert kg is not None
        entities, relations = _raw(kg.entity_vocab), _raw(kg.relation_vocab)
        triples = pd.DataFrame(
            {
                "head_id:token": entities[kg.head.numpy()],
                "relation_id:token": relations[kg.relation.numpy()],
                "tail_id:token": entities[kg.tail.numpy()],
            }
        )
        _write(triples, folder / f"{name}.kg")
        linked = kg.linked_items().numpy()
        link = pd.DataFrame(
            {"item_id:token": items[linked], "entity_id:token": entities[kg.item_entity.numpy()[linked]]}
        )
        _write(link, folder / f"{name}.link")
        summary["rows"].update(kg=len(triples), link=len(link))
    return summary


def feature_frame(
    table: FeatureTable, vocab: np.ndarray, id_column: str, labels: dict[str, list | None]
) -> pd.DataFrame:
    """One row per internal id 1..n: the id's raw token and each field's value (see module doc).

    ``labels[field][k - 1]`` is the value of code k; without labels the code itself is written."""
    n = len(vocab) - 1
    frame = pd.DataFrame({f"{id_column}:token": vocab[1:]})
    for name, codes in table.categorical.items():
        names = labels.get(name) or [str(k) for k in range(1, int(codes.max()) + 1)]
        values = np.array([""] + [_clean(v) for v in names], dtype=object)
        frame[f"{name}:token"] = values[codes.numpy()[1 : n + 1]]
    for name, matrix in table.multi_hot.items():
        names = labels.get(name) or [str(k) for k in range(matrix.shape[1])]
        tokens = np.array([_clean(v) for v in names], dtype=object)
        flags = matrix.numpy()[1 : n + 1] > 0
        frame[f"{name}:token_seq"] = [" ".join(tokens[row]) for row in flags]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="our model name (registered, or a pilot)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", required=True, help="folder that receives <name>/")
    parser.add_argument("--name", help="RecBole dataset name (default: <dataset>-<model>, lower case)")
    parser.add_argument("--max-seq-len", type=int, default=50, help="RecBole's MAX_ITEM_LIST_LENGTH")
    args = parser.parse_args()
    from recstudio.data import prepare

    data_config, kind, parts, origin = model_protocol(args.model, args.dataset)
    data = prepare(args.dataset, data_config, parts=parts)
    name = args.name or f"{Path(args.dataset).stem}-{args.model}".lower()
    summary = export_split(data, args.out, name, kind, args.max_seq_len)
    summary.update(protocol=origin, data=dataclasses.asdict(data_config))
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
