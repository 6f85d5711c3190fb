"""LightGCL: graph contrastive learning with an SVD-guided view.

Cai, Huang, Xia, Ren. "LightGCL: Simple Yet Effective Graph Contrastive Learning for
Recommendation." ICLR 2023. The main view is LightGCN's propagation over the normalised graph
Â (layers summed, as in the paper's eq. 3); the augmented view replaces Â by its rank-q truncated
SVD Â_svd = U S V^T in each layer's message, G^(l) = Â_svd E^(l-1) (eq. 4), so it carries global
collaborative signal instead of a randomly perturbed graph. The loss is BPR on the main view,
``cl_weight`` times InfoNCE between the two views of each batch user and item against all users
(items) at temperature ``temperature`` (eq. 5), and ``reg_weight`` times the squared norm of both
embedding tables (eq. 6).

How it runs: Â is one ``SparseMatrix`` (shared with LightGCN) and the SVD view one
``LowRankBipartite`` (``torch.svd_lowrank`` of the user–item block, computed once from the
training interactions, ``recstudio.model.graph``). Because the SVD view is linear in the main
view's layers, it is computed as G = E^(0) + Â_svd (E^(0) + ... + E^(L-1)): one pair of thin
products per step, not one per layer. Evaluation propagates the main view once per pass.

Defaults are the authors' code's (``parser.py``): embedding 64, 2 layers, rank q = 5,
temperature 0.2, lambda1 (``cl_weight``) 0.2, lambda2 (``reg_weight``) 1e-7, edge dropout 0.0,
learning rate 1e-3, Xavier-uniform initialisation. Departures, on purpose: the InfoNCE positive
is not clipped to [-5, 5] (the authors' code clamps it; here it is plain softmax cross-entropy
over dot products, ``loss.contrastive_loss``, with the padding row left out); batches are the
project's (user, positive, negative) triplets of 2048 instead of 256 users with their pairs;
negatives exclude the user's training items. RecBole 1.2.1 has no LightGCL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.graph import LowRankBipartite, PropagatedTwoTower, normalized_adjacency, split_nodes
from recstudio.model.loss import contrastive_loss
from recstudio.model.ops import gather_rows, user_item_tables
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@register
class LightGCL(PropagatedTwoTower):
    """LightGCN propagation, BPR, plus InfoNCE between the main view and an SVD (rank-q) view."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "LightGCN with contrastive learning against an SVD-reconstructed graph view (Cai et al., ICLR 2023)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "num_layers": ">= 1",
            "rank": ">= 1",
            "cl_weight": ">= 0",
            "cl_temperature": "> 0",
            "reg_weight": ">= 0",
            "edge_dropout": "[0, 1)",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Dimension of the layer-0 user and item embeddings (authors: 64)."""
        num_layers: int = 2
        """Propagation layers L; the final embedding sums layers 0..L (authors: 2)."""
        rank: int = 5
        """Rank q of the truncated SVD of the normalised graph (authors: 5)."""
        cl_weight: float = 0.2
        """lambda1, weight of the contrastive loss (authors' code: 0.2)."""
        cl_temperature: float = 0.2
        """Temperature of the InfoNCE between the views (authors: 0.2)."""
        reg_weight: float = 1e-7
        """lambda2, weight of the squared norm of both embedding tables (authors: 1e-7)."""
        edge_dropout: float = 0.0
        """Share of the normalised graph's entries dropped per training step (authors: 0.0)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "cl_weight": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
        "cl_temperature": {"type": "float", "low": 0.05, "high": 2.0, "log": True},
        "reg_weight": {"type": "float", "low": 1e-8, "high": 1e-3, "log": True},
        "rank": {"type": "categorical", "choices": [3, 5, 10, 20]},
        "num_layers": {"type": "int", "low": 1, "high": 3},
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
            data.num_users, data.num_items, d, nn.init.xavier_uniform_
        )
        train = data.positives("train")
        self.adjacency = normalized_adjacency(train.user, train.item, data.num_users, data.num_items)
        rank = min(config.rank, data.num_users, data.num_items)
        self.svd_view = LowRankBipartite(train.user, train.item, data.num_users, data.num_items, rank)
        self.build_ranking_parts(data, dim=d)

    def main_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of layers 0..L, sum of layers 0..L-1) of the main view, all nodes [N, d]."""
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        p = self.config.edge_dropout
        value = self.adjacency.dropout(p) if self.training and p > 0 else None
        total, inner, h = x, x, x
        for layer in range(self.config.num_layers):
            h = self.adjacency(h, value)
            total = total + h
            if layer < self.config.num_layers - 1:
                inner = inner + h
        return total, inner

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        total = self.main_view()[0]
        return split_nodes(total, self.num_users)

    def svd_contrast(self, main: torch.Tensor, svd: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """InfoNCE of each node's SVD view against the main views of all nodes of its side
        (``main``/``svd`` [n, d]; ``nodes``: the batch's distinct ids), padding row 0 left out
        of the candidates (ids >= 1, so node n is candidate n - 1)."""
        return contrastive_loss(
            svd[nodes], main[1:], self.config.cl_temperature, target=nodes - 1, similarity="dot"
        )

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, pos = batch["user"], batch["item"]
        total, inner = self.main_view()
        user_table, item_table = split_nodes(total, self.num_users)
        query = gather_rows(user_table, users)
        loss, scored = self.scored_ranking_loss(query, pos, batch.get("neg_item"), users, items=item_table)
        c = self.config
        if c.cl_weight > 0:
            svd = torch.cat([self.user_emb.weight, self.item_emb.weight]) + self.svd_view(inner)
            svd_users, svd_items = split_nodes(svd, self.num_users)
            cl = self.svd_contrast(user_table, svd_users, torch.unique(users))
            cl = cl + self.svd_contrast(item_table, svd_items, torch.unique(scored))
            loss = loss + c.cl_weight * cl
        if c.reg_weight > 0:
            loss = loss + c.reg_weight * (
                self.user_emb.weight.square().sum() + self.item_emb.weight.square().sum()
            )
        return loss

    def extra_repr(self) -> str:
        return f"num_layers={self.config.num_layers}, rank={self.svd_view.rank}"
