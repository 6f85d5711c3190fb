"""Causal pooling over left-padded item sequences, for whole-sequence training of session models.

NARM (Li et al., CIKM 2017) and STAMP (Liu et al., KDD 2018) summarise a session *at its last
click* with an additive attention ``alpha_j = v^T sigmoid(q + k_j)`` over the session's items
and a mean of them; NPE (Nguyen & Takasu, IJCAI 2018) with a sum. Trained whole-sequence, every
position t needs the summary of items <= t: these functions compute it for all t at once with
masked tensor ops (no loop over positions or users), so that position t never sees a later
item and padding never contributes.

The attention weights are not normalised (no softmax), as in both papers and in RecBole.

``causal_additive_attention`` is written block by block, in a ``torch.autograd.Function``,
rather than as the one-line formula (kept in its docstring and in the tests, which compare
values and gradients in float64). Measured on one core for a STAMP training batch of ml-100k
(B 256, L 50, H 64): the formula's forward and backward took 173 + 237 ms, two thirds of a
whole step (848 ms), because every op wrote a fresh [B, L, L, H] tensor (164 MB): the pages of
each new allocation are faulted in again (an add or a sigmoid over 41M floats: 70-90 ms fresh,
4-17 ms in cache), and autograd kept and re-read them. Here each block of rows x query
positions x keys holds ``CPU_BLOCK_ELEMENTS`` terms (2 MB, L2-sized); forward keeps only the
[B, Q, L] weights and backward recomputes its block's sigmoid. Blocks cover only what can be
unmasked: rows are sorted by their first real item, and a block's keys run from its rows'
first real item to its last query (causal), 44% of the L x L square on ml-100k. The same batch:
16 + 27 ms (9.6x); STAMP's epoch 2.83 -> 0.87 s, NARM's (H 128) 5.45 -> 1.76 s, with the full
softmax loss also blocked (``recstudio.model.ops.full_softmax_inner_product_loss``). On other
devices the same code runs with larger blocks (``CUDA_BLOCK_ELEMENTS``: fewer kernel launches);
on any device at most one block of the pairwise tensor is in memory.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def causal_pair_mask(seq: torch.Tensor, num_queries: int | None = None, padding_id: int = 0) -> torch.Tensor:
    """Float mask [B, Q, L]: ``mask[b, t, j]`` is 1 where key j is a real item and j <= t, for the
    last Q positions t as queries (default: all L)."""
    length = seq.shape[1]
    queries = length if num_queries is None else num_queries
    tril = torch.ones(queries, length, dtype=torch.bool, device=seq.device).tril(length - queries)
    return (tril[None] & (seq != padding_id)[:, None, :]).float()


def causal_additive_attention(
    query: torch.Tensor, keys: torch.Tensor, v: nn.Linear, seq: torch.Tensor
) -> torch.Tensor:
    """Unnormalised additive attention weights [B, Q, L] of positions t over positions j <= t:
    ``w[b, t, j] = v^T sigmoid(query[b, t] + keys[b, j])`` for real keys j <= t, else 0.

    ``query`` [B, Q, H] holds the last Q positions (Q = L in training; Q = 1 when only the
    most recent position is needed, as at evaluation, which costs L times less); ``keys``
    [B, L, H]. Both are already projected (NARM: A_1 h_t and A_2 h_j; STAMP: W_2 x_t +
    W_3 m_s(t) + b_a and W_1 x_i). ``v`` maps H -> 1 without a bias. The pairwise terms are
    B Q L H: time grows with L^2 H, which bounds ``max_seq_len``; memory does not (blocks).

    Computed by ``_BlockedAdditiveAttention`` (see the module docstring): the same values as
    ``(sigmoid(query[:, :, None] + keys[:, None]) @ v.weight.T).squeeze(-1) * causal_pair_mask``
    and the same gradients, up to float rounding.
    """
    _, queries, width = query.shape
    length = keys.shape[1]
    real = seq != 0
    # first real position of each row (length for an all-padding row); rows sorted by it, so
    # that a block of rows shares a long run of padding keys it can skip
    first = torch.where(real.any(1), real.int().argmax(1), length)
    order = torch.argsort(first, stable=True)
    blocks = _attention_blocks(first[order].tolist(), queries, length, width, _block_budget(query))
    mask = causal_pair_mask(seq, queries)
    return _BlockedAdditiveAttention.apply(query, keys, v.weight, mask, order, blocks)


QUERY_BLOCK = 5
"""Query positions per block of ``causal_additive_attention`` (a block's keys end at its last
query: causal blocks of 5 of 50 positions compute 55% of the full L x L square)."""

CPU_BLOCK_ELEMENTS = 1 << 19
"""Pairwise terms per block on CPU: 2 MB of float32, one core's L2 cache on the project's
machine (measured best of 2^17..2^20 for H = 64 and 128)."""

CUDA_BLOCK_ELEMENTS = 1 << 25
"""Pairwise terms per block on other devices: few, large kernels (a GPU has no small cache to
fit and pays per launch)."""


def _block_budget(x: torch.Tensor) -> int:
    return CPU_BLOCK_ELEMENTS if x.device.type == "cpu" else CUDA_BLOCK_ELEMENTS


def _attention_blocks(
    first: list[int], queries: int, length: int, width: int, budget: int
) -> list[tuple[int, int, int, int, int, int]]:
    """Blocks ``(r0, r1, i0, i1, j0, j1)`` of rows (in the sorted order), query indices and key
    positions that hold every unmasked pair: rows in groups of about ``budget`` terms, query
    positions in runs of ``QUERY_BLOCK`` from the group's first real item, keys from that item to
    the run's last query (causal). Pairs outside every block are masked (0)."""
    offset = length - queries  # query i is position offset + i
    step = min(QUERY_BLOCK, queries)
    rows = max(1, budget // (step * length * width))
    blocks = []
    for r0 in range(0, len(first), rows):
        r1 = min(len(first), r0 + rows)
        start = first[r0]  # the group's earliest first real item: rows are sorted by it
        for i0 in range(max(0, start - offset), queries, step):
            i1 = min(queries, i0 + step)
            blocks.append((r0, r1, i0, i1, start, offset + i1))
    return blocks


class _BlockedAdditiveAttention(torch.autograd.Function):
    """``causal_additive_attention`` block by block: forward keeps only the [B, Q, L] weights and
    backward recomputes each block's sigmoid (cheaper than storing and re-reading it)."""

    @staticmethod
    def forward(ctx, query, keys, weight, mask, order, blocks):
        batch, queries, width = query.shape
        q, k = query.index_select(0, order), keys.index_select(0, order)  # rows sorted
        out = q.new_zeros(batch, queries, keys.shape[1])
        column = weight.reshape(width, 1)
        for r0, r1, i0, i1, j0, j1 in blocks:
            pairs = torch.add(q[r0:r1, i0:i1, None, :], k[r0:r1, None, j0:j1, :]).sigmoid_()
            out[r0:r1, i0:i1, j0:j1] = (pairs @ column).squeeze(-1)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch, device=order.device)
        ctx.save_for_backward(q, k, weight, mask, order, inverse)
        ctx.blocks = blocks
        return out.index_select(0, inverse).mul_(mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, weight, mask, order, inverse = ctx.saved_tensors
        width = q.shape[-1]
        grad = (grad * mask).index_select(0, order)  # d w / d (unmasked w), rows sorted
        d_q, d_k = torch.zeros_like(q), torch.zeros_like(k)
        d_weight = q.new_zeros(1, width)
        for r0, r1, i0, i1, j0, j1 in ctx.blocks:
            pairs = torch.add(q[r0:r1, i0:i1, None, :], k[r0:r1, None, j0:j1, :]).sigmoid_()
            g = grad[r0:r1, i0:i1, j0:j1].contiguous()
            d_weight += g.view(1, -1) @ pairs.view(-1, width)
            pairs.addcmul_(pairs, pairs, value=-1.0).mul_(g[..., None])  # g * sigmoid'
            d_q[r0:r1, i0:i1] += pairs.sum(2)
            d_k[r0:r1, j0:j1] += pairs.sum(1)
        scale = weight.reshape(1, 1, width)
        d_q = d_q.mul_(scale).index_select(0, inverse)
        d_k = d_k.mul_(scale).index_select(0, inverse)
        return d_q, d_k, d_weight.view_as(weight), None, None, None


def causal_sum(x: torch.Tensor, seq: torch.Tensor, padding_id: int = 0) -> torch.Tensor:
    """Running sums [B, L, d] of ``x`` [B, L, d] over the real positions <= t (padding excluded)."""
    real = (seq != padding_id)[..., None].to(x.dtype)
    return (x * real).cumsum(1)


def causal_mean(x: torch.Tensor, seq: torch.Tensor, padding_id: int = 0) -> torch.Tensor:
    """Running means [B, L, d] of ``x`` over the real positions <= t (0 before the first real one)."""
    count = (seq != padding_id).cumsum(1).clamp_min(1)[..., None].to(x.dtype)
    return causal_sum(x, seq, padding_id) / count
