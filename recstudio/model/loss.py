"""Ranking losses, each a module with its formula and reference in the docstring.

Two calling conventions (``ItemTowerRecommender.ranking_loss`` picks by ``needs_all_scores``):

- full: ``loss(all_scores [N, I], target [N])`` when ``needs_all_scores`` is True;
- sampled: ``loss(pos [N], neg [N, K], log_q_pos=None, log_q_neg=None)``, where ``pos`` are
  the scores of the positive items, ``neg`` those of K sampled negatives per query, and
  ``log_q_*`` the sampler's log-probabilities of drawing those items (for log-Q correction and
  importance weights; losses that do not need them ignore them).

Every loss returns the mean over the N queries, computed with ``logsigmoid``/``logsumexp`` so
large scores cannot overflow. ``build_loss(name, **options)`` creates one by its config name.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recstudio.errors import ConfigError
from recstudio.model.ops import full_softmax_inner_product_loss, l2_normalize


class FullSoftmaxLoss(nn.Module):
    """Full softmax cross-entropy over the whole catalogue.

    L = -s_{target} + log sum_{j in items} exp(s_j). Scores of -inf (padding column 0) drop out.
    Reference: Covington et al., "Deep Neural Networks for YouTube Recommendations" (RecSys 2016);
    the exact objective that sampled softmax approximates.
    """

    needs_all_scores = True
    hard_negatives_ok = False

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"softmax temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, all_scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scores = all_scores.float()
        if self.temperature != 1.0:
            scores = scores / self.temperature
        return F.cross_entropy(scores, target)


class SampledLoss(nn.Module):
    """Base of losses over a positive score [N] and K sampled negative scores [N, K]."""

    needs_all_scores = False
    hard_negatives_ok = True
    """Whether dynamic negative sampling (``hard_negative_candidates`` > 1: the best of M draws)
    suits the loss: pairwise / pointwise losses yes; the softmax family (which needs negatives
    drawn from a known q, or weighs them itself) no."""

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


SAMPLED_SOFTMAX_ESTIMATORS = ("importance", "logq")


class SampledSoftmaxLoss(SampledLoss):
    """Sampled softmax: the full softmax's partition function estimated from K sampled negatives.

    ``estimator="importance"`` (default): the importance-sampling estimate of the partition,
    L = -s_pos + log(exp(s_pos) + (1/K) sum_k exp(s_k) / q(k)), i.e. each negative's logit is
    corrected by log(K q(k)) and the target's is not. Consistent, and exact when q is the
    model's own softmax (over the items a draw may return): a proposal closer to the model's
    softmax gives an estimate closer to the full softmax, which is what model-based samplers
    (MIDX, cluster) are for. Bengio & Senecal, "Adaptive Importance Sampling to Accelerate
    Training of a Neural Probabilistic Language Model" (IEEE TNN 2008); Chen, Lian et al.,
    "Fast Variational Autoencoder with Inverted Multi-Index for Collaborative Filtering"
    (WWW 2022).

    ``estimator="logq"``: every logit minus its own log q, the target's included (o_i = s_i -
    log q(i), L = -o_pos + log(exp(o_pos) + sum_k exp(o_k))), as TensorFlow's
    ``sampled_softmax_loss``, Yi et al. (RecSys 2019) and the original RecStudio. With a proposal
    that follows the model it underweights well-ranked targets (their large q lowers o_pos),
    and even the exact softmax as proposal does not give the full softmax's loss.

    Without log q (no sampler correction) both are the plain softmax over the candidates.
    Scores are divided by ``temperature`` before the correction.
    """

    hard_negatives_ok = False

    def __init__(self, temperature: float = 1.0, estimator: str = "importance") -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"sampled_softmax temperature must be > 0, got {temperature}")
        if estimator not in SAMPLED_SOFTMAX_ESTIMATORS:
            raise ConfigError(
                f"sampled_softmax estimator must be one of {', '.join(SAMPLED_SOFTMAX_ESTIMATORS)}, "
                f"got {estimator!r}"
            )
        self.temperature = temperature
        self.estimator = estimator

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.temperature != 1.0:
            pos, neg = pos / self.temperature, neg / self.temperature
        if self.estimator == "importance":
            if log_q_neg is not None:
                neg = neg - (log_q_neg + math.log(neg.shape[-1]))
        else:
            if log_q_pos is not None:
                pos = pos - log_q_pos
            if log_q_neg is not None:
                neg = neg - log_q_neg
        logits = torch.cat([pos.unsqueeze(-1), neg], -1)
        return (torch.logsumexp(logits, -1) - pos).mean()


class BPRLoss(SampledLoss):
    """Bayesian personalised ranking: L = -(1/K) sum_k log sigmoid(s_pos - s_k).

    Reference: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback" (UAI 2009).
    """

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return -F.logsigmoid(pos.unsqueeze(-1) - neg).mean()


class BCELoss(SampledLoss):
    """Binary cross-entropy, positives labelled 1 and sampled negatives 0.

    L = -c log sigmoid(s_pos) - (1/K) sum_k log sigmoid(-s_k) (negatives averaged, so the balance
    between the two terms does not depend on K), with the positive's confidence weight c
    (``positive_weight``, default 1: the plain log loss).
    References: He et al., "Neural Collaborative Filtering" (WWW 2017); the weight c is the
    confidence alpha of Johnson, "Logistic Matrix Factorization for Implicit Feedback Data"
    (NIPS 2014 workshop).
    """

    def __init__(self, positive_weight: float = 1.0) -> None:
        super().__init__()
        self.positive_weight = positive_weight

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pos_term = -F.logsigmoid(pos)
        if self.positive_weight != 1.0:
            pos_term = self.positive_weight * pos_term
        return (pos_term - F.logsigmoid(-neg).mean(-1)).mean()


class GBCELoss(SampledLoss):
    """Generalised binary cross-entropy (gBCE) of gSASRec, for many sampled negatives.

    L = -beta log sigmoid(s_pos) - sum_k log sigmoid(-s_k), with beta = a (t (1 - 1/a) + 1/a)
    and a = K / (N - 1) the share of the N - 1 other items that the K uniform negatives cover.
    Sampling K of N - 1 negatives makes plain BCE overconfident (it learns sigma(s_pos) near 1
    whatever the data); raising the positive's probability to the power beta <= 1 undoes it, by
    calibration t in [0, 1] (t = 0: beta = 1, plain BCE with summed negatives; t = 1: beta = a,
    fully calibrated; the paper's default 0.75). Unlike ``bce`` the negatives are summed.
    Reference: Petrov & Macdonald, "gSASRec: Reducing Overconfidence in Sequential
    Recommendation Trained with Negative Sampling" (RecSys 2023), Eq. 7-8.
    """

    def __init__(self, num_items: int, num_negatives: int = 1, calibration: float = 0.75) -> None:
        super().__init__()
        if not 0.0 <= calibration <= 1.0:
            raise ConfigError(f"gbce calibration must be in [0, 1], got {calibration}")
        # num_items counts the padding row 0: the real catalogue has num_items - 1 items
        alpha = num_negatives / max(num_items - 2, 1)
        self.beta = alpha * (calibration * (1.0 - 1.0 / alpha) + 1.0 / alpha)

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return (-self.beta * F.logsigmoid(pos) - F.logsigmoid(-neg).sum(-1)).mean()


class HingeLoss(SampledLoss):
    """Pairwise hinge: L = (1/K) sum_k max(0, margin - s_pos + s_k).

    Reference: Hsieh et al., "Collaborative Metric Learning" (WWW 2017); Weston et al. (2011).
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return F.relu(self.margin - pos.unsqueeze(-1) + neg).mean()


class WARPLoss(SampledLoss):
    """Weighted approximate-rank pairwise loss.

    With v the number of sampled negatives that violate the margin (s_k > s_pos - margin), the
    positive's rank is estimated as r = floor(v * (num_items - 1) / K) (r = v when ``num_items``
    is not given) and the hinge over the violators is weighted by L(r) = sum_{j<=r} 1/j:
    L = L(r) * (1/max(v, 1)) * sum_k max(0, margin - s_pos + s_k). Positives ranked far down get
    large weights; those already on top get none. The weight is a count (no gradient).
    Reference: Weston, Bengio & Usunier, "WSABIE: Scaling Up to Large Vocabulary Image
    Annotation" (IJCAI 2011).
    """

    def __init__(self, margin: float = 1.0, num_items: int | None = None) -> None:
        super().__init__()
        self.margin = margin
        self.num_items = num_items

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hinge = F.relu(self.margin - pos.unsqueeze(-1) + neg)
        violations = (hinge > 0).sum(-1).to(hinge.dtype)
        rank = violations
        if self.num_items is not None:
            rank = torch.floor(violations * (self.num_items - 1) / neg.shape[-1])
        # harmonic number H(r) = digamma(r + 1) + Euler-Mascheroni constant (H(0) = 0)
        weight = torch.special.digamma(rank + 1.0) + 0.5772156649015329
        return (weight * hinge.sum(-1) / violations.clamp_min(1.0)).mean()


class InfoNCELoss(SampledLoss):
    """InfoNCE: softmax cross-entropy of the positive among itself and K negatives at temperature t.

    L = -s_pos / t + log(exp(s_pos / t) + sum_k exp(s_k / t)); no log-Q correction (use
    ``sampled_softmax`` for that).
    Reference: van den Oord et al., "Representation Learning with Contrastive Predictive Coding"
    (2018).
    """

    hard_negatives_ok = False

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"infonce temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = torch.cat([pos.unsqueeze(-1), neg], -1) / self.temperature
        return (torch.logsumexp(logits, -1) - logits[..., 0]).mean()


def contrastive_loss(
    anchor: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float,
    target: torch.Tensor | None = None,
    reduction: str = "mean",
    similarity: str = "cosine",
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over cosine similarities, the self-supervised loss of graph contrastive models
    (SGL, SimGCL, XSimGCL, NCL): with a_b = anchor_b / |anchor_b| and c_j likewise,
    L = mean_b [ -a_b.c_{t(b)} / t + log sum_j exp(a_b.c_j / t) ].

    ``anchor`` [B, d], ``candidates`` [N, d]; ``target`` [B] is the index of each anchor's
    positive among the candidates. Without ``target``, row b of ``candidates`` is the positive
    of anchor b (N = B): two views of the same B nodes, the other rows of the batch being the
    negatives (in-batch). With all nodes (or all prototypes) as candidates and their ids as
    target, the negatives are the whole table (NCL). Returns the mean over the B anchors
    (``reduction="none"``: the loss of each anchor, [B]).

    ``similarity="dot"`` scores raw inner products instead of cosines (the sequential contrastive
    models CL4SRec, DuoRec, ICLRec and CoSeRec, whose authors' code uses dot products).
    ``exclude`` (bool [B, N]) drops candidates from an anchor's softmax (never its positive): the
    anchor itself when both views are stacked as candidates (the 2N-sample NT-Xent of SimCLR),
    or known false negatives.
    Reference: van den Oord et al. (2018); Chen et al., "A Simple Framework for Contrastive
    Learning of Visual Representations" (ICML 2020) for the cosine / temperature form.
    """
    if temperature <= 0:
        raise ConfigError(f"contrastive temperature must be > 0, got {temperature}")
    if target is None:
        if candidates.shape[0] != anchor.shape[0]:
            raise ValueError(
                f"without target, candidates must be the B rows of the second view, got "
                f"{tuple(candidates.shape)} for anchors {tuple(anchor.shape)}"
            )
        target = torch.arange(anchor.shape[0], device=anchor.device)
    if similarity == "cosine":
        anchor, candidates = l2_normalize(anchor, dim=-1), l2_normalize(candidates, dim=-1)
    elif similarity != "dot":
        raise ConfigError(f"contrastive similarity must be cosine or dot, got {similarity!r}")
    if exclude is None and reduction == "mean" and anchor.dtype == candidates.dtype == torch.float32:
        # the full softmax over inner products, in cache-sized row blocks without an [B, N]
        # logit, log-softmax or gradient tensor (ops.full_softmax_inner_product_loss, the item
        # towers' full softmax): ml-1m steps on one core, A/B, XSimGCL 105 -> 92 ms, LightGCL
        # 433 -> 275, NCL 252 -> 228, SimGCL 225 -> 213 (best of three 5-step rounds, loaded core)
        return full_softmax_inner_product_loss(anchor, candidates, target, temperature, padding_idx=None)
    # the temperature scales the [B, d] anchors, not the [B, N] logits: the same values, but no
    # pass over (and no second copy of) the largest tensor, forward or backward (NCL on ml-1m
    # contrasts ~1,700 anchors with all 6,040 users: 7% of its step)
    logits = (anchor / temperature) @ candidates.T
    if exclude is not None:
        keep_target = torch.zeros_like(exclude).scatter_(1, target[:, None], True)
        logits = logits.masked_fill(exclude & ~keep_target, -torch.inf)
    return F.cross_entropy(logits, target, reduction=reduction)


def view_contrast(
    view1: tuple[torch.Tensor, torch.Tensor],
    view2: tuple[torch.Tensor, torch.Tensor],
    users: torch.Tensor,
    items: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``contrastive_loss`` between two views (user table, item table) of the distinct
    ``users`` plus that of the distinct ``items`` (each node once, so that a repeated node is
    never its own negative): the in-batch contrast of SGL, SimGCL and XSimGCL."""
    users, items = torch.unique(users), torch.unique(items)
    user_loss = contrastive_loss(view1[0][users], view2[0][users], temperature)
    return user_loss + contrastive_loss(view1[1][items], view2[1][items], temperature)


class WeightedSquareLoss(SampledLoss):
    """Weighted square loss of implicit-feedback matrix factorisation (WRMF) on sampled items.

    L = c * (s_pos - 1)^2 + w * (1/K) sum_k s_k^2 with positive confidence c = 1 + alpha and
    negative weight w: observed entries are fitted to 1 with confidence c, unobserved ones to 0.
    Reference: Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets"
    (ICDM 2008).
    """

    def __init__(self, alpha: float = 1.0, negative_weight: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.negative_weight = negative_weight

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pos_term = (1.0 + self.alpha) * (pos - 1.0) ** 2
        return (pos_term + self.negative_weight * (neg**2).mean(-1)).mean()


class PRISLoss(SampledLoss):
    """BPR with importance-weighted negatives (PRIS).

    w_k = softmax_k(s_k - log q(k)) (detached), L = -sum_k w_k log sigmoid(s_pos - s_k): hard
    negatives (high score) get large weights, corrected for how often the sampler proposes them.
    Without ``log_q_neg`` the weights are softmax_k(s_k).
    Reference: Lian, Liu & Chen, "Personalized Ranking with Importance Sampling" (WWW 2020);
    its paper pairs it with the ``cluster_uni`` / ``cluster_pop`` samplers.
    """

    hard_negatives_ok = False

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = neg.detach() if log_q_neg is None else neg.detach() - log_q_neg
        weight = torch.softmax(logits, -1)
        return -(weight * F.logsigmoid(pos.unsqueeze(-1) - neg)).sum(-1).mean()


def whole_data_square_loss(
    query: torch.Tensor,
    items: torch.Tensor,
    pos_rows: torch.Tensor,
    pos_items: torch.Tensor,
    negative_weight: float,
) -> torch.Tensor:
    """Weighted square loss over every (query, item) pair, without scoring every pair.

    With inner-product scores s_qv = query_q . items_v, targets 1 on the observed pairs
    (``query[pos_rows]``, ``items[pos_items]``) and 0 elsewhere, weight 1 on observed pairs and
    ``negative_weight`` = c on the others, the whole-data loss over the batch's queries and every
    item v >= 1 (id 0 is padding) is, up to the constant number of observed pairs,

        L = sum_{(q,v) observed} ((1 - c) s_qv^2 - 2 s_qv) + c * sum_{i,j} (Q^T Q)_ij (V^T V)_ij,

    the last term being ``c * sum_{q,v} s_qv^2`` computed from two d x d Gram matrices in
    O((B + I) d^2) instead of O(B I d). A sum over the batch, not a mean. Reference: Chen et al.,
    "Efficient Neural Matrix Factorization without Sampling for Recommendation" (TOIS 2020), whose
    prediction layer h is folded into ``query`` (query = p_u * h).
    """
    pos = (query[pos_rows] * items[pos_items]).sum(-1)
    table = items[1:]
    all_pairs = ((query.T @ query) * (table.T @ table)).sum()
    return negative_weight * all_pairs + ((1.0 - negative_weight) * pos.square() - 2.0 * pos).sum()


class CosineContrastiveLoss(SampledLoss):
    """Cosine contrastive loss (CCL) over cosine scores in [-1, 1].

    L = max(0, 1 - s_pos) + w * (1/K) sum_k max(0, s_k - margin): the positive is pulled to
    cosine 1, and only negatives more similar than ``margin`` are pushed away (the others are
    uninformative and filtered out), their mean weighted by ``negative_weight`` w. Meant for the
    cosine scorer (any item-tower model: ``--set model.loss=ccl model.scorer=cosine``).
    Reference: Mao et al., "SimpleX: A Simple and Strong Baseline for Collaborative Filtering"
    (CIKM 2021), eq. 3 (w/N sum_k = w * mean_k).
    """

    def __init__(self, margin: float = 0.9, negative_weight: float = 1.0) -> None:
        super().__init__()
        self.margin = margin
        self.negative_weight = negative_weight

    def forward(
        self,
        pos: torch.Tensor,
        neg: torch.Tensor,
        log_q_pos: torch.Tensor | None = None,
        log_q_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        neg_term = F.relu(neg - self.margin).mean(-1)
        return (F.relu(1.0 - pos) + self.negative_weight * neg_term).mean()


def constraint_bce_loss(
    pos: torch.Tensor,
    neg: torch.Tensor,
    pos_weight: torch.Tensor,
    neg_weight: torch.Tensor,
    negative_weight: float = 1.0,
) -> torch.Tensor:
    """UltraGCN's weighted binary cross-entropy over a batch (Mao et al., "UltraGCN: Ultra
    Simplification of Graph Convolutional Networks for Recommendation", CIKM 2021, eq. 12):

    L = sum_n [ -w_pos log sigmoid(s_pos) - negative_weight * (1/K) sum_k w_k log sigmoid(-s_k) ]

    with per-pair weights ``pos_weight`` [N] and ``neg_weight`` [N, K] (w1 + w2 beta_ui and
    w3 + w4 beta_uj: the constraint loss L_C and the base BCE L_O in one). Summed over the batch,
    not averaged, as in the authors' code (their gamma and lambda weigh terms against this sum).
    """
    pos_term = -pos_weight * F.logsigmoid(pos)
    neg_term = -(neg_weight * F.logsigmoid(-neg)).mean(-1)
    return (pos_term + negative_weight * neg_term).sum()


def distance_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Sample distance correlation dCor(x, y) of paired rows x [n, p], y [n, q] (Szekely, Rizzo
    & Bakirov, "Measuring and testing dependence by correlation of distances", Ann. Statist.
    2007): 0 iff independent in the population limit, so it serves as an independence penalty
    (DGCF's intent independence, Wang et al., SIGIR 2020, eq. 12).

    With a_jk = |x_j - x_k| double-centred (row, column and grand means removed), b likewise,
    dCov^2(x, y) = mean(a * b) and dCor = dCov(x, y) / sqrt(dCov(x, x) dCov(y, y)). ``eps``
    keeps the square roots differentiable at 0 (as the authors' code does)."""

    def centred(z: torch.Tensor) -> torch.Tensor:
        r = z.square().sum(1, keepdim=True)
        d = (r - 2 * z @ z.T + r.T).clamp_min(0.0).add(eps).sqrt()
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    def dcov(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a * b).mean().clamp_min(0.0) + eps).sqrt()

    a, b = centred(x), centred(y)
    return dcov(a, b) / ((dcov(a, a) * dcov(b, b)).clamp_min(0.0).sqrt() + 1e-10)


LOSSES: dict[str, type[nn.Module]] = {
    "softmax": FullSoftmaxLoss,
    "sampled_softmax": SampledSoftmaxLoss,
    "bpr": BPRLoss,
    "bce": BCELoss,
    "gbce": GBCELoss,
    "hinge": HingeLoss,
    "warp": WARPLoss,
    "infonce": InfoNCELoss,
    "wrmf": WeightedSquareLoss,
    "pris": PRISLoss,
    "ccl": CosineContrastiveLoss,
}


def build_loss(name: str, **options: Any) -> nn.Module:
    """Loss by config name; ``options`` go to its constructor (``margin``, ``temperature``, ...)."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss '{name}'; valid losses: {', '.join(LOSSES)}")
    try:
        return LOSSES[name](**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for loss '{name}': {exc}") from None
