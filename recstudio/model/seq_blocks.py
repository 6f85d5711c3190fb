"""Building blocks of the convolutional, gated, low-rank and frequency-domain sequence models
(Caser, HGN, CORE, LightSANs, FEARec), all tensor ops over left-padded batches [B, L] (padding
0, most recent item last).

- ``item_windows``: every position's window of its last ``size`` items at once (``unfold``), so
  models that read a fixed window (Caser, HGN) train on a whole user sequence in one sample.
- ``prefix_softmax``: softmax weights of each position over the positions it may see (a causal
  mask), the per-prefix weighting of CORE; ``prefix_interests``: the same weights applied to
  K interests by running sums (LightSANs' item-to-interest aggregation of every prefix).
- ``block_with_attention``: the shared ``TransformerBlock`` (residual, LayerNorm, feed-forward)
  around another attention module with the ``(x, mask)`` interface.
- ``LowRankSelfAttention``: LightSANs' low-rank decomposed self-attention with decoupled
  position encoding, made causal.
- ``frequency_band`` / ``HybridAttention``: FEARec's ramp of frequency components per layer and
  its frequency-domain auto-correlation mixed with time-domain attention.
- ``sample_prefixes`` / ``SameTargetPrefixes``: prefixes with their next item (training from the
  last position only, for encoders that are not causal), and for a target item another training
  prefix that precedes the same item (DuoRec's and FEARec's supervised positive view).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recstudio.model.layers import Activation, TransformerBlock, dropout


def item_windows(seq: torch.Tensor, size: int) -> torch.Tensor:
    """[B, L] -> [B, L, size]: ``out[b, t]`` = the ``size`` items ending at position t
    (``seq[b, t-size+1 .. t]``), zero-padded on the left where the sequence is shorter.

    A window never contains a later position, so a model reading windows is causal."""
    return F.pad(seq, (size - 1, 0)).unfold(1, size, 1)


def prefix_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Weights [B, L, L(, K)] of position t over the positions i it may see: ``logits`` [B, L(, K)]
    (one per position i, or K per position), ``keep`` bool [B, L, L] (``keep[b, t, i]``, e.g.
    ``attention_mask(seq, causal=True)[:, 0]``). Row t sums to 1 over the kept i; since the
    logit of i does not depend on t, this is the softmax each prefix would compute alone."""
    if logits.dim() == 2:
        return logits[:, None, :].masked_fill(~keep, -torch.inf).softmax(-1)
    return logits[:, None, :, :].masked_fill(~keep[..., None], -torch.inf).softmax(2)


def block_with_attention(
    attention: nn.Module,
    hidden_size: int,
    inner_size: int,
    dropout_p: float,
    activation: Activation = "gelu",
    norm_first: bool = False,
) -> TransformerBlock:
    """A shared ``TransformerBlock`` whose self-attention is ``attention`` (called as
    ``attention(x, mask)``): residuals, LayerNorms and the feed-forward layer stay the shared ones."""
    block = TransformerBlock(hidden_size, 1, inner_size, dropout_p, activation, norm_first)
    block.attention = attention
    return block


PREFIX_LOGIT_RANGE = 80.0
"""Logits more than this below a sequence's maximum are raised to it in ``prefix_interests``
(exp(-80) ~ 1e-35 is still a normal float32, so no prefix sum underflows to zero)."""


def prefix_interests(logits: torch.Tensor, values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Item-to-interest aggregation of every prefix: ``out[b, t, j]`` = sum over real i <= t of
    softmax_i(logits[b, i, j]) values[b, i], i.e. [B, L, K, d] from ``logits`` [B, L, K],
    ``values`` [B, L, d] and the real-item mask [B, L].

    Running sums (``cumsum``) of exp(logit - max) make it O(L K d) per sequence instead of the
    O(L^2 K d) of ``prefix_softmax`` followed by a product. The result is the exact prefix
    softmax unless a prefix's logits all lie more than ``PREFIX_LOGIT_RANGE`` below the whole
    sequence's maximum (then its weights are flattened, never NaN). Positions before the first
    real item get zeros."""
    logits = logits.masked_fill(~real[..., None], -torch.inf)
    top = logits.amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weight = torch.exp((logits - top).clamp_min(-PREFIX_LOGIT_RANGE)) * real[..., None]  # [B, L, K]
    numerator = torch.cumsum(weight.unsqueeze(-1) * values.unsqueeze(2), dim=1)  # [B, L, K, d]
    denominator = torch.cumsum(weight, dim=1).unsqueeze(-1)
    return numerator / denominator.clamp_min(torch.finfo(values.dtype).tiny)


class LowRankSelfAttention(nn.Module):
    """LightSANs' attention (Fan et al., SIGIR 2021): each query attends to k latent interests
    instead of to every item, plus a position-to-position term on position embeddings alone
    (decoupled position encoding, as in TUPE, Ke et al., ICLR 2021).

    Item-to-interest aggregation: interest j = sum_i softmax_i(x_i theta_j) x_i over the items i
    a query may see. The paper pools over the whole sequence; here each position t pools over
    items <= t (``prefix_interests``), so whole-sequence next-item training does not look ahead,
    at O(L k d) per sequence (running sums) like the paper's single pooling.
    ``position`` is the model's position table (shared by the layers), indexed from the end.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, num_interests: int, dropout_p: float, position: nn.Embedding
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.theta_key = nn.Parameter(torch.randn(hidden_size, num_interests) * 0.02)
        self.theta_value = nn.Parameter(torch.randn(hidden_size, num_interests) * 0.02)
        self.pos_norm = nn.LayerNorm(hidden_size)
        self.pos_query = nn.Linear(hidden_size, hidden_size)
        self.pos_key = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout_p
        self.position = [position]  # a list: not registered twice (the model owns the table)
        self.last_interest_weights: torch.Tensor | None = None
        """[B, H, L, k] attention of each query over the k interests, kept for inspection."""

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., H, d/H]."""
        return x.view(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, d], ``mask`` bool [B, 1, L, L] (causal, padded keys excluded) -> [B, L, d]."""
        batch, length, hidden = x.shape
        keep = mask[:, 0]
        drop = self.dropout if self.training else 0.0
        q = self.heads(self.query(x)).transpose(1, 2)  # [B, H, L, dh]
        k, v = self.key(x), self.value(x)
        real = keep.diagonal(dim1=1, dim2=2) & keep[:, -1]  # [B, L] real items
        # interests seen from position t: [B, L(t), k, d]
        interest_k = prefix_interests(k @ self.theta_key, k, real)
        interest_v = prefix_interests(v @ self.theta_value, v, real)
        interest_k = self.heads(interest_k).permute(0, 3, 1, 2, 4)  # [B, H, L, k, dh]
        interest_v = self.heads(interest_v).permute(0, 3, 1, 2, 4)
        scale = q.shape[-1] ** -0.5
        weights = ((q.unsqueeze(3) * interest_k).sum(-1) * scale).softmax(-1)  # [B, H, L, k]
        self.last_interest_weights = weights.detach()
        item_context = (dropout(weights, drop, self.training).unsqueeze(-1) * interest_v).sum(3)
        # decoupled positions: a position-only attention map, causal and without padded keys
        pos = self.pos_norm(self.position[0](torch.arange(length - 1, -1, -1, device=x.device)))
        pq = self.heads(self.pos_query(pos)).transpose(0, 1)  # [H, L, dh]
        pk = self.heads(self.pos_key(pos)).transpose(0, 1)
        pos_scores = (pq @ pk.transpose(-1, -2)) * (2 * pq.shape[-1]) ** -0.5  # [H, L, L]
        pos_weights = pos_scores.unsqueeze(0).masked_fill(~mask, -torch.inf).softmax(-1)
        pos_context = dropout(pos_weights, drop, self.training) @ self.heads(v).transpose(1, 2)
        context = (item_context + pos_context).transpose(1, 2).reshape(batch, length, hidden)
        return self.out(context)


def frequency_band(layer: int, num_layers: int, length: int, global_ratio: float) -> tuple[int, int]:
    """FEARec's ramp structure: the rfft bins [left, right) that layer ``layer`` (0-based) of
    ``num_layers`` keeps for sequences of ``length`` (out of ``length // 2 + 1`` bins).

    With ``global_ratio`` > 1/num_layers every layer keeps a share ``global_ratio`` of the
    bins, sliding from the highest frequencies (first layer) to the lowest (last layer), so
    neighbouring layers overlap; otherwise the layers split the spectrum into disjoint bands of
    1/num_layers each. This is the FEARec authors' rule (their ``HybridAttention``)."""
    bins = length // 2 + 1
    if global_ratio > 1.0 / num_layers:
        width = global_ratio
        step = (bins * (1 - global_ratio)) // (num_layers - 1) if num_layers > 1 else 0.0
    else:
        width = 1.0 / num_layers
        step = width * bins
    left = int(bins * (1 - width) - layer * step)
    right = int(bins - layer * step)
    return max(0, left), max(left + 1, min(bins, right))


class HybridAttention(nn.Module):
    """FEARec's hybrid attention (Du et al., SIGIR 2023): frequency-domain auto-correlation
    within this layer's frequency band, mixed with time-domain self-attention.

    Frequency branch (Autoformer-style, Wu et al., NeurIPS 2021): the correlation of queries
    and keys over time lags is ``irfft(Q_f * conj(K_f))`` with the bins outside the band zeroed;
    each sequence keeps its ``top_k = int(topk_factor * log L)`` strongest lags (averaged over
    heads and channels) and sums the values rolled by those lags with softmax weights. Time
    branch: ordinary causal scaled dot-product attention. Output:
    ``(1 - spatial_ratio) * frequency + spatial_ratio * time``.

    The frequency branch mixes all positions circularly: it is not causal, and the model must
    only be trained from the last position of each input (see ``FEARec``).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout_p: float,
        band: tuple[int, int],
        topk_factor: float,
        spatial_ratio: float,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.band = band
        self.topk_factor = topk_factor
        self.spatial_ratio = spatial_ratio
        self.dropout = dropout_p

    def band_filter(self, bins: int, device: torch.device) -> torch.Tensor:
        """Bool [bins]: the rfft bins this layer keeps."""
        idx = torch.arange(bins, device=device)
        return (idx >= self.band[0]) & (idx < self.band[1])

    def correlation(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Band-limited circular cross-correlation [B, H, L(lag), dh] of ``q``, ``k`` [B, H, L, dh]."""
        length = q.shape[2]
        spectrum = torch.fft.rfft(q, dim=2) * torch.fft.rfft(k, dim=2).conj()
        keep = self.band_filter(spectrum.shape[2], q.device)[:, None]
        return torch.fft.irfft(spectrum * keep, n=length, dim=2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, hidden // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, dh]
        lag_score = self.correlation(q, k).mean((1, 3))  # [B, L]
        top_k = max(1, min(length, int(self.topk_factor * math.log(length)))) if length > 1 else 1
        score, lag = lag_score.topk(top_k, dim=-1)  # [B, top_k]
        weight = score.softmax(-1)
        # rolled[t] = v[(t + lag) % L], summed over the top lags with their weights
        steps = torch.arange(length, device=x.device)
        index = (steps[None, None, :] + lag[:, :, None]) % length  # [B, top_k, L]
        gathered = v[:, :, None].expand(-1, -1, top_k, -1, -1)  # [B, H, top_k, L, dh]
        gathered = gathered.gather(
            3, index[:, None, :, :, None].expand(-1, self.num_heads, -1, -1, v.shape[-1])
        )
        freq = (gathered * weight[:, None, :, None, None]).sum(2)  # [B, H, L, dh]
        out = freq
        if self.spatial_ratio > 0:
            drop = self.dropout if self.training else 0.0
            if drop > 0.0 and x.device.type == "cpu":  # SDPA's CPU dropout is the slow bernoulli
                scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
                time = dropout(scores.masked_fill(~mask, -torch.inf).softmax(-1), drop, True) @ v
            else:
                time = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
            out = (1 - self.spatial_ratio) * freq + self.spatial_ratio * time
        return self.out(out.transpose(1, 2).reshape(batch, length, hidden))


def sample_prefixes(
    seq: torch.Tensor, target: torch.Tensor, per_row: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random prefixes of a ``seq2seq`` batch (``seq``, ``target`` [B, L], 0 = no target):
    ``per_row`` positions t with a target per row (uniformly, with replacement), each turned
    into the left-padded prefix ``seq[b, :t+1]`` [B * per_row, L], its next item ``target[b, t]``
    [B * per_row] and its row index b [B * per_row]. Rows without any target are dropped.

    This samples RecBole's prefix augmentation (every prefix its own sample) for encoders that
    cannot be trained at every position at once, with tensor ops only."""
    valid = target != 0
    rows = torch.nonzero(valid.any(1)).flatten()
    length = seq.shape[1]
    if rows.numel() == 0:
        empty = seq.new_zeros(0, length)
        return empty, seq.new_zeros(0), seq.new_zeros(0)
    cut = torch.multinomial(valid[rows].float(), per_row, replacement=True, generator=generator)
    row = rows[:, None].expand_as(cut).reshape(-1)
    cut = cut.reshape(-1)
    shift = (length - 1 - cut)[:, None]  # move position t to the end
    steps = torch.arange(length, device=seq.device)[None, :]
    source = steps - shift
    prefix = seq[row].gather(1, source.clamp_min(0)) * (source >= 0)
    return prefix, target[row, cut], row


class SameTargetPrefixes(nn.Module):
    """For a target item y, the prefix before another training occurrence of y (the last
    ``max_len`` items of that user before it, left-padded): DuoRec's supervised positive view,
    which FEARec contrasts with. Built once from the training split (rows sorted by user and
    time); occurrences that are a user's first item have no prefix and are never drawn. An item
    with no other occurrence gets one of its own (possibly the query's own prefix, as in DuoRec).
    """

    def __init__(
        self, user: torch.Tensor, item: torch.Tensor, num_users: int, num_items: int, max_len: int
    ) -> None:
        super().__init__()
        counts = torch.bincount(user, minlength=num_users)
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=indptr[1:])
        flat = torch.arange(len(item))
        has_prefix = flat > indptr[user]  # not the user's first item
        pool = flat[has_prefix]
        order = torch.argsort(item[pool], stable=True)
        per_item = torch.bincount(item[pool], minlength=num_items)
        start = torch.zeros(num_items + 1, dtype=torch.long)
        torch.cumsum(per_item, 0, out=start[1:])
        # non-persistent buffers: they follow .to(device) and stay out of checkpoints
        self.register_buffer("pool", pool[order], persistent=False)  # flat positions by item
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("items", item.clone(), persistent=False)
        self.register_buffer("first", indptr[user], persistent=False)  # each row's user's first row
        self.max_len = max_len

    def sample(self, targets: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prefixes [N, max_len] (0 rows for targets never seen after another item)."""
        lo, hi = self.start[targets], self.start[targets + 1]
        count = hi - lo
        r = torch.rand(targets.shape, device=targets.device, generator=generator)
        pick = lo + (r * count).long().clamp_max((count - 1).clamp_min(0))
        at = self.pool[pick.clamp_max(max(0, self.pool.numel() - 1))]  # flat index of the occurrence
        steps = torch.arange(self.max_len, device=targets.device)
        source = at[:, None] - self.max_len + steps[None, :]  # the max_len rows before it
        real = (source >= self.first[at][:, None]) & (count[:, None] > 0)
        return self.items[source.clamp_min(0)] * real


def window_next_item_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The window models' (Caser, HGN) whole-sequence training: the window of the last
    ``model.window`` items ending at every position that has a target becomes a query through
    ``model.window_queries(windows, users)``, and the model's ranking loss is taken on all of them."""
    seq = batch["seq"][:, -model.max_seq_len :]
    target = batch["target"][:, -model.max_seq_len :]
    valid = target != 0
    if not bool(valid.any()):  # no user in the batch has a next item: nothing to learn
        return model.item_emb.weight.sum() * 0.0
    users = batch["user"][:, None].expand_as(target)[valid]
    query = model.window_queries(item_windows(seq, model.window)[valid], users)
    return model.ranking_loss(query, target[valid], users=users)
