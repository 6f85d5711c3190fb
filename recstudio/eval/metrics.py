"""Ranking metrics as tensor formulas, one value per user, so an evaluator can sum them.

Top-k metrics read a *hit matrix*: ``hits`` bool [B, K] where ``hits[u, r-1]`` says whether the
item ranked ``r`` for user ``u`` is one of the user's targets, and ``n_targets`` [B], the number
of distinct targets of each user. Ranks start at 1. ``k`` may exceed ``K`` (a catalogue smaller
than the cutoff): missing ranks count as misses.

==========  =================================================================================
recall@k    hits@k / n_targets
precision@k hits@k / k                       (k, not min(k, catalogue): a fixed denominator)
hit@k       1 if hits@k > 0 else 0
mrr@k       1 / rank of the first hit if that rank <= k, else 0
ndcg@k      DCG@k / IDCG@k, DCG@k = sum_{r<=k} hit_r / log2(r + 1),
            IDCG@k = sum_{r<=min(k, n_targets)} 1 / log2(r + 1)   (the ideal list is cut at k)
map@k       (1 / min(k, n_targets)) * sum_{r<=k} precision@r * hit_r
auc         per user, over the ranked candidates (items that are neither padding nor masked):
            fraction of (target, non-target) candidate pairs where the target scores higher,
            ties counting 0.5
==========  =================================================================================

where ``hits@k = sum_{r<=k} hit_r``. Edge cases:

- ``n_targets`` counts every target, including targets that are also in the masked history
  (they can never be ranked, so they cap recall below 1): the denominator is the user's whole
  target set, as in RecBole/RecStudio.
- Users with ``n_targets == 0`` have no defined value; the functions return 0 for them and the
  evaluator leaves them out (evaluation splits never contain them).
- AUC leaves out users with no target among the candidates or no non-target candidate.
- Items tied at the k-th position are ordered arbitrarily by ``torch.topk`` for top-k metrics;
  AUC treats ties exactly (0.5 per tied pair).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from recstudio import native

TOPK_METRICS: tuple[str, ...] = ("recall", "precision", "map", "ndcg", "mrr", "hit")
"""Metrics computed at each cutoff (reported as ``name@k``)."""
ALL_METRICS: tuple[str, ...] = (*TOPK_METRICS, "auc")
POINTWISE_METRICS: tuple[str, ...] = ("auc", "gauc", "logloss")
"""Metrics of labelled rows (``recstudio.eval.pointwise``); "auc" there is over the rows."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"logloss", "rmse", "mae"})


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` (``ndcg@10``, ``auc``, ``logloss``) is better:
    early stopping, checkpointing and tuning read the direction from here."""
    return name.partition("@")[0] not in LOWER_IS_BETTER


def _check_names(metrics: list[str] | tuple[str, ...]) -> None:
    unknown = [m for m in metrics if m not in TOPK_METRICS]
    if unknown:
        raise ValueError(f"unknown top-k metric(s) {unknown}; valid: {', '.join(TOPK_METRICS)}")


def topk_metrics(
    hits: torch.Tensor,
    n_targets: torch.Tensor,
    metrics: list[str] | tuple[str, ...],
    cutoffs: list[int] | tuple[int, ...],
) -> dict[str, torch.Tensor]:
    """Per-user float64 values ``{"ndcg@10": [B], ...}`` of every metric at every cutoff.

    One cumulative sum per quantity serves all cutoffs, so adding cutoffs costs a column read.
    ``hits`` bool [B, K]; ``n_targets`` [B] (>= 1 for a defined value).
    """
    _check_names(metrics)
    if not cutoffs or min(cutoffs) < 1:
        raise ValueError(f"cutoffs must be positive integers, got {list(cutoffs)}")
    kmax = max(cutoffs)
    device = hits.device
    h = hits[:, :kmax].to(torch.float64)
    if h.shape[1] < kmax:  # fewer ranked items than the cutoff: the missing ranks are misses
        h = torch.nn.functional.pad(h, (0, kmax - h.shape[1]))
    n = n_targets.to(device=device, dtype=torch.float64).clamp_min(1.0)
    ranks = torch.arange(1, kmax + 1, device=device, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = h.cumsum(1)
    wanted = set(metrics)
    if "ndcg" in wanted:
        dcg = (h * discount).cumsum(1)
        idcg_table = discount.cumsum(0)
    if "mrr" in wanted:
        first = h * (cum_hits == 1)  # the first hit is the only hit where the running count is 1
        rr = (first / ranks).cumsum(1)
    if "map" in wanted:
        ap = (h * cum_hits / ranks).cumsum(1)

    out: dict[str, torch.Tensor] = {}
    for m in metrics:
        for k in cutoffs:
            col = k - 1
            if m == "recall":
                value = cum_hits[:, col] / n
            elif m == "precision":
                value = cum_hits[:, col] / k
            elif m == "hit":
                value = (cum_hits[:, col] > 0).to(torch.float64)
            elif m == "mrr":
                value = rr[:, col]
            elif m == "ndcg":
                ideal = n.clamp(max=k).long() - 1
                value = dcg[:, col] / idcg_table[ideal]
            else:  # map
                value = ap[:, col] / n.clamp(max=k)
            out[f"{m}@{k}"] = value
    return out


def recall(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """recall@k = hits@k / n_targets, per user [B] (float64)."""
    return topk_metrics(hits, n_targets, ["recall"], [k])[f"recall@{k}"]


def precision(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """precision@k = hits@k / k, per user [B] (float64)."""
    return topk_metrics(hits, n_targets, ["precision"], [k])[f"precision@{k}"]


def hit(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """hit@k = 1 if any of the top k is a target else 0, per user [B] (float64)."""
    return topk_metrics(hits, n_targets, ["hit"], [k])[f"hit@{k}"]


def mrr(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """mrr@k = 1 / rank of the first hit when that rank is <= k, else 0, per user [B]."""
    return topk_metrics(hits, n_targets, ["mrr"], [k])[f"mrr@{k}"]


def ndcg(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """ndcg@k = DCG@k / IDCG@k with gains 1/log2(rank+1); IDCG sums min(k, n_targets) gains."""
    return topk_metrics(hits, n_targets, ["ndcg"], [k])[f"ndcg@{k}"]


def average_precision(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """AP@k (averaged into map@k) = sum_{r<=k} precision@r * hit_r / min(k, n_targets)."""
    return topk_metrics(hits, n_targets, ["map"], [k])[f"map@{k}"]


# --------------------------------------------------------------------------- AUC


_SORT_POOLS: dict[int, ThreadPoolExecutor] = {}
"""Sort thread pools by size; dropped in forked children, where their threads do not exist."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SORT_POOLS.clear)


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ascending sort (values only).

    On CPU numpy's vectorised sort is several times faster than ``torch.sort``; it releases the
    GIL, so row chunks are sorted on ``torch.get_num_threads()`` threads. On accelerators
    ``torch.sort`` runs on the device. Both give identical values.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return torch.sort(x, dim=1).values
    a = x.detach().numpy()
    threads = min(torch.get_num_threads(), a.shape[0] // 256)
    if threads <= 1:
        return torch.from_numpy(np.sort(a, axis=1))
    out = np.empty_like(a)
    bounds = np.linspace(0, a.shape[0], threads + 1).astype(int)

    def sort_chunk(i: int) -> None:
        lo, hi = bounds[i], bounds[i + 1]
        out[lo:hi] = np.sort(a[lo:hi], axis=1)

    pool = _SORT_POOLS.get(threads)
    if pool is None:
        pool = _SORT_POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="recstudio-auc-sort")
    list(pool.map(sort_chunk, range(threads)))
    return torch.from_numpy(out)


def prepare_scores(scores: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Float scores with padding column 0 and ``excluded`` items at -inf, every candidate finite.

    NaN and -inf candidate scores become the lowest finite float and +inf the highest, so -inf
    marks exactly the non-candidates: top-k hits can drop them by value and AUC's rank arithmetic
    stays exact. The caller's tensor is not modified.
    """
    x = scores.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if not bool(torch.isfinite(x).all()):  # rare: a read-only check is cheaper than rewriting x
        info = torch.finfo(x.dtype)
        x = torch.nan_to_num(x, nan=info.min, posinf=info.max, neginf=info.min)
    if excluded is not None:  # torch.where is ~2x faster than masked_fill_ on CPU
        x = torch.where(excluded, -math.inf, x)
    elif x.data_ptr() == scores.data_ptr():  # still the caller's storage: do not modify it
        x = x.clone()
    x[:, 0] = -math.inf
    return x


def row_counts(rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Occurrences of each row id in the sorted ``rows`` (as ``nonzero`` returns them), [num_rows].

    Two binary searches instead of ``bincount``, which has no deterministic CUDA kernel.
    """
    edges = torch.searchsorted(rows, torch.arange(num_rows + 1, device=rows.device, dtype=rows.dtype))
    return edges[1:] - edges[:-1]


def auc_from_prepared(
    x: torch.Tensor, target_rows: torch.Tensor, target_cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """AUC per user from ``prepare_scores`` output and the targets' (row, column) pairs.

    With a row sorted ascending, a candidate target of value v has ``left`` = #entries < v and
    ``right`` = #entries <= v. The E excluded entries (-inf) are all below it, so
    ``(left + right) / 2 - E`` counts the candidates below v with ties halved (v itself
    included). Summed over a row's P candidate targets this counts every target/target pair once
    and each target with itself half, i.e. P^2/2 beyond the target-over-non-target pair count U;
    AUC = U / (P * N). Targets at -inf (masked history) are not candidates and are skipped.
    """
    b, num = x.shape
    device = x.device
    zeros = torch.zeros(b, dtype=torch.float64, device=device)
    if b == 0:
        return zeros, torch.zeros(b, dtype=torch.bool, device=device)
    values = x[target_rows, target_cols]
    keep = values > -math.inf
    rows, values = target_rows[keep], values[keep]
    n_pos = row_counts(rows, b)
    counts = native.count_below(x, rows, values) if device.type == "cpu" else None
    if counts is not None:  # one counting pass over the row per target instead of sorting rows
        below, n_excluded = _below_sums_by_counting(counts, rows, b)
    else:
        below, n_excluded = _below_sums_by_sorting(x, rows, values, n_pos)
    n_neg = (num - n_excluded) - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    pos_f = n_pos.to(torch.float64)
    pairs = below - pos_f * pos_f * 0.5
    value = pairs / (pos_f * n_neg.to(torch.float64)).clamp_min(1.0)
    return torch.where(valid, value, 0.0), valid


def _below_sums_by_counting(
    counts: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rows: torch.Tensor, b: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum over its targets of (left + right) / 2 - E, and E, from the C counts."""
    below_count, below_or_equal, n_excluded = counts
    below = (below_count + below_or_equal).to(torch.float64) * 0.5 - n_excluded[rows].to(torch.float64)
    return torch.zeros(b, dtype=torch.float64).index_add_(0, rows, below), n_excluded


def _below_sums_by_sorting(
    x: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, n_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sums as ``_below_sums_by_counting`` from sorted rows and binary searches."""
    b, num = x.shape
    device = x.device
    ordered = _sorted_rows(x).to(device)
    lowest = torch.full((b, 1), torch.finfo(x.dtype).min, dtype=x.dtype, device=device)
    n_excluded = torch.searchsorted(ordered, lowest, side="left").squeeze(1)  # the -inf entries
    width = int(n_pos.max())  # one host sync per block: sizes the padded query matrix
    if width == 0:
        return torch.zeros(b, dtype=torch.float64, device=device), n_excluded
    offsets = n_pos.cumsum(0) - n_pos
    slot = torch.arange(rows.numel(), device=device) - offsets[rows]
    queries = torch.full((b, width), math.inf, dtype=x.dtype, device=device)
    queries[rows, slot] = values
    in_use = torch.arange(width, device=device) < n_pos[:, None]
    left = torch.searchsorted(ordered, queries, side="left")
    right = None
    if device.type == "cpu":
        # Each query is itself an entry, so right = left + 1 unless the next entry ties with it;
        # on CPU the second (slow) search runs only when some target is tied.
        after = ordered.gather(1, (left + 1).clamp(max=num - 1))
        if not bool((in_use & (left + 1 < num) & (after == queries)).any()):
            right = left + 1
    if right is None:
        right = torch.searchsorted(ordered, queries, side="right")
    below = (left + right).to(torch.float64) * 0.5 - n_excluded[:, None].to(torch.float64)
    return torch.where(in_use, below, 0.0).sum(1), n_excluded


def auc(
    scores: torch.Tensor, target_mask: torch.Tensor, candidate_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-user AUC over the candidates and which users have one: (auc [B] float64, valid [B]).

    AUC = (1 / (P * N)) * sum over target candidates t and non-target candidates j of
    [s_t > s_j] + 0.5 * [s_t == s_j], with P, N the numbers of target and non-target candidates.
    ``candidate_mask`` bool [B, I] marks the ranked items (padding column 0 never is one).
    A user is valid when P > 0 and N > 0; invalid users get 0 and must be left out of means.
    Costs one row sort and two ``searchsorted`` calls over the targets: O(I log I) per user, no
    pairwise matrix.
    """
    x = prepare_scores(scores, ~candidate_mask)
    rows, cols = target_mask.nonzero(as_tuple=True)
    return auc_from_prepared(x, rows, cols)
