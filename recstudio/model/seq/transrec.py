"""TransRec: translation-based sequential recommendation.

He, Kang, McAuley. "Translation-based Recommendation." RecSys 2017. Items are points gamma_i in
a metric space and every user is a translation vector t_u = T + T_u (a global translation T
plus a personal offset T_u); the next item j after item i is predicted by

    p(j | u, i)  ~  beta_j - d(gamma_i + t_u, gamma_j)

with an item bias beta_j. The item points live in the unit ball (the paper's constraint
||gamma_i|| <= 1), enforced here by projecting the table in the forward pass (rows longer than
1 are rescaled to length 1).

Scoring with the shared inner-product scorer: with d the *squared* Euclidean distance and
q = gamma_i + t_u,

    beta_j - ||q - gamma_j||^2 = <[2 q, -||q||^2, 1], [gamma_j, 1, beta_j - ||gamma_j||^2]>,

so the query vector is ``[2q, -|q|^2, 1]`` and the item vector ``[gamma_j, 1, beta_j - |gamma_j|^2]``
(d + 2 coordinates): the score is exactly the paper's, the bias needs no second scorer, and every
shared loss, the fused BPR kernel and full ranking by one matmul apply. The scorer is therefore
fixed to ``inner_product`` (validated).

Training is whole-sequence (``seq2seq`` view): every position's item is the previous item of the
next target. Departures: the paper's d may be L1 or L2; the squared L2 distance is used here
(the convention of the shared ``EuclideanScorer``), and RecBole 1.2.1 uses the unsquared L2
distance. The paper's S-BPR with SGD becomes the ``bpr`` loss (default) with Adam over sampled
negatives that exclude the user's training items; its L2 penalty on beta and T_u is
``train.weight_decay``. Initialisation as RecBole's (Xavier normal points, zero translations and
biases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import ItemTowerRecommender
from recstudio.model.contract import DataContract, sequence_input
from recstudio.model.layers import SEQUENCE_DEFAULT_OVERRIDES, next_item_loss
from recstudio.model.ops import Embedding, gather_rows
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@dataclass
class TransRecConfig(RankingParts):
    """Hyperparameters of TransRec; embedding size as RecBole 1.2.1's TransRec."""

    ranges: ClassVar[dict[str, str]] = {"max_seq_len": ">= 1", "embed_dim": ">= 1"}
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 50
    """Positions of a user's sequence trained on per step (the most recent ones); TransRec reads
    only the last item, so this bounds work, not context."""
    embed_dim: int = 64
    """Dimension of the translation space (query and item vectors have 2 more coordinates)."""
    unit_ball: bool = True
    """Keep item points in the unit ball (the paper's constraint); false: unconstrained (RecBole)."""
    loss: str = "bpr"
    """bpr: the paper's S-BPR with sampled negatives; any other ``RankingParts`` loss works."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in ("max_seq_len", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if self.scorer != "inner_product":
            raise ConfigError(
                "config key 'model.scorer' must be 'inner_product' for TransRec (its vectors encode the "
                f"translation distance and the item bias as an inner product), got {self.scorer!r}"
            )


@register
class TransRec(ItemTowerRecommender):
    """Items as points, users as translations: score = beta_j - ||gamma_prev + T + T_u - gamma_j||^2."""

    family = "sequential"
    Config = TransRecConfig
    description = "Translation-based sequential recommendation (He, Kang & McAuley, RecSys 2017)"
    default_overrides = {
        **SEQUENCE_DEFAULT_OVERRIDES,
        "train": {**SEQUENCE_DEFAULT_OVERRIDES["train"], "learning_rate": 5e-3},
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "unit_ball": {"type": "categorical", "choices": [True, False]},
        "loss": {"type": "categorical", "choices": ["bpr", "bce", "softmax"]},
        "num_negatives": {"type": "categorical", "choices": [1, 4, 16]},
    }

    @classmethod
    def data_contract(cls, config: TransRecConfig) -> DataContract:
        """Whole sequences of at most ``max_seq_len`` items; evaluation reads the same tail."""
        view = sequence_input(config.max_seq_len)
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: TransRecConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        self.max_seq_len = config.max_seq_len
        self.unit_ball = config.unit_ball
        self.item_point = nn.Parameter(torch.empty(data.num_items, d))  # gamma
        self.item_bias = nn.Parameter(torch.zeros(data.num_items))  # beta
        self.user_translation = Embedding(data.num_users, d)  # T_u
        self.translation = nn.Parameter(torch.zeros(d))  # T
        nn.init.xavier_normal_(self.item_point)
        nn.init.zeros_(self.user_translation.weight)
        self.build_ranking_parts(data, dim=d + 2)

    def points(self) -> torch.Tensor:
        """Item points gamma [num_items, d], projected onto the unit ball when configured."""
        gamma = self.item_point
        if not self.unit_ball:
            return gamma
        return gamma / gamma.norm(dim=1, keepdim=True).clamp_min(1.0)

    def translate(self, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Translated points q = gamma_{s_t} + T + T_u [B, L, d] of every position t (padding, an
        empty history included, is the origin: q = T + T_u)."""
        user = self.user_translation(users)[:, None, :] + self.translation
        point = gather_rows(self.points(), seq) * (seq != 0)[..., None].to(user.dtype)
        return point + user

    def encode(self, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Query vectors [B, L, d + 2]: ``[2q, -|q|^2, 1]`` of every position's translated point."""
        q = self.translate(seq, users)
        sq = (q * q).sum(-1, keepdim=True)
        return torch.cat([2.0 * q, -sq, torch.ones_like(sq)], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        """``[gamma_j, 1, beta_j - |gamma_j|^2]`` [num_items, d + 2]."""
        gamma = self.points()
        sq = (gamma * gamma).sum(-1, keepdim=True)
        return torch.cat([gamma, torch.ones_like(sq), self.item_bias[:, None] - sq], dim=1)

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Query after the most recent item [B, d + 2]."""
        return self.encode(batch["seq"][:, -1:], batch["user"])[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position that has a target, in one step per batch."""
        return next_item_loss(self, batch, lambda seq: self.encode(seq, batch["user"]))

    def extra_repr(self) -> str:
        return f"num_users={self.num_users}, num_items={self.num_items}, unit_ball={self.unit_ball}"
