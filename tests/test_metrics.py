"""Metric formulas against cases computed by hand (see docs/metrics.md for the definitions)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from recstudio.eval import metrics as M

ALL = ["recall", "precision", "map", "ndcg", "mrr", "hit"]


def g(rank: int) -> float:
    """DCG gain of a hit at ``rank`` (1-based)."""
    return 1.0 / math.log2(rank + 1)


def values(hit_rows: list[list[int]], n_targets: list[int], cutoffs: list[int]) -> dict[str, list[float]]:
    hits = torch.tensor(hit_rows, dtype=torch.bool)
    out = M.topk_metrics(hits, torch.tensor(n_targets), ALL, cutoffs)
    return {key: value.tolist() for key, value in out.items()}


def test_fewer_targets_than_k() -> None:
    # hits at ranks 1 and 3, two targets, k = 5
    v = values([[1, 0, 1, 0, 0]], [2], [5])
    assert v["recall@5"] == pytest.approx([2 / 2])
    assert v["precision@5"] == pytest.approx([2 / 5])
    assert v["hit@5"] == pytest.approx([1.0])
    assert v["mrr@5"] == pytest.approx([1.0])
    # DCG = 1 + 1/log2(4) = 1.5; the ideal list holds min(5, 2) = 2 hits: 1 + 1/log2(3)
    assert v["ndcg@5"] == pytest.approx([1.5 / (1 + 1 / math.log2(3))])
    assert v["ndcg@5"][0] == pytest.approx(0.919720, abs=1e-6)
    # AP = (P@1 * 1 + P@3 * 1) / min(5, 2) = (1 + 2/3) / 2
    assert v["map@5"] == pytest.approx([(1 + 2 / 3) / 2])


def test_more_targets_than_k() -> None:
    # one hit at rank 2 of k = 3, five targets
    v = values([[0, 1, 0]], [5], [3])
    assert v["recall@3"] == pytest.approx([1 / 5])
    assert v["precision@3"] == pytest.approx([1 / 3])
    assert v["mrr@3"] == pytest.approx([1 / 2])
    # IDCG is cut at k: three ideal gains, not five
    assert v["ndcg@3"] == pytest.approx([g(2) / (g(1) + g(2) + g(3))])
    assert v["ndcg@3"][0] == pytest.approx(0.296082, abs=1e-6)
    # AP = P@2 / min(3, 5) = (1/2) / 3
    assert v["map@3"] == pytest.approx([1 / 6])


def test_several_cutoffs_and_users() -> None:
    rows = [[0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    v = values(rows, [3, 2, 10], [1, 4, 6])
    # user 0: hits at 3, 4, 6; three targets
    assert v["hit@1"][0] == 0.0 and v["mrr@1"][0] == 0.0 and v["ndcg@1"][0] == 0.0
    assert v["recall@4"][0] == pytest.approx(2 / 3)
    assert v["mrr@4"][0] == pytest.approx(1 / 3)
    assert v["mrr@6"][0] == pytest.approx(1 / 3)
    assert v["ndcg@4"][0] == pytest.approx((g(3) + g(4)) / (g(1) + g(2) + g(3)))
    assert v["ndcg@6"][0] == pytest.approx((g(3) + g(4) + g(6)) / (g(1) + g(2) + g(3)))
    assert v["map@4"][0] == pytest.approx((1 / 3 + 2 / 4) / 3)
    assert v["map@6"][0] == pytest.approx((1 / 3 + 2 / 4 + 3 / 6) / 3)
    assert v["precision@6"][0] == pytest.approx(3 / 6)
    # user 1: no hit at all
    assert all(v[key][1] == 0.0 for key in v)
    # user 2: all hits, ten targets: ndcg is 1 at every cutoff (ideal list cut at k), map too
    assert v["ndcg@6"][2] == pytest.approx(1.0)
    assert v["map@6"][2] == pytest.approx(1.0)
    assert v["recall@6"][2] == pytest.approx(6 / 10)
    assert v["precision@1"][2] == pytest.approx(1.0)


def test_target_in_masked_history_counts_in_denominator() -> None:
    # three targets, one of them already in the masked history: only two can ever be ranked
    v = values([[0, 0, 1, 0]], [3], [4])
    assert v["recall@4"] == pytest.approx([1 / 3])
    assert v["ndcg@4"] == pytest.approx([g(3) / (g(1) + g(2) + g(3))])
    assert v["map@4"] == pytest.approx([(1 / 3) / 3])
    assert v["mrr@4"] == pytest.approx([1 / 3])


def test_cutoff_beyond_ranked_items_counts_misses() -> None:
    # only 2 ranked items (tiny catalogue), cutoff 5
    v = values([[0, 1]], [1], [5])
    assert v["precision@5"] == pytest.approx([1 / 5])
    assert v["recall@5"] == pytest.approx([1.0])
    assert v["ndcg@5"] == pytest.approx([g(2)])


def test_single_metric_helpers_match() -> None:
    hits = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]], dtype=torch.bool)
    n = torch.tensor([2, 4])
    full = M.topk_metrics(hits, n, ALL, [3])
    assert torch.equal(M.recall(hits, n, 3), full["recall@3"])
    assert torch.equal(M.precision(hits, n, 3), full["precision@3"])
    assert torch.equal(M.hit(hits, n, 3), full["hit@3"])
    assert torch.equal(M.mrr(hits, n, 3), full["mrr@3"])
    assert torch.equal(M.ndcg(hits, n, 3), full["ndcg@3"])
    assert torch.equal(M.average_precision(hits, n, 3), full["map@3"])
    with pytest.raises(ValueError):
        M.topk_metrics(hits, n, ["nope"], [3])


def test_auc_by_hand_with_ties() -> None:
    inf = math.inf
    scores = torch.tensor(
        [
            # items:  0    1    2    3    4    5
            [9.0, 0.5, 9.0, 0.5, 0.5, 0.1],  # targets 1, 4 (+2 masked); negatives 3 (tie), 5
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # every candidate is a target: no negative
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # the only target is masked
            [0.0, -inf, 2.0, 3.0, 4.0, 5.0],  # target scored -inf ranks below everything
        ]
    )
    target = torch.tensor(
        [
            [0, 1, 1, 0, 1, 0],
            [0, 1, 1, 1, 1, 1],
            [0, 0, 1, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    candidate = torch.tensor(
        [
            [0, 1, 0, 1, 1, 1],
            [0, 1, 1, 1, 1, 1],
            [0, 1, 0, 1, 1, 1],
            [0, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    value, valid = M.auc(scores, target, candidate)
    # user 0: pairs (1,3) tie 0.5, (1,5) 1, (4,3) tie 0.5, (4,5) 1 -> 3 / 4; item 2 (masked, 9.0) is ignored
    assert valid.tolist() == [True, False, False, True]
    assert value[0].item() == pytest.approx(0.75)
    assert value[3].item() == pytest.approx(0.0)


def brute_auc(scores: torch.Tensor, target: torch.Tensor, candidate: torch.Tensor) -> list[float | None]:
    out: list[float | None] = []
    for s, t, c in zip(scores.tolist(), target.tolist(), candidate.tolist()):
        pos = [s[i] for i in range(1, len(s)) if t[i] and c[i]]
        neg = [s[i] for i in range(1, len(s)) if c[i] and not t[i]]
        if not pos or not neg:
            out.append(None)
            continue
        total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
        out.append(total / (len(pos) * len(neg)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_count(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    b, n = 24, 40
    scores = torch.randint(0, 6, (b, n), generator=gen).float()  # many ties
    target = torch.rand(b, n, generator=gen) < 0.2
    candidate = torch.rand(b, n, generator=gen) < 0.8
    candidate[:, 0] = False
    value, valid = M.auc(scores, target, candidate)
    expected = brute_auc(scores, target, candidate)
    assert valid.tolist() == [e is not None for e in expected]
    for got, exp in zip(value.tolist(), expected):
        if exp is not None:
            assert got == pytest.approx(exp, abs=1e-12)


def test_auc_torch_sort_path_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(16, 30, generator=gen).round(decimals=1)
    target = torch.rand(16, 30, generator=gen) < 0.3
    candidate = torch.rand(16, 30, generator=gen) < 0.9
    fast = M.auc(scores, target, candidate)
    monkeypatch.setattr(M, "_sorted_rows", lambda x: torch.sort(x, dim=1).values)
    slow = M.auc(scores, target, candidate)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_auc_perfect_and_reversed() -> None:
    scores = torch.arange(10.0).repeat(2, 1)
    scores[1] = -scores[1]
    target = torch.zeros(2, 10, dtype=torch.bool)
    target[:, 7:] = True
    candidate = torch.ones(2, 10, dtype=torch.bool)
    value, valid = M.auc(scores, target, candidate)
    assert valid.all()
    assert value.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("with_excluded", [False, True])
def test_prepare_scores_maps_non_finite_and_never_touches_the_input(with_excluded: bool) -> None:
    inf, nan = math.inf, math.nan
    excluded = torch.tensor([[True, False, True, False], [True, False, False, False]])
    for raw in (
        torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]),  # all finite: no rewrite
        torch.tensor([[1.0, nan, 3.0, inf], [5.0, -inf, nan, 8.0]]),
    ):
        before = raw.clone()
        x = M.prepare_scores(raw, excluded if with_excluded else None)
        assert torch.equal(raw.isnan(), before.isnan()) and torch.equal(raw.nan_to_num(), before.nan_to_num())
        out = excluded.clone() if with_excluded else torch.zeros_like(excluded)
        out[:, 0] = True  # padding is never a candidate
        assert torch.all(x[out] == -inf)
        info = torch.finfo(x.dtype)
        expected = before.nan_to_num(nan=info.min, posinf=info.max, neginf=info.min)
        assert torch.equal(x[~out], expected[~out])  # candidates finite, order kept
