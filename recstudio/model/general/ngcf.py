"""NGCF: neural graph collaborative filtering.

Wang, He, Wang, Feng, Chua. "Neural Graph Collaborative Filtering." SIGIR 2019. Embeddings are
propagated over the normalised user–item graph L = D^-1/2 A D^-1/2 with, per layer (eq. 7),

    E^(l+1) = LeakyReLU( (L + I) E^(l) W1 + (L E^(l) ⊙ E^(l)) W2 ),

followed by message dropout (``layers.dropout``: the rate rounded to a multiple of 1/256 on
CPU) and row-wise L2 normalisation (the authors' code); the final user and
item vectors concatenate layers 0..L (eq. 9) and the score is their inner product. Training is BPR
on (user, positive, negative) with an L2 penalty on the layer-0 rows of the batch.

How it runs: L is one ``SparseMatrix`` built once from the training interactions (shared with
LightGCN, ``recstudio.model.graph``); a training step propagates the whole graph once and gathers
the batch's rows; an evaluation pass propagates once (``prepare_evaluation``, dropout off).
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

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.graph import PropagatedTwoTower, normalized_adjacency, split_nodes
from recstudio.model.layers import dropout
from recstudio.model.ops import l2_normalize, user_item_tables
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


class NGCFLayer(nn.Module):
    """One NGCF propagation layer: ``W1 (L x + x) + W2 (L x ⊙ x)`` given ``side = L x``
    (the activation, dropout and normalisation follow in the model)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_in, d_out)
        self.w2 = nn.Linear(d_in, d_out)
        for linear in (self.w1, self.w2):
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, side: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # both biases enter the first product and the second accumulates into it: two addmm,
        # no separate sums over the node table
        first = torch.addmm(self.w1.bias + self.w2.bias, side + x, self.w1.weight.t())
        return torch.addmm(first, side * x, self.w2.weight.t())


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
        p = self.config.node_dropout
        value = self.adjacency.dropout(p) if self.training and p > 0 else None
        out = [x]
        for layer in self.layers:
            x = F.leaky_relu(layer(self.adjacency(x, value), x), negative_slope=0.2)
            x = dropout(x, self.config.message_dropout, self.training)
            x = l2_normalize(x, dim=1)
            out.append(x)
        table = torch.cat(out, dim=1)
        return split_nodes(table, self.num_users)

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, edges={self.adjacency.nnz // 2}"
