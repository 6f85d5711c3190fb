"""Caser: convolutional sequence embedding (Tang & Wang, "Personalized Top-N Sequential
Recommendation via Convolutional Sequence Embedding", WSDM 2018).

The last L items form an L x d "image" of their embeddings. Horizontal filters of heights
1..L (``num_horizontal`` of each) slide over it and are max-pooled over time (union-level and
point-level sequential patterns, ReLU); vertical filters of size L x 1 (``num_vertical``) take
weighted sums of the L rows (no activation). Both outputs are concatenated, dropped out and
projected by a fully connected ReLU layer to z [d]; z is concatenated with the user embedding
P_u and scored against an output item table: y_i = W'_i . [z; P_u] + b'_i (the paper's Eq. 10,
with its own output table and item bias). Here the bias rides in the vectors: the query is
[z; P_u; 1] and item i's vector is [W'_i; b'_i], so any ``RankingParts`` loss and ANN retrieval
work on plain inner products.

Training: the paper slides a window over each user sequence and makes every (L previous items,
T next items) window one sample. Here every position's window is computed at once with
``unfold`` (``recstudio.model.seq_blocks.item_windows``) over the user's left-padded
``seq2seq`` sequence, so one user sequence is one sample and every position with a next item
contributes a loss in one batched convolution (only windows that have a target are convolved).
The query at evaluation is the window of the user's last L items.

Departures, on purpose: one next item per window (T = 1) instead of the paper's T = 3 targets
(the next-item target at every position already covers those pairs, as a skip-gram of the
whole sequence would); windows of the first items are zero-padded (the paper only takes full
windows of users with at least L + T items: zero rows are the padding embedding); the default
loss is the full softmax cross-entropy over all items (RecBole's default) instead of the
paper's binary cross-entropy with 3 sampled negatives (``loss=bce num_negatives=3``); d = 64
instead of 50 (as the other sequence models here).
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
from recstudio.model.layers import SEQUENCE_DEFAULT_OVERRIDES, Dropout
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register
from recstudio.model.seq_blocks import item_windows, window_next_item_loss


@dataclass
class CaserConfig(RankingParts):
    """Hyperparameters of Caser; defaults as the paper's (L = 5, n_v = 4, n_h = 16, dropout
    0.5) at d = 64."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 1",
        "window": ">= 1",
        "embed_dim": ">= 1",
        "num_horizontal": ">= 1",
        "num_vertical": ">= 1",
        "dropout": "[0, 1)",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 200
    """Training sequence length: windows end at each of the user's last ``max_seq_len`` positions
    (more windows per epoch, not a longer model input)."""
    window: int = 5
    """L: the number of previous items a prediction reads (the paper's Markov order)."""
    embed_dim: int = 64
    """d: item and user embedding width."""
    num_horizontal: int = 16
    """n_h: horizontal filters per height 1..L."""
    num_vertical: int = 4
    """n_v: vertical filters."""
    dropout: float = 0.5
    """Dropout on the concatenated convolution outputs (the paper's 0.5)."""
    loss: str = "softmax"
    """softmax: cross-entropy over all items; bce with num_negatives=3: the paper's objective;
    any other ``RankingParts`` loss works as well."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in ("max_seq_len", "window", "embed_dim", "num_horizontal", "num_vertical"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")


@register
class Caser(ItemTowerRecommender):
    """Horizontal and vertical convolutions over the last L item embeddings plus the user
    embedding; query = [z; P_u; 1] against output vectors [W'_i; b'_i]."""

    family = "sequential"
    Config = CaserConfig
    description = "Convolutional sequence embedding over the last L items (Tang & Wang, WSDM 2018)"
    # 4 steps of 256 users per ml-100k epoch: lr 5e-3 validated above 1e-3 there (valid
    # NDCG@10 0.0537 vs 0.0374, both runs cut at 12 minutes on a shared core)
    default_overrides = {
        **SEQUENCE_DEFAULT_OVERRIDES,
        "train": {**SEQUENCE_DEFAULT_OVERRIDES["train"], "learning_rate": 5e-3},
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
        "window": {"type": "categorical", "choices": [3, 5, 7, 9]},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "num_horizontal": {"type": "categorical", "choices": [4, 8, 16, 32]},
        "num_vertical": {"type": "categorical", "choices": [1, 2, 4, 8]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.6},
        "max_seq_len": {"type": "categorical", "choices": [50, 100, 200]},
    }

    @classmethod
    def data_contract(cls, config: CaserConfig) -> DataContract:
        """Whole training sequences (every window); evaluation reads the last L items."""
        view = sequence_input(config.max_seq_len)
        return DataContract(inputs=(view,), eval_sequence=config.window)

    def __init__(
        self,
        config: CaserConfig,
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
        self.horizontal = nn.ModuleList(
            nn.Conv2d(1, config.num_horizontal, (h, d)) for h in range(1, window + 1)
        )
        self.vertical = nn.Conv2d(1, config.num_vertical, (window, 1))
        self.dropout = Dropout(config.dropout)
        self.fc = nn.Linear(config.num_vertical * d + config.num_horizontal * window, d)
        self.out_item = nn.Embedding(data.num_items, 2 * d, padding_idx=0)  # W'
        self.out_bias = nn.Embedding(data.num_items, 1, padding_idx=0)  # b'
        # the reference code: N(0, 1/d) embeddings, zero output bias
        for table in (self.item_emb, self.user_emb):
            nn.init.normal_(table.weight, std=1.0 / d)
        nn.init.normal_(self.out_item.weight, std=1.0 / (2 * d))
        nn.init.zeros_(self.out_bias.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.out_item.weight[0].zero_()
        self.build_ranking_parts(data, dim=2 * d + 1)

    def convolve(self, windows: torch.Tensor) -> torch.Tensor:
        """z [N, d] of item windows [N, L]: both convolutions, dropout, the ReLU FC layer."""
        e = self.item_emb(windows)  # [N, L, d]
        n, length, d = e.shape
        # the convolutions as matrix products over unfolded rows, with the Conv2d weights:
        # forward and backward of 20k windows took 3.5 s vs 4.7 s for Conv2d (one busy core)
        vertical = torch.einsum("nld,vl->nvd", e, self.vertical.weight[:, 0, :, 0])
        vertical = (vertical + self.vertical.bias[:, None]).flatten(1)  # [N, n_v * d]
        horizontal = []
        for h, conv in enumerate(self.horizontal, start=1):
            rows = e.unfold(1, h, 1).transpose(2, 3).reshape(n, length - h + 1, h * d)
            out = F.linear(rows, conv.weight.view(conv.out_channels, h * d), conv.bias)
            horizontal.append(F.relu(out).amax(1))  # max-pool over time: [N, n_h]
        return F.relu(self.fc(self.dropout(torch.cat([vertical, *horizontal], 1))))

    def window_queries(self, windows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Queries [N, 2d + 1] = [z; P_u; 1] of windows [N, L] read by ``users`` [N]."""
        z = self.convolve(windows)
        return torch.cat([z, self.user_emb(users), z.new_ones(z.shape[0], 1)], 1)

    def item_vectors(self) -> torch.Tensor:
        """[W'_i; b'_i] per item [num_items, 2d + 1]: the output table and bias."""
        return torch.cat([self.out_item.weight, self.out_bias.weight], 1)

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The query of each user's last L items [B, 2d + 1]."""
        return self.window_queries(item_windows(batch["seq"], self.window)[:, -1], batch["user"])

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss of the window ending at every position that has a target."""
        return window_next_item_loss(self, batch)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, window={self.window}, max_seq_len={self.max_seq_len}"
