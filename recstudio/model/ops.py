"""Small autograd ops that are faster than their torch equivalents on the hot training path.

``gather_rows`` / ``Embedding``: a row lookup whose CPU backward is one ``index_add_`` into a
zero gradient. ``torch.nn.functional.embedding``'s CPU backward sorts the indices first and
measured 4.5x slower for a 2048 x 2 lookup into a 1683 x 64 table on the project's 2-core
machine (617 us vs 136 us), which was the largest single cost of a BPR step. On CUDA the stock
kernel is already fast and honours deterministic mode, so it is used unchanged there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        grad_weight.index_add_(0, index.reshape(-1), grad.reshape(-1, ctx.weight_shape[1]))
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
