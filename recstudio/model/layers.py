"""Shared building blocks of models: transformer encoders for sequences, the TransR relation
space of knowledge-graph models, and side-feature vectors.

Transformer building blocks for sequence encoders over left-padded item sequences.

Conventions (see ``docs/architecture.md``): sequences are int64 [B, L], left-padded with the
padding id 0, most recent item last. Everything here is batch-first, builds its masks from the
padding with tensor ops (no per-sequence Python), and runs unchanged on CPU and CUDA.

- ``SequenceEmbedding``: item embedding + learned positional embedding, with positions counted
  from the *end* of the sequence, so the most recent item always gets position 0 and extra left
  padding never changes what a real position sees.
- ``attention_mask``: boolean [B, 1, L, L] "may attend" masks, causal (unidirectional,
  as in SASRec, Kang & McAuley, ICDM 2018) or bidirectional (as in BERT4Rec, Sun et al.,
  CIKM 2019), with padded keys excluded.
- ``TransformerBlock`` / ``TransformerEncoder``: multi-head self-attention on
  ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where the backend has them)
  plus a position-wise feed-forward network, pre- or post-LayerNorm (Vaswani et al., NeurIPS 2017;
  Xiong et al., ICML 2020 for pre-LN).

Knowledge graphs and side features:

- ``TransR``: relation translations and projection matrices (Lin et al., AAAI 2015) over entity
  vectors the model owns (CKE shares them with its item vectors), projecting a batch of triples
  relation by relation; ``distance`` is the TransR score a structural loss ranks.
- ``FeatureVectors``: a ``FeatureTable`` (categorical codes, multi-hot bags) as one learned vector
  per id, for models that fuse side features into free embeddings (DiffNet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from recstudio.model.ops import l2_normalize

Activation = Literal["relu", "gelu"]


SEQUENCE_DEFAULT_OVERRIDES: dict = {
    "data": {"split": "loo", "by_session": True},
    "train": {"learning_rate": 1e-3, "batch_size": 256},
}
"""Section defaults shared by sequence models: chronological leave-one-out, one sequence per
session where the dataset has sessions, and 256 sequences per batch."""

TRANSFORMER_SEARCH_SPACE: dict = {
    "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
    "hidden_size": {"type": "categorical", "choices": [32, 64, 128]},
    "num_layers": {"type": "int", "low": 1, "high": 3},
    "num_heads": {"type": "categorical", "choices": [1, 2, 4]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "max_seq_len": {"type": "categorical", "choices": [50, 100, 200]},
    # softmax temperature (None: 1.0, the default)
    "temperature": {"type": "categorical", "choices": [None, 0.05, 0.1, 0.2, 0.5]},
}
"""Search space over the encoder hyperparameters every transformer sequence model has."""


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT-style initialisation: N(0, std) for linear and embedding weights, zero biases.

    Small initial embeddings matter when the item table is also the output layer (shared
    input/output embeddings): PyTorch's default N(0, 1) embeddings give initial logits with a
    standard deviation of sqrt(d), which saturates the softmax before training starts.
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
            if sub.padding_idx is not None:
                with torch.no_grad():
                    sub.weight[sub.padding_idx].zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def tanh_mlp(sizes: list[int], last_activation: bool = False) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with tanh between them (and after the last
    with ``last_activation``), Xavier normal weights and N(0, 0.001^2) biases: the encoders of
    MultiVAE (Liang et al.) and the towers of DSSM (Huang et al.)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        nn.init.xavier_normal_(linear.weight)
        nn.init.normal_(linear.bias, std=0.001)
        layers.append(linear)
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout; on CPU drawn from random bytes, several times faster than ``F.dropout``.

    On CPU, ``F.dropout`` draws its mask with ``bernoulli_``, which costs about as much as the
    rest of a small Transformer layer (measured: 18 ms vs 2.5 ms for random bytes on a
    [256, 50, 64] tensor). Here an element is dropped when a uniform byte is below
    ``round(256 * p)``, so the realised rate is ``p`` rounded to a multiple of 1/256 (0.199 for
    0.2), and kept elements are scaled by the exact inverse keep rate, so expectations match.
    Other devices use ``F.dropout``, whose fused kernels are already fast.
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    # a multiplication by the scaled mask: its backward is one product (``torch.where`` with a
    # scaled input measured 1.5x slower forward and backward)
    return x * dropout_mask(x.shape, p, x.dtype, x.device)


def dropout_mask(
    shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """The scaled keep mask of ``dropout`` [shape]: 0 with probability ``p``, else 1 / (1 - p),
    for code that folds dropout into its own forward and backward (NGCF's layer). On CPU it is
    ``dropout``'s mask (random bytes, the rate rounded to a multiple of 1/256, the same draws);
    elsewhere a Bernoulli draw with the exact rate."""
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1.0 - p).div_(1.0 - p)
    threshold = min(255, max(1, round(256 * p)))
    return (random_bytes(shape) >= threshold).to(dtype).mul_(256.0 / (256 - threshold))


def random_bytes(shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Independent uniform bytes [shape] (uint8, CPU) from the default generator, drawn as
    64-bit words: ``random_`` makes one draw per element whatever the dtype, so eight bytes per
    draw cost 5x less than ``uint8.random_()`` (0.13 vs 0.69 ms for 161k bytes, one core)."""
    count = math.prod(shape)
    words = torch.empty((count + 7) // 8, dtype=torch.int64).random_(-(2**63), None)
    return words.view(torch.uint8)[:count].view(shape)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` using ``dropout`` above (fast masks on CPU)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention_mask(seq: torch.Tensor, causal: bool, padding_id: int = 0) -> torch.Tensor:
    """Boolean mask [B, 1, L, L]: ``mask[b, 0, i, j]`` is True where query i may attend to key j.

    Keys that are padding are never attended to; with ``causal`` a query also ignores later
    positions, so position i's output depends only on items 1..i (no look-ahead during
    whole-sequence training). A padding *query* would then have no key at all, and softmax over
    an empty set is NaN; it is allowed to attend to itself instead. Padding outputs are never
    read, and real positions never attend to padding, so this changes no real output.
    """
    length = seq.shape[1]
    keep = (seq != padding_id)[:, None, None, :]  # [B, 1, 1, L] keys
    if causal:
        tril = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        keep = keep & tril
    eye = torch.eye(length, dtype=torch.bool, device=seq.device)
    return keep | eye


class SequenceEmbedding(nn.Module):
    """Item embedding plus a learned positional embedding counted from the end of the sequence.

    ``item`` is exposed so a model can reuse its rows as output item vectors (shared input and
    output embeddings, as both SASRec and BERT4Rec do). Rows beyond the real items (e.g. a
    [MASK] token) are simply extra rows of the same table.

    Positions are right-aligned: the last (most recent) item gets position 0, the one before it 1,
    and so on. With fixed-length left-padded batches this equals absolute positions, but it also
    makes outputs independent of how much left padding a batch carries.
    """

    def __init__(
        self,
        num_embeddings: int,
        max_len: int,
        hidden_size: int,
        dropout: float,
        padding_id: int = 0,
        scale: bool = False,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.item = nn.Embedding(num_embeddings, hidden_size, padding_idx=padding_id)
        self.position = nn.Embedding(max_len, hidden_size)
        self.scale = math.sqrt(hidden_size) if scale else 1.0
        self.norm = nn.LayerNorm(hidden_size) if layer_norm else nn.Identity()
        self.dropout = Dropout(dropout)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Embed ``seq`` [B, L] (L <= max_len) into [B, L, d]."""
        length = seq.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the positional table size {self.max_len}")
        positions = torch.arange(length - 1, -1, -1, device=seq.device)
        x = self.item(seq) * self.scale + self.position(positions)
        return self.dropout(self.norm(x))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention`` with one fused QKV projection."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, d], ``mask`` bool [B, 1, L, L] (True: may attend) -> [B, L, d]."""
        batch, length, hidden = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, hidden // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, d_head]
        drop = self.dropout if self.training else 0.0
        if drop > 0.0 and x.device.type == "cpu":
            # SDPA's CPU kernels have no dropout and fall back to unfused math with the slow
            # bernoulli mask; the same math with the fast mask is cheaper.
            scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
            weights = scores.masked_fill(~mask, -torch.inf).softmax(-1)
            y = dropout(weights, drop, True) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden))


class TransformerBlock(nn.Module):
    """Self-attention + position-wise feed-forward, each with dropout and a residual connection.

    ``norm_first=True`` is pre-LN (LayerNorm before each sub-layer, as in the SASRec reference
    implementation); ``False`` is the original post-LN of Vaswani et al. and BERT (BERT4Rec).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        inner_size: int,
        dropout: float,
        activation: Activation = "gelu",
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.attention = MultiHeadSelfAttention(hidden_size, num_heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            nn.GELU() if activation == "gelu" else nn.ReLU(),
            Dropout(dropout),
            nn.Linear(inner_size, hidden_size),
        )
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout1(self.attention(self.norm1(x), mask))
            return x + self.dropout2(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout1(self.attention(x, mask)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class TransformerEncoder(nn.Module):
    """A stack of ``TransformerBlock``s sharing one attention mask; pre-LN stacks end with a LayerNorm."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        inner_size: int,
        dropout: float,
        activation: Activation = "gelu",
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, inner_size, dropout, activation, norm_first)
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_size) if norm_first else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, d], ``mask`` from ``attention_mask`` -> hidden states [B, L, d]."""
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


def trim_left_padding(
    seq: torch.Tensor, *others: torch.Tensor, padding_id: int = 0
) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding in every row of ``seq`` (and the same columns of ``others``).

    With right-aligned positions and padding excluded from attention, these columns cannot change
    any real output, so dropping them only saves work (batches of short sequences). It reads one
    scalar back from the device, which is cheap next to a training step.
    """
    start = int((seq != padding_id).any(0).long().argmax())  # first real column (0 if none)
    if start == 0:
        return (seq, *others)
    return (seq[:, start:], *(t[:, start:] for t in others))


def next_item_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    hidden_of: Callable[[torch.Tensor], torch.Tensor],
    items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whole-sequence next-item training shared by causal sequence models: the last
    ``model.max_seq_len`` items of each ``seq2seq`` sample, trimmed of all-padding columns, are
    encoded once by ``hidden_of`` ([B, L] -> [B, L, d], position t seeing items <= t), and the
    model's ranking loss is taken at every position that has a target (``items``: the item
    vectors to score against, default the model's own)."""
    seq, target = trim_left_padding(
        batch["seq"][:, -model.max_seq_len :], batch["target"][:, -model.max_seq_len :]
    )
    hidden = hidden_of(seq)
    valid = target != 0
    count = int(valid.sum())
    if count == 0:  # no user in the batch has a next item: nothing to learn
        return hidden.sum() * 0.0
    users = batch["user"][:, None].expand_as(target)
    if count == valid.numel():
        # every position has a target (one-transition samples): a view, not a boolean gather,
        # whose nonzero + index and zero-filled index_put backward cost ~1 ms of a 4 ms FPMC step
        return model.ranking_loss(
            hidden.reshape(count, -1), target.reshape(count), users=users.reshape(count), items=items
        )
    return model.ranking_loss(hidden[valid], target[valid], users=users[valid], items=items)


def left_padded_rnn(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Outputs [B, L, H] of a ``batch_first`` recurrent net (``nn.GRU``, ``nn.LSTM``) over
    left-padded input ``x`` [B, L, D] whose rows have ``lengths`` [B] real steps (the last ones).

    A recurrent net is causal but stateful: run directly on left padding, it would step through
    the padding first, and with biases (or any nonzero padding input) its state at the first
    real item would no longer be the initial one. So each row is shifted to right padding (real
    steps first), the net runs over all L steps in one fused call, and the outputs are shifted
    back: a step after a row's end cannot change the outputs before it, so every real output is
    exactly the one of the row alone, whatever the padding. Outputs at padding positions are 0;
    ``out[:, -1]`` is each row's state after its last item (a row with no real step reads 0).
    ``pack_padded_sequence`` would give the same outputs, and measured 3.7x slower than the
    padded call for a [256, 50, 64] GRU(128) step on the 2-core CPU (forward and backward).
    """
    length = x.shape[1]
    lengths = lengths.clamp(0, length)
    if bool((lengths == length).all()):  # no padding: nothing to shift
        return rnn(x)[0]
    steps = torch.arange(length, device=x.device)
    pad = (length - lengths)[:, None]  # [B, 1]
    to_right = ((steps[None, :] + pad) % length)[..., None]  # right[b, t] = x[b, t + pad_b]
    out = rnn(x.gather(1, to_right.expand(-1, -1, x.shape[2])))[0]
    to_left = ((steps[None, :] - pad) % length)[..., None]  # left[b, t] = out[b, t - pad_b]
    out = out.gather(1, to_left.expand(-1, -1, out.shape[2]))
    return out * (steps[None, :] >= pad)[..., None].to(out.dtype)


# --------------------------------------------------------------------------- knowledge graphs

RELATION_GROUP_LIMIT = 64
"""Most distinct relations in a batch that ``TransR.project`` multiplies group by group; beyond
it, one batched product over per-triple copies of the matrices (more memory, fewer kernels)."""


class TransR(nn.Module):
    """TransR's relation space (Lin, Liu, Sun, Liu, Zhu, AAAI 2015) over entity vectors the
    model owns.

    Relation r has a translation ``r`` [k] and a projection ``M_r`` [d, k]; a triple's distance is

        f_r(h, t) = || n(h M_r) + n(r) - n(t M_r) ||^2,

    where ``n`` is L2 normalisation when ``normalize`` (TransR's constraints ||h M_r||, ||t M_r||,
    ||r|| <= 1 held with equality, as RecBole's CKE does; without it ``n`` is the identity).
    Projections start as the identity (d = k; else a truncated identity), TransR's own
    initialisation, so training starts from TransE. Relation id 0 is padding.

    A batch is projected relation by relation (triples sorted by relation, one [c, m, d] @ [d, k]
    product per distinct relation, at most ``RELATION_GROUP_LIMIT``): on the 2-core CPU this was
    3x faster than one ``bmm`` over per-triple copies of the matrices (12 vs 40 ms forward and
    backward for 2,777 ml-100k triples with a head, a tail and a corrupted tail, d = k = 64).
    """

    def __init__(
        self,
        num_relations: int,
        entity_dim: int,
        relation_dim: int,
        normalize: bool = True,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.relation = nn.Embedding(num_relations, relation_dim, padding_idx=0)
        nn.init.normal_(self.relation.weight, std=init_std)
        with torch.no_grad():
            self.relation.weight[0].zero_()
        eye = torch.eye(entity_dim, relation_dim)
        self.projection = nn.Parameter(eye.expand(num_relations, -1, -1).clone())

    def project(self, x: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
        """``x`` [N, m, d] (m entities per triple) times their triple's ``M_r``: [N, m, k]."""
        distinct, counts = torch.unique(relation, return_counts=True)  # sorted; one device sync
        if distinct.numel() > RELATION_GROUP_LIMIT:
            return torch.bmm(x, self.projection[relation])
        order = torch.argsort(relation, stable=True)
        # split/unbind rather than slices and indexing: their backward is one cat/stack, where
        # each slice's backward would fill a zero tensor the size of the whole batch or table
        groups = torch.split(x[order], counts.tolist())
        matrices = self.projection.unbind(0)
        parts = [group @ matrices[rel] for group, rel in zip(groups, distinct.tolist())]
        return torch.cat(parts)[torch.argsort(order)]

    def distance(self, head: torch.Tensor, relation: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """f_r(h, t) [N, m] of head vectors [N, d], relations [N] and m tail vectors [N, m, d]
        per triple (the true tail and corrupted ones share the head's projection)."""
        projected = self.project(torch.cat([head.unsqueeze(1), tails], dim=1), relation)
        r = self.relation(relation)
        if self.normalize:
            projected = l2_normalize(projected, dim=-1)
            r = l2_normalize(r, dim=-1)
        h, t = projected[:, :1], projected[:, 1:]
        return (h + r.unsqueeze(1) - t).square().sum(-1)


# --------------------------------------------------------------------------- side features


class FeatureVectors(nn.Module):
    """Side features of users or items as one learned vector per id: the sum over fields of a
    categorical field's code embedding (code 0, unknown or padding, is a zero row that never
    trains) and a multi-hot field's weighted mean of column embeddings (a row with no active
    column gives zero). This is ``F y`` of a one-hot/multi-hot feature vector ``y``, the feature
    map that fusion layers (DiffNet's ``sigma(F y) + q``) put beside free embeddings.

    ``features`` is a ``recstudio.data.dataset.FeatureTable``; its codes and bags become
    non-persistent buffers (they follow ``.to(device)`` and stay out of checkpoints).
    """

    def __init__(self, features: Any, dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.categorical = sorted(features.categorical)
        self.multi_hot = sorted(features.multi_hot)
        self.codes = nn.ModuleDict()
        self.bags = nn.ModuleDict()
        for name in self.categorical:
            self.codes[name] = nn.Embedding(int(features.cardinality[name]), dim, padding_idx=0)
            self.register_buffer(f"code_{name}", features.categorical[name].long().clone(), persistent=False)
        for name in self.multi_hot:
            bag = features.multi_hot[name].float()
            bag = bag / bag.sum(1, keepdim=True).clamp_min(torch.finfo(bag.dtype).tiny)
            self.bags[name] = nn.Linear(bag.shape[1], dim, bias=False)
            self.register_buffer(f"bag_{name}", bag.clone(), persistent=False)
        for module in [*self.codes.values(), *self.bags.values()]:
            nn.init.normal_(module.weight, std=init_std)
        for table in self.codes.values():
            with torch.no_grad():
                table.weight[0].zero_()

    @property
    def is_empty(self) -> bool:
        return not self.categorical and not self.multi_hot

    def forward(self) -> torch.Tensor:
        """[num_rows, dim]: every id's feature vector (a table without fields has none: check
        ``is_empty`` first)."""
        out = None
        for name in self.categorical:
            part = self.codes[name](getattr(self, f"code_{name}"))
            out = part if out is None else out + part
        for name in self.multi_hot:
            part = self.bags[name](getattr(self, f"bag_{name}"))
            out = part if out is None else out + part
        if out is None:
            raise ValueError("FeatureVectors has no feature fields")
        return out
