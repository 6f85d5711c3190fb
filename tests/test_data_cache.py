"""The parquet cache: hit/miss, invalidation, corruption repair, concurrent preparers, list/clear."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recstudio.config import DataConfig
from recstudio.data import cache as cache_mod
from recstudio.data import clear_cache, info, list_cache, prepare
from recstudio.errors import DataError

SPEC = """\
name: toy
interactions:
  file: ratings.tsv
  format: tsv
  columns: [user, item, rating, ts]
  roles: {user: user, item: item, rating: rating, timestamp: ts}
user_features:
  file: users.csv
  sep: "|"
  columns: [uid, age, gender]
  id: uid
  fields:
    age: {type: bucket, bins: [20, 40]}
    gender: categorical
defaults:
  data: {min_rating: 2}
"""


def make_dataset(root: Path, seed: int = 0, n_users: int = 40, n_items: int = 50) -> Path:
    """A synthetic spec + raw files in ``root``; returns the spec path."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        for i in rng.choice(n_items, size=int(rng.integers(3, 15)), replace=False):
            rows.append(f"{u}\t{i + 1}\t{rng.integers(1, 6)}\t{rng.integers(1000, 2000)}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.tsv").write_text("\n".join(rows) + "\n")
    users = [f"{u}|{rng.integers(10, 70)}|{'MF'[u % 2]}" for u in range(1, n_users + 1)]
    (root / "users.csv").write_text("\n".join(users) + "\n")
    (root / "toy.yaml").write_text(SPEC)
    return root / "toy.yaml"


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    monkeypatch.delenv("RECSTUDIO_CACHE_DIR", raising=False)
    return make_dataset(tmp_path / "raw")


def _same(a, b) -> None:
    for split in ("train", "valid", "test"):
        for col in ("user", "item", "rating", "time"):
            assert torch.equal(getattr(getattr(a, split), col), getattr(getattr(b, split), col))
    assert a.user_vocab == b.user_vocab and a.item_vocab == b.item_vocab
    assert a.user_features.cardinality == b.user_features.cardinality
    for field, codes in a.user_features.categorical.items():
        assert torch.equal(codes, b.user_features.categorical[field])


def test_miss_then_hit_without_parsing(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = prepare(toy, cache_dir=tmp_path / "c")
    assert first.manifest["cache_hit"] is False
    assert first.manifest["options"]["min_rating"] == 2.0  # the spec's defaults apply
    assert first.num_users == len(first.user_vocab) and first.user_vocab[0] is None
    entry = cache_mod.entry_dir(tmp_path / "c", "toy", first.cache_key)
    assert entry.is_dir() and (entry / "manifest.json").is_file()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"train.parquet", "user_vocab.parquet", "user_features.parquet"}
    assert manifest["counts"]["raw"] > manifest["counts"]["min_rating"]

    def boom(*args, **kwargs):
        raise AssertionError("a cache hit must not read or preprocess raw files")

    monkeypatch.setattr("recstudio.data.readers.read_interactions", boom)
    monkeypatch.setattr("recstudio.data.preprocess.preprocess", boom)
    monkeypatch.setattr("recstudio.data.download.file_digest", boom)  # digests are memoized
    monkeypatch.setattr("recstudio.data.cache.file_digest", boom)
    second = prepare(toy, cache_dir=tmp_path / "c")
    assert second.manifest["cache_hit"] is True and second.cache_key == first.cache_key
    _same(first, second)
    assert not list((tmp_path / "c").rglob("*.pkl")) and not list((tmp_path / "c").rglob("*.pt"))


def test_key_changes_with_options_raw_files_and_spec(toy: Path, tmp_path: Path) -> None:
    c = tmp_path / "c"
    base = prepare(toy, cache_dir=c).cache_key
    assert prepare(toy, {"min_rating": 3}, cache_dir=c).cache_key != base
    assert prepare(toy, {"split_seed": 1}, cache_dir=c).cache_key != base
    assert prepare(toy, DataConfig(min_rating=2.0), cache_dir=c).cache_key == base
    assert prepare(toy, DataConfig(min_rating=2), cache_dir=c).cache_key == base  # 2 == 2.0
    spec_text = toy.read_text()
    toy.write_text(spec_text.replace("bins: [20, 40]", "bins: [30]"))
    assert prepare(toy, cache_dir=c).cache_key != base
    toy.write_text(spec_text)
    ratings = toy.parent / "ratings.tsv"
    ratings.write_text(ratings.read_text() + "1\t1\t5\t3000\n")
    changed = prepare(toy, cache_dir=c)
    assert changed.cache_key != base and changed.manifest["cache_hit"] is False
    assert len(list_cache(c)) == 5  # base, min_rating 3, seed 1, new bins, changed ratings


@pytest.mark.parametrize("damage", ["manifest", "missing_file", "truncated", "garbled"])
def test_corrupt_entry_is_rebuilt(
    toy: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    c = tmp_path / "c"
    good = prepare(toy, cache_dir=c)
    entry = cache_mod.entry_dir(c, "toy", good.cache_key)
    target = entry / "train.parquet"
    if damage == "manifest":
        (entry / "manifest.json").unlink()
    elif damage == "missing_file":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:50])
    else:  # same size, unreadable content
        target.write_bytes(b"\0" * target.stat().st_size)
    with caplog.at_level(logging.WARNING, logger="recstudio.data"):
        again = prepare(toy, cache_dir=c)
    assert again.manifest["cache_hit"] is False
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    _same(good, again)
    assert prepare(toy, cache_dir=c).manifest["cache_hit"] is True


def test_lookup_order_and_missing_files_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    (spec_dir / "toy.yaml").write_text(SPEC)
    with pytest.raises(DataError) as err:
        prepare(spec_dir / "toy.yaml", cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "missing ratings.tsv, users.csv" in msg and "no download url" in msg
    assert str(tmp_path / "datasets" / "toy") in msg and str(spec_dir) in msg
    make_dataset(tmp_path / "env" / "toy")  # $RECSTUDIO_DATA_DIR/<name>
    monkeypatch.setenv("RECSTUDIO_DATA_DIR", str(tmp_path / "env"))
    data = prepare(spec_dir / "toy.yaml", cache_dir=tmp_path / "c")
    assert data.manifest["raw_files"]["ratings.tsv"]["path"] == str(tmp_path / "env" / "toy" / "ratings.tsv")
    make_dataset(tmp_path / "explicit", seed=5)  # --data-dir DIR wins
    data = prepare(spec_dir / "toy.yaml", data_dir=tmp_path / "explicit", cache_dir=tmp_path / "c")
    assert data.manifest["raw_files"]["ratings.tsv"]["path"] == str(tmp_path / "explicit" / "ratings.tsv")


def test_default_cache_root_and_env(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = prepare(toy)
    assert (tmp_path / "datasets" / ".cache" / f"toy-{data.cache_key[:16]}").is_dir()
    assert (tmp_path / "datasets" / ".cache" / "digests.json").is_file()
    monkeypatch.setenv("RECSTUDIO_CACHE_DIR", str(tmp_path / "envcache"))
    prepare(toy)
    assert (tmp_path / "envcache" / f"toy-{data.cache_key[:16]}").is_dir()


def test_list_info_clear(toy: Path, tmp_path: Path) -> None:
    c = tmp_path / "c"
    prepare(toy, cache_dir=c)
    prepare(toy, {"split": "loo"}, cache_dir=c)
    rows = list_cache(c)
    assert [r["name"] for r in rows] == ["toy", "toy"] and all(r["complete"] for r in rows)
    assert {r["options"]["split"] for r in rows} == {"loo", "user_entry"} and all(r["size"] > 0 for r in rows)
    summary = info(toy, {"split": "loo"}, cache_dir=c)
    assert summary["cache_hit"] is True and summary["summary"]["users"] == 40
    assert summary["features"]["user"]["age"]["cardinality"] == 4
    assert clear_cache("other", c) == 0
    assert clear_cache("toy", c) == 2 and list_cache(c) == []


# --------------------------------------------------------------------------- two processes


def _prepare_in_child(spec: str, cache_dir: str, flag_dir: str) -> tuple[bool, str]:
    import hashlib

    from recstudio.data import prepare as child_prepare

    Path(flag_dir, f"started-{multiprocessing.current_process().pid}").touch()
    data = child_prepare(spec, cache_dir=cache_dir)
    digest = hashlib.sha256()
    for split in (data.train, data.valid, data.test):
        for col in (split.user, split.item, split.rating, split.time):
            digest.update(col.numpy().tobytes())
    return bool(data.manifest["cache_hit"]), digest.hexdigest()


def test_two_processes_prepare_once(toy: Path, tmp_path: Path) -> None:
    """Both children block on the entry lock (held here), then exactly one builds the entry."""
    c = tmp_path / "c"
    flags = tmp_path / "flags"
    flags.mkdir()
    key = cache_mod.cache_key(
        __import__("recstudio.data.spec", fromlist=["load_spec"]).load_spec(toy),
        DataConfig(min_rating=2.0),
        {
            "ratings.tsv": cache_mod.file_digest(toy.parent / "ratings.tsv"),
            "users.csv": cache_mod.file_digest(toy.parent / "users.csv"),
        },
    )
    entry = cache_mod.entry_dir(c, "toy", key)
    lock = cache_mod.entry_lock(entry)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        with lock:
            results = [pool.apply_async(_prepare_in_child, (str(toy), str(c), str(flags))) for _ in range(2)]
            deadline = time.monotonic() + 120
            while len(list(flags.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # let both reach the lock
            assert not entry.exists()
        outcomes = [r.get(timeout=120) for r in results]
    hits = sorted(hit for hit, _ in outcomes)
    assert hits == [False, True], "exactly one process must preprocess"
    assert outcomes[0][1] == outcomes[1][1], "both must load identical data"
    assert [p.name for p in c.iterdir() if p.is_dir()] == [entry.name]
