"""Test helpers: planted synthetic data and the model contract suite's fit-and-evaluate.

The planted dataset has structure that every model family can find and popularity cannot:
users belong to clusters, each cluster owns a block of items arranged in a cyclic order, and
each user walks that order from a random start (with a little noise). Collaborative models
learn the cluster blocks; sequential models also learn "next in order". Items are equally
popular within and across clusters, so a popularity ranker is near random.

Splits are chronological leave-one-out (last item test, second last validation), which suits
every model family. Users and items carry features (cluster segment, item group, tags) so
feature-based models have fields to use.

Optional relation parts carry the same cluster structure (``planted_data(kg=True, social=True,
labels=True, ratings=True)``; all False gives exactly the default data):

- ``kg``: item i is entity i; every item ``belongs_to`` its cluster's entity and
  ``has_attribute`` one of its cluster's attribute entities, each attribute is ``part_of`` its
  cluster entity (cluster and attribute entities are not items), plus ``related`` noise triples
  between random item entities and random entities.
- ``social``: each user names a few friends, mostly (``social_homophily``) from its own cluster;
  undirected, stored in both directions, no self-loops.
- ``labels``: the walk rows are label 1; each user gets as many label-0 rows on items outside
  its cluster (never one of its positives). Positives and negatives are each split by the same
  leave-one-out rule (so the positives' split is today's, and valid/test hold one positive and
  one negative per user with at least three rows of each); one uninformative context field
  ``slot`` (codes 1..3) is added.
- ``ratings``: explicit ratings instead of 1.0 (for rating models such as PMF): 4 or 5 stars on
  the user's own cluster's items, 1 or 2 on other clusters' items (the walk's noise), and each
  user's train split also holds ``disliked_per_user`` 1-2 star rows on other clusters' items
  (valid and test keep the walk's rows, so the ranking targets are unchanged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recstudio.data.dataset import FeatureTable, Interactions, KnowledgeGraph, PreparedData, SocialGraph


def planted_data(
    num_users: int = 240,
    num_items: int = 120,
    num_clusters: int = 4,
    min_len: int = 12,
    max_len: int = 24,
    noise: float = 0.05,
    seed: int = 0,
    kg: bool = False,
    social: bool = False,
    labels: bool = False,
    ratings: bool = False,
    disliked_per_user: int = 6,
    kg_noise: float = 0.1,
    friends_per_user: int = 4,
    social_homophily: float = 0.9,
) -> PreparedData:
    """Build a small PreparedData with planted cluster and sequence structure (ids from 1).

    ``kg``, ``social``, ``labels`` and ``ratings`` add the parts, labels and ratings described in the module
    docstring (drawn from their own random stream, so the interactions stay the same)."""
    g = torch.Generator().manual_seed(seed)
    items_per_cluster = num_items // num_clusters
    cluster_of_user = torch.arange(num_users) % num_clusters
    # each cluster's items in a random cyclic order
    orders = torch.stack(
        [torch.randperm(items_per_cluster, generator=g) + c * items_per_cluster for c in range(num_clusters)]
    )
    lengths = torch.randint(min_len, max_len + 1, (num_users,), generator=g)
    starts = torch.randint(0, items_per_cluster, (num_users,), generator=g)
    max_l = int(lengths.max())
    steps = torch.arange(max_l)
    pos = (starts[:, None] + steps[None, :]) % items_per_cluster  # [U, max_l]
    walk = orders[cluster_of_user[:, None], pos]  # [U, max_l], 0-based item ids
    noisy = torch.rand(walk.shape, generator=g) < noise
    walk = torch.where(
        noisy, torch.randint(0, items_per_cluster * num_clusters, walk.shape, generator=g), walk
    )
    valid = steps[None, :] < lengths[:, None]
    user = torch.arange(num_users)[:, None].expand_as(walk)[valid] + 1
    item = walk[valid] + 1
    time = steps[None, :].expand_as(walk)[valid].double()
    # drop repeated (user, item) pairs, keeping the first occurrence, so history masking is exact
    key = user * (num_items + 1) + item
    order = torch.argsort(key * (max_l + 1) + time.long(), stable=True)
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = torch.zeros_like(first)
    keep[order[first]] = True
    user, item, time = user[keep], item[keep], time[keep]
    order = torch.argsort(time, stable=True)
    order = order[torch.argsort(user[order], stable=True)]
    user, item, time = user[order], item[order], time[order]

    split = _leave_one_out(user, num_users)
    parts = []
    for s in range(3):
        m = split == s
        parts.append(Interactions(user[m], item[m], torch.ones(int(m.sum())), time[m]))

    real_items = num_items
    item_group = torch.zeros(real_items + 1, dtype=torch.long)
    item_group[1:] = torch.arange(real_items) // items_per_cluster + 1
    item_group = item_group.clamp(max=num_clusters)
    tags = torch.zeros(real_items + 1, 3)
    tags[1:, 0] = (torch.arange(real_items) % 2).float()
    tags[1:, 1] = (torch.arange(real_items) % 3 == 0).float()
    tags[1:, 2] = 1.0
    user_segment = torch.zeros(num_users + 1, dtype=torch.long)
    user_segment[1:] = cluster_of_user + 1
    extra_g = torch.Generator().manual_seed(seed + 7919)  # the extras' own stream
    context_cardinality: dict[str, int] = {}
    if labels:
        parts = _planted_labels(parts, user, item, item_group, user_segment, num_clusters, extra_g)
        context_cardinality = {"slot": 4}
    if ratings:
        parts = _planted_ratings(parts, item_group, user_segment, disliked_per_user, extra_g)
    flags = [
        name for name, on in (("kg", kg), ("social", social), ("labels", labels), ("ratings", ratings)) if on
    ]
    return PreparedData(
        name="planted",
        num_users=num_users + 1,
        num_items=real_items + 1,
        train=parts[0],
        valid=parts[1],
        test=parts[2],
        user_vocab=[None, *range(1, num_users + 1)],
        item_vocab=[None, *range(1, real_items + 1)],
        user_features=FeatureTable(
            categorical={"segment": user_segment}, cardinality={"segment": num_clusters + 1}
        ),
        item_features=FeatureTable(
            categorical={"group": item_group},
            cardinality={"group": num_clusters + 1},
            multi_hot={"tags": tags},
        ),
        manifest={"key": "-".join([f"planted-{seed}", *flags]), "name": "planted", "split": "loo"},
        kg=_planted_kg(item_group, num_clusters, kg_noise, extra_g) if kg else None,
        social=(
            _planted_social(cluster_of_user, num_clusters, friends_per_user, social_homophily, extra_g)
            if social
            else None
        ),
        context_cardinality=context_cardinality,
    )


PLANTED_SPEC = """\
name: {name}
interactions:
  file: {name}.tsv
  format: tsv
  columns: [user_id, item_id, timestamp]
  roles: {{user: user_id, item: item_id, timestamp: timestamp}}
defaults:
  data: {{split: loo}}
"""


def write_planted_spec(folder: Path, data: PreparedData, name: str = "tiny") -> Path:
    """Write ``data``'s interactions (train, valid and test rows) as ``folder/NAME.tsv`` with a
    leave-one-out dataset spec ``folder/NAME.yaml``, and return the spec: CLI tests run
    ``recstudio run/tune -d NAME.yaml`` on planted data like on a real dataset."""
    rows = []
    for part in (data.train, data.valid, data.test):
        for u, i, t in zip(part.user.tolist(), part.item.tolist(), part.time.tolist(), strict=True):
            rows.append(f"{u}\t{i}\t{int(t)}")
    (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    spec = folder / f"{name}.yaml"
    spec.write_text(PLANTED_SPEC.format(name=name))
    return spec


def _leave_one_out(user: torch.Tensor, num_users: int) -> torch.Tensor:
    """0/1/2 per row of user-sorted rows: the last row of each user test, the second last valid."""
    counts = torch.bincount(user, minlength=num_users + 1)
    ends = torch.cumsum(counts, 0)[user]
    from_end = ends - torch.arange(user.numel()) - 1
    split = torch.zeros_like(user)
    split[from_end == 1] = 1
    split[from_end == 0] = 2
    return split


def _planted_labels(
    parts: list[Interactions],
    user: torch.Tensor,
    item: torch.Tensor,
    item_group: torch.Tensor,
    user_segment: torch.Tensor,
    num_clusters: int,
    g: torch.Generator,
) -> list[Interactions]:
    """Add label-0 rows on out-of-cluster items (as many per user as positives), split them by
    leave-one-out among themselves, and merge them into the positive splits (label 1)."""
    num_users, num_items = user_segment.numel() - 1, item_group.numel() - 1
    n_pos = torch.bincount(user, minlength=num_users + 1)
    # per user, a random order of the items; own-cluster items and positives go last
    keys = torch.rand(num_users + 1, num_items + 1, generator=g)
    blocked = item_group[None, :] == user_segment[:, None]
    blocked[:, 0] = True
    blocked[user, item] = True
    keys[blocked] = 2.0
    order = torch.argsort(keys, dim=1)
    available = (~blocked).sum(1)
    n_neg = torch.minimum(n_pos, available)
    rank = torch.arange(num_items + 1)[None, :].expand_as(order)
    take = rank < n_neg[:, None]
    neg_user = torch.arange(num_users + 1)[:, None].expand_as(order)[take]
    neg_item = order[take]
    neg_time = rank[take].double() + 0.5  # interleaved with the positives' steps
    split = _leave_one_out(neg_user, num_users)
    slot_g = torch.randint(1, 4, (user.numel() + neg_user.numel(),), generator=g)
    out, offset = [], 0
    for s, pos in enumerate(parts):
        m = split == s
        n_p, n_n = len(pos), int(m.sum())
        merged = Interactions(
            torch.cat([pos.user, neg_user[m]]),
            torch.cat([pos.item, neg_item[m]]),
            torch.cat([pos.rating, torch.zeros(n_n)]),
            torch.cat([pos.time, neg_time[m]]),
            torch.cat([torch.ones(n_p), torch.zeros(n_n)]),
            {"slot": slot_g[offset : offset + n_p + n_n]},
        )
        offset += n_p + n_n
        out.append(Interactions.concat([merged]))  # restores (user, time) order
    return out


def _planted_ratings(
    parts: list[Interactions],
    item_group: torch.Tensor,
    user_segment: torch.Tensor,
    disliked_per_user: int,
    g: torch.Generator,
) -> list[Interactions]:
    """Star ratings for every split (4-5 in the user's cluster, 1-2 elsewhere) and 1-2 star train
    rows on ``disliked_per_user`` other clusters' items per user (never one of its rows)."""

    def stars(user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        liked = item_group[item] == user_segment[user]
        return torch.where(liked, 4.0, 1.0) + (item % 2).float()

    num_users, num_items = user_segment.numel() - 1, item_group.numel() - 1
    keys = torch.rand(num_users + 1, num_items + 1, generator=g)
    blocked = item_group[None, :] == user_segment[:, None]
    blocked[:, 0] = True
    for part in parts:
        blocked[part.user, part.item] = True
    keys[blocked] = 2.0
    order = torch.argsort(keys, dim=1)[1:, :disliked_per_user]  # users 1..U
    user = torch.arange(1, num_users + 1)[:, None].expand_as(order).reshape(-1)
    item = order.reshape(-1)
    time = -1.0 - torch.arange(disliked_per_user, dtype=torch.float64).repeat(num_users)
    out = [Interactions(p.user, p.item, stars(p.user, p.item), p.time) for p in parts]
    disliked = Interactions(user, item, stars(user, item), time)
    out[0] = Interactions.concat([out[0], disliked])
    return out


def _planted_kg(
    item_group: torch.Tensor, num_clusters: int, kg_noise: float, g: torch.Generator
) -> KnowledgeGraph:
    """Items are entities 1..I; cluster entities and per-cluster attribute entities follow."""
    num_items = item_group.numel() - 1
    attrs_per_cluster = 3
    items = torch.arange(1, num_items + 1)
    cluster = item_group[1:]  # 1..C
    cluster_entity = num_items + cluster
    first_attr = num_items + num_clusters + 1
    attr_of = first_attr + (cluster - 1) * attrs_per_cluster
    item_attr = attr_of + torch.randint(0, attrs_per_cluster, (num_items,), generator=g)
    attrs = torch.arange(first_attr, first_attr + num_clusters * attrs_per_cluster)
    attr_cluster = num_items + 1 + (attrs - first_attr) // attrs_per_cluster
    num_entities = int(attrs[-1]) + 1
    n_noise = int(round(kg_noise * num_items))
    noise_head = torch.randint(1, num_items + 1, (n_noise,), generator=g)
    noise_tail = torch.randint(1, num_entities, (n_noise,), generator=g)
    head = torch.cat([items, items, attrs, noise_head])
    relation = torch.cat(
        [
            torch.full((num_items,), 1),
            torch.full((num_items,), 2),
            torch.full((attrs.numel(),), 3),
            torch.full((n_noise,), 4),
        ]
    )
    tail = torch.cat([cluster_entity, item_attr, attr_cluster, noise_tail])
    key = (head * 5 + relation) * num_entities + tail
    keep = (head != tail) & _first_occurrence(key)
    entity_vocab: list[Any] = [None, *(f"item:{i}" for i in range(1, num_items + 1))]
    entity_vocab += [f"cluster:{c}" for c in range(1, num_clusters + 1)]
    entity_vocab += [f"attr:{c}:{k}" for c in range(1, num_clusters + 1) for k in range(attrs_per_cluster)]
    item_entity = torch.arange(num_items + 1)
    return KnowledgeGraph(
        head=head[keep],
        relation=relation[keep],
        tail=tail[keep],
        num_entities=num_entities,
        num_relations=5,
        item_entity=item_entity,
        entity_vocab=entity_vocab,
        relation_vocab=[None, "belongs_to", "has_attribute", "part_of", "related"],
    )


def _planted_social(
    cluster_of_user: torch.Tensor, num_clusters: int, per_user: int, homophily: float, g: torch.Generator
) -> SocialGraph:
    """Each user names ``per_user`` friends, from its own cluster with probability ``homophily``."""
    num_users = cluster_of_user.numel()
    source = torch.arange(num_users).repeat_interleave(per_user)
    own = cluster_of_user[source]
    members = (num_users - own + num_clusters - 1) // num_clusters  # users with id % C == cluster
    same = own + num_clusters * (torch.rand(source.numel(), generator=g) * members).long()
    anyone = torch.randint(0, num_users, (source.numel(),), generator=g)
    target = torch.where(torch.rand(source.numel(), generator=g) < homophily, same, anyone)
    a, b = torch.minimum(source, target) + 1, torch.maximum(source, target) + 1
    keep = (a != b) & _first_occurrence(a * (num_users + 1) + b)
    a, b = a[keep], b[keep]
    src, tgt = torch.cat([a, b]), torch.cat([b, a])
    order = torch.argsort(src * (num_users + 1) + tgt)
    return SocialGraph(src[order], tgt[order], torch.ones(src.numel()), directed=False)


def _first_occurrence(key: torch.Tensor) -> torch.Tensor:
    """Mask keeping the first row of each distinct key."""
    order = torch.argsort(key, stable=True)
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = torch.zeros_like(first)
    keep[order[first]] = True
    return keep


def popularity_metrics(
    data: PreparedData, split: str = "test", cutoffs: tuple[int, ...] = (5, 10, 20)
) -> dict:
    """Metrics of ranking every item by training popularity: the baseline every model must beat."""
    from recstudio.eval.ranking import RankingEvaluator, build_eval_split

    evaluator = RankingEvaluator(["recall", "ndcg", "hit", "mrr", "precision", "map"], list(cutoffs))
    pop = data.item_popularity()
    for batch in build_eval_split(data, split).blocks(1024):
        evaluator.update(pop.expand(batch["user"].shape[0], -1).clone(), batch)
    return evaluator.compute()


def fit_and_evaluate(model: str, data: PreparedData | None = None, **overrides: Any) -> dict[str, Any]:
    """Train ``model`` through the real pipeline on planted data (quietly, no MLflow) and return
    the pipeline's result dict (``valid``, ``test`` metrics, ``epochs``...).

    ``overrides`` are dotted or bare config keys, e.g. ``epochs=20`` or ``model.embed_dim=16``.
    """
    from recstudio.pipeline import run_prepared

    data = data or planted_data()
    return run_prepared(model=model, data=data, overrides=overrides, tracking=False, quiet=True)
