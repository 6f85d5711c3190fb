"""DGCF: disentangled graph collaborative filtering.

Wang, Jin, Zhang, Li, Fan, Chua. "Disentangled Graph Collaborative Filtering." SIGIR 2020. Each
embedding is split into K intent chunks of size d/K. Every interaction edge carries K routing
logits S_k(u, i) (all 1 at the start of a propagation); per iteration, the intent graphs are
A_k = D_k^-1/2 softmax_k(S)_k D_k^-1/2 (softmax over the intents of each edge, D_k the node's
sum of its edges' intent-k weights), each chunk is propagated over its own A_k, and the logits
grow by the agreement of the updated node and its neighbour, S_k(u, i) += <n(u_k), tanh(n(i_k))>
(n: L2 normalisation; eqs. 5-9). The final vectors average layers 0..L; the score is their inner
product. The loss is BPR, an L2 penalty on the layer-0 rows of the batch, and ``cor_weight``
times the distance correlation between consecutive intent chunks of a random sample of users
and items (eq. 12, ``loss.distance_correlation``).

How it runs: the routing is tensor code over the edge list of the training graph (both
directions), all intents at once: the K intent graphs are one block-diagonal sparse matrix
(``intent_graph``) whose entries are the [E, K] intent weights (``graph.symmetric_norm`` with K
weightings), so one sparse product propagates every intent; the routing agreement is
``graph.edge_dot`` (per-edge products in edge blocks); no loop over nodes or intents. A training step
routes the whole graph once; an evaluation pass routes once (``prepare_evaluation``).

Defaults are RecBole 1.2.1's: embedding 64, 4 intents, 2 routing iterations, 1 layer, reg_weight
1e-3, cor_weight 0.01, the correlation sample max(num_users, num_items) / batches-per-epoch (as
RecBole's cor_batch_size), Xavier-normal initialisation. Departures, on purpose: the penalty is
``reg_weight * (sum of squared layer-0 rows) / batch`` (the project's BPR convention; RecBole sums
unsquared norms); the routing update after the last iteration of the last layer, which nothing
reads, is skipped; negatives exclude the user's training items (the project's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.graph import (
    PropagatedTwoTower,
    SparseMatrix,
    bipartite_edges,
    edge_dot,
    split_nodes,
    symmetric_norm,
)
from recstudio.model.loss import distance_correlation
from recstudio.model.ops import l2_normalize, user_item_tables
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


def intent_weights(
    logits: torch.Tensor, row: torch.Tensor, col: torch.Tensor, num_nodes: int
) -> torch.Tensor:
    """[E, K] edge weights of the K intent graphs: D_k^-1/2 softmax_k(logits) D_k^-1/2.
    (The softmax over the K intents is written out: ``torch.softmax`` over a dimension of 4
    took 40 ms for ml-100k's edges on the 2-core CPU, these four passes a few.)"""
    e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return symmetric_norm(row, col, num_nodes, e / e.sum(dim=1, keepdim=True))


def intent_graph(row: torch.Tensor, col: torch.Tensor, num_nodes: int, num_factors: int) -> SparseMatrix:
    """The K intent graphs as one block-diagonal ``SparseMatrix`` [K N, K N] over node chunks
    stacked intent-major (x [K, N, d/K] viewed as [K N, d/K]); its entries, in CSR order, are
    the edges (row, col) sorted by (row, col), intent by intent: ``value = weight.T.reshape(-1)``
    for edge weights [E, K] in that order. One sparse product propagates every intent."""
    offset = (torch.arange(num_factors) * num_nodes).repeat_interleave(row.shape[0])
    big_row, big_col = row.repeat(num_factors) + offset, col.repeat(num_factors) + offset
    n = num_factors * num_nodes
    return SparseMatrix(big_row, big_col, torch.ones(big_row.shape[0]), (n, n), symmetric=True)


def intent_routing(
    x: torch.Tensor,
    graph: SparseMatrix,
    row: torch.Tensor,
    col: torch.Tensor,
    logits: torch.Tensor,
    num_iterations: int,
    update_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DGCF layer: node chunks x [K, N, d/K] propagated over the K intent graphs of the
    directed edges (row <- col) [E] (sorted by (row, col); ``graph = intent_graph(...)``), with
    routing for ``num_iterations`` iterations from the edge logits [E, K]. Returns (the layer's
    output [K, N, d/K], the updated logits); with ``update_last=False`` the logits are not
    updated after the last iteration. The routing weights are constants for autograd (the
    gradient reaches x through the messages, not through the routing)."""
    k, n, dk = x.shape

    def node_major(z: torch.Tensor) -> torch.Tensor:  # [N, K, d/K]: an edge gathers one row
        return l2_normalize(z, dim=-1).transpose(0, 1).contiguous()

    with torch.no_grad():
        unit_neighbour = torch.tanh(node_major(x))  # [N, K, d/K], read at each edge's col
    out = x
    for t in range(num_iterations):
        with torch.no_grad():
            weight = intent_weights(logits, row, col, n)
        out = graph(x.reshape(k * n, dk), value=weight.T.reshape(-1)).view(k, n, dk)
        if update_last or t < num_iterations - 1:
            logits = logits + edge_dot(node_major(out.detach()), unit_neighbour, row, col)
    return out, logits


def intent_independence(x: torch.Tensor) -> torch.Tensor:
    """DGCF's independence loss of intent chunks x [n, K, d/K]: the distance correlation of
    consecutive chunks (k, k+1) summed, divided by K(K+1)/2 (RecBole's and the authors' code)."""
    k = x.shape[1]
    total = sum(distance_correlation(x[:, i], x[:, i + 1]) for i in range(k - 1))  # K-1 pairs
    return total / (k * (k + 1) / 2)


@register
class DGCF(PropagatedTwoTower):
    """Intent-disentangled graph convolution with iterative routing over the edges, BPR, an L2
    penalty and a distance-correlation independence loss between intents."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Graph convolution disentangled into intents by routing over the edges, independence "
        "loss (Wang et al., SIGIR 2020)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "num_factors": ">= 1",
            "num_iterations": ">= 1",
            "num_layers": ">= 1",
            "reg_weight": ">= 0",
            "cor_weight": ">= 0",
            "cor_batch_size": ">= 2",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Dimension of the embeddings, split into ``num_factors`` chunks (RecBole: 64)."""
        num_factors: int = 4
        """Intents K (RecBole's n_factors: 4)."""
        num_iterations: int = 2
        """Routing iterations per layer (RecBole's n_iterations: 2)."""
        num_layers: int = 1
        """Propagation layers; the final vectors average layers 0..L (RecBole: 1)."""
        reg_weight: float = 1e-3
        """L2 penalty on the layer-0 rows the batch used, over the batch size (RecBole: 1e-3)."""
        cor_weight: float = 0.01
        """Weight of the intent independence loss (RecBole: 0.01)."""
        cor_batch_size: int | None = None
        """Users and items sampled per step for the independence loss (None: RecBole's rule,
        max(num_users, num_items) / training batches per epoch)."""

        def validate(self) -> None:
            super().validate()  # the ranges above are checked when the config is built
            if self.embed_dim % self.num_factors:
                raise ConfigError(
                    f"config key 'model.embed_dim' ({self.embed_dim}) must be divisible by "
                    f"model.num_factors ({self.num_factors})"
                )

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "reg_weight": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "cor_weight": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "num_factors": {"type": "categorical", "choices": [2, 4, 8]},
        "num_iterations": {"type": "int", "low": 1, "high": 3},
        "num_layers": {"type": "int", "low": 1, "high": 2},
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
        train = data.positives("train")
        row, col = bipartite_edges(train.user, train.item, data.num_users, data.num_items)
        n = data.num_users + data.num_items
        order = torch.argsort(row * n + col)  # CSR order, the entries' order in the intent graph
        row, col = row[order], col[order]
        self.register_buffer("row", row, persistent=False)
        self.register_buffer("col", col, persistent=False)
        self.graph = intent_graph(row, col, n, config.num_factors)
        if config.cor_batch_size is None:
            batches = row.shape[0] // 2 // self.train_config.batch_size + 1
            self.cor_batch_size = max(2, int(max(data.num_users, data.num_items) / batches))
        else:
            self.cor_batch_size = config.cor_batch_size
        self.build_ranking_parts(data, dim=d)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [num_users, d] and item [num_items, d] vectors: the mean of layers 0..L of
        the intent-routed propagation (the routing logits start at 1 and carry across layers)."""
        c = self.config
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        n = x.shape[0]
        x = x.view(n, c.num_factors, -1).transpose(0, 1).contiguous()  # [K, N, d/K]
        logits = x.new_ones(self.row.shape[0], c.num_factors)
        total = x
        for layer in range(c.num_layers):
            last = layer == c.num_layers - 1
            x, logits = intent_routing(
                x, self.graph, self.row, self.col, logits, c.num_iterations, update_last=not last
            )
            total = total + x
        table = (total / (c.num_layers + 1)).transpose(0, 1).reshape(n, -1)
        return split_nodes(table, self.num_users)

    def auxiliary_loss(
        self, batch: dict[str, torch.Tensor], users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor | None:
        """``cor_weight`` times the intent independence of a random sample of users and items
        (real ids only, drawn without replacement)."""
        if self.config.cor_weight <= 0 or self.config.num_factors < 2:
            return None
        device = users.device
        m_users = min(self.cor_batch_size, self.num_users - 1)
        m_items = min(self.cor_batch_size, self.num_items - 1)
        sample_users = torch.randperm(self.num_users - 1, device=device)[:m_users] + 1
        sample_items = torch.randperm(self.num_items - 1, device=device)[:m_items] + 1
        x = torch.cat([users[sample_users], items[sample_items]])
        return self.config.cor_weight * intent_independence(x.view(x.shape[0], self.config.num_factors, -1))

    def extra_repr(self) -> str:
        c = self.config
        return f"factors={c.num_factors}, iterations={c.num_iterations}, layers={c.num_layers}"
