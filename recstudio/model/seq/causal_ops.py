"""Causal pooling over left-padded item sequences, for whole-sequence training of session models.

NARM (Li et al., CIKM 2017) and STAMP (Liu et al., KDD 2018) summarise a session *at its last
click* with an additive attention ``alpha_j = v^T sigmoid(q + k_j)`` over the session's items
and a mean of them; NPE (Nguyen & Takasu, IJCAI 2018) with a sum. Trained whole-sequence, every
position t needs the summary of items <= t: these functions compute it for all t at once with
masked tensor ops (no loop over positions or users), so that position t never sees a later
item and padding never contributes.

The attention weights are not normalised (no softmax), as in both papers and in RecBole.
"""

from __future__ import annotations

import torch
from torch import nn


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
    W_3 m_s(t) + b_a and W_1 x_i). ``v`` maps H -> 1 without a bias. The pairwise tensor is
    [B, Q, L, H]: in training memory and time grow with L^2 H, which bounds ``max_seq_len``.
    """
    pairs = torch.sigmoid(query[:, :, None, :] + keys[:, None, :, :])  # [B, Q(t), L(j), H]
    weights = (pairs @ v.weight.T).squeeze(-1)  # [B, Q, L]
    return weights * causal_pair_mask(seq, query.shape[1])


def causal_sum(x: torch.Tensor, seq: torch.Tensor, padding_id: int = 0) -> torch.Tensor:
    """Running sums [B, L, d] of ``x`` [B, L, d] over the real positions <= t (padding excluded)."""
    real = (seq != padding_id)[..., None].to(x.dtype)
    return (x * real).cumsum(1)


def causal_mean(x: torch.Tensor, seq: torch.Tensor, padding_id: int = 0) -> torch.Tensor:
    """Running means [B, L, d] of ``x`` over the real positions <= t (0 before the first real one)."""
    count = (seq != padding_id).cumsum(1).clamp_min(1)[..., None].to(x.dtype)
    return causal_sum(x, seq, padding_id) / count
