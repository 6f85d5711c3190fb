"""NPE: neural personalized embedding.

Nguyen, Takasu. "NPE: Neural Personalized Embedding for Collaborative Filtering." IJCAI 2018.
A user's preference for item i is a function of the user's latent vector and of the item's
*context*, the other items the user interacted with: the context items' embeddings (a table
separate from the target-item table) are summed, and with ReLU activations

    query = dropout(relu(U_u)) + dropout(relu(sum_{j in context} C_j)),   item = relu(V_i),

scored by the inner product (the logit of the configured loss). This is the formulation of
RecBole 1.2.1's NPE, which the project compares against.

Sequential use, as RecBole: the context of a target is the items *before* it in the user's
sequence (at most ``max_seq_len`` of them), not every other item of the user as in the paper,
whose training context also holds later items (a look-ahead a next-item protocol must not
have). At evaluation the two agree: the context is the whole (recent) history. Training is
whole-sequence (``seq2seq`` view): the context sum at every position is a causal running sum,
one forward pass per user for a loss at every position (RecBole: one prefix per sample).

Departures: the paper's objective, as read here, is a pointwise log loss over sampled negatives
(``loss=bce`` with ``num_negatives``); the default is the full softmax cross-entropy
(RecBole's ``CE``). Adam, with RecBole's embedding size 64 and dropout 0.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import ItemTowerRecommender
from recstudio.model.contract import DataContract, sequence_input
from recstudio.model.layers import SEQUENCE_DEFAULT_OVERRIDES, Dropout, next_item_loss, trim_left_padding
from recstudio.model.ops import Embedding
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register
from recstudio.model.seq.causal_ops import causal_sum


@dataclass
class NPEConfig(RankingParts):
    """Hyperparameters of NPE; embedding size and dropout as RecBole 1.2.1's NPE."""

    ranges: ClassVar[dict[str, str]] = {"max_seq_len": ">= 1", "embed_dim": ">= 1", "dropout": "[0, 1)"}
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 50
    """Most recent items summed as the context (RecBole's MAX_ITEM_LIST_LENGTH)."""
    embed_dim: int = 64
    dropout: float = 0.3
    """Dropout on the user part and on the context part of the query."""
    loss: str = "softmax"
    """softmax: cross-entropy over all items (RecBole's CE); bce with sampled negatives: the
    paper's log loss; any other ``RankingParts`` loss works as well."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in ("max_seq_len", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")


@register
class NPE(ItemTowerRecommender):
    """User vector plus the summed context-item vectors (ReLU), against ReLU item vectors."""

    family = "sequential"
    Config = NPEConfig
    description = "Neural personalized embedding (Nguyen & Takasu, IJCAI 2018)"
    default_overrides = SEQUENCE_DEFAULT_OVERRIDES
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
        "max_seq_len": {"type": "categorical", "choices": [20, 50, 100]},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "loss": {"type": "categorical", "choices": ["softmax", "bce", "bpr"]},
    }

    @classmethod
    def data_contract(cls, config: NPEConfig) -> DataContract:
        """Whole sequences of at most ``max_seq_len`` items; evaluation reads the same tail."""
        view = sequence_input(config.max_seq_len)
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: NPEConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        self.max_seq_len = config.max_seq_len
        self.user_emb = Embedding(data.num_users, d)  # U
        self.item_emb = Embedding(data.num_items, d)  # V (target items)
        self.context_emb = Embedding(data.num_items, d, padding_idx=0)  # C (context items)
        self.dropout = Dropout(config.dropout)
        # RecBole's initialisation (Xavier normal)
        for table in (self.user_emb, self.item_emb, self.context_emb):
            nn.init.xavier_normal_(table.weight)
        with torch.no_grad():
            self.context_emb.weight[0].zero_()
        self.build_ranking_parts(data, dim=d)

    def encode(self, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Queries [B, L, d] at every position t: the user part plus the context of items <= t."""
        context = causal_sum(self.context_emb(seq), seq)  # [B, L, d]
        user = self.dropout(F.relu(self.user_emb(users)))[:, None, :]
        return user + self.dropout(F.relu(context))

    def item_vectors(self) -> torch.Tensor:
        """relu(V) [num_items, d]."""
        return F.relu(self.item_emb.weight)

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Query of the whole (recent) history [B, d]."""
        (seq,) = trim_left_padding(batch["seq"][:, -self.max_seq_len :])
        return self.encode(seq, batch["user"])[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position that has a target, in one forward pass per batch."""
        return next_item_loss(self, batch, lambda seq: self.encode(seq, batch["user"]))

    def extra_repr(self) -> str:
        return f"num_users={self.num_users}, num_items={self.num_items}"
