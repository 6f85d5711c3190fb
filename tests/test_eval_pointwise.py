"""Pointwise evaluation (AUC, GAUC, log loss over labelled rows) against brute-force definitions,
and sampled-candidate ranking evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from recstudio.eval.pointwise import PointwiseEvaluator, auc_from_rows, gauc_from_rows, log_loss


def brute_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return math.nan
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return pairs / (len(pos) * len(neg))


def brute_gauc(scores: list[float], labels: list[int], users: list[int]) -> float:
    num = den = 0.0
    for u in set(users):
        rows = [i for i, v in enumerate(users) if v == u]
        s, y = [scores[i] for i in rows], [labels[i] for i in rows]
        if 0 < sum(y) < len(y):
            num += sum(y) * brute_auc(s, y)
            den += sum(y)
    return num / den if den else math.nan


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_gauc_equal_brute_force_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 60
    scores = torch.randint(0, 6, (n,), generator=g).float()  # many ties
    labels = torch.randint(0, 2, (n,), generator=g).float()
    users = torch.randint(1, 7, (n,), generator=g)
    assert auc_from_rows(scores, labels) == pytest.approx(brute_auc(scores.tolist(), labels.int().tolist()))
    assert gauc_from_rows(scores, labels, users) == pytest.approx(
        brute_gauc(scores.tolist(), labels.int().tolist(), users.tolist())
    )


def test_auc_edge_cases() -> None:
    assert math.isnan(auc_from_rows(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0])))
    assert auc_from_rows(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0])) == 1.0
    assert auc_from_rows(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])) == 0.5
    # a user with one class only is left out of GAUC
    users = torch.tensor([1, 1, 2, 2])
    scores, labels = torch.tensor([0.1, 0.9, 0.3, 0.4]), torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert gauc_from_rows(scores, labels, users) == 1.0


def test_evaluator_accumulates_blocks_and_reports_log_loss() -> None:
    ev = PointwiseEvaluator()
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    users = torch.tensor([1, 1, 2, 2])
    ev.update(logits[:2], {"label": labels[:2], "user": users[:2]})
    ev.update(logits[2:], {"label": labels[2:], "user": users[2:]})
    out = ev.compute()
    expected = (
        -sum(
            math.log(1 / (1 + math.exp(-z))) if y else math.log(1 - 1 / (1 + math.exp(-z)))
            for z, y in zip(logits.tolist(), labels.tolist())
        )
        / 4
    )
    assert out["logloss"] == pytest.approx(expected, rel=1e-6)
    assert out["logloss"] == pytest.approx(float(log_loss(logits, labels)), rel=1e-6)
    assert out["auc"] == pytest.approx(brute_auc(logits.tolist(), [1, 0, 0, 1]))
    assert out["gauc"] == pytest.approx(0.5)  # user 1: 1.0, user 2: 0.0, one positive each
    ev.reset()
    assert math.isnan(ev.compute()["auc"])


def test_sampled_candidates_are_fixed_unseen_and_rank_among_them() -> None:
    from recstudio.eval.ranking import RankingEvaluator, build_eval_split
    from recstudio.testing import planted_data

    data = planted_data(num_users=40, num_items=60, seed=1)
    a = build_eval_split(data, "test", candidates=20, candidate_seed=3)
    b = build_eval_split(data, "test", candidates=20, candidate_seed=3)
    assert torch.equal(a.candidates, b.candidates)  # drawn once: the same for every model
    assert a.candidates.shape == (len(a), 20)
    seen = {
        (int(u), int(i)) for part in (data.train, data.valid, data.test) for u, i in zip(part.user, part.item)
    }
    for row, user in enumerate(a.users.tolist()):
        drawn = a.candidates[row].tolist()
        assert len(set(drawn)) == 20 and 0 not in drawn
        assert not any((user, i) in seen for i in drawn)
    batch = next(iter(a.blocks(64)))
    assert (batch["candidate_mask"].sum(1) == 20 + batch["target_mask"].sum(1)).all()
    # a scorer that puts every non-candidate on top: with candidates they cannot be ranked
    scores = (~batch["candidate_mask"]).float() * 100 + batch["target_mask"].float()
    full, sampled = RankingEvaluator(["hit"], [1]), RankingEvaluator(["hit"], [1])
    full.update(scores, {k: v for k, v in batch.items() if k != "candidate_mask"})
    sampled.update(scores, batch)
    assert sampled.compute()["hit@1"] == 1.0 and full.compute()["hit@1"] < 0.2


def test_popularity_candidates_follow_popularity() -> None:
    from recstudio.eval.ranking import build_eval_split
    from recstudio.testing import planted_data

    data = planted_data(num_users=200, num_items=60, seed=2)
    split = build_eval_split(data, "test", candidates=10, candidate_sampler="popularity")
    counts = torch.bincount(split.candidates.flatten(), minlength=data.num_items).float()
    pop = data.item_popularity()
    top, bottom = pop.argsort(descending=True)[:10], pop.argsort()[1:11]
    assert counts[top].sum() > counts[bottom].sum()
