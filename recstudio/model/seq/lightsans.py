"""LightSANs: low-rank decomposed self-attention (Fan, Liu, Wang, Zhang, Zheng, Yu, "Lighter and
Better: Low-Rank Decomposed Self-Attention Networks for Next-Item Recommendation", SIGIR 2021).

Each layer replaces item-to-item attention by attention to k latent interests: the items are
aggregated into k interests (item-to-interest aggregation, a softmax over the items per
interest with a learned theta [d, k]), and each item attends to the k interests. Positions are
decoupled from items: the input is the item embeddings alone, and every layer adds a
position-to-position attention map computed from the position embeddings only (TUPE-style).
The layers are otherwise post-LN Transformer blocks (residual, LayerNorm, GELU feed-forward),
the shared ``TransformerBlock`` with ``recstudio.model.seq_blocks.LowRankSelfAttention`` in
place of its attention. The query is the hidden state at the last position; scores are inner
products with the item embedding table (shared input/output, as RecBole's LightSANs).

Training is whole-sequence and causal, as SASRec: position t aggregates its interests from items
<= t only and its position map is causal, so one forward pass per user gives a next-item loss at
every position without look-ahead. The paper (and RecBole) aggregates interests over the whole
input, which is fine there because RecBole trains each prefix as its own sample and reads only
its last position; here the aggregation is per prefix, by running sums over the sequence
(``seq_blocks.prefix_interests``), still O(L k d) per sequence: the last position's output is
the paper's, and every earlier position gets what its prefix alone would give (up to the
positions, counted from the end of the whole input). The item-to-item attention map is never
formed; only the position map is L x L, as in the paper.

Departures, on purpose: the attention over interests and the position map are normalised over
the interests / keys (rows); RecBole's LightSANs normalises both over the query dimension
(``softmax(dim=-2)``), which the paper's equations do not say; padded keys are excluded from the
aggregation and the position map (RecBole aggregates padding too); positions are counted from
the end of the sequence; the item and position terms are scaled by 1/sqrt(d_h) and
1/sqrt(2 d_h) (RecBole additionally divides the position term by sqrt(d_h)). Loss: softmax
cross-entropy over all items (RecBole's CE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import ItemTowerRecommender
from recstudio.model.contract import DataContract, sequence_input
from recstudio.model.layers import (
    SEQUENCE_DEFAULT_OVERRIDES,
    TRANSFORMER_SEARCH_SPACE,
    Dropout,
    attention_mask,
    init_weights,
    next_item_loss,
    trim_left_padding,
)
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register
from recstudio.model.seq_blocks import LowRankSelfAttention, block_with_attention


@dataclass
class LightSANsConfig(RankingParts):
    """Hyperparameters of LightSANs; defaults as RecBole's LightSANs except k = 5 interests."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 1",
        "hidden_size": ">= 1",
        "inner_size": ">= 1",
        "num_layers": ">= 1",
        "num_heads": ">= 1",
        "num_interests": ">= 1",
        "dropout": "[0, 1)",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 50
    """Longest input sequence (the most recent items are kept); also sizes the position table."""
    hidden_size: int = 64
    inner_size: int = 256
    """Width of the position-wise feed-forward layer."""
    num_layers: int = 2
    num_heads: int = 2
    num_interests: int = 5
    """k: latent interests each item attends to. RecBole uses 15; 5 costs a third per epoch and
    validated higher on ml-100k within the 12-minute budget (valid NDCG@10 0.0775 at epoch 19 vs
    0.0431 at epoch 6 for k = 15; both runs were cut by the budget on a shared core)."""
    dropout: float = 0.5
    """Dropout on embeddings, attention weights and hidden states (RecBole's 0.5)."""
    loss: str = "softmax"

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in ("max_seq_len", "hidden_size", "inner_size", "num_layers", "num_heads", "num_interests"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"config key 'model.hidden_size' must be divisible by model.num_heads, "
                f"but got hidden_size={self.hidden_size}, num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")


@register
class LightSANs(ItemTowerRecommender):
    """Causal low-rank self-attention over k latent interests with decoupled positions; query =
    hidden state at the last position."""

    family = "sequential"
    Config = LightSANsConfig
    description = "Low-rank decomposed self-attention over latent interests (Fan et al., SIGIR 2021)"
    default_overrides = SEQUENCE_DEFAULT_OVERRIDES
    search_space = {
        **TRANSFORMER_SEARCH_SPACE,
        "dropout": {"type": "float", "low": 0.0, "high": 0.6},
        "num_interests": {"type": "categorical", "choices": [5, 10, 15, 20]},
    }

    @classmethod
    def data_contract(cls, config: LightSANsConfig) -> DataContract:
        """Whole sequences of at most ``max_seq_len`` items; evaluation reads the same tail."""
        view = sequence_input(config.max_seq_len)
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: LightSANsConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.hidden_size
        self.max_seq_len = config.max_seq_len
        self.item_emb = nn.Embedding(data.num_items, d, padding_idx=0)
        self.position = nn.Embedding(config.max_seq_len, d)
        self.input_norm = nn.LayerNorm(d)
        self.input_dropout = Dropout(config.dropout)
        self.layers = nn.ModuleList(
            block_with_attention(
                LowRankSelfAttention(
                    d, config.num_heads, config.num_interests, config.dropout, self.position
                ),
                d,
                config.inner_size,
                config.dropout,
                activation="gelu",
                norm_first=False,
            )
            for _ in range(config.num_layers)
        )
        init_weights(self)
        self.build_ranking_parts(data, dim=d)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] of a left-padded batch [B, L]; position t sees items <= t."""
        if seq.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {seq.shape[1]} exceeds max_seq_len {self.max_seq_len}")
        mask = attention_mask(seq, causal=True)
        x = self.input_dropout(self.input_norm(self.item_emb(seq)))
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def item_vectors(self) -> torch.Tensor:
        """The item embedding table [num_items, d] (shared with the input)."""
        return self.item_emb.weight

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden state at the last position [B, d]."""
        (seq,) = trim_left_padding(batch["seq"][:, -self.max_seq_len :])
        return self.encode(seq)[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position that has a target, in one forward pass per batch."""
        return next_item_loss(self, batch, self.encode)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, max_seq_len={self.max_seq_len}"
