"""Scorers, losses and negative samplers: shapes, hand-computed values, stability, sampling laws."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recstudio.errors import ConfigError
from recstudio.model.loss import LOSSES, build_loss
from recstudio.model.sampler import build_sampler
from recstudio.model.scorer import SCORERS, build_scorer

# --------------------------------------------------------------------------- scorers


@pytest.mark.parametrize("name", list(SCORERS))
def test_scorer_shapes_agree(name: str) -> None:
    torch.manual_seed(0)
    scorer = build_scorer(name) if name != "mlp" else build_scorer(name, dim=8, hidden_sizes=[16, 4])
    scorer.eval()
    q, items = torch.randn(5, 8), torch.randn(11, 8)
    full = scorer.matrix(q, items)
    assert full.shape == (5, 11)
    idx = torch.randint(0, 11, (5, 3))
    assert torch.allclose(scorer.gather(q, items[idx]), full.gather(1, idx), atol=1e-5)
    assert torch.allclose(scorer(q, items[idx[:, 0]]), full[torch.arange(5), idx[:, 0]], atol=1e-5)


def test_scorer_values() -> None:
    q = torch.tensor([[1.0, 2.0]])
    v = torch.tensor([[3.0, -1.0], [2.0, 4.0]])
    assert build_scorer("inner_product").matrix(q, v).tolist() == [[1.0, 10.0]]
    assert build_scorer("euclidean").matrix(q, v).tolist() == [[-(4.0 + 9.0), -(1.0 + 4.0)]]
    cos = build_scorer("cosine").matrix(q, v)
    assert cos[0, 1].item() == pytest.approx(1.0)  # parallel vectors
    assert cos[0, 0].item() == pytest.approx(1.0 / (math.sqrt(5) * math.sqrt(10)))


def test_mlp_scorer_chunks_and_lazy_dim() -> None:
    torch.manual_seed(0)
    scorer = build_scorer("mlp", hidden_sizes=[6], chunk_elements=30)  # dim inferred, tiny chunks
    q, items = torch.randn(7, 4), torch.randn(9, 4)
    full = scorer.matrix(q, items)
    rows = torch.stack([scorer(q[i].expand(9, 4), items) for i in range(7)])
    assert torch.allclose(full, rows, atol=1e-6)


@pytest.mark.parametrize("name", list(SCORERS))
def test_full_softmax_path_backpropagates_through_every_scorer(name: str) -> None:
    # what ItemTowerRecommender.ranking_loss does: matrix, padding column to -inf in place, softmax
    q = torch.randn(4, 8, requires_grad=True)
    items = torch.randn(10, 8, requires_grad=True)
    scorer = build_scorer(name, **({"dim": 8} if name == "mlp" else {}))
    scores = scorer.matrix(q, items)
    scores[:, 0] = -math.inf
    loss = build_loss("softmax")(scores, torch.tensor([1, 2, 3, 9]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all() and torch.isfinite(items.grad).all()
    assert items.grad[0].abs().sum() == 0  # padding gets no gradient


def test_unknown_scorer_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="inner_product, cosine, euclidean, mlp"):
        build_scorer("dot")
    with pytest.raises(ConfigError, match="bad options"):
        build_scorer("cosine", hidden_sizes=[3])


# --------------------------------------------------------------------------- losses

POS = torch.tensor([2.0, -1.0])
NEG = torch.tensor([[1.0, 0.0, 3.0], [-2.0, 0.5, -1.0]])


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bpr_bce_hinge_by_hand() -> None:
    bpr0 = -sum(math.log(sig(2 - n)) for n in (1, 0, 3)) / 3
    bpr1 = -sum(math.log(sig(-1 - n)) for n in (-2, 0.5, -1)) / 3
    assert build_loss("bpr")(POS, NEG).item() == pytest.approx((bpr0 + bpr1) / 2)
    bce0 = -math.log(sig(2)) - sum(math.log(sig(-n)) for n in (1, 0, 3)) / 3
    bce1 = -math.log(sig(-1)) - sum(math.log(sig(-n)) for n in (-2, 0.5, -1)) / 3
    assert build_loss("bce")(POS, NEG).item() == pytest.approx((bce0 + bce1) / 2)
    # hinge margin 1: row 0: max(0, 1-2+1)=0, max(0,1-2+0)=0, max(0,1-2+3)=2 ; row 1: 0, 2.5, 1
    assert build_loss("hinge")(POS, NEG).item() == pytest.approx(((0 + 0 + 2) / 3 + (0 + 2.5 + 1) / 3) / 2)


def test_gbce_by_hand_and_its_limits() -> None:
    # 11 items + padding: a = K / (N - 1) = 3 / 10; t = 0.75 -> beta = a (t (1 - 1/a) + 1/a)
    a, t = 3 / 10, 0.75
    beta = a * (t * (1 - 1 / a) + 1 / a)
    loss = build_loss("gbce", num_items=12, num_negatives=3, calibration=t)
    assert loss.beta == pytest.approx(beta) and 0 < beta < 1
    rows = [(2.0, (1, 0, 3)), (-1.0, (-2, 0.5, -1))]
    expected = [-beta * math.log(sig(p)) - sum(math.log(sig(-n)) for n in ns) for p, ns in rows]
    assert loss(POS, NEG).item() == pytest.approx(sum(expected) / 2)
    # t = 0 is BCE with summed negatives; t = 1 gives beta = a; negatives covering the catalogue: beta 1
    assert build_loss("gbce", num_items=12, num_negatives=3, calibration=0.0).beta == pytest.approx(1.0)
    assert build_loss("gbce", num_items=12, num_negatives=3, calibration=1.0).beta == pytest.approx(a)
    assert build_loss("gbce", num_items=12, num_negatives=10, calibration=0.75).beta == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="calibration"):
        build_loss("gbce", num_items=12, calibration=1.5)


def test_importance_estimator_with_the_models_softmax_as_proposal_is_the_full_softmax() -> None:
    """q = the model's softmax over the items a draw may return: whatever K items are drawn,
    the importance estimate of the partition is exact, so the loss is the full softmax's over
    the target and those items (``logq`` is not)."""
    torch.manual_seed(0)
    scores = torch.randn(4, 9) * 2  # 4 queries, item 0 the target, 1..8 drawable
    q = torch.softmax(scores[:, 1:], 1)
    full = (torch.logsumexp(scores, 1) - scores[:, 0]).mean()
    for k in (1, 3, 7):
        drawn = torch.multinomial(q, k, replacement=True)
        neg, log_q = scores[:, 1:].gather(1, drawn), q.log().gather(1, drawn)
        loss = build_loss("sampled_softmax")(scores[:, 0], neg, log_q_neg=log_q)
        assert loss.item() == pytest.approx(full.item(), rel=1e-5)
    logq = build_loss("sampled_softmax", estimator="logq")(scores[:, 0], neg, log_q_neg=log_q)
    assert logq.item() != pytest.approx(full.item(), rel=1e-2)


def test_softmax_losses_by_hand() -> None:
    def lse(xs: list[float]) -> float:
        return math.log(sum(math.exp(x) for x in xs))

    ce = [lse([2, 1, 0, 3]) - 2, lse([-1, -2, 0.5, -1]) + 1]
    assert build_loss("sampled_softmax")(POS, NEG).item() == pytest.approx(sum(ce) / 2)
    lq_pos, lq_neg = torch.tensor([-1.0, -2.0]), torch.tensor([[-3.0, -1.0, -2.0], [-1.0, -1.0, -4.0]])
    # importance (default): each negative corrected by log(K q), the target not
    k = math.log(3)
    imp = [lse([2, 4 - k, 1 - k, 5 - k]) - 2, lse([-1, -1 - k, 1.5 - k, 3 - k]) + 1]
    got = build_loss("sampled_softmax")(POS, NEG, log_q_pos=lq_pos, log_q_neg=lq_neg)
    assert got.item() == pytest.approx(sum(imp) / 2)
    # logq: log q subtracted from each logit, the target's included
    corr = [lse([3, 4, 1, 5]) - 3, lse([1, -1, 1.5, 3]) - 1]
    got = build_loss("sampled_softmax", estimator="logq")(POS, NEG, log_q_pos=lq_pos, log_q_neg=lq_neg)
    assert got.item() == pytest.approx(sum(corr) / 2)
    with pytest.raises(ConfigError, match="estimator must be one of importance, logq"):
        build_loss("sampled_softmax", estimator="exact")
    # infonce at temperature 0.5 divides the logits
    nce = [lse([4, 2, 0, 6]) - 4, lse([-2, -4, 1, -2]) + 2]
    assert build_loss("infonce", temperature=0.5)(POS, NEG).item() == pytest.approx(sum(nce) / 2)
    # full softmax: cross-entropy over all scores, padding at -inf ignored
    scores = torch.tensor([[-math.inf, 1.0, 2.0, 0.0]])
    full = build_loss("softmax")
    assert full.needs_all_scores
    assert full(scores, torch.tensor([2])).item() == pytest.approx(lse([1, 2, 0]) - 2)


def test_wrmf_by_hand() -> None:
    loss = build_loss("wrmf", alpha=3.0, negative_weight=0.5)
    row0 = 4 * (2 - 1) ** 2 + 0.5 * (1 + 0 + 9) / 3
    row1 = 4 * (-1 - 1) ** 2 + 0.5 * (4 + 0.25 + 1) / 3
    assert loss(POS, NEG).item() == pytest.approx((row0 + row1) / 2)


def test_warp_weights_by_hand() -> None:
    # row 0: one violator (hinge 2) -> rank 1, H(1) = 1, loss 2 ; row 1: two violators (2.5, 1) -> H(2) = 1.5
    expected = (1.0 * 2.0 / 1 + 1.5 * 3.5 / 2) / 2
    assert build_loss("warp")(POS, NEG).item() == pytest.approx(expected)

    # with the catalogue size the rank is scaled: row 0 rank floor(1 * 9 / 3) = 3, row 1 floor(2 * 3) = 6
    def h(n: int) -> float:
        return sum(1 / j for j in range(1, n + 1))

    expected = (h(3) * 2.0 + h(6) * 3.5 / 2) / 2
    assert build_loss("warp", num_items=10)(POS, NEG).item() == pytest.approx(expected)
    # no violator: zero loss
    assert build_loss("warp")(torch.tensor([10.0]), torch.tensor([[0.0, 1.0]])).item() == 0.0


def test_pris_weights_by_hand() -> None:
    lq = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    w = torch.softmax(NEG - lq, -1)
    expected = -(w * F.logsigmoid(POS[:, None] - NEG)).sum(-1).mean()
    loss = build_loss("pris")
    assert loss(POS, NEG, log_q_neg=lq).item() == pytest.approx(expected.item())
    # weights are constants: the gradient is the weighted BPR gradient
    neg = NEG.clone().requires_grad_(True)
    loss(POS, neg, log_q_neg=lq).backward()
    manual = w * torch.sigmoid(neg.detach() - POS[:, None]) / 2
    assert torch.allclose(neg.grad, manual, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in LOSSES if n != "softmax"])
def test_sampled_losses_are_stable_and_differentiable(name: str) -> None:
    pos = torch.tensor([1e4, -1e4, 0.0], requires_grad=True)
    neg = torch.tensor([[-1e4, 1e4], [1e4, -1e4], [0.0, 0.0]], requires_grad=True)
    log_q = torch.full((3, 2), -5.0)
    options = {"num_items": 100} if name == "gbce" else {}
    value = build_loss(name, **options)(pos, neg, log_q_pos=torch.full((3,), -5.0), log_q_neg=log_q)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="valid losses: softmax, sampled_softmax, bpr"):
        build_loss("xent")
    with pytest.raises(ConfigError):
        build_loss("infonce", temperature=0.0)


# --------------------------------------------------------------------------- samplers


def test_uniform_sampler_range_and_log_prob() -> None:
    torch.manual_seed(0)
    s = build_sampler("uniform", 6, None)
    neg, log_q_neg, log_q_pos = s.sample(2000, 5, pos_items=torch.tensor([1, 2] * 1000))
    assert neg.shape == (2000, 5) and neg.dtype == torch.long
    assert neg.min() >= 1 and neg.max() <= 5
    counts = torch.bincount(neg.flatten(), minlength=6)[1:].float()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.02
    assert torch.allclose(log_q_neg, torch.full((2000, 5), -math.log(5)))
    assert torch.allclose(log_q_pos, torch.full((2000,), -math.log(5)))
    assert s.log_prob(torch.tensor([0])).item() == -math.inf


def test_popularity_sampler_matches_distribution() -> None:
    torch.manual_seed(0)
    counts = torch.tensor([0.0, 10.0, 0.0, 3.0, 50.0, 1.0])  # id 0 is padding
    s = build_sampler("popularity", 6, counts)
    neg, log_q_neg, log_q_pos = s.sample(40000, 5, pos_items=torch.tensor([4] * 40000))
    assert neg.min() >= 1  # never padding, zero-count item 2 still drawable
    p = (counts[1:] + 1) / (counts[1:] + 1).sum()
    n = neg.numel()
    observed = torch.bincount(neg.flatten(), minlength=6)[1:].double()
    expected = p.double() * n
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 25.0  # 4 degrees of freedom: p(chi2 > 25) ~ 5e-5
    assert observed[1] > 0
    assert torch.allclose(log_q_neg, s.log_prob(neg))
    assert torch.allclose(s.log_prob(torch.arange(1, 6)).exp(), p, atol=1e-6)
    assert torch.allclose(log_q_pos, torch.full((40000,), math.log(p[3].item())))
    assert s.log_prob(torch.tensor([0])).item() == -math.inf


def test_popularity_alpha_and_buffers_move_with_module() -> None:
    counts = torch.tensor([0.0, 3.0, 0.0, 8.0])
    flat = build_sampler("popularity", 4, counts, alpha=0.0)
    assert torch.allclose(flat.log_prob(torch.tensor([1, 2, 3])), torch.full((3,), -math.log(3)))
    half = build_sampler("popularity", 4, counts, alpha=0.5)
    p = torch.tensor([2.0, 1.0, 3.0])
    assert torch.allclose(half.log_prob(torch.tensor([1, 2, 3])).exp(), p / p.sum(), atol=1e-6)
    names = {name for name, _ in half.named_buffers()}
    assert {"cdf", "log_p"} <= names
    assert half.state_dict() == {}  # rebuilt from data, never checkpointed
    before = half.cdf.clone()
    half.half()  # a half-precision model cast must not touch the integer table
    assert torch.equal(half.cdf, before) and half.cdf.dtype == torch.long
    assert half.sample(10, 3)[0].min() >= 1


@pytest.mark.parametrize("name", ["uniform", "popularity"])
def test_excluded_positives_are_never_drawn_and_log_q_is_conditional(name: str) -> None:
    """With the users named, no draw is one of the user's training items, and the empirical
    frequencies match the conditional proposal that log q reports."""
    torch.manual_seed(0)
    counts = torch.tensor([0.0, 10.0, 0.0, 3.0, 50.0, 1.0, 7.0])
    s = build_sampler(name, 7, counts)
    # user 1 owns items 4 and 1 (most of the popularity mass), user 2 owns item 3
    s.exclude(torch.tensor([1, 1, 2]), torch.tensor([4, 1, 3]), num_users=3)
    users = torch.tensor([1, 2]).repeat_interleave(30000)
    neg, log_q_neg, _ = s.sample(users.numel(), 4, pos_items=torch.ones_like(users), users=users)
    for user, owned in ((1, {4, 1}), (2, {3})):
        drawn = neg[users == user]
        assert not any(int(i) in owned for i in drawn.unique())
        freq = torch.bincount(drawn.flatten(), minlength=7).double() / drawn.numel()
        q = torch.zeros(7, dtype=torch.float64)
        rows = (users == user).nonzero()[0, 0]
        for item in drawn.unique():
            q[item] = (
                log_q_neg[rows][neg[rows] == item][:1].double().exp().sum()
                if (neg[rows] == item).any()
                else 0
            )
        allowed = torch.tensor([i for i in range(1, 7) if i not in owned])
        expected = s.log_prob(allowed).double().exp()
        expected = expected / expected.sum()
        assert (freq[allowed] - expected).abs().max() < 0.01
        # log q of a draw is the conditional probability
        item = int(neg[rows, 0])
        got = log_q_neg[rows, 0].double().exp()
        assert got == pytest.approx(float(expected[(allowed == item).nonzero()[0, 0]]), rel=1e-4)
    # without users: plain draws, which do hit positives
    plain = s.sample_ids(20000, 1)
    assert (plain == 4).any()


def test_model_negatives_avoid_training_positives_by_default() -> None:
    from recstudio.model.general.bpr import BPR
    from recstudio.testing import planted_data

    data = planted_data(num_users=30, num_items=20, seed=1)
    positives = set(zip(data.train.user.tolist(), data.train.item.tolist()))
    users = data.train.user.repeat(20)
    for exclude, expect_hits in ((None, False), (True, False), (False, True)):
        model = BPR(BPR.Config(exclude_positives=exclude), data)
        neg = model.candidate_ids(None, torch.ones_like(users), users=users)[:, 1]
        hits = any((u, i) in positives for u, i in zip(users.tolist(), neg.tolist()))
        assert hits is expect_hits
    # model-based samplers draw from the whole catalogue unless told otherwise
    for sampler in ("uniform", "popularity", "midx_uni", "cluster_pop"):
        model = BPR(BPR.Config(sampler=sampler, sampler_clusters=3), data)
        assert model.sampler.excludes is (sampler in ("uniform", "popularity"))
        forced = BPR(BPR.Config(sampler=sampler, sampler_clusters=3, exclude_positives=True), data)
        assert forced.sampler.excludes


def test_sampler_errors() -> None:
    with pytest.raises(ConfigError, match="uniform, popularity"):
        build_sampler("dns", 10, None)
    with pytest.raises(ConfigError):
        build_sampler("popularity", 10, None)
    with pytest.raises(ConfigError):
        build_sampler("popularity", 10, torch.ones(9))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parts_run_on_cuda() -> None:
    dev = torch.device("cuda")
    counts = torch.tensor([0.0, 10.0, 0.0, 3.0, 50.0, 1.0])
    for sampler in (build_sampler("uniform", 6, None), build_sampler("popularity", 6, counts)):
        sampler = sampler.to(dev)
        neg, log_q_neg, log_q_pos = sampler.sample(
            20000, 8, pos_items=torch.ones(20000, dtype=torch.long, device=dev)
        )
        assert neg.device.type == log_q_neg.device.type == log_q_pos.device.type == "cuda"
        assert int(neg.min()) >= 1 and int(neg.max()) <= 5
        freq = torch.bincount(neg.flatten(), minlength=6)[1:].double().cpu()
        p = sampler.log_prob(torch.arange(1, 6, device=dev)).exp().double().cpu()
        assert (freq / freq.sum() - p).abs().max() < 0.01
    q, items = torch.randn(7, 8, device=dev), torch.randn(30, 8, device=dev)
    for name in SCORERS:
        scorer = build_scorer(name, **({"dim": 8} if name == "mlp" else {})).to(dev)
        full = scorer.matrix(q, items)
        idx = torch.randint(0, 30, (7, 4), device=dev)
        assert torch.allclose(scorer.gather(q, items[idx]), full.gather(1, idx), atol=1e-4)
    pos, neg = torch.randn(7, device=dev), torch.randn(7, 4, device=dev)
    for name in LOSSES:
        loss = build_loss(name)
        value = loss(full, torch.randint(1, 30, (7,), device=dev)) if name == "softmax" else loss(pos, neg)
        assert value.device.type == "cuda" and torch.isfinite(value)
