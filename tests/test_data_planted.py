"""Planted synthetic data: the default is unchanged; the KG, social graph and labels carry the clusters."""

from __future__ import annotations

import torch

from recstudio.data.dataset import Interactions
from recstudio.testing import planted_data


def test_default_has_no_parts_or_labels() -> None:
    data = planted_data()
    assert data.kg is None and data.social is None and not data.labelled
    assert data.context_cardinality == {} and data.manifest["key"] == "planted-0"
    assert all(s.label is None and s.context == {} for s in (data.train, data.valid, data.test))


def test_parts_leave_the_interactions_alone() -> None:
    plain = planted_data(seed=3)
    full = planted_data(seed=3, kg=True, social=True, labels=True)
    assert full.manifest["key"] == "planted-3-kg-social-labels"
    for split in ("train", "valid", "test"):
        pos = full.positives(split)
        ref = plain.split(split)
        for col in ("user", "item", "time"):
            assert torch.equal(getattr(pos, col), getattr(ref, col))
    only_kg = planted_data(seed=3, kg=True)
    assert torch.equal(only_kg.train.item, plain.train.item) and only_kg.social is None


def test_labels_negatives_outside_the_cluster() -> None:
    data = planted_data(labels=True)
    assert data.labelled and data.context_cardinality == {"slot": 4}
    segment = data.user_features.categorical["segment"]
    group = data.item_features.categorical["group"]
    rows = Interactions.concat([data.train, data.valid, data.test])
    neg = rows.label == 0
    assert abs(float(rows.label.mean()) - 0.5) < 0.05
    assert bool((group[rows.item[neg]] != segment[rows.user[neg]]).all())
    pos_pairs = set(zip(rows.user[~neg].tolist(), rows.item[~neg].tolist()))
    assert not pos_pairs & set(zip(rows.user[neg].tolist(), rows.item[neg].tolist()))
    for split in ("valid", "test"):  # one positive and one negative per user
        s = data.split(split)
        assert torch.equal(torch.bincount(s.user[s.label == 1]), torch.bincount(s.user[s.label == 0]))
        assert int(s.label.sum()) == data.num_users - 1
    for s in (data.train, data.valid, data.test):
        assert s.context["slot"].dtype == torch.int64 and int(s.context["slot"].min()) >= 1
        assert int(s.context["slot"].max()) <= 3 and len(s.context["slot"]) == len(s)
        key = s.user * 1000 + s.time
        assert bool((key[1:] >= key[:-1]).all())  # sorted by (user, time)


def test_kg_carries_the_clusters() -> None:
    data = planted_data(kg=True)
    kg = data.kg
    group = data.item_features.categorical["group"]
    assert torch.equal(kg.item_entity, torch.arange(data.num_items))  # every item is an entity
    assert kg.num_entities > data.num_items  # and there are entities that are not items
    assert int(kg.head.min()) >= 1 and int(kg.tail.max()) < kg.num_entities
    assert int(kg.relation.min()) >= 1 and int(kg.relation.max()) < kg.num_relations
    belongs = kg.relation == 1
    clusters = kg.tail[belongs] - (data.num_items - 1)
    assert torch.equal(clusters, group[kg.head[belongs]])
    assert int((kg.relation == 4).sum()) > 0  # noise
    assert len(kg.entity_vocab) == kg.num_entities and len(kg.relation_vocab) == kg.num_relations
    assert len(set(map(tuple, kg.triples().tolist()))) == len(kg)


def test_social_mostly_within_cluster() -> None:
    data = planted_data(social=True)
    g = data.social
    segment = data.user_features.categorical["segment"]
    assert not g.directed and bool((g.source != g.target).all())
    pairs = set(zip(g.source.tolist(), g.target.tolist()))
    assert len(pairs) == len(g) and all((b, a) in pairs for a, b in pairs)
    same = (segment[g.source] == segment[g.target]).float().mean()
    assert same > 0.8
    assert int(g.source.min()) >= 1 and int(g.source.max()) < data.num_users
