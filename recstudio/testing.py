"""Test helpers: planted synthetic data and the model contract suite's fit-and-evaluate.

The planted dataset has structure that every model family can find and popularity cannot:
users belong to clusters, each cluster owns a block of items arranged in a cyclic order, and
each user walks that order from a random start (with a little noise). Collaborative models
learn the cluster blocks; sequential models also learn "next in order". Items are equally
popular within and across clusters, so a popularity ranker is near random.

Splits are chronological leave-one-out (last item test, second last validation), which suits
every model family. Users and items carry features (cluster segment, item group, tags) so
feature-based models have fields to use.
"""

from __future__ import annotations

from typing import Any

import torch

from recstudio.data.dataset import FeatureTable, Interactions, PreparedData


def planted_data(
    num_users: int = 240,
    num_items: int = 120,
    num_clusters: int = 4,
    min_len: int = 12,
    max_len: int = 24,
    noise: float = 0.05,
    seed: int = 0,
) -> PreparedData:
    """Build a small PreparedData with planted cluster and sequence structure (ids from 1)."""
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

    # leave-one-out: rank of each row from the end of its user's block
    counts = torch.bincount(user, minlength=num_users + 1)
    ends = torch.cumsum(counts, 0)[user]
    from_end = ends - torch.arange(user.numel()) - 1
    split = torch.zeros_like(user)
    split[from_end == 1] = 1
    split[from_end == 0] = 2
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
        manifest={"key": f"planted-{seed}", "name": "planted", "split": "loo"},
    )


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
