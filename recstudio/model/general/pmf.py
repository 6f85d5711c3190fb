"""PMF: probabilistic matrix factorisation of explicit ratings.

Salakhutdinov, Mnih. "Probabilistic Matrix Factorization." NIPS 2007. Each observed rating is
Gaussian around the inner product of a user and an item vector, ``R_ui ~ N(U_u . V_i, sigma^2)``,
with zero-mean spherical Gaussian priors on U and V; maximising the posterior is minimising the
squared error on the observed ratings plus ``lambda_U/2 |U|^2 + lambda_V/2 |V|^2``.

How it runs: the data contract asks for ``ratings``, so the config layer keeps the raw rating
values (``data.binarize`` off) and a dataset without ratings (no rating column, or binarised)
fails in one line when the model is built. A step takes a batch of observed (user, item, rating)
rows (the ``triplet`` view; no negatives): ``mean((r - r_hat)^2) + reg_weight * (sum of the
batch's squared user and item rows) / batch``. The prediction is ``r_hat = U_u . V_i + mu`` with
``mu`` the mean training rating. Evaluation ranks every item by ``r_hat`` (the project's
full-ranking metrics, history masked) and also reports RMSE and MAE of ``r_hat`` on the
valid/test rows (``recstudio.eval.pointwise``). Early stopping and the best checkpoint follow
validation NDCG@10 like every general model; ``--set train.monitor=rmse`` selects by RMSE.

Departures, on purpose: the prediction is offset by the training mean ``mu`` (the paper's
linear-Gaussian model fits ratings as they are; its constrained variant maps them to [0, 1]
through a logistic link); the priors act on the rows each batch uses (minibatch MAP, as the
paper's minibatch gradient descent, with one ``reg_weight`` for users and items); Adam instead of
momentum SGD. On the project's protocol (ml-100k ratings >= 3) the ratings the model fits are
3-5 stars only, so its ranking quality reflects what a rating predictor learns from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.ops import gather_rows, sum_squared_rows, user_item_embeddings
from recstudio.model.registry import register
from recstudio.model.scorer import InnerProductScorer


@register
class PMF(TwoTowerRecommender):
    """User and item vectors, predicted rating = inner product + training mean, squared error
    on the observed ratings with Gaussian priors (L2)."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Probabilistic matrix factorisation of ratings, squared loss + L2 (Salakhutdinov & Mnih, NIPS 2007)."
    )
    contract: ClassVar[DataContract] = DataContract(inputs=(TrainInput("triplet"),), ratings=True)

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {"embed_dim": ">= 1", "reg_weight": ">= 0", "init_std": "> 0"}
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Dimension of the user and item vectors."""
        reg_weight: float = 1e-2
        """Prior precision ratio lambda = sigma^2 / sigma_U^2 (= lambda_V): squared rows of the
        batch times this, over the batch size (the paper uses 0.002-0.01 per rating)."""
        init_std: float = 0.1
        """Standard deviation of the normal initialisation of both tables."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "reg_weight": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "embed_dim": {"type": "categorical", "choices": [16, 32, 64, 128]},
        "init_std": {"type": "float", "low": 1e-2, "high": 3e-1, "log": True},
    }
    default_overrides: ClassVar[dict[str, Any]] = {
        "train": {"learning_rate": 5e-3, "early_stop_patience": 20}
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
        self.register_buffer("mean_rating", data.train.rating.float().mean().reshape(1, 1))
        self.scorer = InnerProductScorer()

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """[U_u, mu]: the inner product with [V_i, 1] is the predicted rating."""
        u = self.user_emb(users)
        return torch.cat([u, self.mean_rating.expand(u.shape[0], 1)], dim=1)

    def item_vectors(self) -> torch.Tensor:
        v = self.item_emb.weight
        return torch.cat([v, v.new_ones(v.shape[0], 1)], dim=1)

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings ``U_u . V_i + mu`` [N] of the pairs (users [N], items [N])."""
        u, v = self.user_emb(users), gather_rows(self.item_emb.weight, items, padding_idx=0)
        return (u * v).sum(-1) + self.mean_rating[0, 0]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error on the batch's ratings plus the Gaussian priors' L2 penalty."""
        users, items = batch["user"], batch["item"]
        error = (self.predict(users, items) - batch["rating"].float()).square().mean()
        if self.config.reg_weight > 0:
            reg = sum_squared_rows(self.user_emb.weight, users) + sum_squared_rows(
                self.item_emb.weight, items
            )
            error = error + self.config.reg_weight * reg / users.shape[0]
        return error
