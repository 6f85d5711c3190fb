"""Datasets: specs, raw-file lookup and download, preprocessing, the parquet cache, training views.

``prepare(dataset, data_config)`` is the one entry point: it finds (or downloads) the raw files,
computes the cache key, and loads the cached entry, or builds it (read, filter, remap, split,
encode features, write parquet) under a file lock. Heavy modules (torch, pyarrow) are imported
inside the functions so ``import recstudio.data`` stays cheap.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recstudio.data.spec import DatasetSpec, builtin_names, load_spec

if TYPE_CHECKING:
    from recstudio.config import DataConfig
    from recstudio.data.dataset import PreparedData

__all__ = ["DatasetSpec", "builtin_names", "clear_cache", "info", "list_cache", "load_spec", "prepare"]

log = logging.getLogger("recstudio.data")


def resolve_data_config(spec: DatasetSpec, data_config: DataConfig | dict[str, Any] | None) -> DataConfig:
    """A DataConfig is used as given (``config.resolve`` already merged the spec's defaults);
    None or a dict of overrides is layered over the spec's ``defaults.data``."""
    from recstudio.config import DataConfig, build_section, deep_merge
    from recstudio.data.preprocess import check_config

    if isinstance(data_config, DataConfig):
        cfg = data_config
    else:
        layer = deep_merge(spec.defaults.get("data") or {}, data_config or {})
        cfg = build_section(DataConfig, layer, "data")
    check_config(cfg)
    return cfg


def prepare(
    dataset: str | Path | DatasetSpec,
    data_config: DataConfig | dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> PreparedData:
    """Load ``dataset`` (built-in name, spec path or spec) prepared with ``data_config``.

    A cache hit reads parquet only (the raw files are just ``stat``-ed for the memoized digest
    check). ``manifest['cache_hit']`` says whether this call found the entry (not stored on disk).
    """
    from recstudio.data import cache
    from recstudio.data.download import locate_files

    t0 = time.perf_counter()
    spec = dataset if isinstance(dataset, DatasetSpec) else load_spec(dataset, data_dir)
    cfg = resolve_data_config(spec, data_config)
    root = cache.cache_root(cache_dir)
    memo = cache.DigestMemo(root)
    paths = locate_files(spec, data_dir, download=download, digest=memo)
    digests = {name: memo(path, "sha256") for name, path in paths.items()}
    memo.save()
    key = cache.cache_key(spec, cfg, digests)
    entry = cache.entry_dir(root, spec.name, key)
    t_key = time.perf_counter() - t0

    data = cache.try_load(entry)
    hit = data is not None
    if data is None:
        with cache.locked(entry, spec.name):
            data = cache.try_load(entry, repair=True)  # another process may have built it meanwhile
            hit = data is not None
            if data is None:
                data = _build(spec, cfg, paths, digests, key, entry)
    data.manifest["cache_hit"] = hit
    if hit:
        log.info("%s: cache hit %s (%.3f s, digest check %.3f s)", spec.name, entry.name, _since(t0), t_key)
    else:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in data.manifest["timings"].items())
        log.info("%s: prepared in %.2f s (%s; key %s)", spec.name, _since(t0), stages, key[:16])
    return data


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _build(
    spec: DatasetSpec, cfg: DataConfig, paths: dict[str, Path], digests: dict[str, str], key: str, entry: Path
) -> PreparedData:
    from recstudio.data import cache
    from recstudio.data.dataset import FeatureTable, PreparedData
    from recstudio.data.preprocess import encode_features, preprocess
    from recstudio.data.readers import read_features, read_interactions

    timings: dict[str, float] = {}
    t = time.perf_counter()
    raw = read_interactions(spec, paths)
    timings["read"] = time.perf_counter() - t
    log.info("%s: read %d interactions in %.2f s", spec.name, len(raw), timings["read"])

    t = time.perf_counter()
    out = preprocess(raw, cfg, spec.name)
    timings["preprocess"] = time.perf_counter() - t
    log.info("%s: filtered, remapped and split (%s) in %.2f s", spec.name, cfg.split, timings["preprocess"])

    t = time.perf_counter()
    features: dict[str, FeatureTable] = {"user": FeatureTable(), "item": FeatureTable()}
    feature_info: dict[str, Any] = {}
    for side, fspec, vocab in (
        ("user", spec.user_features, out.user_vocab),
        ("item", spec.item_features, out.item_vocab),
    ):
        if fspec is not None:
            what = f"{side}_features"
            table = read_features(fspec, paths[fspec.source.file], what)
            features[side], feature_info[side] = encode_features(table, fspec, vocab, what)
    timings["features"] = time.perf_counter() - t

    splits = {"train": out.train, "valid": out.valid, "test": out.test}
    n_inter = sum(len(s) for s in splits.values())
    users, items = len(out.user_vocab), len(out.item_vocab)
    manifest: dict[str, Any] = {
        "format_version": cache.FORMAT_VERSION,
        "name": spec.name,
        "key": key,
        "created": cache.created_now(),
        "spec_origin": str(spec.origin) if spec.origin else None,
        "spec": spec.canonical(),
        "raw_files": {name: {"path": str(paths[name]), "sha256": digests[name]} for name in paths},
        "options": cache.data_options(cfg),
        "counts": out.counts,
        "summary": {
            "users": users,
            "items": items,
            "interactions": n_inter,
            "train": len(out.train),
            "valid": len(out.valid),
            "test": len(out.test),
            "density": n_inter / max(1, users * items),
        },
        "features": feature_info,
        "timings": timings,
    }
    t = time.perf_counter()
    manifest = cache.write_entry(entry, spec.name, splits, out.user_vocab, out.item_vocab, features, manifest)
    timings["write"] = time.perf_counter() - t
    manifest["timings"] = timings  # the write time is known only now; the stored copy lacks it
    return PreparedData(
        name=spec.name,
        num_users=users + 1,
        num_items=items + 1,
        train=out.train,
        valid=out.valid,
        test=out.test,
        user_vocab=[None, *out.user_vocab.to_pylist()],
        item_vocab=[None, *out.item_vocab.to_pylist()],
        user_features=features["user"],
        item_features=features["item"],
        manifest=manifest,
    )


def info(
    dataset: str | Path | DatasetSpec,
    data_config: DataConfig | dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Counts and summary of a dataset under a config (prepares it if it is not cached)."""
    from recstudio.data import cache

    data = prepare(dataset, data_config, data_dir=data_dir, cache_dir=cache_dir, download=download)
    m = data.manifest
    return {
        "name": data.name,
        "key": data.cache_key,
        "path": str(cache.entry_dir(cache.cache_root(cache_dir), data.name, data.cache_key)),
        "summary": data.summary(),
        "counts": m.get("counts", {}),
        "options": m.get("options", {}),
        "raw_files": m.get("raw_files", {}),
        "features": {
            side: {
                f: {k: v for k, v in d.items() if k != "labels"} for f, d in feats.get("fields", {}).items()
            }
            for side, feats in m.get("features", {}).items()
        },
        "cache_hit": m.get("cache_hit"),
    }


def list_cache(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Cache entries: name, key, path, size, created, options, complete."""
    from recstudio.data import cache

    return cache.list_entries(cache.cache_root(cache_dir))


def clear_cache(name: str | None = None, cache_dir: str | Path | None = None) -> int:
    """Remove the cache entries of one dataset (all when ``name`` is None); return how many."""
    from recstudio.data import cache

    return cache.clear(cache.cache_root(cache_dir), name)
