"""Small autograd ops that are faster than their torch equivalents on the hot training path.

``gather_rows`` / ``Embedding``: a row lookup whose CPU backward is one ``index_add_`` into a
zero gradient. ``torch.nn.functional.embedding``'s CPU backward sorts the indices first and
measured 4.5x slower for a 2048 x 2 lookup into a 1683 x 64 table on the project's 2-core
machine (617 us vs 136 us), which was the largest single cost of a BPR step. On CUDA the stock
kernel is already fast and honours deterministic mode, so it is used unchanged there.

``sampled_inner_product_loss``: the inner-product BPR/BCE loss as the C kernels of
``recstudio.native`` (one pass forward, one backward), the one speed path of those losses on CPU;
everywhere else (CUDA, no compiler) models run the generic autograd formula of the loss module.

``full_softmax_inner_product_loss``: the full softmax cross-entropy over inner-product scores
in cache-sized row blocks (tensor code, any device), the speed path of ``FullSoftmaxLoss``.

``l2_normalize``: ``F.normalize``'s values with a backward of two passes (tensor code, any
device): 2.8x faster forward and backward on a [2519, 64] table, one core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from recstudio import native


def unit_rows(x: torch.Tensor, dim: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y = x / max(||x||, eps), 1 / max(||x||, eps), ||x||^2) along ``dim``: ``l2_normalize``'s
    forward, for code that folds it into its own autograd function (NGCF's layer)."""
    squared = (x * x).sum(dim, keepdim=True)
    inverse = squared.clamp_min(eps * eps).rsqrt()
    return x * inverse, inverse, squared


def unit_rows_backward(
    grad: torch.Tensor, y: torch.Tensor, inverse: torch.Tensor, unclamped: torch.Tensor, dim: int
) -> torch.Tensor:
    """The gradient through ``unit_rows`` given its output ``y``, ``inverse`` and ``unclamped``
    (``||x||^2 > eps^2``): ``(g - y <g, y>) / ||x||``; below eps the op is a plain scaling."""
    along = (grad * y).sum(dim, keepdim=True).mul_(unclamped)
    out = torch.mul(y, along)  # one [n, d] buffer for the rest: no autograd runs through this
    return torch.sub(grad, out, out=out).mul_(inverse)


class _L2Normalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
        y, inverse, squared = unit_rows(x, dim, eps)
        # where the norm is below eps the op is x / eps: a plain scaling, no projection
        ctx.save_for_backward(y, inverse, squared > eps * eps)
        ctx.dim = dim
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        y, inverse, unclamped = ctx.saved_tensors
        return unit_rows_backward(grad, y, inverse, unclamped, ctx.dim), None, None


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along ``dim``, the values of ``F.normalize(x, dim=dim, eps=eps)``.

    Why not ``F.normalize``: its autograd backward runs through the norm, the clamp, the
    expansion and the division (about eight passes over x); this one stores the output and
    computes ``(g - y <g, y>) / ||x||`` in two (forward and backward of a [2519, 64] table:
    0.71 vs 2.0 ms, one loaded core), which is NGCF's per-layer normalisation and the cosine
    scorer's and contrastive losses' inputs."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return unit_rows(x, dim, eps)[0]
    return _L2Normalize.apply(x, dim, eps)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, index: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.weight_shape = weight.shape
        ctx.padding_idx = padding_idx
        rows = weight.index_select(0, index.reshape(-1))
        return rows.view(*index.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (index,) = ctx.saved_tensors
        grad_weight = grad.new_zeros(ctx.weight_shape)
        # a contiguous source: index_add_ from a strided one (e.g. the gradient of one half of a
        # cat) measured 4x slower on CPU (251 against 66 us for [2048, 64] rows), far above the copy
        rows = grad.reshape(-1, ctx.weight_shape[1]).contiguous()
        grad_weight.index_add_(0, index.reshape(-1), rows)
        if ctx.padding_idx is not None:
            grad_weight[ctx.padding_idx] = 0
        return grad_weight, None, None


def gather_rows(weight: torch.Tensor, index: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
    """``weight[index]`` ([*index.shape, d]) with a fast dense backward; ``padding_idx`` gets no
    gradient, as in ``nn.Embedding``."""
    if weight.device.type != "cpu" or not weight.requires_grad or not torch.is_grad_enabled():
        return F.embedding(index, weight, padding_idx=padding_idx)
    return _GatherRows.apply(weight, index, padding_idx)


class Embedding(nn.Embedding):
    """``nn.Embedding`` with the fast CPU backward of ``gather_rows`` (dense gradients only;
    ``max_norm`` and ``sparse=True`` fall back to the stock lookup)."""

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if self.sparse or self.max_norm is not None:
            return super().forward(index)
        return gather_rows(self.weight, index, self.padding_idx)


def user_item_embeddings(data: Any, dim: int, std: float | None = None) -> tuple[Embedding, Embedding]:
    """A user and an item ``Embedding`` table of ``data`` (a PreparedData: ``num_users``,
    ``num_items``; padding row 0 zero), initialised N(0, std^2), or Xavier normal when ``std`` is
    None: the two id tables of the matrix-factorisation models."""
    init = nn.init.xavier_normal_ if std is None else (lambda weight: nn.init.normal_(weight, std=std))
    return user_item_tables(data.num_users, data.num_items, dim, init)


def sum_squared_rows(
    weight: torch.Tensor, index: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight[index].pow(2).sum()``: the L2 penalty of the rows a batch used (BPR-Opt style).

    When the table has fewer rows than the batch has indices, it is computed as each row's
    squared norm times how often the batch used it (``bincount``): the same value and gradient
    from table-sized tensors instead of batch-sized ones, which saves four of the largest
    element-wise passes of a BPR step. Otherwise the rows are squared directly; pass ``rows``
    (``weight[index]``, already gathered for the loss) to avoid gathering them twice.
    """
    flat = index.reshape(-1)
    if weight.shape[0] < flat.numel():
        counts = torch.bincount(flat, minlength=weight.shape[0]).to(weight.dtype)
        return (counts * weight.square().sum(dim=1)).sum()
    if rows is None:
        rows = gather_rows(weight, flat)
    return rows.square().sum()


FUSED_LOSSES = ("bpr", "bce")
"""Sampled losses ``sampled_inner_product_loss`` computes (the formulas of ``BPRLoss``/``BCELoss``)."""


class _NativeSampledInnerProductLoss(torch.autograd.Function):
    """``_SampledInnerProductLoss`` computed by the C kernels of ``recstudio.native``:
    one pass over the batch forward and one backward, with the query rows optionally gathered
    from a table inside the kernel (``query_index``)."""

    @staticmethod
    def forward(
        ctx,
        query: torch.Tensor,
        items: torch.Tensor,
        candidates: torch.Tensor,
        query_index: torch.Tensor | None,
        kind: str,
        reg_weight: float,
        padding_idx: int | None,
        query_padding_idx: int | None,
    ) -> torch.Tensor:
        query, items = query.detach().contiguous(), items.detach().contiguous()
        candidates = candidates.contiguous()
        loss, scores = native.sampled_loss_forward(query, items, candidates, query_index, kind, reg_weight)
        ctx.save_for_backward(query, items, candidates, query_index, scores)
        ctx.kind, ctx.reg_weight = kind, reg_weight
        ctx.padding_idx, ctx.query_padding_idx = padding_idx, query_padding_idx
        return query.new_full((), loss)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query, items, candidates, query_index, scores = ctx.saved_tensors
        d_query, d_items = native.sampled_loss_backward(
            query,
            items,
            candidates,
            query_index,
            scores,
            ctx.kind,
            ctx.reg_weight,
            float(grad),
            want=(ctx.needs_input_grad[0], ctx.needs_input_grad[1]),
        )
        if d_items is not None and ctx.padding_idx is not None:
            d_items[ctx.padding_idx] = 0
        if d_query is not None and ctx.query_padding_idx is not None:
            d_query[ctx.query_padding_idx] = 0
        return d_query, d_items, None, None, None, None, None, None


def native_available(query: torch.Tensor, items: torch.Tensor, *indices: torch.Tensor | None) -> bool:
    """The C kernels take CPU float32/float64 tensors of one dtype and int64 ids, and need the
    library to have compiled (``native.kernels()``)."""
    if query.device.type != "cpu" or items.device.type != "cpu" or query.dtype != items.dtype:
        return False
    if query.dtype not in native.DTYPES or query.dim() != 2 or items.dim() != 2:
        return False
    if any(ix is not None and (ix.dtype != torch.int64 or ix.device.type != "cpu") for ix in indices):
        return False
    return native.kernels() is not None


def sampled_inner_product_loss(
    query: torch.Tensor,
    items: torch.Tensor,
    candidates: torch.Tensor,
    kind: str,
    reg_weight: float = 0.0,
    padding_idx: int | None = 0,
    query_index: torch.Tensor | None = None,
    query_padding_idx: int | None = None,
) -> torch.Tensor:
    """Mean sampled loss of ``query`` [N, d] against ``items[candidates]`` (column 0 the
    positive, columns 1..K the negatives), scored by inner product, plus
    ``reg_weight / N * (|query|^2 + |items[candidates]|^2)`` (BPR-Opt's penalty on the rows used),
    computed by the native C kernels of ``recstudio.native`` (CPU, float32/float64).

    ``kind`` is "bpr" (``BPRLoss``) or "bce" (``BCELoss``): the same value and gradients as
    gathering, scoring and calling the loss module (tests compare them in float64).
    ``padding_idx`` gets no gradient, as in ``nn.Embedding``. With ``query_index`` [N],
    ``query`` is a table and the queries are its rows ``query[query_index]`` (row
    ``query_padding_idx`` gets no gradient). Callers check ``native_available`` first (models:
    ``ItemTowerRecommender.fused_loss_kind``); elsewhere the generic autograd path runs.
    """
    if kind not in FUSED_LOSSES:
        raise ValueError(f"kind must be one of {FUSED_LOSSES}, got {kind!r}")
    if candidates.dim() != 2 or candidates.shape[1] < 2:
        raise ValueError(f"candidates must be [N, 1 + K] with K >= 1, got {tuple(candidates.shape)}")
    if query_index is not None and (query_index.dim() != 1 or query_index.shape[0] != candidates.shape[0]):
        raise ValueError(
            f"query_index must be [N] with N = {candidates.shape[0]}, got {tuple(query_index.shape)}"
        )
    if not native_available(query, items, candidates, query_index):
        raise ValueError("sampled_inner_product_loss needs the native kernels and CPU float tensors")
    return _NativeSampledInnerProductLoss.apply(
        query, items, candidates, query_index, kind, float(reg_weight), padding_idx, query_padding_idx
    )


def user_item_tables(
    num_users: int, num_items: int, dim: int, init: Callable[[torch.Tensor], Any]
) -> tuple[Embedding, Embedding]:
    """The user and item embedding tables of a two-tower model: ``Embedding``s of width ``dim``
    with padding row 0, initialised in place by ``init`` (e.g. ``nn.init.xavier_normal_``) and
    the padding rows zeroed."""
    tables = Embedding(num_users, dim, padding_idx=0), Embedding(num_items, dim, padding_idx=0)
    for table in tables:
        init(table.weight)
        with torch.no_grad():
            table.weight[0].zero_()
    return tables


SOFTMAX_CPU_BLOCK_ELEMENTS = 1 << 19
"""Scores per row block of ``full_softmax_inner_product_loss`` on CPU: 2 MB of float32, one
core's L2 cache on the project's machine (256 rows of ml-100k's 1683 items)."""

SOFTMAX_BLOCK_ELEMENTS = 1 << 26
"""Scores per row block on other devices: few, large kernels."""

SOFTMAX_KEEP_ELEMENTS = 1 << 23
"""Largest [N, I] on CPU (32 MB of float32, the project machine's L3) whose probabilities
forward keeps for backward, which then skips the recomputed scores' matmul and softmax. Forward
and backward of the loss alone, one core, I = 1575, d = 64: N = 1200 / 2400 / 4800 rows 17 / 27
/ 57 ms kept against 21 / 31 / 66 ms recomputed; N = 9800 (62 MB) 144 against 130 ms, so larger
losses recompute block by block. Other devices always recompute (not measured there)."""


class _FullSoftmaxInnerProductLoss(torch.autograd.Function):
    """``full_softmax_inner_product_loss`` row block by row block: forward keeps each row's
    loss, and the [N, I] probabilities only when they fit ``SOFTMAX_KEEP_ELEMENTS`` (CPU); otherwise
    backward recomputes each block's scores (one more matmul and softmax), so no [N, I] score,
    log-softmax or gradient tensor is ever materialised."""

    @staticmethod
    def forward(ctx, query, items, target, temperature, padding_idx, rows):
        losses = query.new_empty(query.shape[0])
        keep = query.device.type == "cpu" and query.shape[0] * items.shape[0] <= SOFTMAX_KEEP_ELEMENTS
        probs = query.new_empty(query.shape[0], items.shape[0]) if keep else None
        for r0 in range(0, query.shape[0], rows):
            scores = _block_scores(query[r0 : r0 + rows], items, temperature, padding_idx)
            log_p = torch.log_softmax(scores, 1)
            losses[r0 : r0 + rows] = log_p.gather(1, target[r0 : r0 + rows, None]).squeeze(1).neg_()
            if probs is not None:
                torch.exp(log_p, out=probs[r0 : r0 + rows])
        ctx.save_for_backward(query, items, target, probs)
        ctx.temperature, ctx.padding_idx, ctx.rows = temperature, padding_idx, rows
        return losses.mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        query, items, target, probs = ctx.saved_tensors
        rows = ctx.rows
        scale = grad / (query.shape[0] * ctx.temperature)  # d mean / d row loss, through 1/T
        d_query = torch.empty_like(query) if ctx.needs_input_grad[0] else None
        d_items = torch.zeros_like(items) if ctx.needs_input_grad[1] else None
        for r0 in range(0, query.shape[0], rows):
            block = query[r0 : r0 + rows]
            # d row loss / d scores = softmax - one-hot of the target (0 at padding: exp(-inf))
            if probs is None:
                d_scores = torch.softmax(_block_scores(block, items, ctx.temperature, ctx.padding_idx), 1)
                d_scores.mul_(scale)
            else:  # the kept probabilities stay intact (a second backward reads them again)
                d_scores = probs[r0 : r0 + rows] * scale
            d_scores[torch.arange(block.shape[0], device=block.device), target[r0 : r0 + rows]] -= scale
            if d_query is not None:
                torch.mm(d_scores, items, out=d_query[r0 : r0 + rows])
            if d_items is not None:
                d_items.addmm_(d_scores.T, block)
        return d_query, d_items, None, None, None, None


def _block_scores(
    query: torch.Tensor, items: torch.Tensor, temperature: float, padding_idx: int | None
) -> torch.Tensor:
    scores = query @ items.T
    if temperature != 1.0:
        scores = scores.div_(temperature)
    if padding_idx is not None:
        scores[:, padding_idx] = -torch.inf
    return scores


def full_softmax_inner_product_loss(
    query: torch.Tensor,
    items: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 1.0,
    padding_idx: int | None = 0,
) -> torch.Tensor:
    """Mean full-softmax cross-entropy of ``query`` [N, d] against all ``items`` [I, d] scored by
    inner product: ``F.cross_entropy((query @ items.T) / temperature, target)`` with the
    ``padding_idx`` column at -inf (``FullSoftmaxLoss`` on ``InnerProductScorer.matrix``, the same
    value and gradients up to float rounding; tests compare them in float64).

    Why: the generic path materialises the [N, I] scores, their log-softmax and three gradients
    of that size; for STAMP on ml-100k (N ~ 9850 positions per step, I = 1683, d = 64) those
    66 MB tensors, each freshly allocated (page faults) and streamed through memory, made the
    loss 300 ms of a step (forward 117 ms, backward 183 ms, one core). Row blocks that fit the
    cache, with the scores recomputed in backward, measured ~145 ms. ``ItemTowerRecommender``
    uses it for ``FullSoftmaxLoss`` with ``InnerProductScorer`` (exact classes) on float32.
    """
    if query.dim() != 2 or items.dim() != 2 or target.shape != query.shape[:1]:
        raise ValueError(
            f"need query [N, d], items [I, d] and target [N], got {tuple(query.shape)}, "
            f"{tuple(items.shape)} and {tuple(target.shape)}"
        )
    budget = SOFTMAX_CPU_BLOCK_ELEMENTS if query.device.type == "cpu" else SOFTMAX_BLOCK_ELEMENTS
    rows = max(1, budget // max(1, items.shape[0]))
    return _FullSoftmaxInnerProductLoss.apply(query, items, target, float(temperature), padding_idx, rows)
