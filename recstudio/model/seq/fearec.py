"""FEARec: frequency enhanced hybrid attention (Du, Yuan, Zhao, Liu, Sheng, Zhao, Li, Xu, Zhou,
"Frequency Enhanced Hybrid Attention Network for Sequential Recommendation", SIGIR 2023).

A Transformer whose attention is hybrid (``recstudio.model.seq_blocks.HybridAttention``):
a frequency-domain auto-correlation attention (queries and keys correlated over circular time
lags through ``torch.fft``, values aggregated over each sequence's strongest lags) mixed with
ordinary time-domain attention by ``spatial_ratio``. Each layer keeps only a band of the
frequency components, in a ramp from high frequencies (first layer) to low ones (last layer)
(``seq_blocks.frequency_band``, ``global_ratio``). Training adds FEARec's regularisers, both
between a training prefix and another training prefix with the same next item (DuoRec's
supervised positive, ``seq_blocks.SameTargetPrefixes``): a contrastive InfoNCE term (the shared
``recstudio.model.loss.contrastive_loss``, weight ``contrastive_weight``) and an L1 distance
of the two representations' spectra (``rfft`` over the hidden dimension, weight
``frequency_weight``).

No look-ahead: the frequency branch mixes all positions circularly, so position t's output
depends on later items and whole-sequence training at every position would leak the targets.
As in the paper and RecBole, the model only predicts from the last position of its input: each
training sample is a prefix s_1..s_t of a user's sequence with target s_{t+1}, and the loss
reads the output at the prefix's last position. RecBole materialises every prefix as a sample;
here each step draws ``prefixes_per_user`` prefixes per user of the batch, uniformly among its
positions, with tensor ops
(``seq_blocks.sample_prefixes``), from the last ``prefix_window`` positions. Inputs are always
left-padded to ``max_seq_len``: the frequency bands are defined for that length, so unlike the
causal models here, extra left padding is part of the input signal (it is for RecBole's right
padding too), and the model is not invariant to it.

Departures, on purpose: the contrastive term contrasts the training view (the one the next-item
loss reads, with its own dropout) with the same-target view, symmetrically, with in-batch
negatives; RecBole's FEARec (``us_x``) runs a third, dropout-only forward pass as the anchor and
uses dot-product similarity at temperature 1; here the shared cosine InfoNCE runs at
``contrastive_temperature`` (0.2: cosine scores at temperature 1 give almost no gradient); the
frequency regulariser compares the same two views. Lags are chosen per sequence (the
Autoformer inference rule), not shared across the batch as in the authors' training speed-up.
Positions are counted from the end (the shared ``SequenceEmbedding``). The default loss is the
full softmax cross-entropy (the paper's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import ItemTowerRecommender
from recstudio.model.contract import DataContract, sequence_input
from recstudio.model.layers import (
    SEQUENCE_DEFAULT_OVERRIDES,
    TRANSFORMER_SEARCH_SPACE,
    SequenceEmbedding,
    attention_mask,
    init_weights,
)
from recstudio.model.loss import contrastive_loss
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register
from recstudio.model.seq_blocks import (
    HybridAttention,
    SameTargetPrefixes,
    block_with_attention,
    frequency_band,
    sample_prefixes,
)


@dataclass
class FEARecConfig(RankingParts):
    """Hyperparameters of FEARec; architecture defaults as the authors' ml-1m setting."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 2",
        "hidden_size": ">= 1",
        "inner_size": ">= 1",
        "num_layers": ">= 1",
        "num_heads": ">= 1",
        "dropout": "[0, 1)",
        "global_ratio": "(0, 1]",
        "topk_factor": "> 0",
        "spatial_ratio": "[0, 1]",
        "contrastive_weight": ">= 0",
        "contrastive_temperature": "> 0",
        "frequency_weight": ">= 0",
        "prefixes_per_user": ">= 1",
        "prefix_window": ">= 1",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 50
    """Input length: every input is left-padded or cut to it (the frequency bands depend on it)."""
    hidden_size: int = 64
    inner_size: int = 256
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.5
    """Dropout on embeddings, attention weights and hidden states."""
    global_ratio: float = 0.6
    """Share of the frequency bins each layer keeps; <= 1/num_layers: disjoint bands instead."""
    topk_factor: float = 1.0
    """Lags kept by the auto-correlation: int(topk_factor * log(max_seq_len))."""
    spatial_ratio: float = 0.1
    """Weight of the time-domain attention in the hybrid (0: frequency attention only)."""
    contrastive_weight: float = 0.1
    """Weight of the InfoNCE term between same-target prefixes (the paper's lambda)."""
    contrastive_temperature: float = 0.2
    """Temperature of that InfoNCE over cosine similarities."""
    frequency_weight: float = 0.1
    """Weight of the L1 distance between the two views' spectra (the authors' 0.1)."""
    prefixes_per_user: int = 1
    """Training prefixes drawn per user and step, uniformly among its positions with a target
    (1: a step is as many prefix samples as users, RecBole's batch composition)."""
    prefix_window: int = 200
    """Prefixes end at one of the user's last ``prefix_window`` training positions."""
    loss: str = "softmax"

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in (
            "hidden_size",
            "inner_size",
            "num_layers",
            "num_heads",
            "prefixes_per_user",
            "prefix_window",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if self.max_seq_len < 2:
            raise ConfigError(f"config key 'model.max_seq_len' must be >= 2, got {self.max_seq_len}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"config key 'model.hidden_size' must be divisible by model.num_heads, "
                f"but got hidden_size={self.hidden_size}, num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.global_ratio <= 1.0:
            raise ConfigError(f"config key 'model.global_ratio' must be in (0, 1], got {self.global_ratio}")
        if not 0.0 <= self.spatial_ratio <= 1.0:
            raise ConfigError(f"config key 'model.spatial_ratio' must be in [0, 1], got {self.spatial_ratio}")
        for key in ("topk_factor", "contrastive_temperature"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'model.{key}' must be > 0, got {getattr(self, key)}")
        for key in ("contrastive_weight", "frequency_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'model.{key}' must be >= 0, got {getattr(self, key)}")


@register
class FEARec(ItemTowerRecommender):
    """Hybrid frequency/time attention with a ramp of frequency bands per layer, trained from the
    last position of sampled prefixes with contrastive and spectral regularisation."""

    family = "sequential"
    Config = FEARecConfig
    description = "Frequency enhanced hybrid attention (Du et al., SIGIR 2023)"
    default_overrides = SEQUENCE_DEFAULT_OVERRIDES
    search_space = {
        **{k: v for k, v in TRANSFORMER_SEARCH_SPACE.items() if k != "max_seq_len"},
        "dropout": {"type": "float", "low": 0.0, "high": 0.6},
        "global_ratio": {"type": "categorical", "choices": [0.2, 0.4, 0.6, 0.8, 1.0]},
        "spatial_ratio": {"type": "categorical", "choices": [0.0, 0.1, 0.3, 0.5]},
        "contrastive_weight": {"type": "categorical", "choices": [0.0, 0.05, 0.1, 0.2]},
        "contrastive_temperature": {"type": "categorical", "choices": [0.1, 0.2, 0.5, 1.0]},
        "frequency_weight": {"type": "categorical", "choices": [0.0, 0.05, 0.1, 0.2]},
    }

    @classmethod
    def data_contract(cls, config: FEARecConfig) -> DataContract:
        """Sequences of the last ``prefix_window`` positions (prefixes are drawn from them);
        evaluation reads the last ``max_seq_len`` items."""
        view = sequence_input(max(config.prefix_window, config.max_seq_len))
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: FEARecConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d, length = config.hidden_size, config.max_seq_len
        self.max_seq_len = length
        self.embedding = SequenceEmbedding(data.num_items, length, d, config.dropout, layer_norm=True)
        self.layers = nn.ModuleList(
            block_with_attention(
                HybridAttention(
                    d,
                    config.num_heads,
                    config.dropout,
                    frequency_band(i, config.num_layers, length, config.global_ratio),
                    config.topk_factor,
                    config.spatial_ratio,
                ),
                d,
                config.inner_size,
                config.dropout,
                activation="gelu",
                norm_first=False,
            )
            for i in range(config.num_layers)
        )
        init_weights(self)
        self.same_target = SameTargetPrefixes(
            data.train.user, data.train.item, data.num_users, data.num_items, length
        )
        self.build_ranking_parts(data, dim=d)

    def fixed_length(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` [B, L'] left-padded or cut to [B, max_seq_len] (the most recent items kept)."""
        seq = seq[:, -self.max_seq_len :]
        return F.pad(seq, (self.max_seq_len - seq.shape[1], 0))

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, max_seq_len, d]; only the last position is a prediction (the
        frequency branch lets every position see the whole input)."""
        seq = self.fixed_length(seq)
        x = self.embedding(seq)
        mask = attention_mask(seq, causal=True)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def item_vectors(self) -> torch.Tensor:
        """The item embedding table [num_items, d] (shared with the input)."""
        return self.embedding.item.weight

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden state at the last position [B, d]."""
        return self.encode(batch["seq"])[:, -1]

    def regulariser(self, anchor: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """Contrastive (symmetric InfoNCE, in-batch negatives) plus spectral L1 between the
        representations [N, d] of prefixes and of same-target prefixes."""
        cfg = self.config
        total = anchor.new_zeros(())
        if cfg.contrastive_weight > 0 and anchor.shape[0] > 1:
            tau = cfg.contrastive_temperature
            pair = contrastive_loss(anchor, positive, tau) + contrastive_loss(positive, anchor, tau)
            total = total + cfg.contrastive_weight * pair / 2
        if cfg.frequency_weight > 0:
            gap = torch.fft.rfft(anchor, dim=1, norm="ortho") - torch.fft.rfft(positive, dim=1, norm="ortho")
            total = total + cfg.frequency_weight * gap.abs().mean()
        return total

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at the last position of sampled prefixes, plus the regularisers."""
        prefix, target, row = sample_prefixes(batch["seq"], batch["target"], self.config.prefixes_per_user)
        if target.numel() == 0:  # no user in the batch has a next item: nothing to learn
            return self.embedding.item.weight.sum() * 0.0
        hidden = self.encode(prefix)[:, -1]
        users = batch["user"][row]
        loss = self.ranking_loss(hidden, target, users=users)
        if self.config.contrastive_weight > 0 or self.config.frequency_weight > 0:
            positive = self.encode(self.same_target.sample(target))[:, -1]
            loss = loss + self.regulariser(hidden, positive)
        return loss

    def extra_repr(self) -> str:
        bands = [layer.attention.band for layer in self.layers]
        return f"num_items={self.num_items}, max_seq_len={self.max_seq_len}, bands={bands}"
