"""Pointwise evaluation of labelled rows: AUC, GAUC and log loss; of rated rows: RMSE and MAE.

CTR ("ranker") models are judged on labelled rows (user, item, 0/1 label) of the validation and
test splits, not by ranking the catalogue:

==========  =================================================================================
auc         P(score of a random positive row > score of a random negative row), over all rows;
            ties count 0.5. Computed from average ranks (Mann-Whitney U):
            (sum of positive ranks - P (P + 1) / 2) / (P N).
gauc        per-user AUC (the same formula within each user's rows), averaged with weights =
            the user's number of positive rows, over users with at least one positive and one
            negative row (RecBole's definition).
logloss     mean binary cross-entropy of the logits against the labels (natural log).
rmse        rating models (``DataContract.ratings``): sqrt(mean((prediction - rating)^2)) over
            the split's rows, the prediction being ``score_pairs`` (PMF's predicted rating).
mae         mean |prediction - rating| over the same rows.
==========  =================================================================================

Rows accumulate per pass (the AUCs need every row); under DDP each rank's rows are gathered
before computing, so every rank returns the same values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recstudio.errors import ConfigError

POINTWISE_METRICS = ("auc", "gauc", "logloss")
RATING_METRICS = ("rmse", "mae")


def log_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits`` against 0/1 ``labels``: what pointwise models
    train on and the ``logloss`` metric, one formula."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error: sqrt(mean((prediction - target)^2))."""
    return (prediction.double() - target.double()).square().mean().sqrt()


def mae(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error: mean(|prediction - target|)."""
    return (prediction.double() - target.double()).abs().mean()


def _average_ranks(sorted_values: torch.Tensor, group_start: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``sorted_values`` within groups starting at the True entries of
    ``group_start`` (values sorted ascending inside each group), ties sharing their average."""
    n = sorted_values.numel()
    position = torch.arange(n, device=sorted_values.device, dtype=torch.float64)
    first_of_group = torch.cummax(torch.where(group_start, position, 0.0), 0).values
    new_value = torch.ones(n, dtype=torch.bool, device=sorted_values.device)
    new_value[1:] = sorted_values[1:] != sorted_values[:-1]
    new_value |= group_start
    run_id = torch.cumsum(new_value.long(), 0) - 1
    run_start = position[new_value]
    run_len = torch.bincount(run_id).to(torch.float64)
    rank_in_group = run_start[run_id] - first_of_group + (run_len[run_id] + 1.0) / 2.0
    return rank_in_group


def auc_from_rows(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUC of ``scores`` against 0/1 ``labels`` over all rows (NaN without both classes)."""
    order = torch.argsort(scores, stable=True)
    s, y = scores[order], labels[order] > 0.5
    start = torch.zeros_like(y)
    if start.numel():
        start[0] = True
    ranks = _average_ranks(s, start)
    n_pos = int(y.sum())
    n_neg = int(y.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc_from_rows(scores: torch.Tensor, labels: torch.Tensor, users: torch.Tensor) -> float:
    """Per-user AUC weighted by the user's positives, over users with both classes."""
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(users[order], stable=True)]  # by user, then score
    s, y, u = scores[order], labels[order] > 0.5, users[order]
    start = torch.ones_like(y)
    start[1:] = u[1:] != u[:-1]
    ranks = _average_ranks(s, start)
    group = torch.cumsum(start.long(), 0) - 1
    n_groups = int(group[-1]) + 1 if group.numel() else 0
    pos = torch.zeros(n_groups, dtype=torch.float64, device=s.device).index_add_(0, group, y.double())
    total = torch.bincount(group, minlength=n_groups).to(torch.float64)
    rank_sum = torch.zeros(n_groups, dtype=torch.float64, device=s.device).index_add_(
        0, group, torch.where(y, ranks, 0.0)
    )
    neg = total - pos
    ok = (pos > 0) & (neg > 0)
    if not bool(ok.any()):
        return math.nan
    auc = (rank_sum[ok] - pos[ok] * (pos[ok] + 1) / 2.0) / (pos[ok] * neg[ok])
    return float((auc * pos[ok]).sum() / pos[ok].sum())


class PointwiseEvaluator:
    """Accumulates (user, score, target) of evaluation rows; ``compute`` gives auc/gauc/logloss
    against the batch's ``label`` (``target="label"``) or rmse/mae against its ``rating``
    (``target="rating"``, rating models)."""

    def __init__(
        self, metrics: list[str] | tuple[str, ...] = POINTWISE_METRICS, target: str = "label"
    ) -> None:
        valid = {"label": POINTWISE_METRICS, "rating": RATING_METRICS}[target]
        unknown = [m for m in metrics if m not in valid]
        if unknown:
            raise ConfigError(f"unknown pointwise metric(s) {unknown}; valid: {', '.join(valid)}")
        self.metrics = list(dict.fromkeys(metrics))
        self.target = target
        self.reset()

    def reset(self) -> None:
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def update(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Add one block of rows: ``logits`` [N] and the batch's target (``label`` or ``rating``)
        and ``user`` [N]."""
        device = logits.device
        self._parts.append(
            (
                batch["user"].to(device).long(),
                logits.detach().float().reshape(-1),
                batch[self.target].to(device).float().reshape(-1),
            )
        )

    def _rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._parts:
            users, logits, labels = (torch.cat(x) for x in zip(*self._parts))
        else:
            users = torch.zeros(0, dtype=torch.long)
            logits = labels = torch.zeros(0)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            users, logits, labels = (_all_gather_rows(t) for t in (users, logits, labels))
        return users, logits, labels

    def compute(self) -> dict[str, float]:
        users, logits, labels = self._rows()
        out: dict[str, float] = {}
        if "auc" in self.metrics:
            out["auc"] = auc_from_rows(logits, labels)
        if "gauc" in self.metrics:
            out["gauc"] = gauc_from_rows(logits, labels, users)
        if "logloss" in self.metrics:
            out["logloss"] = float(log_loss(logits, labels)) if labels.numel() else math.nan
        for name, formula in (("rmse", rmse), ("mae", mae)):
            if name in self.metrics:
                out[name] = float(formula(logits, labels)) if labels.numel() else math.nan
        return out


def _all_gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length from every rank (padded all_gather)."""
    dist = torch.distributed
    device = values.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    local = values.to(device)
    size = torch.tensor([local.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=local.dtype, device=device)
    padded[: local.numel()] = local
    chunks = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return torch.cat([c[: int(s)] for c, s in zip(chunks, sizes)]).to(values.device)
