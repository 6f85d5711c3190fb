"""SimpleX: a user-behaviour-aggregating two-tower model trained with the cosine contrastive loss.

Mao, Zhu, Wang, Dai, Dong, Xiao, He. "SimpleX: A Simple and Strong Baseline for Collaborative
Filtering." CIKM 2021. The user vector is ``g * e_u + (1 - g) * W mean(e_i, i in history(u))``
(the mean aggregator; ``W`` a d x d map without bias), dropped out during training; the score is
the cosine of the user and item vectors; the loss is CCL (``recstudio.model.loss``, ``ccl``):
``max(0, 1 - cos(u, i+)) + w * mean_k max(0, cos(u, i_k) - margin)`` over many uniform negatives.

How it runs: each user's history is the last ``history_len`` training items (by time), a padded
id buffer built once; a step gathers the batch users' history rows and averages them (padding id
0 is a zero row that never trains). Full ranking is one cosine matmul per user block against the
item table. The loss is a ``RankingParts`` option like any other model's, so CCL is also available
to every item-tower model (``--set model.loss=ccl model.scorer=cosine``).

Defaults: RecBole 1.2.1's SimpleX (embedding 64, gamma 0.5, margin 0.5, negative weight 10,
history 50, L2 1e-5, dropout 0.1), except the number of negatives: RecBole draws one per positive
by default, the paper's point is a large ratio (it tunes 100-1000), and 50 is the default here.

Departures, on purpose: the L2 penalty covers the rows the loss scored (user, positive and
negatives, BPR-Opt style, divided by the batch size) but not the history rows (RecBole adds those
too); negatives avoid the user's training items (the project's default); only the mean
aggregator is implemented (the paper's attention aggregators give small differences on its
benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.eval.ranking import last_items
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.layers import Dropout
from recstudio.model.ops import gather_rows, user_item_embeddings
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@register
class SimpleX(TwoTowerRecommender):
    """User embedding fused with the mean of its history items, cosine scorer, CCL loss."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "User and history-mean fusion, cosine scores, cosine contrastive loss (Mao et al., CIKM 2021)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "gamma": "[0, 1]",
            "history_len": ">= 1",
            "dropout": "[0, 1)",
            "reg_weight": ">= 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        loss: str = "ccl"
        scorer: str = "cosine"
        num_negatives: int = 50
        """Uniform negatives per positive (the paper: large ratios, 100-1000; RecBole: 1)."""
        margin: float | None = 0.5
        """CCL margin: negatives with cosine below it are ignored (RecBole 0.5; paper up to 0.9)."""
        negative_weight: float | None = 10.0
        """CCL weight of the mean negative term (RecBole: 10)."""
        embed_dim: int = 64
        gamma: float = 0.5
        """Weight of the user embedding against the aggregated history (RecBole: 0.5)."""
        history_len: int = 50
        """Most recent training items averaged into the user vector (RecBole: 50)."""
        dropout: float = 0.1
        """Dropout on the fused user vector during training (RecBole: 0.1)."""
        reg_weight: float = 1e-5
        """L2 penalty on the scored rows (sum of squares over the batch size; RecBole: 1e-5)."""

        def validate(self) -> None:
            super().validate()
            if not 0.0 <= self.gamma <= 1.0:
                raise ConfigError(f"config key 'model.gamma' must be in [0, 1], got {self.gamma}")
            if not 0.0 <= self.dropout < 1.0:
                raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "margin": {"type": "float", "low": 0.0, "high": 1.0},
        "negative_weight": {"type": "float", "low": 1.0, "high": 300.0, "log": True},
        "num_negatives": {"type": "categorical", "choices": [10, 50, 100, 200]},
        "gamma": {"type": "float", "low": 0.0, "high": 1.0},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "reg_weight": {"type": "float", "low": 1e-7, "high": 1e-3, "log": True},
    }
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"early_stop_patience": 20}}

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        self.user_emb, self.item_emb = user_item_embeddings(data, d)
        self.history_map = nn.Linear(d, d, bias=False)
        nn.init.xavier_normal_(self.history_map.weight)
        self.dropout = Dropout(config.dropout)
        train = data.positives("train")
        history, length = last_items(train.csr(data.num_users)[0], train.item, config.history_len)
        self.register_buffer("history", history, persistent=False)
        self.register_buffer("history_len", length.clamp_min(1).float(), persistent=False)
        self.build_ranking_parts(data, dim=d)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """``g e_u + (1 - g) W mean(history)``, dropped out in training."""
        g = self.config.gamma
        mean = gather_rows(self.item_emb.weight, self.history[users], padding_idx=0).sum(1)
        mean = mean / self.history_len[users][:, None]
        fused = g * self.user_emb(users) + (1.0 - g) * self.history_map(mean)
        return self.dropout(fused)

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        query = self.user_vectors(batch["user"])
        reg = self.config.reg_weight
        return self.penalised_ranking_loss(query, batch, reg, self.user_emb.weight, self.item_emb.weight)
