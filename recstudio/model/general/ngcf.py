"""NGCF: neural graph collaborative filtering.

Wang, He, Wang, Feng, Chua. "Neural Graph Collaborative Filtering." SIGIR 2019. Embeddings are
propagated over the normalised user–item graph L = D^-1/2 A D^-1/2 with, per layer (eq. 7),

    E^(l+1) = LeakyReLU( (L + I) E^(l) W1 + (L E^(l) ⊙ E^(l)) W2 ),

followed by message dropout (``layers.dropout_mask``: the rate rounded to a multiple of 1/256
on CPU) and row-wise L2 normalisation (the authors' code); the final user and
item vectors concatenate layers 0..L (eq. 9) and the score is their inner product. Training is BPR
on (user, positive, negative) with an L2 penalty on the layer-0 rows of the batch.

How it runs: L is one ``SparseMatrix`` built once from the training interactions (shared with
LightGCN, ``recstudio.model.graph``); a training step propagates the whole graph once and the
fused BPR kernel reads the batch's rows from the two final tables; an evaluation pass propagates
once (``prepare_evaluation``, dropout off). Each layer is one autograd function with a
hand-written backward (``_NGCFLayerFunction``: both transforms as one product, activation,
dropout and normalisation without autograd's intermediates) and the concatenated user and item
tables are written directly (``_NodeTables``, no ``torch.cat`` of the node table and no
``split``): the ml-100k step took 14.3-16.4 ms against 17.5-18.0 ms before, one loaded core
(``benchmarks/README.md``, NGCF's step).
Node dropout drops entries of L with probability ``node_dropout`` and rescales the rest
(``SparseMatrix.dropout``, as the authors' and RecBole's code do).

Defaults are RecBole 1.2.1's: embedding 64, hidden sizes [64, 64, 64], node dropout 0.0, message
dropout 0.1, reg_weight 1e-5, Xavier-normal initialisation, LeakyReLU slope 0.2. Departures, on
purpose: the penalty is ``reg_weight * (sum of squared layer-0 rows) / batch`` (the project's BPR
convention, as LightGCN; RecBole sums unsquared norms); negatives exclude the user's training
items (the project's default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.graph import (
    CsrParts,
    PropagatedTwoTower,
    SparseMatrix,
    csr_product,
    normalized_adjacency,
)
from recstudio.model.layers import dropout_mask
from recstudio.model.ops import unit_rows, unit_rows_backward, user_item_tables
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register

NEGATIVE_SLOPE = 0.2
"""LeakyReLU's slope for negative inputs (RecBole's and the authors' NGCF)."""

NORM_EPS = 1e-12
"""The row normalisation's floor on the norm (``F.normalize``'s default)."""


def _layer_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    matrix: CsrParts,
    mask: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, ...]:
    """(y, side, both, inverse, squared) of ``_NGCFLayerFunction``'s forward; ``y`` alone is
    the layer's output."""
    d = x.shape[1]
    side = csr_product(matrix, x)
    both = torch.empty(x.shape[0], 2 * d, dtype=x.dtype, device=x.device)
    torch.add(side, x, out=both[:, :d])
    torch.mul(side, x, out=both[:, d:])
    z = F.leaky_relu_(torch.addmm(b, both, w.t()), NEGATIVE_SLOPE)
    if mask is not None:
        z.mul_(mask)
    y, inverse, squared = unit_rows(z, 1, eps)
    return y, side, both, inverse, squared


class _NGCFLayerFunction(torch.autograd.Function):
    """One NGCF layer, ``normalize(dropout(leaky_relu(W [L x + x | L x ⊙ x] + b)))``, with a
    hand-written backward (autograd's gradients, in the same order of operations).

    ``w`` is [W1 | W2] ([d_out, 2 d_in]) and ``b`` = b1 + b2: the two transforms are one product
    of the [n, 2 d_in] table [L x + x | L x ⊙ x], stored for the weight gradient. Against the
    composition of autograd ops this saves the per-op intermediates and several passes over
    the node table (the step is mostly [n, d] element-wise passes besides its 18 products).
    The activation's gradient reads the sign of the output: y > 0 exactly where the
    pre-activation is (where the dropout mask is 0 the gradient is 0 either way)."""

    @staticmethod
    def forward(ctx, x, w, b, matrix, transposed, mask, eps):
        y, side, both, inverse, squared = _layer_forward(x, w, b, matrix, mask, eps)
        ctx.save_for_backward(x, side, both, w, mask, y, inverse, squared > eps * eps)
        ctx.transposed = transposed
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, side, both, w, mask, y, inverse, unclamped = ctx.saved_tensors
        d = x.shape[1]
        # through the normalisation (``ops.l2_normalize``), the dropout and the activation
        grad_z = unit_rows_backward(grad, y, inverse, unclamped, 1)
        if mask is not None:
            grad_z.mul_(mask)
        grad_h = torch.ops.aten.leaky_relu_backward(grad_z, y, NEGATIVE_SLOPE, True)
        grad_w = grad_h.t().mm(both) if ctx.needs_input_grad[1] else None
        grad_b = grad_h.sum(0) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_both = grad_h.mm(w)
            grad_sum, grad_product = grad_both[:, :d], grad_both[:, d:]
            # x enters L x + x and L x ⊙ x directly, and both through L x (the transpose)
            grad_x = torch.addcmul(grad_sum, grad_product, side)
            grad_side = torch.addcmul(grad_sum, grad_product, x)
            grad_x.add_(csr_product(ctx.transposed, grad_side))
        return grad_x, grad_w, grad_b, None, None, None, None


class _NodeTables(torch.autograd.Function):
    """(users [num_users, D], items [num_items, D]) of the layer tables [n, d_l] concatenated
    along the features: the two tables written directly, and the gradients' column blocks read
    back into one contiguous [n, d_l] gradient per layer. ``torch.cat`` + ``split`` copy the wide
    table once more each way and hand the layers strided gradients (copied again before the
    products)."""

    @staticmethod
    def forward(ctx, num_users, *layers):
        n, widths = layers[0].shape[0], [t.shape[1] for t in layers]
        ctx.num_users, ctx.widths = num_users, widths
        users = layers[0].new_empty(num_users, sum(widths))
        items = layers[0].new_empty(n - num_users, sum(widths))
        start = 0
        for table, width in zip(layers, widths):
            users[:, start : start + width] = table[:num_users]
            items[:, start : start + width] = table[num_users:]
            start += width
        return users, items

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_users, grad_items):
        grads, start, nu = [], 0, ctx.num_users
        for width, needed in zip(ctx.widths, ctx.needs_input_grad[1:]):
            if needed:
                grad = grad_users.new_empty(nu + grad_items.shape[0], width)
                grad[:nu] = grad_users[:, start : start + width]
                grad[nu:] = grad_items[:, start : start + width]
                grads.append(grad)
            else:
                grads.append(None)
            start += width
        return None, *grads


class NGCFLayer(nn.Module):
    """One NGCF propagation layer's parameters: ``W1 (L x + x) + W2 (L x ⊙ x)``, followed by
    LeakyReLU, message dropout and row normalisation (all in ``_NGCFLayerFunction``)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_in, d_out)
        self.w2 = nn.Linear(d_in, d_out)
        for linear in (self.w1, self.w2):
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        adjacency: SparseMatrix,
        x: torch.Tensor,
        value: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layer's output [n, d_out] for x [n, d_in] over the normalised graph (entries
        ``value`` when given: node dropout), ``mask`` the scaled dropout mask [n, d_out]."""
        if x.shape[0] != adjacency.shape[1]:
            raise ValueError(f"cannot propagate x of shape {tuple(x.shape)} over {adjacency.shape}")
        value = None if value is None else value.detach()
        w = torch.cat([self.w1.weight, self.w2.weight], dim=1)
        b = self.w1.bias + self.w2.bias
        if not torch.is_grad_enabled():  # evaluation: the forward alone, nothing kept
            return _layer_forward(x, w, b, adjacency.parts(value), mask, NORM_EPS)[0]
        parts, transposed = adjacency.parts(value), adjacency.transposed_parts(value)
        return _NGCFLayerFunction.apply(x, w, b, parts, transposed, mask, NORM_EPS)


@register
class NGCF(PropagatedTwoTower):
    """Graph convolution with feature transforms and a bi-interaction term per layer; the layers'
    outputs are concatenated; BPR with an L2 penalty on the layer-0 rows."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Graph convolution with bi-interaction messages, layers concatenated, BPR loss "
        "(Wang et al., SIGIR 2019)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "hidden_sizes": ">= 1",
            "node_dropout": "[0, 1)",
            "message_dropout": "[0, 1)",
            "reg_weight": ">= 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Dimension of the layer-0 user and item embeddings (RecBole: 64)."""
        hidden_sizes: list[int] = field(default_factory=lambda: [64, 64, 64])
        """Output size of each propagation layer (RecBole's hidden_size_list: [64, 64, 64])."""
        node_dropout: float = 0.0
        """Share of the normalised graph's entries dropped per training step (RecBole: 0.0)."""
        message_dropout: float = 0.1
        """Dropout on each layer's output during training (RecBole: 0.1)."""
        reg_weight: float = 1e-5
        """L2 penalty on the layer-0 rows the batch used, over the batch size (RecBole: 1e-5)."""

        def validate(self) -> None:
            super().validate()  # the ranges above are checked when the config is built
            if not self.hidden_sizes:
                raise ConfigError("config key 'model.hidden_sizes' must name at least one layer")

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "reg_weight": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "message_dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "node_dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "hidden_sizes": {"type": "categorical", "choices": [[64], [64, 64], [64, 64, 64]]},
    }
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"epochs": 500, "early_stop_patience": 30}}

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        self.user_emb, self.item_emb = user_item_tables(
            data.num_users, data.num_items, d, nn.init.xavier_normal_
        )
        sizes = [d, *config.hidden_sizes]
        self.layers = nn.ModuleList(NGCFLayer(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        train = data.positives("train")
        self.adjacency = normalized_adjacency(train.user, train.item, data.num_users, data.num_items)
        self.build_ranking_parts(data, dim=sum(sizes))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [num_users, D] and item [num_items, D] vectors, D = embed_dim + sum of the
        hidden sizes: layers 0..L concatenated (one propagation over the whole graph)."""
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        p, rate = self.config.node_dropout, self.config.message_dropout
        value = self.adjacency.dropout(p) if self.training and p > 0 else None
        out = [x]
        for layer in self.layers:
            mask = None
            if self.training and rate > 0:
                mask = dropout_mask((x.shape[0], layer.w1.out_features), rate, x.dtype, x.device)
            x = layer(self.adjacency, x, value, mask)
            out.append(x)
        return _NodeTables.apply(self.num_users, *out)

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, edges={self.adjacency.nnz // 2}"
