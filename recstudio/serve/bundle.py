"""A served model's folder: everything needed to answer requests, without the training cache.

Layout (``write_bundle``)::

    config.yaml        the resolved config that trained the model
    model.ckpt         its best weights (a Lightning checkpoint, ``weights_only``)
    serving.json       model name, dataset, the recstudio version, the index's metric
    data/              the prepared data in the cache's own parquet format: id vocabularies
                       (raw ids), every split (histories to exclude, sequences to read) and
                       the relation parts the model needs (knowledge or social graph)
    items.faiss        item-tower models: an exact faiss index over the item vectors

The data folder is a cache entry, so it is read back with the cache's loader (parquet and JSON,
no pickle), and models are rebuilt exactly as training built them (graph adjacency, popularity,
features all come from the same tables).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from recstudio.errors import ConfigError

SERVING_FILE = "serving.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "model.ckpt"
DATA_DIR = "data"
INDEX_FILE = "items.faiss"
BUNDLE_FORMAT = 1


def _write_data(data: Any, target: Path) -> None:
    """``data`` (PreparedData) as a cache entry at ``target``, with its kg/social parts."""
    import pyarrow as pa

    from recstudio.data import cache

    manifest = {k: v for k, v in data.manifest.items() if k not in ("files", "cache_hit", "parts")}
    manifest["name"] = data.name
    # what the loader reads back from the manifest: code counts of features and context fields
    features = dict(manifest.get("features") or {})
    for side, table in (("user", data.user_features), ("item", data.item_features)):
        fields = {f: {"cardinality": int(n)} for f, n in table.cardinality.items()}
        features[side] = {**(features.get(side) or {}), "fields": fields}
    manifest["features"] = features
    context = dict(manifest.get("context") or {})
    context["fields"] = {f: {"cardinality": int(n)} for f, n in data.context_cardinality.items()}
    manifest["context"] = context
    manifest["format_version"] = cache.FORMAT_VERSION
    cache.write_entry(
        target,
        data.name,
        {"train": data.train, "valid": data.valid, "test": data.test},
        pa.array(list(data.user_vocab[1:])),
        pa.array(list(data.item_vocab[1:])),
        {"user": data.user_features, "item": data.item_features},
        manifest,
    )
    for part in ("kg", "social"):
        graph = getattr(data, part, None)
        if graph is not None:
            cache.write_part(target / "parts" / part, data.name, graph, {"part": part})


def _read_data(source: Path) -> Any:
    from recstudio.data import cache

    try:
        data = cache.load_entry(source)
        for part in ("kg", "social"):
            if (source / "parts" / part).is_dir():
                graph, _ = cache.load_part(source / "parts" / part)
                setattr(data, part, graph)
    except cache.CorruptEntry as exc:
        raise ConfigError(f"served model's data folder {source} is unreadable: {exc}") from None
    return data


def write_bundle(target: Path, cfg: Any, data: Any, checkpoint: str | Path, model: Any = None) -> Path:
    """Write the serving folder of a trained model at ``target`` (which must not exist).

    ``model``: the trained model (already holding the checkpoint's weights), used to build the
    item index of item-tower models; without it no index is written.
    """
    import recstudio

    target = Path(target)
    target.mkdir(parents=True)
    (target / CONFIG_FILE).write_text(cfg.to_yaml())
    shutil.copyfile(checkpoint, target / CHECKPOINT_FILE)
    _write_data(data, target / DATA_DIR)
    info: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "model": cfg.model_name,
        "dataset": cfg.dataset,
        "recstudio_version": recstudio.__version__,
        "index_metric": None,
    }
    metric = index_metric(model) if model is not None else None
    if metric is not None:
        from recstudio.serve.served import write_item_index

        write_item_index(model, metric, target / INDEX_FILE)
        info["index_metric"] = metric
    (target / SERVING_FILE).write_text(json.dumps(info, indent=2))
    return target


def read_bundle(source: str | Path) -> tuple[dict[str, Any], Any, Any, Path]:
    """(serving info, resolved config, PreparedData, checkpoint path) of a serving folder."""
    from recstudio.experiment import resolve_config

    source = Path(source)
    info_path = source / SERVING_FILE
    if not info_path.is_file():
        raise ConfigError(f"{source} is not a served RecStudio model (no {SERVING_FILE})")
    info = json.loads(info_path.read_text())
    if info.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{source}: serving format {info.get('format')} is not {BUNDLE_FORMAT}")
    cfg = resolve_config(config_files=[source / CONFIG_FILE])  # fully resolved: no spec needed
    return info, cfg, _read_data(source / DATA_DIR), source / CHECKPOINT_FILE


def index_metric(model: Any) -> str | None:
    """The faiss metric that ranks exactly as ``model`` scores, or None when its ranking is not a
    nearest-neighbour search over item vectors (tower-free models, the mlp scorer, a model that
    rewrites ``score_batch``): ``recstudio.eval.ann.check_ann_model``'s rule."""
    from recstudio.eval.ann import check_ann_model

    try:
        return check_ann_model(model)
    except ConfigError:
        return None
