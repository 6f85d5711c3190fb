"""Relation parts (knowledge graph, social graph), labels and interaction context fields.

Tiny synthetic files only; the real datasets are covered in ``test_data_realdata.py``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recstudio.config import DataConfig
from recstudio.data import PartMissing, info, prepare
from recstudio.data import cache as cache_mod
from recstudio.data.dataset import Interactions
from recstudio.data.download import MissingFiles
from recstudio.data.spec import parse_spec
from recstudio.errors import ConfigError, DataError

# users 1..6 (user 6 has a single row), items 10..15; item 15 is rated only by user 6
RATINGS = [
    (1, 10, 5, 1),
    (1, 11, 2, 2),
    (1, 12, 4, 3),
    (2, 10, 1, 4),
    (2, 13, 5, 5),
    (2, 14, 3, 6),
    (3, 11, 4, 7),
    (3, 12, 5, 8),
    (3, 13, 2, 9),
    (4, 10, 3, 10),
    (4, 14, 4, 11),
    (4, 11, 5, 12),
    (5, 12, 1, 13),
    (5, 13, 4, 14),
    (5, 14, 5, 15),
    (6, 15, 4, 16),
]
# entities: e1..e4 linked to items 10, 11, 12, 15; "g1"/"g2" are genre entities (not items)
TRIPLES = [
    ("e1", "genre", "g1"),
    ("e2", "genre", "g1"),
    ("e3", "genre", "g2"),
    ("e4", "genre", "g2"),
    ("e1", "sequel", "e2"),
    ("e1", "genre", "g1"),  # duplicate
]
LINKS = [(10, "e1"), (11, "e2"), (12, "e3"), (15, "e4"), (99, "e4")]  # item 99 is not rated
FRIENDS = [(1, 2), (2, 1), (1, 3), (3, 3), (4, 5), (7, 1), (5, 4)]  # 3->3 self-loop, 7 unknown

SPEC = """\
name: toyparts
interactions:
  file: ratings.tsv
  format: tsv
  columns: [user, item, rating, ts, device]
  roles: {user: user, item: item, rating: rating, timestamp: ts}
knowledge_graph:
  folder: toy-kg
  triples: {file: toy.kg, format: atomic}
  links: {file: toy.link, format: atomic}
social:
  file: friends.tsv
  format: tsv
  roles: {source: a, target: b}
  directed: false
labels: "rating >= 4"
"""


def _write(root: Path, spec: str = SPEC) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}\t{i}\t{r}\t{t}\t{'ios' if t % 2 else 'web'}" for u, i, r, t in RATINGS]
    (root / "ratings.tsv").write_text("\n".join(lines) + "\n")
    kg = root / "toy-kg"
    kg.mkdir(exist_ok=True)
    body = "\n".join("\t".join(t) for t in TRIPLES)
    (kg / "toy.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n" + body + "\n")
    links = "\n".join(f"{i}\t{e}" for i, e in LINKS)
    (kg / "toy.link").write_text("item_id:token\tentity_id:token\n" + links + "\n")
    (root / "friends.tsv").write_text("a\tb\n" + "\n".join(f"{a}\t{b}" for a, b in FRIENDS) + "\n")
    (root / "toyparts.yaml").write_text(spec)
    return root / "toyparts.yaml"


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    monkeypatch.setenv("RECSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    return _write(tmp_path / "raw")


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"split": "loo", **kw})


# --------------------------------------------------------------------------- data model


def test_interactions_positional_and_optional_fields() -> None:
    a = Interactions(torch.tensor([2, 1]), torch.tensor([3, 4]), torch.ones(2), torch.tensor([5.0, 6.0]))
    assert a.label is None and a.context == {} and len(a) == 2
    b = Interactions(
        torch.tensor([1]), torch.tensor([9]), torch.ones(1), torch.tensor([1.0]), torch.tensor([0.0]), {}
    )
    assert Interactions.concat([a, b]).label is None  # only some parts are labelled
    a.label, a.context = torch.tensor([1.0, 0.0]), {"device": torch.tensor([1, 2])}
    b.context = {"device": torch.tensor([2])}
    both = Interactions.concat([a, b])
    assert both.user.tolist() == [1, 1, 2] and both.item.tolist() == [9, 4, 3]
    assert both.label.tolist() == [0.0, 0.0, 1.0] and both.context["device"].tolist() == [2, 2, 1]
    assert both.take(both.label == 0).item.tolist() == [9, 4]


# --------------------------------------------------------------------------- spec


def test_spec_parts_labels_and_raw_files(toy: Path) -> None:
    from recstudio.data import load_spec

    spec = load_spec(toy)
    assert spec.parts == ("kg", "social") and spec.labels == "rating >= 4"
    assert spec.knowledge_graph.triples.folder == "toy-kg" and spec.social.links.folder == "toyparts"
    assert spec.raw_files() == ["ratings.tsv"]
    assert spec.raw_files(("kg",)) == ["ratings.tsv", "toy-kg/toy.kg", "toy-kg/toy.link"]
    assert spec.raw_files(("social",)) == ["ratings.tsv", "friends.tsv"]
    assert spec.knowledge_graph.triples.source.format == "atomic" and spec.knowledge_graph.triples.roles == {}
    # the parts have their own keys: the entry's canonical content does not mention them
    assert "knowledge_graph" not in spec.canonical() and "social" not in spec.canonical()
    assert spec.part_canonical("kg")["spec"]["triples"]["file"] == "toy.kg"


def test_spec_format_from_recbole_extensions() -> None:
    spec = parse_spec(
        {
            "name": "x",
            "interactions": {"file": "x.inter", "roles": {"user": "user_id", "item": "item_id"}},
            "knowledge_graph": {"triples": {"file": "x.kg"}, "links": {"file": "x.link"}},
        }
    )
    assert spec.interactions.source.format == "atomic" and spec.interactions.source.sep == "\t"
    assert spec.interactions.source.header is True
    assert spec.knowledge_graph.links.source.format == "atomic"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"labels": "rating => 4"}, "'labels'"),
        ({"labels": "rating >= four"}, "'labels'"),
        ({"knowledge_graph": {"triples": {"file": "a.kg"}}}, "'knowledge_graph.links'"),
        ({"knowledge_graph": {"triples": {"file": "a.kg"}, "links": {"file": "a.link"}, "x": 1}}, "x'"),
        (
            {
                "knowledge_graph": {
                    "triples": {"file": "a.kg", "roles": {"head": "h"}},
                    "links": {"file": "a.link"},
                }
            },
            "'knowledge_graph.triples.roles.relation'",
        ),
        (
            {"social": {"file": "f.tsv", "roles": {"source": "a", "target": "b", "w": "c"}}},
            "'social.roles.w'",
        ),
        ({"social": {"file": "f.tsv", "directed": "yes"}}, "'social.directed'"),
        (
            {"social": {"file": "f.tsv", "roles": {"source": "a", "target": "a"}}},
            "'social.roles' must name a different",
        ),
        (
            {"social": {"file": "f.tsv", "columns": ["a", "b"], "roles": {"source": "a", "target": "c"}}},
            "'social.roles.target'",
        ),
        ({"download": [{"url": "http://x/a.zip", "files": {"a": "md5:1"}}]}, "'download[0].files.a"),
        ({"download": []}, "'download'"),
        (
            {
                "knowledge_graph": {
                    "triples": {"file": "a.kg", "format": "atomic", "header": False},
                    "links": {"file": "b"},
                }
            },
            "header",
        ),
    ],
)
def test_spec_errors_name_the_key(changes: dict, key: str) -> None:
    content = {
        "name": "toy",
        "interactions": {"file": "r.tsv", "columns": ["u", "i", "r"], "roles": {"user": "u", "item": "i"}},
        **changes,
    }
    with pytest.raises(DataError) as err:
        parse_spec(content)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_context_fields_spec_rules() -> None:
    base = {"file": "r.tsv", "columns": ["u", "i", "d"], "roles": {"user": "u", "item": "i"}}
    with pytest.raises(DataError, match=r"interactions.fields.d.type' must be one of categorical, bucket"):
        parse_spec(
            {"name": "t", "interactions": {**base, "fields": {"d": {"type": "multi_hot", "sep": "|"}}}}
        )
    with pytest.raises(DataError, match="reads column 'zz'"):
        parse_spec(
            {"name": "t", "interactions": {**base, "fields": {"d": {"type": "categorical", "column": "zz"}}}}
        )
    with pytest.raises(DataError, match="reserved"):
        parse_spec(
            {
                "name": "t",
                "interactions": {**base, "fields": {"rating": {"type": "categorical", "column": "d"}}},
            }
        )
    spec = parse_spec({"name": "t", "interactions": {**base, "fields": {"d": "categorical"}}})
    assert spec.interactions.to_dict()["fields"] == {"d": {"type": "categorical"}}
    plain = parse_spec({"name": "t", "interactions": base})
    assert "fields" not in plain.interactions.to_dict()  # cache keys of specs without fields unchanged


def test_several_download_sources_and_checksums() -> None:
    spec = parse_spec(
        {
            "name": "t",
            "interactions": {"file": "r.tsv", "columns": ["u", "i"], "roles": {"user": "u", "item": "i"}},
            "download": [
                {"url": "http://x/a.zip", "files": {"r.tsv": "sha256:" + "a" * 64}},
                {"url": "http://x/raw/k.kg", "files": {"k.kg": "sha256:" + "b" * 64}},
            ],
        }
    )
    assert len(spec.downloads) == 2 and spec.download.url == "http://x/a.zip"
    assert spec.checksum("r.tsv").endswith("a" * 64) and spec.checksum("other/k.kg").endswith("b" * 64)


# --------------------------------------------------------------------------- on demand


def test_parts_are_loaded_only_when_asked(toy: Path, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(tmp_path / "raw" / "toy-kg")  # a BPR user without the KG files
    (tmp_path / "raw" / "friends.tsv").unlink()
    data = prepare(toy, _cfg())
    assert data.kg is None and data.social is None and data.manifest["parts"] == {}
    with pytest.raises(
        MissingFiles, match=r"missing toy.kg, toy.link \(the dataset spec has no download url\)"
    ):
        prepare(toy, _cfg(), parts=("kg",))
    no_parts = parse_spec(
        {
            "name": "plain",
            "interactions": {
                "file": "ratings.tsv",
                "format": "tsv",
                "columns": ["u", "i", "r", "t", "d"],
                "roles": {"user": "u", "item": "i"},
            },
        }
    )
    with pytest.raises(PartMissing) as err:
        prepare(no_parts, _cfg(), data_dir=tmp_path / "raw", parts=("kg",))
    assert str(err.value) == "dataset 'plain' has no knowledge graph (a knowledge_graph section in its spec)"
    assert err.value.dataset == "plain" and err.value.part == "kg"
    with pytest.raises(PartMissing, match="has no social graph"):
        prepare(no_parts, _cfg(), data_dir=tmp_path / "raw", parts=("social",))
    with pytest.raises(DataError, match="unknown dataset part 'graph'"):
        prepare(toy, _cfg(), parts=("graph",))


def test_kg_remap(toy: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recstudio.data"):
        data = prepare(toy, _cfg(), parts=("kg",))
    kg = data.kg
    assert kg.entity_vocab == [None, "e1", "e2", "e3", "e4", "g1", "g2"]
    assert kg.relation_vocab == [None, "genre", "sequel"]
    assert (kg.num_entities, kg.num_relations, len(kg)) == (7, 3, 5)  # one duplicate dropped
    assert kg.triples().tolist() == [[1, 1, 5], [2, 1, 5], [3, 1, 6], [4, 1, 6], [1, 2, 2]]
    # items 10..15 are ids 1..6; 13 and 14 have no entity; the link of item 99 is dropped
    assert data.item_vocab == [None, 10, 11, 12, 13, 14, 15]
    assert kg.item_entity.tolist() == [0, 1, 2, 3, 0, 0, 4]
    assert kg.linked_items().tolist() == [1, 2, 3, 6]
    assert kg.summary() == {
        "triples": 5,
        "entities": 6,
        "relations": 2,
        "linked_items": 4,
        "item_entities": 4,
    }
    counts = data.manifest["parts"]["kg"]["counts"]
    assert counts["links_unknown_items"] == 1 and counts["duplicate_triples"] == 1
    assert any("1 to items not in the prepared data dropped" in r.message for r in caplog.records)
    for t in (kg.head, kg.relation, kg.tail, kg.item_entity):
        assert t.dtype == torch.int64 and t.device.type == "cpu"


def test_kg_links_follow_filters(toy: Path) -> None:
    # min_rating 5 keeps items 10, 11, 12, 13, 14 (item 15 is rated 4 only): its link is dropped
    data = prepare(toy, _cfg(min_rating=5), parts=("kg",))
    assert data.item_vocab == [None, 10, 11, 12, 13, 14]
    assert data.kg.item_entity.tolist() == [0, 1, 2, 3, 0, 0]
    assert data.kg.num_entities == 7  # entities that are no (kept) item stay


def test_social_undirected(toy: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recstudio.data"):
        data = prepare(toy, _cfg(), parts=("social",))
    g = data.social
    pairs = list(zip(g.source.tolist(), g.target.tolist()))
    # (1,2)+(2,1) is one link, (4,5)+(5,4) too; 3->3 and 7->1 are dropped
    assert pairs == [(1, 2), (1, 3), (2, 1), (3, 1), (4, 5), (5, 4)]
    assert g.weight.dtype == torch.float32 and g.weight.tolist() == [1.0] * 6 and not g.directed
    assert g.summary() == {"links": 3, "edges": 6, "users": 5, "directed": False}
    counts = data.manifest["parts"]["social"]["counts"]
    assert counts["unknown_users"] == 1 and counts["self_loops"] == 1
    lines = [r.message for r in caplog.records if "social graph" in r.message]
    assert (
        len(lines) == 1
        and "dropped 1 naming users not in the prepared interactions, 1 self-loops" in lines[0]
    )


def test_social_directed_with_weight_and_filtered_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = SPEC.replace(
        "  roles: {source: a, target: b}\n  directed: false",
        "  roles: {source: a, target: b, weight: w}\n  directed: true",
    )
    root = _write(tmp_path / "raw", spec).parent
    rows = [(1, 2, 0.5), (2, 1, 2.0), (1, 2, 9.0), (6, 1, 1.0), (1, 3, 1.5)]
    (root / "friends.tsv").write_text("a\tb\tw\n" + "\n".join(f"{a}\t{b}\t{w}" for a, b, w in rows) + "\n")
    data = prepare(root / "toyparts.yaml", _cfg(min_user_inter=2), cache_dir=tmp_path / "c", parts=["social"])
    g = data.social
    assert data.user_vocab == [None, 1, 2, 3, 4, 5]  # user 6 (one row) is filtered out
    assert list(zip(g.source.tolist(), g.target.tolist(), g.weight.tolist())) == [
        (1, 2, 0.5),
        (1, 3, 1.5),
        (2, 1, 2.0),
    ]
    assert g.directed and data.manifest["parts"]["social"]["counts"]["unknown_users"] == 1
    assert g.edge_index().shape == (2, 3)


def test_parts_cache_hit_corruption_and_keys(toy: Path, tmp_path: Path) -> None:
    first = prepare(toy, _cfg(), parts=("kg", "social"))
    assert first.manifest["cache_hit"] is False
    entry = cache_mod.entry_dir(tmp_path / "cache", "toyparts", first.cache_key)
    kg_dir = Path(first.manifest["parts"]["kg"]["path"])
    assert kg_dir.parent == entry / "parts" and kg_dir.name.startswith("kg-")
    assert sorted(p.name for p in kg_dir.iterdir()) == [
        "entity_vocab.parquet",
        "item_entity.parquet",
        "manifest.json",
        "relation_vocab.parquet",
        "triples.parquet",
    ]
    assert not list(kg_dir.rglob("*.pkl"))
    second = prepare(toy, _cfg(), parts=("kg", "social"))
    assert second.manifest["cache_hit"] is True
    assert all(p["cache_hit"] for p in second.manifest["parts"].values())
    assert (
        torch.equal(second.kg.triples(), first.kg.triples())
        and second.kg.entity_vocab == first.kg.entity_vocab
    )
    assert torch.equal(second.social.source, first.social.source)
    only_entry = prepare(toy, _cfg())
    assert only_entry.manifest["cache_hit"] is True and only_entry.kg is None
    # a corrupt part is rebuilt; the entry stays
    (kg_dir / "triples.parquet").write_bytes(b"garbage")
    again = prepare(toy, _cfg(), parts=("kg",))
    assert again.manifest["cache_hit"] is False and again.manifest["parts"]["kg"]["cache_hit"] is False
    assert torch.equal(again.kg.triples(), first.kg.triples())
    assert prepare(toy, _cfg(), parts=("kg",)).manifest["cache_hit"] is True
    # another KG file: a new part key, the same entry key
    kg_file = tmp_path / "raw" / "toy-kg" / "toy.kg"
    kg_file.write_text(kg_file.read_text() + "g1\tsub\tg2\n")
    changed = prepare(toy, _cfg(), parts=("kg",))
    assert changed.cache_key == first.cache_key and len(changed.kg) == 6
    assert changed.manifest["parts"]["kg"]["key"] != first.manifest["parts"]["kg"]["key"]


def test_entry_key_ignores_declared_parts(toy: Path, tmp_path: Path) -> None:
    with_parts = prepare(toy, _cfg())
    plain = tmp_path / "raw" / "plain.yaml"
    plain.write_text(SPEC.split("knowledge_graph:")[0].replace("name: toyparts", "name: toyparts"))
    assert prepare(plain, _cfg()).cache_key == with_parts.cache_key


# --------------------------------------------------------------------------- labels


def test_label_rule_on_rating(toy: Path) -> None:
    data = prepare(toy, _cfg(label="rating >= 4"))
    assert data.labelled and not prepare(toy, _cfg()).labelled
    rows = Interactions.concat([data.train, data.valid, data.test])
    assert len(rows) == len(RATINGS)  # every row passes
    assert rows.label.dtype == torch.float32
    assert torch.equal(rows.label, (rows.rating >= 4).float())  # ratings keep their raw values
    assert sorted(rows.rating.tolist()) == sorted(float(r) for _, _, r, _ in RATINGS)
    pos = data.positives("train")
    assert bool((pos.label == 1).all()) and len(pos) == int(data.train.label.sum())
    assert data.item_popularity().sum() == len(pos)
    shares = data.label_summary()
    assert set(shares) == {"train", "valid", "test"}
    hit = prepare(toy, _cfg(label="rating >= 4"))
    assert hit.manifest["cache_hit"] and torch.equal(hit.train.label, data.train.label)
    assert hit.manifest["options"]["label"] == "rating >= 4"
    assert prepare(toy, _cfg(label="rating > 4")).cache_key != data.cache_key


def test_label_rule_with_min_rating_and_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = _write(tmp_path / "raw").parent
    with open(root / "ratings.tsv", "a") as fh:
        fh.write("1\t10\t3\t20\tweb\n")  # a later rating of (1, 10): the one kept, label 0
    data = prepare(root / "toyparts.yaml", _cfg(label="rating >= 4", min_rating=2), cache_dir=tmp_path / "c")
    rows = Interactions.concat([data.train, data.valid, data.test])
    assert len(rows) == len(RATINGS) + 1 - 2 - 1  # min_rating drops the two 1s, one (1, 10) row goes
    assert bool((rows.rating >= 2).all()) and torch.equal(rows.label, (rows.rating >= 4).float())
    first = (rows.user == 1) & (rows.item == 1)
    assert rows.rating[first].tolist() == [3.0] and rows.label[first].tolist() == [0.0]


def test_label_rule_on_other_column_and_timestamp(toy: Path) -> None:
    data = prepare(toy, _cfg(label="ts > 8"))
    rows = Interactions.concat([data.train, data.valid, data.test])
    assert torch.equal(rows.label, (rows.time > 8).float())
    assert rows.rating.max() == 5  # raw ratings
    spec = SPEC.replace(
        "columns: [user, item, rating, ts, device]", "columns: [user, item, rating, ts, score]"
    )
    root = _write(toy.parent.parent / "raw2", spec).parent
    lines = [f"{u}\t{i}\t{r}\t{t}\t{t % 3}" for u, i, r, t in RATINGS]
    (root / "ratings.tsv").write_text("\n".join(lines) + "\n")
    other = prepare(root / "toyparts.yaml", _cfg(label="score == 0"))
    rows = Interactions.concat([other.train, other.valid, other.test])
    assert torch.equal(rows.label, (rows.time % 3 == 0).float())


@pytest.mark.parametrize("rule", ["rating >= ", "rating ~ 4", "rating >= x", ">= 4", "rating >= 4 5"])
def test_malformed_label_rule(toy: Path, rule: str) -> None:
    with pytest.raises(ConfigError, match=r"config key 'data.label' must be a rule '<column> <op> <number>'"):
        prepare(toy, _cfg(label=rule))


def test_label_rule_on_missing_column(toy: Path) -> None:
    with pytest.raises(DataError) as err:
        prepare(toy, _cfg(label="clicks >= 1"))
    msg = str(err.value)
    assert "column 'clicks'" in msg and "its columns are: user, item, rating, ts, device" in msg
    assert "data.label='clicks >= 1'" in msg and "\n" not in msg


# --------------------------------------------------------------------------- context fields


def test_interaction_context_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = SPEC.replace(
        "  roles: {user: user, item: item, rating: rating, timestamp: ts}\n",
        "  roles: {user: user, item: item, rating: rating, timestamp: ts}\n"
        "  fields:\n"
        "    device: categorical\n"
        "    period: {type: bucket, column: ts, bins: [5, 10]}\n",
    )
    root = _write(tmp_path / "raw", spec).parent
    data = prepare(root / "toyparts.yaml", _cfg(), cache_dir=tmp_path / "c")
    assert data.context_cardinality == {"device": 3, "period": 4}
    rows = Interactions.concat([data.train, data.valid, data.test])
    assert set(rows.context) == {"device", "period"}
    assert rows.context["device"].dtype == torch.int64
    odd = rows.time.long() % 2 == 1
    assert torch.equal(rows.context["device"], torch.where(odd, 1, 2))  # ios = 1, web = 2 (sorted)
    assert torch.equal(
        rows.context["period"], 1 + torch.bucketize(rows.time, torch.tensor([5.0, 10.0]), right=True)
    )
    hit = prepare(root / "toyparts.yaml", _cfg(), cache_dir=tmp_path / "c")
    assert hit.manifest["cache_hit"] and hit.context_cardinality == data.context_cardinality
    assert torch.equal(hit.test.context["device"], data.test.context["device"])


# --------------------------------------------------------------------------- readers and bad input


def test_atomic_interactions_and_default_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "raw"
    root.mkdir()
    inter = "user_id:token\titem_id:token\trating:float\n" + "\n".join(
        f"{u}\t{i}\t{r}" for u, i, r, _ in RATINGS
    )
    (root / "toy.inter").write_text(inter + "\n")
    # no roles and other column names: the first three / two columns
    (root / "toy.kg").write_text("h:token\tr:token\tt:token\textra:float\n" + "e1\tgenre\tg1\t0.5\n")
    (root / "toy.link").write_text("iid:token\teid:token\n10\te1\n")
    (root / "a.yaml").write_text(
        "name: a\ninteractions: {file: toy.inter, roles: {user: user_id, item: item_id, rating: rating}}\n"
        "knowledge_graph: {triples: {file: toy.kg}, links: {file: toy.link}}\n"
    )
    data = prepare(root / "a.yaml", _cfg(), cache_dir=tmp_path / "c", parts=("kg",))
    assert len(Interactions.concat([data.train, data.valid, data.test])) == len(RATINGS)
    assert data.kg.triples().tolist() == [[1, 1, 2]] and data.kg.item_entity[1].item() == 1


def test_triple_file_with_two_columns(toy: Path, tmp_path: Path) -> None:
    (tmp_path / "raw" / "toy-kg" / "toy.kg").write_text("head_id:token\ttail_id:token\ne1\tg1\n")
    with pytest.raises(DataError) as err:
        prepare(toy, _cfg(), parts=("kg",))
    msg = str(err.value)
    assert "toy.kg" in msg and "has 2 columns (head_id, tail_id)" in msg and "head, relation, tail" in msg


def test_link_to_unknown_entity(toy: Path, tmp_path: Path) -> None:
    links = "item_id:token\tentity_id:token\n10\te1\n11\tm.nowhere\n"
    (tmp_path / "raw" / "toy-kg" / "toy.link").write_text(links)
    with pytest.raises(DataError) as err:
        prepare(toy, _cfg(), parts=("kg",))
    msg = str(err.value)
    assert "toy.link' line 3: unknown entity 'm.nowhere'" in msg and "toy.kg" in msg


def test_social_roles_name_a_missing_column(toy: Path, tmp_path: Path) -> None:
    (tmp_path / "raw" / "friends.tsv").write_text("userID\tfriendID\n1\t2\n")
    with pytest.raises(DataError) as err:
        prepare(toy, _cfg(), parts=("social",))
    msg = str(err.value)
    assert "social.roles names columns 'a', 'b'" in msg and "its columns are: userID, friendID" in msg


def test_cli_prepare_exits_2_with_one_line(toy: Path, tmp_path: Path) -> None:
    (tmp_path / "raw" / "toy-kg" / "toy.kg").write_text("head_id:token\ttail_id:token\ne1\tg1\n")
    env_cmd = [sys.executable, "-m", "recstudio", "datasets", "prepare", str(toy), "-q"]
    out = subprocess.run(env_cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: file ") and "has 2 columns" in lines[0]
    out = subprocess.run(env_cmd + ["-s", "label=clicks>=1"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "'clicks'" in out.stderr


# --------------------------------------------------------------------------- info


def test_info_shows_parts_and_labels(toy: Path, tmp_path: Path) -> None:
    result = info(toy, {"split": "loo"})
    assert result["parts"]["kg"]["available"] and result["parts"]["kg"]["triples"] == 5
    assert result["parts"]["social"]["links"] == 3 and result["parts"]["social"]["directed"] is False
    labels = result["labels"]
    assert labels["rule"] == "rating >= 4" and labels["source"] == "spec"
    assert 0 < labels["positive_share"]["train"] < 1
    json.dumps(result)
    (tmp_path / "raw" / "friends.tsv").unlink()
    result = info(toy, {"split": "loo"})
    assert (
        result["parts"]["social"]["available"] is False and "friends.tsv" in result["parts"]["social"]["why"]
    )
    assert result["parts"]["kg"]["available"]
    with pytest.raises(MissingFiles):
        info(toy, {"split": "loo"}, parts=("social",))
    labelled = info(toy, {"split": "loo", "label": "rating >= 5"}, parts=())
    assert labelled["labels"]["source"] == "data.label" and labelled["labels"]["rule"] == "rating >= 5"


def test_info_text_shows_parts_and_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from recstudio.data.cli import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    monkeypatch.setenv("RECSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    spec = _write(tmp_path / "raw")
    (tmp_path / "raw" / "friends.tsv").unlink()
    runner = CliRunner()
    out = runner.invoke(datasets, ["info", str(spec), "-s", "split=loo"])
    assert out.exit_code == 0, out.output
    assert "kg: 5 triples, 6 entities, 2 relations; 4 items linked" in out.output
    assert "social: not available: dataset 'toyparts' is missing friends.tsv" in out.output
    assert "labels: rating >= 4 (the spec's rule); positive share: train" in out.output
    out = runner.invoke(datasets, ["prepare", str(spec), "-s", "split=loo", "--parts", "kg", "--json"])
    result = json.loads(out.output)
    assert list(result["parts"]) == ["kg"] and result["parts"]["kg"]["cache_hit"] is True
    out = runner.invoke(datasets, ["prepare", str(spec), "--parts", "kg,social"])
    assert "missing friends.tsv" in str(out.exception)
