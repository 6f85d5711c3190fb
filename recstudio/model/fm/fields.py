"""Field embeddings shared by the feature-based (CTR) models: LR, DeepFM, and the ones to come
(NFM, AFM, xDeepFM, DCN, AutoInt, WideDeep, FiBiNET ...).

A scored pair (user u, item i, interaction context) is a row of *fields*, in a fixed order:

- user fields: the user id, each categorical user feature, each multi-hot user feature;
- item fields: the item id, each categorical item feature, each multi-hot item feature;
- context fields: each interaction context field (``ctx.<name>`` codes of the batch).

Every field f gets an embedding e_f [d] and a first-order weight w_f (a scalar), as in FM-style
CTR models. A categorical field (an id, a feature code, a context code) looks up one row; code 0
("unknown", and padding) is a shared zero row that never trains, so an unknown value contributes
nothing. A multi-hot field (e.g. a movie's genres) is the **mean** of its active columns' rows,
weighted by the matrix entries: ``e_f = sum_j x_j v_j / sum_j x_j`` (and the same for w_f); a row
with no active column is zero. Mean rather than sum, so that a field's scale does not grow with
how many columns are on (a movie with six genres would otherwise dominate the FM's pairwise term
and the MLP's input); it is also RecBole's default pooling of sequence fields (``pooling="sum"``
gives the sum).

All fields share one table of width d + 1 (the embedding and the first-order weight side by side,
per-field offsets; row 0 is the shared zero row), so a side of a batch is one gather. The user
and item feature codes are non-persistent buffers indexed by id (they follow ``.to(device)``).

Scoring a block of users [B] against a chunk of items [c] (full ranking) never builds the
[B, c, F, d] tensor: ``FieldEmbedding.sides`` returns each side's fields with leading dims that
broadcast to the pairs (user [B, 1], item [B, C] for candidates or [1, c] for a chunk, context
[B, 1]), and ``FieldSides`` computes what CTR models need from the sides separately: the
first-order sum, the FM pairwise term (cross-side terms as inner products of the side sums, one
matmul per pair of sides) and a linear map of the concatenated embeddings (one product per side,
the first layer of an MLP). ``stacked()`` materialises [..., F, d] for models that need every
field at once (attention, CIN), at the cost the chunking of ``score_item_chunks`` bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import FeatureTable, PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import PairwiseRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.ops import gather_rows

Pooling = Literal["mean", "sum"]

CTR_CONTRACT = DataContract(inputs=(TrainInput("pointwise"),), labelled=True)
"""CTR models train on every labelled row (log loss) and are judged pointwise (AUC, GAUC, log loss)."""

CTR_DEFAULT_OVERRIDES: dict[str, Any] = {
    "data": {"split": "entry", "split_order": "random", "split_ratio": [0.8, 0.1, 0.1]},
    "train": {"monitor": "auc", "early_stop_patience": 10},
}
"""Section defaults of the CTR protocol: every labelled row split at random 80/10/10 over all
rows (RecBole's context-aware setting: ``RS [0.8, 0.1, 0.1]``, no grouping), early stopping on
validation AUC with RecBole's patience of 10."""

CTR_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    # categorical so that the default 0 is a candidate
    "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-7, 1e-6, 1e-5, 1e-4]},
}
"""Search space over the optimiser settings every CTR model has."""


@dataclass
class FieldGroup:
    """One side's fields for a set of pairs: ``table`` [..., F_g, d + 1] holds each field's
    embedding (``emb``, the first d columns) and first-order weight (``first``, the last)."""

    table: torch.Tensor

    @property
    def num_fields(self) -> int:
        return self.table.shape[-2]

    @property
    def emb(self) -> torch.Tensor:
        """Field embeddings [..., F_g, d]."""
        return self.table[..., :-1]

    @property
    def first(self) -> torch.Tensor:
        """First-order weights [..., F_g]."""
        return self.table[..., -1]


@dataclass
class FieldSides:
    """The fields of scored pairs as three groups whose leading dims broadcast to the pairs'
    shape P: ``user`` [B, 1, Fu, .], ``item`` [B, C, Fi, .] or [1, c, Fi, .], ``context``
    [B, 1, Fc, .] (None when the batch carries no context codes: every context field unknown,
    i.e. zero). ``counts`` = (Fu, Fi, Fc) of the layer, for zero-filling a missing context."""

    user: FieldGroup
    item: FieldGroup
    context: FieldGroup | None
    counts: tuple[int, int, int]

    def groups(self) -> list[FieldGroup]:
        return [g for g in (self.user, self.item, self.context) if g is not None]

    def first_order(self) -> torch.Tensor:
        """Sum of every field's first-order weight: [P]."""
        out = self.user.first.sum(-1) + self.item.first.sum(-1)
        if self.context is not None:
            out = out + self.context.first.sum(-1)
        return out

    def fm_interaction(self) -> torch.Tensor:
        """The FM pairwise term ``sum_{f<g} <e_f, e_g>`` over all fields: [P].

        With side sums s_g and ``q_g = sum_f |e_f|^2``: 0.5 (|sum_g s_g|^2 - sum_g q_g)
        = sum_g 0.5 (|s_g|^2 - q_g) + sum_{g<h} <s_g, s_h>; each cross-side product is a
        (batched) matmul, so no [B, c, d] tensor is formed in full ranking.
        """
        groups = self.groups()
        sums = [g.emb.sum(-2) for g in groups]  # [..., 1 or C, d]
        out = 0.0
        for g, s in zip(groups, sums):
            out = out + 0.5 * (s.square().sum(-1) - g.emb.square().sum((-1, -2)))
        for a in range(len(sums)):
            for b in range(a + 1, len(sums)):
                out = out + _cross_dot(sums[a], sums[b])
        return out

    def linear(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``W [e_1; ...; e_F] + b`` (the concatenated embeddings, field order) without
        concatenating: one product per side with its block of columns of ``weight`` [h, F*d]:
        [P, h]. ``dropout`` (if given) applies to each side's embeddings first."""
        d = self.user.emb.shape[-1]
        fu, fi, _ = self.counts
        blocks = ((self.user, 0), (self.item, fu * d), (self.context, (fu + fi) * d))
        out = None
        for group, start in blocks:
            if group is None or group.num_fields == 0:
                continue
            x = group.emb.flatten(-2)
            if dropout is not None:
                x = dropout(x)
            part = x @ weight[:, start : start + x.shape[-1]].T
            out = part if out is None else out + part
        assert out is not None  # the id fields are always there
        return out if bias is None else out + bias

    def stacked(self) -> torch.Tensor:
        """Every field's embedding, materialised: [P, F, d] (a missing context is zeros)."""
        user, item = self.user.emb, self.item.emb
        shape = torch.broadcast_shapes(user.shape[:-2], item.shape[:-2])
        parts = [user.expand(*shape, *user.shape[-2:]), item.expand(*shape, *item.shape[-2:])]
        fc = self.counts[2]
        if self.context is not None:
            ctx = self.context.emb
            parts.append(ctx.expand(*shape, *ctx.shape[-2:]))
        elif fc:
            parts.append(user.new_zeros(*shape, fc, user.shape[-1]))
        return torch.cat(parts, dim=-2)

    def stacked_first(self) -> torch.Tensor:
        """Every field's first-order weight: [P, F] (a missing context is zeros)."""
        user, item = self.user.first, self.item.first
        shape = torch.broadcast_shapes(user.shape[:-1], item.shape[:-1])
        parts = [user.expand(*shape, user.shape[-1]), item.expand(*shape, item.shape[-1])]
        fc = self.counts[2]
        if self.context is not None:
            parts.append(self.context.first.expand(*shape, fc))
        elif fc:
            parts.append(user.new_zeros(*shape, fc))
        return torch.cat(parts, dim=-1)


def _cross_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inner products of side sums ``a`` [..., 1 | Ca, d] and ``b`` [..., 1 | Cb, d] broadcast
    to the pairs: a matmul when one side has a single row per query (user, context), so a user
    block against an item chunk is [B, d] @ [d, c]."""
    if b.shape[-2] == 1 and a.shape[-2] != 1:
        a, b = b, a
    if a.shape[-2] == 1:
        if a.dim() == 3 and b.dim() == 3 and b.shape[0] == 1:  # one chunk for every query
            return a[:, 0] @ b[0].T
        return (a @ b.transpose(-1, -2)).squeeze(-2)
    return (a * b).sum(-1)


class _Side(nn.Module):
    """Where one side's fields live in the shared table: per-row global codes of its categorical
    fields (id first) and, per multi-hot field, its pooled column weights."""

    def __init__(
        self, prefix: str, num_rows: int, features: FeatureTable, offset: int, pooling: Pooling
    ) -> None:
        super().__init__()
        cat_names = sorted(features.categorical)
        bag_names = sorted(features.multi_hot)
        self.names = [f"{prefix}_id", *(f"{prefix}.{n}" for n in cat_names + bag_names)]
        columns = [torch.arange(num_rows)] + [features.categorical[n].long() for n in cat_names]
        sizes = [num_rows] + [int(features.cardinality[n]) for n in cat_names]
        codes = []
        for column, size in zip(columns, sizes):
            codes.append(torch.where(column > 0, column + offset - 1, 0))  # code c > 0 -> offset + c - 1
            offset += size - 1
        self.register_buffer("codes", torch.stack(codes, dim=1), persistent=False)  # [num_rows, n_cat]
        self.bags: list[tuple[str, int, int]] = []  # (buffer name, first table row, width)
        for n in bag_names:
            x = features.multi_hot[n].float()
            if pooling == "mean":
                x = x / x.sum(1, keepdim=True).clamp_min(1e-12)
            name = f"bag_{len(self.bags)}"
            self.register_buffer(name, x.contiguous(), persistent=False)
            self.bags.append((name, offset, x.shape[1]))
            offset += x.shape[1]
        self.end = offset

    @property
    def num_fields(self) -> int:
        return len(self.names)

    def lookup(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Fields [..., F_side, d + 1] of the rows ``ids`` [...]."""
        out = gather_rows(table, self.codes[ids], padding_idx=0)
        if not self.bags:
            return out
        pooled = [getattr(self, name)[ids] @ table[start : start + width] for name, start, width in self.bags]
        return torch.cat([out, torch.stack(pooled, dim=-2)], dim=-2)


class FieldEmbedding(nn.Module):
    """Per-field embeddings [..., F, d] and first-order weights [..., F] of (user, item, context)
    rows; see the module docstring for the fields, their order and the pooling of multi-hot
    fields. ``dim=0`` keeps first-order weights only (LR).

    ``use_features=False`` keeps the two id fields only; ``use_context=False`` ignores the
    batch's ``ctx.*`` codes.
    """

    def __init__(
        self,
        data: PreparedData,
        dim: int,
        *,
        use_features: bool = True,
        use_context: bool = True,
        pooling: Pooling = "mean",
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling must be mean or sum, got {pooling!r}")
        empty = FeatureTable()
        self.dim = dim
        self.user = _Side("user", data.num_users, data.user_features if use_features else empty, 1, pooling)
        self.item = _Side(
            "item", data.num_items, data.item_features if use_features else empty, self.user.end, pooling
        )
        offset = self.item.end
        self.context_names: list[str] = []
        self.context_offsets: list[int] = []
        if use_context:
            for name, size in sorted(data.context_cardinality.items()):
                self.context_names.append(name)
                self.context_offsets.append(offset)
                offset += int(size) - 1
        self.field_names = [*self.user.names, *self.item.names, *(f"ctx.{n}" for n in self.context_names)]
        self.counts = (self.user.num_fields, self.item.num_fields, len(self.context_names))
        self.table = nn.Parameter(torch.empty(offset, dim + 1))
        self.reset_parameters(init_std)

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    def reset_parameters(self, init_std: float) -> None:
        """Embeddings N(0, init_std), first-order weights 0, the shared unknown row 0."""
        with torch.no_grad():
            nn.init.normal_(self.table[:, :-1], std=init_std)
            self.table[:, -1].zero_()
            self.table[0].zero_()

    def _context(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Global codes [B, Fc] of the batch's context fields (None when it carries none)."""
        present = [f"ctx.{n}" in batch for n in self.context_names]
        if not any(present):
            return None
        users = batch["user"]
        codes = []
        for name, offset, here in zip(self.context_names, self.context_offsets, present):
            if not here:
                codes.append(torch.zeros_like(users))
                continue
            code = batch[f"ctx.{name}"].long()
            codes.append(torch.where(code > 0, code + offset - 1, 0))
        return torch.stack(codes, dim=1)

    def sides(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> FieldSides:
        """Fields of each user of ``batch`` paired with ``items``: [B, C] (each user's own
        candidates; [B, 1] for labelled rows) or [1, c] (one chunk for every user)."""
        users = batch["user"][:, None]
        user = FieldGroup(self.user.lookup(self.table, users))
        item = FieldGroup(self.item.lookup(self.table, items))
        codes = self._context(batch)
        context = None
        if codes is not None:
            context = FieldGroup(gather_rows(self.table, codes[:, None, :], padding_idx=0))
        return FieldSides(user, item, context, self.counts)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings [B, F, d], first-order weights [B, F]) of the labelled rows ``batch``
        (``user``, ``item`` [B], optional ``ctx.*`` [B])."""
        sides = self.sides(batch, batch["item"][:, None])
        return sides.stacked()[:, 0], sides.stacked_first()[:, 0]


class DeepTower(nn.Module):
    """The deep component of DeepFM / Wide&Deep: an MLP over the concatenated field embeddings
    to one logit, as ``[dropout -> linear -> ReLU]`` per hidden layer, then a linear output.

    The first layer is applied side by side (``FieldSides.linear``), so full ranking runs it once
    per user and once per item and only the later layers run per (user, item) pair.
    """

    def __init__(self, input_size: int, hidden_sizes: list[int], dropout: float) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("DeepTower needs at least one hidden layer")
        self.first = nn.Linear(input_size, hidden_sizes[0])
        self.dropout = nn.Dropout(dropout)
        layers: list[nn.Module] = [nn.ReLU()]
        for a, b in zip(hidden_sizes[:-1], hidden_sizes[1:]):
            layers += [nn.Dropout(dropout), nn.Linear(a, b), nn.ReLU()]
        self.rest = nn.Sequential(*layers)
        self.out = nn.Linear(hidden_sizes[-1], 1)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, sides: FieldSides) -> torch.Tensor:
        """Logits [P] of the pairs of ``sides``."""
        hidden = sides.linear(self.first.weight, self.first.bias, self.dropout)
        return self.out(self.rest(hidden)).squeeze(-1)


# --------------------------------------------------------------------------- the CTR model base


@dataclass
class FieldConfig:
    """Which fields a CTR model reads (inherit this in the model's ``Config``)."""

    use_features: bool = True
    """Use the dataset's user and item side features as fields; false keeps the two id fields."""
    use_context: bool = True
    """Use the interaction context fields (``ctx.*``) of the labelled rows."""
    pooling: Pooling = "mean"
    """How a multi-hot field (e.g. genres) pools its active columns: mean (RecBole's default;
    the field's scale does not grow with the number of columns) or sum."""

    def validate(self) -> None:
        if self.pooling not in ("mean", "sum"):
            raise ConfigError(f"config key 'model.pooling' must be mean or sum, got {self.pooling!r}")


class FieldRecommender(PairwiseRecommender):
    """Base of the CTR models: fields from ``FieldEmbedding``, a logit from ``logits(sides)``.

    Trained with log loss on every labelled row (``CTR_CONTRACT``; the base's pointwise path),
    judged pointwise; ``score_batch`` ranks all items through ``score_item_chunks`` (with
    ``eval.protocol=both`` or ``ranking``), each user block against item chunks [1, c] that
    broadcast against the users (no per-pair copy of the user fields).
    """

    family: ClassVar[str] = "feature"
    contract: ClassVar[DataContract] = CTR_CONTRACT
    default_overrides: ClassVar[dict[str, Any]] = CTR_DEFAULT_OVERRIDES
    pair_width: ClassVar[int] = 1

    def __init__(
        self,
        config: FieldConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self.bias = nn.Parameter(torch.zeros(()))

    def build_fields(self, data: PreparedData, dim: int, init_std: float = 0.01) -> None:
        """Create ``self.fields`` from the config's field options."""
        c = self.config
        self.fields = FieldEmbedding(
            data,
            dim,
            use_features=c.use_features,
            use_context=c.use_context,
            pooling=c.pooling,
            init_std=init_std,
        )

    def logits(self, sides: FieldSides) -> torch.Tensor:
        """Logits [P] of the pairs of ``sides`` (the model's formula)."""
        raise NotImplementedError

    def candidate_scores(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return self.logits(self.fields.sides(batch, items))

    def chunk_scores(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return self.candidate_scores(batch, items[None, :])


def check_positive(config: Any, *keys: str) -> None:
    """ConfigError naming ``model.<key>`` unless each integer key is >= 1."""
    for key in keys:
        value = getattr(config, key)
        if value < 1:
            raise ConfigError(f"config key 'model.{key}' must be >= 1, got {value}")
