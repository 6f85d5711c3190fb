"""STAMP: short-term attention/memory priority model.

Liu, Zeng, Mokhosi, Zhang. "STAMP: Short-Term Attention/Memory Priority Model for Session-based
Recommendation." KDD 2018. At the last click x_t of a session the model reads the mean memory
m_s = mean(x_1..x_t) and the short-term memory m_t = x_t; an attention
alpha_i = w_0^T sigmoid(W_1 x_i + W_2 x_t + W_3 m_s + b_a) gives the attended memory
m_a = sum_i alpha_i x_i; two MLP cells give h_s = tanh(W_s m_a + b_s) and h_t = tanh(W_t m_t + b_t),
and item i scores by the trilinear product <h_s, h_t, x_i> = (h_s * h_t) . x_i: the query is
h_s * h_t against the item embedding table (shared with the input, as in the paper).

Training is whole-sequence (``seq2seq`` view): m_s at every position is a causal running mean
and the attention of every position t over i <= t one masked [B, L, L] tensor op
(``recstudio.model.seq.causal_ops``), so one forward pass gives a next-item loss at every
position (RecBole: one prefix per sample). Padding never enters the mean or the attention.

Speed (issue 15: an epoch >= 10x faster than RecBole 1.2.1's STAMP on ml-100k, one core
each). Measured at the former batch of 256 users: a training step (4 per epoch; ~9.8k target
positions of 256 users, 1683 items) cost
848 ms with the attention as one [B, L, L, H] tensor formula (forward + backward 410 ms) and
the full softmax as [N, I] score tensors (300 ms); both freshly allocated 66-164 MB tensors
per op. Both are now computed in cache-sized blocks, with the same math
(``causal_ops.causal_additive_attention``: 43 ms; ``ops.full_softmax_inner_product_loss``:
~145 ms; float rounding only, valid/test NDCG@10 unchanged): 241 ms a step, the softmax loss
now the largest part (its three [N, I] x d matmuls). Measured 2026-12-07, one pinned core,
``compare_accuracy.py --models STAMP --epochs 5``: 0.88 s per epoch against RecBole's 17.05
(19x; was 2.93 against 18.72, 6.4x).

Departures: the paper passes the trilinear score through a sigmoid before its softmax
cross-entropy; here the raw score is the logit of the default full softmax (as RecBole does),
and any ``RankingParts`` loss can be chosen. RecBole 1.2.1 adds m_s to m_a
(``ma = vec + ms``); the paper's m_a is used by default and ``add_mean_memory=true`` selects
RecBole's. Embedding 64 (RecBole; the paper's 100). Weights start N(0, 0.05^2), not the
paper's (and RecBole's) N(0, 0.002^2), with Adam instead of the paper's mini-batch SGD: chosen
on ml-100k validation, where the paper's initialisation did not train (see ``init_std``).

Training defaults (issue 15; ml-100k, chronological leave-one-out, three seeds 2022-2024, chosen
on validation; benchmarks/README.md "STAMP against a converged RecBole run"): Adam at 1e-3,
32 users per batch (30 optimiser steps per epoch), early stopping patience 30. RecBole 1.2.1's
STAMP, run to early stopping on the same split (48 epochs, best 37, seed 2020): valid / test
NDCG@10 0.0880 / 0.0915. The former defaults (lr 5e-3, batch 256, 4 steps per epoch, patience
10): mean 0.0877 / 0.0851; these: 0.0896 / 0.0867 (valid 0.0898 / 0.0879 / 0.0911), at 1.0-1.1 s
per epoch on one core (RecBole 17.05 s). Batch 64 at lr 1e-3 (0.0869), batch 128 at 2e-3
(0.0876), RecBole's m_a + m_s (one seed, 0.0861 at the old defaults, 0.0889 at lr 1e-3 batch 64)
and ``init_std`` 0.02 (one seed, 0.0875) validated lower.
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
from recstudio.model.contract import DataContract, check_window_context, sequence_input
from recstudio.model.layers import SEQUENCE_DEFAULT_OVERRIDES, Dropout, next_item_loss, trim_left_padding
from recstudio.model.ops import Embedding
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register
from recstudio.model.seq.causal_ops import causal_additive_attention, causal_mean


@dataclass
class STAMPConfig(RankingParts):
    """Hyperparameters of STAMP; embedding size as RecBole 1.2.1's STAMP."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 1",
        "window_context": ">= 0",
        "embed_dim": ">= 1",
        "dropout": "[0, 1)",
        "init_std": "> 0",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 50
    """Longest input sequence (the most recent items are kept); the attention's work grows with
    its square (RecBole's MAX_ITEM_LIST_LENGTH is 50; 20 items ranked worse). 100 validated
    higher on ml-100k (valid / test NDCG@10 0.0934 / 0.0935 over three seeds, against 0.0896 /
    0.0867 at 50) but an epoch costs 1.7-1.9 s: side by side with RecBole 1.2.1 (3 epochs each,
    one core, 2026-12-07) 1.89 s against 16.48 s, 8.7x, under issue 15's 10x bar."""
    embed_dim: int = 64
    dropout: float = 0.0
    """Dropout on the item embeddings read by the model (the paper and RecBole have none)."""
    init_std: float = 0.05
    """Standard deviation of the normal initialisation of every weight. The paper's 0.002 makes
    the trilinear score a product of three ~1e-3 factors: on ml-100k the loss stayed at log(N)
    for ~8 epochs and the best valid NDCG@10 was 0.037 (lr 1e-4..1e-3, with or without dropout
    or RecBole's m_a + m_s); 0.05 with lr 5e-3 reached 0.0875."""
    window_context: int | None = None
    """None: each user's last ``max_seq_len`` targets (whole sequences). K: every target, in
    windows of ``max_seq_len`` items whose first K are context only (``contract.sequence_input``),
    as RecBole's per-prefix training sees them. On ml-100k (seed 2022, K = 25) valid / test
    NDCG@10 0.0847 / 0.0880 against 0.0898 / 0.0858 with whole sequences: lower on validation,
    so not the default."""
    add_mean_memory: bool = False
    """m_a + m_s as the attended memory (RecBole's); false: m_a alone (the paper's)."""
    loss: str = "softmax"
    """softmax: cross-entropy over all items (the paper's); any other ``RankingParts`` loss works."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in ("max_seq_len", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0:
            raise ConfigError(f"config key 'model.init_std' must be > 0, got {self.init_std}")
        check_window_context(self.max_seq_len, self.window_context)


@register
class STAMP(ItemTowerRecommender):
    """Attention over the session with its mean and last click; trilinear (h_s * h_t) . x_i score."""

    family = "sequential"
    Config = STAMPConfig
    description = "Short-term attention/memory priority model (Liu et al., KDD 2018)"
    default_overrides = {
        **SEQUENCE_DEFAULT_OVERRIDES,
        "train": {
            **SEQUENCE_DEFAULT_OVERRIDES["train"],
            "learning_rate": 1e-3,
            "batch_size": 32,
            "early_stop_patience": 30,
        },
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
        "max_seq_len": {"type": "categorical", "choices": [20, 50, 100]},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "add_mean_memory": {"type": "categorical", "choices": [False, True]},
        "temperature": {"type": "categorical", "choices": [None, 0.05, 0.1, 0.2, 0.5]},
    }

    @classmethod
    def data_contract(cls, config: STAMPConfig) -> DataContract:
        """Whole sequences of at most ``max_seq_len`` items; evaluation reads the same tail."""
        view = sequence_input(config.max_seq_len, config.window_context)
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: STAMPConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        self.max_seq_len = config.max_seq_len
        self.add_mean_memory = config.add_mean_memory
        self.item_emb = Embedding(data.num_items, d, padding_idx=0)
        self.emb_dropout = Dropout(config.dropout)
        self.w_1 = nn.Linear(d, d, bias=False)  # on each memory item x_i
        self.w_2 = nn.Linear(d, d, bias=False)  # on the last click x_t
        self.w_3 = nn.Linear(d, d, bias=False)  # on the mean memory m_s
        self.w_0 = nn.Linear(d, 1, bias=False)
        self.b_a = nn.Parameter(torch.zeros(d))
        self.mlp_s = nn.Linear(d, d)  # W_s, b_s
        self.mlp_t = nn.Linear(d, d)  # W_t, b_t
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=config.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.build_ranking_parts(data, dim=d)

    def attention(self, x: torch.Tensor, mean: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Attention weights [B, Q, L]: alpha[b, t, i] of memory item i <= t for the session
        ending at t (last click x_t, mean memory m_s(t)), for the last Q positions that ``mean``
        [B, Q, d] holds; 0 for later items and padding."""
        last = x[:, -mean.shape[1] :]
        query = self.w_2(last) + self.w_3(mean) + self.b_a
        return causal_additive_attention(query, self.w_1(x), self.w_0, seq)

    def encode(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Queries h_s * h_t [B, L, d] at every position of a left-padded batch [B, L]
        (``last_only``: [B, 1, d] at the last one, without the others' attention); position t
        sees items <= t only."""
        x = self.emb_dropout(self.item_emb(seq))
        mean = causal_mean(x, seq)  # m_s at every t
        if last_only:
            mean = mean[:, -1:]
        attended = self.attention(x, mean, seq) @ x  # m_a at every t (or the last)
        if self.add_mean_memory:
            attended = attended + mean
        last = x[:, -mean.shape[1] :]  # m_t = x_t
        return torch.tanh(self.mlp_s(attended)) * torch.tanh(self.mlp_t(last))

    def item_vectors(self) -> torch.Tensor:
        """The item embedding table [num_items, d] (shared with the input embedding)."""
        return self.item_emb.weight

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Query at the most recent item [B, d]."""
        (seq,) = trim_left_padding(batch["seq"][:, -self.max_seq_len :])
        return self.encode(seq, last_only=True)[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position that has a target, in one forward pass per batch."""
        return next_item_loss(self, batch, self.encode)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, max_seq_len={self.max_seq_len}"
