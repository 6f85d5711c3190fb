"""ENMF: efficient neural matrix factorisation trained on the whole data, without sampling.

Chen, Zhang, Zhang, Liu, Ma. "Efficient Neural Matrix Factorization without Sampling for
Recommendation." ACM TOIS 2020. The user-based variant: a user u and item v score
``y_uv = h^T (p_u * q_v)`` (a generalised MF prediction layer h), and every (user, item) pair
of the batch's users enters a weighted square loss: observed pairs have target 1 and weight 1,
all others target 0 and weight c (``negative_weight``, uniform as in the paper's experiments).
The paper's reformulation makes the sum over all items cheap:

    L = sum_{u in B} sum_{v in I_u} ((1 - c) y_uv^2 - 2 y_uv)
        + c * sum_{i,j} (sum_{u in B} p_ui p_uj) (sum_v q_vi q_vj) h_i h_j,

i.e. two d x d Gram matrices instead of B x I scores (``loss.whole_data_square_loss``, with h
folded into the user side). The batch is a block of users (the ``user`` view), each with all its
training items, as the paper and RecBole's ENMF do; dropout applies to the user vectors.

How it runs here: a two-tower model with inner-product scoring (query = p_u * h, item = q_v), so
evaluation, ANN retrieval and the base's scoring are generic. Defaults follow RecBole 1.2.1's
ENMF (embedding 64, dropout 0.7, negative_weight 0.5, reg_weight 0, Xavier-normal
initialisation, loss summed over the batch) with the paper's optimiser and batch (Adagrad,
learning rate 0.05, 256 users; RecBole runs its global Adam at 1e-3 instead). Not compared with
other optimiser settings yet: ml-100k test NDCG@10 0.260 with these defaults.

Departures, on purpose: dropout is applied to the user vectors in both terms of the loss (the
authors' TensorFlow code does; RecBole drops them only in the observed-pair term, so its two
terms disagree about the same scores); the padding item (id 0) is kept at zero and out of the
all-items term; RecBole samples batches of interactions (a user appears once per interaction),
here each user appears once per epoch, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.loss import whole_data_square_loss
from recstudio.model.registry import register
from recstudio.model.scorer import InnerProductScorer


@register
class ENMF(TwoTowerRecommender):
    """Generalised MF with the non-sampling whole-data square loss (user-based ENMF)."""

    family: ClassVar[str] = "general"
    contract: ClassVar[DataContract] = DataContract(inputs=(TrainInput("user"),))
    description: ClassVar[str] = (
        "Neural MF trained on all items with an efficient non-sampling square loss (Chen et al., TOIS 2020)."
    )

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "dropout": "[0, 1)",
            "negative_weight": "[0, 1]",
            "reg_weight": ">= 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        dropout: float = 0.7
        """Dropout on the user vectors during training."""
        negative_weight: float = 0.5
        """c, the weight of every unobserved (user, item) pair (observed pairs weigh 1)."""
        reg_weight: float = 0.0
        """L2 penalty on the user and item tables and h (whole tables, every step, as RecBole)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-3, "high": 0.2, "log": True},
        "negative_weight": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.8},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "reg_weight": {"type": "categorical", "choices": [0.0, 1e-4, 1e-3, 1e-2]},
    }
    default_overrides: ClassVar[dict[str, Any]] = {
        "train": {"learner": "adagrad", "learning_rate": 0.05, "batch_size": 256}
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
        self.user_emb = nn.Embedding(data.num_users, d)
        self.item_emb = nn.Embedding(data.num_items, d)
        self.h = nn.Parameter(torch.empty(d, 1))
        for weight in (self.user_emb.weight, self.item_emb.weight, self.h):
            nn.init.xavier_normal_(weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.drop = nn.Dropout(config.dropout)
        self.scorer = InnerProductScorer()

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users) * self.h[:, 0]

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        query = self.drop(self.user_emb(batch["user"])) * self.h[:, 0]
        rows, items = batch["history"].nonzero(as_tuple=True)
        loss = whole_data_square_loss(query, self.item_emb.weight, rows, items, self.config.negative_weight)
        if self.config.reg_weight > 0:
            tables = self.user_emb.weight.square().sum() + self.item_emb.weight.square().sum()
            loss = loss + self.config.reg_weight * (tables + self.h.square().sum())
        return loss
