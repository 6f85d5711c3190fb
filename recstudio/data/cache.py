"""The parquet cache of prepared datasets: content-addressed, atomic, lock-guarded, no pickle.

Key: sha256 over the cache format version, the spec's canonical content, the sha256 of every raw
file, and every DataConfig field. Entry: ``<root>/<name>-<key[:16]>/`` holding
``train/valid/test.parquet`` (user, item, rating, time), ``user_vocab/item_vocab.parquet`` (raw
id of each internal id, row 0 = padding), ``user_features/item_features.parquet`` when the spec
has features, and ``manifest.json``, written last, which lists every file with its size.

Labelled data adds a ``label`` column to the split files, interaction context fields one
``ctx.<field>`` column each (their cardinalities are in the manifest).

Relation parts (knowledge graph, social graph) are sub-entries built on demand:
``<entry>/parts/<part>-<partkey[:16]>/`` with their own parquet files and manifest, keyed by
sha256 over the part format version, the entry's key, the part's canonical spec and its raw
files' sha256. A BPR run never reads (or needs) the files of a part.

An entry (or part) is built in a temporary folder beside it and renamed into place, under a file
lock on ``<entry>.lock``; a process that waited on the lock finds the finished entry and loads
it. An entry whose manifest is missing or unreadable, or whose files are missing, have the wrong
size or cannot be read, is removed (with a warning) and rebuilt.

Raw-file digests are memoized in ``<root>/digests.json`` by (path, size, mtime), so a cache hit
costs a ``stat`` per raw file and reading the parquet files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recstudio.config import DataConfig
from recstudio.data.dataset import FeatureTable, Interactions, KnowledgeGraph, PreparedData, SocialGraph
from recstudio.data.download import file_digest
from recstudio.data.spec import DatasetSpec
from recstudio.errors import DataError

log = logging.getLogger("recstudio.data")

FORMAT_VERSION = 1
PART_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DIGESTS = "digests.json"
SPLITS = ("train", "valid", "test")


class CorruptEntry(Exception):
    """A cache entry that cannot be loaded; the message says why."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$RECSTUDIO_CACHE_DIR``, else ``./datasets/.cache``."""
    if cache_dir is not None:
        return Path(cache_dir).absolute()
    env = os.environ.get("RECSTUDIO_CACHE_DIR")
    return Path(env).absolute() if env else Path.cwd() / "datasets" / ".cache"


class DigestMemo:
    """File digests memoized by (absolute path, size, mtime) in ``<root>/digests.json``."""

    def __init__(self, root: Path) -> None:
        self.path = root / DIGESTS
        self.dirty = False
        try:
            self.memo: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.memo = {}

    def __call__(self, path: Path, kind: str = "sha256") -> str:
        path = Path(path).absolute()
        st = path.stat()
        record = self.memo.get(str(path))
        if not record or record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
            record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            self.memo[str(path)] = record
        if kind not in record:
            record[kind] = file_digest(path, kind)
            self.dirty = True
        return record[kind]

    def save(self) -> None:
        """Write the memo atomically; concurrent writers may lose an update, never corrupt it."""
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".digests-", dir=self.path.parent)
            with os.fdopen(fd, "w") as fh:
                json.dump(self.memo, fh, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as exc:  # a read-only cache root only costs re-hashing next time
            log.warning("could not write %s: %s", self.path, exc)


def data_options(cfg: DataConfig) -> dict[str, Any]:
    """DataConfig as a JSON-able dict with numbers normalized (3 and 3.0 give the same key)."""
    options = dataclasses.asdict(cfg)
    if options.get("label") is None:  # unlabelled data keeps the keys it had before labels existed
        options.pop("label", None)
    if not options.get("valid_from_train"):  # likewise for data without a held-out validation
        options.pop("valid_from_train", None)
    if not options.get("by_session"):  # and for data not grouped by session
        options.pop("by_session", None)
    if options["min_rating"] is not None:
        options["min_rating"] = float(options["min_rating"])
    options["split_ratio"] = [float(r) for r in options["split_ratio"]]
    return options


def _has_sessions(spec: DatasetSpec) -> bool:
    """Whether any interactions file of the spec names a session column (else by_session is moot)."""
    sources = [spec.interactions, *(spec.splits or {}).values()]
    return any(src is not None and "session" in src.roles for src in sources)


def cache_key(spec: DatasetSpec, cfg: DataConfig, digests: dict[str, str]) -> str:
    payload = {
        "format_version": FORMAT_VERSION,
        "spec": spec.canonical(),
        "raw_sha256": dict(sorted(digests.items())),
        "data": data_options(cfg if _has_sessions(spec) else dataclasses.replace(cfg, by_session=False)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def entry_dir(root: Path, name: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".") or "dataset"
    return root / f"{safe}-{key[:16]}"


def entry_lock(entry: Path):  # noqa: ANN201 - filelock.FileLock
    from filelock import FileLock

    entry.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(entry) + ".lock")


@contextlib.contextmanager
def locked(entry: Path, name: str) -> Iterator[None]:
    """Hold ``<entry>.lock``; say so when another process holds it. Unwritable root -> DataError."""
    from filelock import Timeout

    try:
        lock = entry_lock(entry)
        try:
            lock.acquire(timeout=0.1)
        except Timeout:
            log.info("%s: another process is preparing %s; waiting for it", name, entry.name)
            lock.acquire()
    except OSError as exc:
        raise DataError(
            f"cannot write the dataset cache in {entry.parent}: {exc.strerror or exc} "
            "(set $RECSTUDIO_CACHE_DIR or pass --cache-dir)"
        ) from None
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- writing


def write_entry(
    entry: Path,
    name: str,
    splits: dict[str, Interactions],
    user_vocab: pa.Array,
    item_vocab: pa.Array,
    features: dict[str, FeatureTable],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Write an entry atomically (temp folder + rename); return the manifest as written."""
    root = entry.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        for split, inter in splits.items():
            columns = {
                "user": inter.user.numpy(),
                "item": inter.item.numpy(),
                "rating": inter.rating.numpy(),
                "time": inter.time.numpy(),
            }
            if inter.label is not None:
                columns["label"] = inter.label.numpy()
            for field, codes in inter.context.items():
                columns[f"ctx.{field}"] = codes.numpy()
            # uncompressed (dictionary + RLE encoding only): ~2x faster to load than snappy
            pq.write_table(pa.table(columns), tmp / f"{split}.parquet", compression="none")
        for side, vocab in (("user", user_vocab), ("item", item_vocab)):
            raw = pa.concat_arrays([pa.nulls(1, type=vocab.type), vocab])
            pq.write_table(pa.table({"raw": raw}), tmp / f"{side}_vocab.parquet")
        for side, table in features.items():
            if not table.is_empty():
                pq.write_table(_feature_table(table), tmp / f"{side}_features.parquet")
        manifest = _finish(tmp, entry, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: wrote cache entry %s", name, entry)
    return manifest


def _finish(tmp: Path, target: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """List the files of ``tmp`` in the manifest, write it last, rename ``tmp`` to ``target``."""
    files = sorted(p.name for p in tmp.iterdir() if p.is_file())
    manifest = {**manifest, "files": {f: (tmp / f).stat().st_size for f in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str))
    os.rename(tmp, target)
    return manifest


def _feature_table(table: FeatureTable) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for field, codes in table.categorical.items():
        columns[f"cat.{field}"] = pa.array(codes.numpy())
    for field, matrix in table.multi_hot.items():
        flat = pa.array(matrix.numpy().reshape(-1))
        columns[f"multi.{field}"] = pa.FixedSizeListArray.from_arrays(flat, int(matrix.shape[1]))
    return pa.table(columns)


# --------------------------------------------------------------------------- reading


def check_entry(entry: Path, version: int = FORMAT_VERSION) -> dict[str, Any]:
    """Return the manifest of a complete entry (or part); raise CorruptEntry saying what is wrong."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        raise CorruptEntry("manifest.json is missing (an interrupted write?)") from None
    except (OSError, ValueError) as exc:
        raise CorruptEntry(f"manifest.json is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CorruptEntry("manifest.json lists no files")
    if manifest.get("format_version") != version:
        raise CorruptEntry(f"format version {manifest.get('format_version')} != {version}")
    for name, size in manifest["files"].items():
        path = entry / name
        if not path.is_file():
            raise CorruptEntry(f"{name} is missing")
        if path.stat().st_size != size:
            raise CorruptEntry(f"{name} has {path.stat().st_size} bytes, the manifest says {size}")
    return manifest


def load_entry(entry: Path) -> PreparedData:
    """Load a complete entry (raises CorruptEntry). Reads parquet only: no parsing, no pickle."""
    import torch

    manifest = check_entry(entry)
    try:
        splits = {}
        for split in SPLITS:
            table = pq.read_table(entry / f"{split}.parquet")
            splits[split] = Interactions(
                *(_tensor(table[col]) for col in ("user", "item", "rating", "time")),
                label=_tensor(table["label"]) if "label" in table.column_names else None,
                context={
                    col.partition(".")[2]: _tensor(table[col])
                    for col in table.column_names
                    if col.startswith("ctx.")
                },
            )
        context_info = (manifest.get("context") or {}).get("fields", {})
        context_cardinality = {f: int(d["cardinality"]) for f, d in context_info.items()}
        vocabs = {
            side: pq.read_table(entry / f"{side}_vocab.parquet")["raw"].to_pylist()
            for side in ("user", "item")
        }
        features = {}
        for side in ("user", "item"):
            path = entry / f"{side}_features.parquet"
            info = manifest.get("features", {}).get(side) or {}
            features[side] = _read_features(path, info, torch) if path.is_file() else FeatureTable()
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as exc:
        raise CorruptEntry(f"unreadable parquet: {exc}") from None
    return PreparedData(
        name=manifest["name"],
        num_users=len(vocabs["user"]),
        num_items=len(vocabs["item"]),
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        user_vocab=vocabs["user"],
        item_vocab=vocabs["item"],
        user_features=features["user"],
        item_features=features["item"],
        manifest=manifest,
        context_cardinality=context_cardinality,
    )


def _tensor(column: pa.ChunkedArray):  # noqa: ANN202 - torch.Tensor
    import torch

    array = column.to_numpy()
    if not array.flags.writeable:  # zero-copy views of Arrow memory are read-only
        array = array.copy()
    return torch.from_numpy(array)


def _read_features(path: Path, info: dict[str, Any], torch: Any) -> FeatureTable:
    table = pq.read_table(path)
    out = FeatureTable()
    for name in table.column_names:
        kind, _, field = name.partition(".")
        column = table[name].combine_chunks()
        if kind == "cat":
            out.categorical[field] = torch.from_numpy(np.array(column.to_numpy(), copy=True))
            out.cardinality[field] = int(info["fields"][field]["cardinality"])
        else:
            width = column.type.list_size
            flat = np.array(column.flatten().to_numpy(), dtype=np.float32, copy=True)
            out.multi_hot[field] = torch.from_numpy(flat.reshape(len(column), width))
    return out


def try_load(entry: Path, repair: bool = False) -> PreparedData | None:
    """Load ``entry`` if it is complete; None when absent. With ``repair`` (hold the lock!) a
    corrupt entry is removed with a warning, so the caller rebuilds it."""
    if not entry.exists():
        return None
    try:
        return load_entry(entry)
    except CorruptEntry as exc:
        if repair:
            log.warning("cache entry %s is corrupt (%s); removing it and rebuilding", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
        return None


# --------------------------------------------------------------------------- relation parts


def part_key(entry_key: str, spec: DatasetSpec, part: str, digests: dict[str, str]) -> str:
    """sha256 over the part format version, the entry's key, the part's canonical spec and the
    sha256 of the part's raw files."""
    payload = {
        "format_version": PART_FORMAT_VERSION,
        "entry": entry_key,
        "spec": spec.part_canonical(part),
        "raw_sha256": dict(sorted(digests.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def part_dir(entry: Path, part: str, key: str) -> Path:
    return entry / "parts" / f"{part}-{key[:16]}"


def write_part(
    target: Path, name: str, graph: KnowledgeGraph | SocialGraph, manifest: dict[str, Any]
) -> dict:
    """Write a relation part atomically (temp folder beside it + rename); return its manifest."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)
        if isinstance(graph, KnowledgeGraph):
            triples = {
                "head": graph.head.numpy(),
                "relation": graph.relation.numpy(),
                "tail": graph.tail.numpy(),
            }
            pq.write_table(pa.table(triples), tmp / "triples.parquet", compression="none")
            pq.write_table(pa.table({"entity": graph.item_entity.numpy()}), tmp / "item_entity.parquet")
            for kind, vocab in (("entity", graph.entity_vocab), ("relation", graph.relation_vocab)):
                pq.write_table(pa.table({"raw": pa.array(vocab)}), tmp / f"{kind}_vocab.parquet")
            manifest = {**manifest, "num_entities": graph.num_entities, "num_relations": graph.num_relations}
        else:
            edges = {
                "source": graph.source.numpy(),
                "target": graph.target.numpy(),
                "weight": graph.weight.numpy(),
            }
            pq.write_table(pa.table(edges), tmp / "edges.parquet", compression="none")
            manifest = {**manifest, "directed": graph.directed}
        manifest = _finish(tmp, target, {"format_version": PART_FORMAT_VERSION, **manifest})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s: wrote cache part %s", name, target)
    return manifest


def load_part(target: Path) -> tuple[KnowledgeGraph | SocialGraph, dict[str, Any]]:
    """Load a complete part (raises CorruptEntry): parquet and JSON only."""
    manifest = check_entry(target, PART_FORMAT_VERSION)
    try:
        if manifest.get("part") == "kg":
            triples = pq.read_table(target / "triples.parquet")
            graph: KnowledgeGraph | SocialGraph = KnowledgeGraph(
                head=_tensor(triples["head"]),
                relation=_tensor(triples["relation"]),
                tail=_tensor(triples["tail"]),
                num_entities=int(manifest["num_entities"]),
                num_relations=int(manifest["num_relations"]),
                item_entity=_tensor(pq.read_table(target / "item_entity.parquet")["entity"]),
                entity_vocab=pq.read_table(target / "entity_vocab.parquet")["raw"].to_pylist(),
                relation_vocab=pq.read_table(target / "relation_vocab.parquet")["raw"].to_pylist(),
            )
            if len(graph.entity_vocab) != graph.num_entities:
                raise CorruptEntry("entity_vocab.parquet does not match num_entities")
        elif manifest.get("part") == "social":
            edges = pq.read_table(target / "edges.parquet")
            graph = SocialGraph(
                source=_tensor(edges["source"]),
                target=_tensor(edges["target"]),
                weight=_tensor(edges["weight"]),
                directed=bool(manifest["directed"]),
            )
        else:
            raise CorruptEntry(f"unknown part {manifest.get('part')!r}")
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as exc:
        raise CorruptEntry(f"unreadable parquet: {exc}") from None
    return graph, manifest


def try_load_part(
    target: Path, repair: bool = False
) -> tuple[KnowledgeGraph | SocialGraph, dict[str, Any]] | None:
    """Like ``try_load`` for a part: None when absent (or corrupt; removed with ``repair``)."""
    if not target.exists():
        return None
    try:
        return load_part(target)
    except CorruptEntry as exc:
        if repair:
            log.warning("cache part %s is corrupt (%s); removing it and rebuilding", target, exc)
            shutil.rmtree(target, ignore_errors=True)
        return None


# --------------------------------------------------------------------------- list / clear


def list_entries(root: Path) -> list[dict[str, Any]]:
    """One dict per cache entry: name, key, path, size (bytes), created, options, complete."""
    rows = []
    if not root.is_dir():
        return rows
    for entry in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        try:
            manifest = check_entry(entry)
            complete, problem = True, None
        except CorruptEntry as exc:
            manifest, complete, problem = {}, False, str(exc)
        rows.append(
            {
                "name": manifest.get("name", entry.name.rsplit("-", 1)[0]),
                "key": manifest.get("key", entry.name.rsplit("-", 1)[-1]),
                "path": str(entry),
                "size": size,
                "created": manifest.get("created"),
                "options": manifest.get("options", {}),
                "summary": manifest.get("summary", {}),
                "complete": complete,
                "problem": problem,
            }
        )
    return rows


def clear(root: Path, name: str | None = None) -> int:
    """Remove the entries of dataset ``name`` (all entries when None); return how many."""
    removed = 0
    for row in list_entries(root):
        if name is None or row["name"] == name:
            entry = Path(row["path"])
            with entry_lock(entry):
                shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    if name is None and root.is_dir():
        stale = time.time() - 3600  # a younger temp folder may belong to a build in progress
        for leftover in root.iterdir():
            if leftover.name.startswith(".tmp-") and leftover.is_dir() and leftover.stat().st_mtime < stale:
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.name == DIGESTS:
                leftover.unlink(missing_ok=True)
    return removed


def created_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
