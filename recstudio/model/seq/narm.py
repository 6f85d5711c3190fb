"""NARM: neural attentive session-based recommendation.

Li, Ren, Chen, Ren, Lian, Ma. "Neural Attentive Session-based Recommendation." CIKM 2017.
A GRU encodes the item sequence. At step t the *global* encoder's summary is the last hidden
state c_g = h_t; the *local* encoder attends over the hidden states with
alpha_tj = v^T sigmoid(A_1 h_t + A_2 h_j) and gives c_l = sum_j alpha_tj h_j. The session
representation c_t = [c_g; c_l] is scored against item i by the bilinear decoder
S_i = emb_i^T B c_t; written as an inner product, the query is B c_t and the item vector the
item embedding (the input table, shared as in the paper).

Training is whole-sequence (``seq2seq`` view): the GRU is causal, and the local attention of
every position t over its positions j <= t is one masked [B, L, L] tensor op
(``recstudio.model.seq.causal_ops``), so one forward pass gives a next-item loss at every
position, the same gradient signal as RecBole's prefix augmentation at one pass per user.
Padding never enters the GRU (``left_padded_rnn``) nor the attention. The query at evaluation
is c_t at the most recent item.

Departures: the loss defaults to the full softmax cross-entropy (the paper's cross-entropy over
all items, RecBole's ``CE``) with Adam; the GRU keeps its biases (RecBole drops them); sizes and
dropouts are RecBole 1.2.1's (embedding 64, hidden 128, dropout 0.25 on the embeddings and 0.5
on c_t; the paper: 50, 100, same dropouts). The input is the last 100 items (RecBole: 50),
as GRU4Rec's: whole-sequence training then sees every target of most ml-100k users, as
RecBole's per-prefix training does (see ``max_seq_len``). The attention is computed in
cache-sized blocks (``causal_ops``): an ml-100k epoch at 50 items on one core took 5.45 s with
the whole [B, L, L, H] tensor, 1.76 s blocked (with the blocked full softmax, same math), ~2.9 s
at 100 items, ~3.1 s with the default 64 users per step. Adam at 2e-3 (RecBole: 1e-3 over
2048 prefixes per step).
The attention weights are unnormalised, as in the paper and RecBole.
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
from recstudio.model.layers import (
    SEQUENCE_DEFAULT_OVERRIDES,
    Dropout,
    left_padded_rnn,
    next_item_loss,
    trim_left_padding,
)
from recstudio.model.ops import Embedding
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register
from recstudio.model.seq.causal_ops import causal_additive_attention


@dataclass
class NARMConfig(RankingParts):
    """Hyperparameters of NARM; sizes and dropouts as RecBole 1.2.1's NARM."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 1",
        "embed_dim": ">= 1",
        "hidden_size": ">= 1",
        "num_layers": ">= 1",
        "embed_dropout": "[0, 1)",
        "context_dropout": "[0, 1)",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 100
    """Longest input sequence (the most recent items are kept); the attention's work grows with
    its square. RecBole's MAX_ITEM_LIST_LENGTH is 50. On ml-100k (lr 5e-3, batch 256, three
    seeds) 50 items validated NDCG@10 0.0973 on average (test 0.0934) at 1.4 s per epoch, 100
    items 0.1067 (test 0.0955) at 2.9 s per epoch; 200 items (seed 2022) 0.0761; 20 items
    earlier 0.0845-0.0895."""
    embed_dim: int = 64
    hidden_size: int = 128
    """GRU state size (also the width of the attention)."""
    num_layers: int = 1
    embed_dropout: float = 0.25
    """Dropout between the item embeddings and the GRU."""
    context_dropout: float = 0.5
    """Dropout on the session representation [c_g; c_l] before the bilinear decoder."""
    loss: str = "softmax"
    """softmax: cross-entropy over all items (the paper's); any other ``RankingParts`` loss works."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in ("max_seq_len", "embed_dim", "hidden_size", "num_layers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        for key in ("embed_dropout", "context_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"config key 'model.{key}' must be in [0, 1), got {getattr(self, key)}")


@register
class NARM(ItemTowerRecommender):
    """GRU with global (last state) and local (attention) encoders; bilinear decoder."""

    family = "sequential"
    Config = NARMConfig
    description = "Neural attentive session-based recommendation (Li et al., CIKM 2017)"
    # 64 users per step (~15 steps per ml-100k epoch) at lr 2e-3: three seeds validated 0.1106
    # against 0.1067 with 256 users at 5e-3 (benchmarks/README.md, "NARM: 100 items")
    default_overrides = {
        **SEQUENCE_DEFAULT_OVERRIDES,
        "train": {
            **SEQUENCE_DEFAULT_OVERRIDES["train"],
            "learning_rate": 2e-3,
            "batch_size": 64,
            "early_stop_patience": 20,
        },
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
        "max_seq_len": {"type": "categorical", "choices": [50, 100, 200]},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "hidden_size": {"type": "categorical", "choices": [64, 128, 256]},
        "embed_dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "context_dropout": {"type": "float", "low": 0.0, "high": 0.6},
        "temperature": {"type": "categorical", "choices": [None, 0.05, 0.1, 0.2, 0.5]},
    }

    @classmethod
    def data_contract(cls, config: NARMConfig) -> DataContract:
        """Whole sequences of at most ``max_seq_len`` items; evaluation reads the same tail."""
        view = sequence_input(config.max_seq_len)
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: NARMConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        h = config.hidden_size
        self.max_seq_len = config.max_seq_len
        self.item_emb = Embedding(data.num_items, config.embed_dim, padding_idx=0)
        self.emb_dropout = Dropout(config.embed_dropout)
        self.gru = nn.GRU(config.embed_dim, h, config.num_layers, batch_first=True)
        self.a_1 = nn.Linear(h, h, bias=False)  # the paper's A_1, applied to the query h_t
        self.a_2 = nn.Linear(h, h, bias=False)  # A_2, applied to the keys h_j
        self.v = nn.Linear(h, 1, bias=False)
        self.context_dropout = Dropout(config.context_dropout)
        self.b = nn.Linear(2 * h, config.embed_dim, bias=False)  # the bilinear decoder's B
        # RecBole's initialisation: Xavier normal embeddings and linear maps, Xavier uniform GRU
        for module in (self.item_emb, self.a_1, self.a_2, self.v, self.b):
            nn.init.xavier_normal_(module.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight_"):
                nn.init.xavier_uniform_(weight)
        self.build_ranking_parts(data, dim=config.embed_dim)

    def attention(self, hidden: torch.Tensor, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Local attention weights [B, L, L] (``last_only``: [B, 1, L]): alpha[b, t, j] of
        position t over real j <= t (0 elsewhere)."""
        query = hidden[:, -1:] if last_only else hidden
        return causal_additive_attention(self.a_1(query), self.a_2(hidden), self.v, seq)

    def encode(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Queries B [c_g; c_l] [B, L, embed_dim] at every position of a left-padded batch [B, L]
        (``last_only``: [B, 1, embed_dim] at the last one, without the others' attention);
        position t sees items <= t only."""
        x = self.emb_dropout(self.item_emb(seq))
        hidden = left_padded_rnn(self.gru, x, (seq != 0).sum(1))  # [B, L, H], c_g at each t
        local = self.attention(hidden, seq, last_only) @ hidden  # [B, L or 1, H], c_l at each t
        glob = hidden[:, -1:] if last_only else hidden
        return self.b(self.context_dropout(torch.cat([glob, local], dim=-1)))

    def item_vectors(self) -> torch.Tensor:
        """The item embedding table [num_items, embed_dim] (shared with the input embedding)."""
        return self.item_emb.weight

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Query at the most recent item [B, embed_dim]."""
        (seq,) = trim_left_padding(batch["seq"][:, -self.max_seq_len :])
        return self.encode(seq, last_only=True)[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position that has a target, in one forward pass per batch."""
        return next_item_loss(self, batch, self.encode)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, max_seq_len={self.max_seq_len}"
