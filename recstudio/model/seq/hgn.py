"""HGN: hierarchical gating networks (Ma, Kang & Liu, "Hierarchical Gating Networks for
Sequential Recommendation", KDD 2019).

The last L item embeddings E [L, d] of a user u (embedding p_u) pass two gates:

- feature gating: E_F = E * sigmoid(E W_g1 + p_u W_g2 + b_g) (which latent features of the
  recent items matter to this user);
- instance gating: g = sigmoid(E_F w_g3 + p_u W_g4) [L] (which of the L items matter), and the
  group representation s = sum_j g_j E_F,j / sum_j g_j.

The score of item j adds the user's general taste, the gated group and the item-item product
with each recent item: y_j = p_u . q_j + s . q_j + sum_i e_i . q_j + b_j, with an output table
q and item bias b (as the authors' code). The query is therefore [p_u + s + sum_i e_i; 1] and
item j's vector [q_j; b_j], plain inner products for every ``RankingParts`` loss and ANN search.

Training: every position's window of its last L items is taken at once (``unfold``, see
``recstudio.model.seq_blocks.item_windows``) over the user's left-padded ``seq2seq`` sequence:
one user sequence is one sample and each position with a next item contributes a loss. Windows
are causal by construction. The query at evaluation is the window of the last L items.

Departures, on purpose: one next item per window (T = 1) instead of the paper's T = 3; windows
shorter than L (a user's first items) are zero-padded and the padding rows are masked out of
the instance gate's average (the paper only forms full windows); the default loss is the full
softmax cross-entropy over all items (the paper: BPR-style binary cross-entropy with sampled
negatives, ``loss=bce``); d = 64 instead of 50.
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
from recstudio.model.layers import SEQUENCE_DEFAULT_OVERRIDES
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register
from recstudio.model.seq_blocks import item_windows, window_next_item_loss


@dataclass
class HGNConfig(RankingParts):
    """Hyperparameters of HGN; defaults as the paper's (L = 5) at d = 64."""

    ranges: ClassVar[dict[str, str]] = {"max_seq_len": ">= 1", "window": ">= 1", "embed_dim": ">= 1"}
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 200
    """Training sequence length: windows end at each of the user's last ``max_seq_len`` positions."""
    window: int = 5
    """L: the number of recent items a prediction reads."""
    embed_dim: int = 64
    """d: item, user and output embedding width."""
    loss: str = "softmax"
    """softmax: cross-entropy over all items; bce/bpr: the paper's sampled objectives."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in ("max_seq_len", "window", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")


@register
class HGN(ItemTowerRecommender):
    """Feature and instance gates over the last L items plus item-item products and the user
    embedding; query = [p_u + s + sum_i e_i; 1] against [q_j; b_j]."""

    family = "sequential"
    Config = HGNConfig
    description = "Hierarchical gating networks over the last L items (Ma, Kang & Liu, KDD 2019)"
    # whole-sequence training makes 4 steps of 256 users per ml-100k epoch: lr 5e-3 validated
    # far above 1e-3 there (valid NDCG@10 0.1035 vs 0.0668, both runs cut at 12 minutes)
    default_overrides = {
        **SEQUENCE_DEFAULT_OVERRIDES,
        "train": {**SEQUENCE_DEFAULT_OVERRIDES["train"], "learning_rate": 5e-3},
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
        "window": {"type": "categorical", "choices": [3, 5, 7, 9]},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "max_seq_len": {"type": "categorical", "choices": [50, 100, 200]},
    }

    @classmethod
    def data_contract(cls, config: HGNConfig) -> DataContract:
        """Whole training sequences (every window); evaluation reads the last L items."""
        view = sequence_input(config.max_seq_len)
        return DataContract(inputs=(view,), eval_sequence=config.window)

    def __init__(
        self,
        config: HGNConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d, window = config.embed_dim, config.window
        self.window = window
        self.max_seq_len = config.max_seq_len
        self.item_emb = nn.Embedding(data.num_items, d, padding_idx=0)
        self.user_emb = nn.Embedding(data.num_users, d)
        self.feature_item = nn.Linear(d, d, bias=False)  # W_g1
        self.feature_user = nn.Linear(d, d)  # W_g2, b_g
        self.instance_item = nn.Linear(d, 1, bias=False)  # w_g3
        self.instance_user = nn.Linear(d, window, bias=False)  # W_g4
        self.out_item = nn.Embedding(data.num_items, d, padding_idx=0)  # q
        self.out_bias = nn.Embedding(data.num_items, 1, padding_idx=0)  # b
        # the authors' initialisation: N(0, 1/d) embeddings, zero bias
        for table in (self.item_emb, self.user_emb, self.out_item):
            nn.init.normal_(table.weight, std=1.0 / d)
        nn.init.zeros_(self.out_bias.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.out_item.weight[0].zero_()
        self.build_ranking_parts(data, dim=d + 1)

    def gates(
        self, windows: torch.Tensor, users: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(item embeddings E [N, L, d], feature gate [N, L, d], instance gate [N, L] (0 at
        padding), user embeddings [N, d]) of windows [N, L] read by ``users`` [N]."""
        e = self.item_emb(windows)
        p = self.user_emb(users)
        feature = torch.sigmoid(self.feature_item(e) + self.feature_user(p).unsqueeze(1))
        instance = torch.sigmoid(self.instance_item(e * feature).squeeze(-1) + self.instance_user(p))
        return e, feature, instance * (windows != 0), p

    def window_queries(self, windows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Queries [N, d + 1] = [p_u + s + sum_i e_i; 1]."""
        e, feature, instance, p = self.gates(windows, users)
        weight = instance / instance.sum(1, keepdim=True).clamp_min(1e-8)
        group = ((e * feature) * weight.unsqueeze(-1)).sum(1)
        query = p + group + e.sum(1)  # padding rows of e are zero
        return torch.cat([query, query.new_ones(query.shape[0], 1)], 1)

    def item_vectors(self) -> torch.Tensor:
        """[q_j; b_j] per item [num_items, d + 1]."""
        return torch.cat([self.out_item.weight, self.out_bias.weight], 1)

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The query of each user's last L items [B, d + 1]."""
        return self.window_queries(item_windows(batch["seq"], self.window)[:, -1], batch["user"])

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss of the window ending at every position that has a target."""
        return window_next_item_loss(self, batch)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, window={self.window}, max_seq_len={self.max_seq_len}"
