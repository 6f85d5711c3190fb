"""LogisticMF: logistic matrix factorisation for implicit feedback.

Johnson. "Logistic Matrix Factorization for Implicit Feedback Data." NIPS 2014 Workshop on
Distributed Machine Learning and Matrix Computations. The probability that user u prefers item i
is ``sigmoid(x_u . y_i + b_u + b_i)`` (latent factors plus a user and an item bias); an observed
pair counts ``c = alpha * r_ui`` times as a positive (confidence), every pair once as a negative;
Gaussian priors give the L2 penalty ``lambda/2 (|x_u|^2 + |y_i|^2)``.

How it runs: the biases ride in the vectors, ``[x_u, b_u, 1] . [y_i, 1, b_i] = x_u . y_i + b_u +
b_i``, so the model is a plain two-tower inner product (full ranking is one matmul per user
block) and the loss is the shared ``bce`` with ``positive_weight = alpha``:
``-alpha log sigmoid(s_pos) - mean_k log sigmoid(-s_k)`` over K sampled negatives, plus
``reg_weight`` times the squared factor rows the batch scored over the batch size.

Departures, on purpose (the paper fits every (u, i) pair of the matrix with alternating AdaGrad
steps over users and items): the unobserved pairs are sampled (K uniform non-positives per
observed pair, their mean standing for the whole row) and every step updates users and items
together with the project's learner (Adam); on binary (implicit) data r_ui = 1, so the confidence
is alpha itself (the paper's counts, or its log scaling, are not applied); an observed pair's own
negative term ``log(1 + e^s)`` is not added (negatives are drawn from the non-positives); the
penalty covers the batch's rows (BPR-Opt style) rather than every row once per pass, and biases
are not penalised (the paper's priors are on the factors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.ops import gather_rows, user_item_embeddings
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@register
class LogisticMF(TwoTowerRecommender):
    """Factors plus user and item biases, logistic likelihood with positive confidence alpha."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Logistic matrix factorisation with biases and confidence-weighted positives (Johnson, 2014)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {"embed_dim": ">= 1", "reg_weight": ">= 0", "init_std": "> 0"}
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        loss: str = "bce"
        num_negatives: int = 4
        """Sampled unobserved pairs per observed pair."""
        positive_weight: float | None = 2.0
        """The confidence alpha of an observed pair (r_ui = 1 on implicit data)."""
        embed_dim: int = 64
        reg_weight: float = 1e-4
        """L2 penalty (lambda) on the scored factor rows, summed squares over the batch size."""
        init_std: float = 0.01

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "positive_weight": {"type": "float", "low": 0.5, "high": 40.0, "log": True},
        "num_negatives": {"type": "int", "low": 1, "high": 10},
        "reg_weight": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
    }
    default_overrides: ClassVar[dict[str, Any]] = {
        "train": {"learning_rate": 2e-3, "early_stop_patience": 20}
    }

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        self.user_emb, self.item_emb = user_item_embeddings(data, d, std=config.init_std)
        self.user_bias = nn.Parameter(torch.zeros(data.num_users, 1))
        self.item_bias = nn.Parameter(torch.zeros(data.num_items, 1))
        self.build_ranking_parts(data, dim=d + 2)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """[x_u, b_u, 1] [B, d + 2]."""
        x = self.user_emb(users)
        return torch.cat([x, gather_rows(self.user_bias, users), x.new_ones(x.shape[0], 1)], dim=1)

    def item_vectors(self) -> torch.Tensor:
        """[y_i, 1, b_i] [num_items, d + 2]."""
        y = self.item_emb.weight
        return torch.cat([y, y.new_ones(y.shape[0], 1), self.item_bias], dim=1)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        query = self.user_vectors(batch["user"])
        reg = self.config.reg_weight
        return self.penalised_ranking_loss(query, batch, reg, self.user_emb.weight, self.item_emb.weight)
