"""Datasets: specs, raw-file lookup and download, preprocessing, the parquet cache, training views.

``prepare(dataset, data_config, parts=())`` is the one entry point: it finds (or downloads) the
raw files, computes the cache key, and loads the cached entry, or builds it (read, filter, remap,
split, encode features, write parquet) under a file lock. Relation parts (``"kg"``,
``"social"``) are read only when asked for, each cached as its own sub-entry of the entry.
Heavy modules (torch, pyarrow) are imported inside the functions so ``import recstudio.data``
stays cheap.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recstudio.data.spec import PARTS, DatasetSpec, PartMissing, builtin_names, load_spec

if TYPE_CHECKING:
    from recstudio.config import DataConfig
    from recstudio.data.dataset import PreparedData

__all__ = [
    "PARTS",
    "DatasetSpec",
    "PartMissing",
    "builtin_names",
    "clear_cache",
    "info",
    "list_cache",
    "load_spec",
    "prepare",
]

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
    parts: tuple[str, ...] | list[str] = (),
) -> PreparedData:
    """Load ``dataset`` (built-in name, spec path or spec) prepared with ``data_config``.

    ``parts`` names the relation parts to load as well (``"kg"`` fills ``data.kg``,
    ``"social"`` fills ``data.social``); only their raw files are needed besides the
    interactions'. A part the spec does not declare raises ``PartMissing`` (a DataError naming
    the dataset and the part); missing raw files raise ``download.MissingFiles``.

    A cache hit reads parquet only (the raw files are just ``stat``-ed for the memoized digest
    check). ``manifest['cache_hit']`` says whether this call found the entry and every asked-for
    part in the cache (not stored on disk); ``manifest['parts'][part]`` holds each part's key,
    counts and own ``cache_hit``.
    """
    from recstudio.data import cache
    from recstudio.data.download import locate_files

    t0 = time.perf_counter()
    spec = dataset if isinstance(dataset, DatasetSpec) else load_spec(dataset, data_dir)
    cfg = resolve_data_config(spec, data_config)
    parts = tuple(dict.fromkeys(parts))
    for part in parts:
        spec.require_part(part)
    root = cache.cache_root(cache_dir)
    memo = cache.DigestMemo(root)
    paths = locate_files(spec, data_dir, download=download, digest=memo, parts=parts)
    digests = {name: memo(path, "sha256") for name, path in paths.items()}
    memo.save()
    entry_files = spec.raw_files()
    key = cache.cache_key(spec, cfg, {name: digests[name] for name in entry_files})
    entry = cache.entry_dir(root, spec.name, key)
    t_key = time.perf_counter() - t0

    data = cache.try_load(entry)
    hit = data is not None
    if data is None:
        with cache.locked(entry, spec.name):
            data = cache.try_load(entry, repair=True)  # another process may have built it meanwhile
            hit = data is not None
            if data is None:
                entry_paths = {name: paths[name] for name in entry_files}
                data = _build(spec, cfg, entry_paths, digests, key, entry)
    if hit:
        log.info("%s: cache hit %s (%.3f s, digest check %.3f s)", spec.name, entry.name, _since(t0), t_key)
    else:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in data.manifest["timings"].items())
        log.info("%s: prepared in %.2f s (%s; key %s)", spec.name, _since(t0), stages, key[:16])
    data.manifest["parts"] = {}
    for part in parts:
        hit = _attach_part(data, spec, part, paths, digests, entry) and hit
    data.manifest["cache_hit"] = hit
    return data


def _attach_part(
    data: PreparedData,
    spec: DatasetSpec,
    part: str,
    paths: dict[str, Path],
    digests: dict[str, str],
    entry: Path,
) -> bool:
    """Load (or build and cache) one relation part into ``data``; return whether it was a hit."""
    from recstudio.data import cache

    t0 = time.perf_counter()
    names = [spec.raw_file(rel).name for rel in spec.part_files(part)]
    key = cache.part_key(data.cache_key, spec, part, {n: digests[n] for n in names})
    target = cache.part_dir(entry, part, key)
    loaded = cache.try_load_part(target)
    hit = loaded is not None
    if loaded is None:
        with cache.locked(target, spec.name):
            loaded = cache.try_load_part(target, repair=True)  # built meanwhile by another process?
            hit = loaded is not None
            if loaded is None:
                loaded = _build_part(data, spec, part, paths, digests, key, target)
    graph, manifest = loaded
    setattr(data, part, graph)
    data.manifest["parts"][part] = {
        "key": key,
        "path": str(target),
        "summary": graph.summary(),
        "counts": manifest.get("counts", {}),
        "raw_files": manifest.get("raw_files", {}),
        "cache_hit": hit,
    }
    log.info("%s: %s part %s (%.3f s)", spec.name, part, "cache hit" if hit else "prepared", _since(t0))
    return hit


def _build_part(
    data: PreparedData,
    spec: DatasetSpec,
    part: str,
    paths: dict[str, Path],
    digests: dict[str, str],
    key: str,
    target: Path,
) -> tuple[Any, dict[str, Any]]:
    """Read a part's raw files, remap them to the entry's vocabularies, write the part."""
    import pyarrow as pa

    from recstudio.data import cache
    from recstudio.data.preprocess import build_kg, build_social
    from recstudio.data.readers import read_relation
    from recstudio.data.spec import LINK_ROLES, SOCIAL_ROLES, TRIPLE_ROLES, KnowledgeGraphSpec

    part_spec = spec.require_part(part)
    names = [spec.raw_file(rel).name for rel in spec.part_files(part)]
    graph: Any
    if isinstance(part_spec, KnowledgeGraphSpec):
        where: dict[str, tuple] = {}
        tables = {}
        for kind, rel, name, required in (
            ("triples", part_spec.triples, names[0], TRIPLE_ROLES),
            ("links", part_spec.links, names[1], LINK_ROLES),
        ):
            what = f"knowledge_graph.{kind}"
            tables[kind] = read_relation(rel, paths[name], kind, required, (), what)
            where[kind] = (paths[name], rel.source.header, rel.source.format == "parquet")
        (triples, triple_roles), (links, link_roles) = tables["triples"], tables["links"]
        item_vocab = pa.array(data.item_vocab[1:])
        graph, counts = build_kg(triples, triple_roles, links, link_roles, item_vocab, where, spec.name)
        roles = {"triples": triple_roles, "links": link_roles}
    else:
        assert spec.social is not None
        table, social_roles = read_relation(
            spec.social.links, paths[names[0]], "social", SOCIAL_ROLES, ("weight",), "social"
        )
        user_vocab = pa.array(data.user_vocab[1:])
        graph, counts = build_social(table, social_roles, user_vocab, spec.social.directed, spec.name)
        roles = {"social": social_roles}
    manifest = {
        "part": part,
        "name": spec.name,
        "key": key,
        "entry": data.cache_key,
        "created": cache.created_now(),
        "spec": spec.part_canonical(part),
        "roles": roles,
        "raw_files": {n: {"path": str(paths[n]), "sha256": digests[n]} for n in names},
        "counts": counts,
    }
    return graph, cache.write_part(target, spec.name, graph, manifest)


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _build(
    spec: DatasetSpec, cfg: DataConfig, paths: dict[str, Path], digests: dict[str, str], key: str, entry: Path
) -> PreparedData:
    from recstudio.data import cache
    from recstudio.data.dataset import FeatureTable, PreparedData
    from recstudio.data.preprocess import (
        encode_context,
        encode_features,
        extra_columns,
        label_rows,
        label_rule,
        preprocess,
    )
    from recstudio.data.readers import read_features, read_interactions

    timings: dict[str, float] = {}
    t = time.perf_counter()
    template = spec.interactions if spec.splits is None else next(iter(spec.splits.values()))
    assert template is not None
    rule = label_rule(cfg)
    raw = read_interactions(spec, paths, extra_columns(rule, template.roles, template.fields, cfg.label))
    context_info: dict[str, Any] = {}
    if rule is not None:
        raw.label = label_rows(raw, rule, template.roles)
    if template.fields:
        raw.context, context_info = encode_context(raw, template.fields)
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
    if context_info:
        manifest["context"] = {"fields": context_info}
    if rule is not None:
        manifest["labels"] = {
            "rule": cfg.label,
            "positive": {k: float(v.label.sum()) for k, v in splits.items()},
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
        context_cardinality={name: int(d["cardinality"]) for name, d in context_info.items()},
    )


def info(
    dataset: str | Path | DatasetSpec,
    data_config: DataConfig | dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = True,
    parts: tuple[str, ...] | list[str] | None = None,
) -> dict[str, Any]:
    """Counts and summary of a dataset under a config (prepares it if it is not cached).

    Relation parts: with ``parts=None`` every part the spec declares is prepared too, and a part
    whose raw files are missing is reported as ``{"available": False, "why": ...}`` instead of
    failing; explicit ``parts`` are required (missing files raise). ``labels`` shows the label
    rule in effect (``data.label``), else the spec's recommended rule applied over the same
    options (that labelled variant is prepared and cached too), with the share of label-1 rows
    per split.
    """
    import dataclasses

    from recstudio.data import cache
    from recstudio.data.download import MissingFiles

    spec = dataset if isinstance(dataset, DatasetSpec) else load_spec(dataset, data_dir)
    cfg = resolve_data_config(spec, data_config)
    required = tuple(parts) if parts is not None else ()
    opts = {"data_dir": data_dir, "cache_dir": cache_dir, "download": download}
    data = prepare(spec, cfg, parts=required, **opts)
    m = data.manifest
    result: dict[str, Any] = {
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
        "context": {
            f: {k: v for k, v in d.items() if k != "labels"}
            for f, d in (m.get("context") or {}).get("fields", {}).items()
        },
        "cache_hit": m.get("cache_hit"),
        "split": split_description(spec, cfg),
        "parts": {},
        "labels": None,
    }
    for part in required or spec.parts:
        if part in m.get("parts", {}):
            described = m["parts"][part]
        else:
            try:
                described = prepare(spec, cfg, parts=(part,), **opts).manifest["parts"][part]
            except MissingFiles as exc:
                result["parts"][part] = {"available": False, "why": str(exc)}
                continue
        result["parts"][part] = {
            "available": True,
            **described["summary"],
            "counts": described["counts"],
            "cache_hit": described["cache_hit"],
            "path": described["path"],
        }
    labelled, source = data, "data.label"
    if not data.labelled and spec.labels:
        labelled, source = prepare(spec, dataclasses.replace(cfg, label=spec.labels), **opts), "spec"
    if labelled.labelled:
        result["labels"] = {
            "rule": labelled.manifest.get("options", {}).get("label"),
            "source": source,
            "positive_share": labelled.label_summary(),
        }
    return result


def split_description(spec: DatasetSpec, cfg: DataConfig) -> dict[str, Any]:
    """How the splits were made: given by the spec's files (and any validation share held out
    of the given train file), or cut by ``data.split``."""
    if spec.splits is None:
        return {
            "given": False,
            "method": cfg.split,
            "ratio": list(cfg.split_ratio),
            "order": "time" if cfg.split == "loo" else cfg.split_order,
            "seed": cfg.split_seed,
        }
    out: dict[str, Any] = {"given": True, "files": {k: v.source.file for k, v in spec.splits.items()}}
    if cfg.valid_from_train > 0:
        out["valid_from_train"] = {"share": cfg.valid_from_train, "order": cfg.split_order}
    return out


def list_cache(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Cache entries: name, key, path, size, created, options, complete."""
    from recstudio.data import cache

    return cache.list_entries(cache.cache_root(cache_dir))


def clear_cache(name: str | None = None, cache_dir: str | Path | None = None) -> int:
    """Remove the cache entries of one dataset (all when ``name`` is None); return how many."""
    from recstudio.data import cache

    return cache.clear(cache.cache_root(cache_dir), name)
