"""CML: collaborative metric learning, users and items as points in one Euclidean space.

Hsieh, Yang, Cui, Lin, Belongie, Estrin. "Collaborative Metric Learning." WWW 2017. The score of
(u, i) is the negative squared Euclidean distance ``-|u - v_i|^2`` (the ``euclidean`` scorer);
the loss is the WARP-weighted hinge ``w(rank) * max(0, margin + d(u, i) - d(u, k))`` over K
sampled negatives (the ``warp`` loss of ``recstudio.model.loss``), so an item a user liked is
pulled closer than the items she did not, by a margin, and positives ranked low weigh more; every
embedding is kept inside the unit ball; an optional covariance penalty decorrelates the
dimensions (the paper's L_c, ``cov_weight`` times it).

How it runs: the unit-ball constraint is the paper's clip-by-norm projection, applied to both
whole tables (``renorm_``, a few thousand rows) at the start of every training step and before
every evaluation pass, so every score is computed from clipped embeddings (the paper clips the
rows a step updated right after the step: the same points whenever they are next used). Loss,
negatives and scorer are ``RankingParts`` options.

Defaults follow the authors' code (CollMetric): margin 1.9 on squared distances, 10 negatives
per positive, rank weighting on, the covariance penalty off (its example configuration), embedding
64 (the project's width; the authors use 100), N(0, 1/d) initialisation.

Departures, on purpose: the WARP weight is the harmonic number of the estimated rank
(``WARPLoss``, Weston et al.) where the authors use ``log(1 + rank)``, and the hinge over the
violating negatives is averaged (the authors sum it); Adam (the project's learner) instead of
AdaGrad; negatives avoid the user's training items; the covariance penalty is over the batch's
user and positive item rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.ops import user_item_embeddings
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


def covariance_penalty(x: torch.Tensor) -> torch.Tensor:
    """The CML covariance loss of rows ``x`` [N, d]: ``(|C|_F - |diag C|^2) / N`` with
    ``C = (x - mean)^T (x - mean) / N``, which penalises correlated dimensions."""
    n = x.shape[0]
    centred = x - x.mean(0, keepdim=True)
    cov = centred.T @ centred / n
    return (torch.linalg.matrix_norm(cov) - cov.diagonal().square().sum()) / n


@register
class CML(TwoTowerRecommender):
    """Users and items in the unit ball, negative squared Euclidean distance, WARP hinge."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Metric learning in the unit ball, Euclidean scores, WARP hinge (Hsieh et al., WWW 2017)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {"embed_dim": ">= 1", "cov_weight": ">= 0", "max_norm": "> 0"}
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        loss: str = "warp"
        scorer: str = "euclidean"
        num_negatives: int = 10
        """Negatives per positive (the authors' sampler: 10)."""
        margin: float | None = 1.9
        """Hinge margin on squared distances (the authors' code: 1.9; distances are at most 4)."""
        embed_dim: int = 64
        max_norm: float = 1.0
        """Radius of the ball every embedding is clipped into (the paper: 1)."""
        cov_weight: float = 0.0
        """Weight of the covariance penalty (0: off, as the authors' example configuration)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "margin": {"type": "float", "low": 0.1, "high": 2.0},
        "num_negatives": {"type": "categorical", "choices": [5, 10, 20, 50]},
        "cov_weight": {"type": "categorical", "choices": [0.0, 0.01, 0.1, 1.0]},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
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
        self.user_emb, self.item_emb = user_item_embeddings(data, d, std=d**-0.5)
        self.clip()
        self.build_ranking_parts(data, dim=d)

    @torch.no_grad()
    def clip(self) -> None:
        """Project every user and item embedding into the ball of radius ``max_norm``."""
        for table in (self.user_emb, self.item_emb):
            table.weight.renorm_(2, 0, self.config.max_norm)

    def prepare_evaluation(self) -> None:
        self.clip()
        super().prepare_evaluation()

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users)

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.clip()  # the previous step's update, projected back into the ball
        users, pos = batch["user"], batch["item"]
        query = self.user_vectors(users)
        loss = self.ranking_loss(query, pos, batch.get("neg_item"), users)
        if self.config.cov_weight > 0:
            rows = torch.cat([query, self.item_emb(pos)])
            loss = loss + self.config.cov_weight * covariance_penalty(rows)
        return loss
