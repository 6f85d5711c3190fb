"""BERT4Rec: bidirectional Transformer trained with the Cloze task (Sun et al., CIKM 2019).

Training masks a random share (``mask_ratio``) of the items of a user's sequence with a [MASK]
token and predicts them from both sides with bidirectional self-attention. Prediction of the
*next* item is then a Cloze question whose blank is at the end: at evaluation the [MASK] token is
appended after the history (the oldest item dropped if the sequence is full) and the hidden state
there is the query. Because that test-time pattern differs from random masking, the paper adds
training samples that mask only the last item; here a share ``last_mask_prob`` of sequences in
each batch is masked that way, and every sequence gets at least one masked position.

The [MASK] token is row ``num_items`` of the input embedding (which therefore has num_items + 1
rows); the output item vectors are rows 0..num_items-1 of the same table (shared input/output
embeddings, as in the paper). The paper's prediction head (a GELU feed-forward layer with
LayerNorm, Eq. 7) is kept; its per-item output bias is left out so that scores stay a plain
scorer over ``item_vectors()``, which sampled losses and ANN retrieval rely on.
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
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.layers import (
    SEQUENCE_DEFAULT_OVERRIDES,
    TRANSFORMER_SEARCH_SPACE,
    SequenceEmbedding,
    TransformerEncoder,
    attention_mask,
    init_weights,
    trim_left_padding,
)
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@dataclass
class BERT4RecConfig(RankingParts):
    """Hyperparameters of BERT4Rec; defaults follow the paper's ML-1m setting at hidden size 64."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 2",
        "hidden_size": ">= 1",
        "inner_size": ">= 1",
        "num_layers": ">= 1",
        "num_heads": ">= 1",
        "dropout": "[0, 1)",
        "mask_ratio": "(0, 1]",
        "last_mask_prob": "[0, 1]",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 50
    """Longest input sequence (the most recent items are kept); also sizes the positional table.
    The pipeline passes it to the ``seq`` view and to the evaluation split."""
    hidden_size: int = 64
    inner_size: int | None = None
    """Width of the position-wise feed-forward layer; None: 4 * hidden_size, as in the paper."""
    num_layers: int = 2
    num_heads: int = 2
    """Attention heads; hidden_size must be divisible by it."""
    dropout: float = 0.2
    """Dropout on embeddings, attention weights and hidden states."""
    mask_ratio: float = 0.2
    """Share of (non-padding) positions replaced by [MASK] in training (the paper's rho; it found
    0.2 best on dense ML-1m and 0.4-0.6 on sparser data)."""
    last_mask_prob: float = 0.1
    """Share of training sequences masked at the last position only, matching the test task."""
    loss: str = "softmax"
    """softmax: cross-entropy over all items; sampled_softmax: over sampled negatives (log-Q
    corrected); bce: binary cross-entropy with sampled negatives (the paper's); any other loss of
    ``RankingParts`` works as well."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        for key in ("max_seq_len", "hidden_size", "num_layers", "num_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if self.max_seq_len < 2:
            raise ConfigError(f"config key 'model.max_seq_len' must be >= 2, got {self.max_seq_len}")
        if self.inner_size is not None and self.inner_size < 1:
            raise ConfigError(f"config key 'model.inner_size' must be >= 1 or null, got {self.inner_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"config key 'model.hidden_size' must be divisible by model.num_heads, "
                f"but got hidden_size={self.hidden_size}, num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ConfigError(f"config key 'model.mask_ratio' must be in (0, 1], got {self.mask_ratio}")
        if not 0.0 <= self.last_mask_prob <= 1.0:
            raise ConfigError(
                f"config key 'model.last_mask_prob' must be in [0, 1], got {self.last_mask_prob}"
            )


@register
class BERT4Rec(ItemTowerRecommender):
    """Bidirectional self-attention with Cloze training; query = hidden state at an appended [MASK]."""

    family = "sequential"
    Config = BERT4RecConfig
    description = "Sequential recommendation with bidirectional Transformers (Sun et al., CIKM 2019)"
    # Cloze training plateaus early (4 steps per ml-100k epoch at batch 256): with the shared
    # patience of 10 it stopped at epoch 24 with test NDCG@10 0.046; patience 30 ran to epoch 165
    # (best 134), 0.083. Chosen on validation among 7 settings: benchmarks/README.md.
    default_overrides = {
        **SEQUENCE_DEFAULT_OVERRIDES,
        "train": {**SEQUENCE_DEFAULT_OVERRIDES["train"], "early_stop_patience": 30},
    }
    search_space = {
        **TRANSFORMER_SEARCH_SPACE,
        "mask_ratio": {"type": "float", "low": 0.1, "high": 0.6},
    }

    @classmethod
    def data_contract(cls, config: BERT4RecConfig) -> DataContract:
        """Whole sequences of at most ``max_seq_len`` items; evaluation reads the same tail."""
        view = TrainInput("seq", options={"max_len": config.max_seq_len})
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: BERT4RecConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.hidden_size
        self.max_seq_len = config.max_seq_len
        self.mask_id = self.num_items  # one extra embedding row after the real items
        self.embedding = SequenceEmbedding(
            self.num_items + 1, config.max_seq_len, d, config.dropout, scale=False, layer_norm=True
        )
        self.encoder = TransformerEncoder(
            config.num_layers,
            d,
            config.num_heads,
            config.inner_size or 4 * d,
            config.dropout,
            activation="gelu",
            norm_first=False,
        )
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        init_weights(self)
        self.build_ranking_parts(data, dim=d)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] of a left-padded batch [B, L]; every position sees the whole sequence."""
        return self.encoder(self.embedding(seq), attention_mask(seq, causal=False))

    def item_vectors(self) -> torch.Tensor:
        """Rows 0..num_items-1 of the input embedding [num_items, d]; the [MASK] row is not an item."""
        return self.embedding.item.weight[: self.num_items]

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Append [MASK] after the history (dropping the oldest item if full); its output is the query."""
        seq = batch["seq"][:, -self.max_seq_len :]
        mask_column = torch.full_like(seq[:, :1], self.mask_id)
        if seq.shape[1] < self.max_seq_len:
            seq = torch.cat([seq, mask_column], 1)
        else:
            seq = torch.cat([seq[:, 1:], mask_column], 1)
        (seq,) = trim_left_padding(seq)
        return self.head(self.encode(seq)[:, -1])

    def cloze_mask(self, seq: torch.Tensor) -> torch.Tensor:
        """Bool [B, L]: which positions of ``seq`` to mask for one training step.

        Each real position is masked with probability ``mask_ratio``; a share ``last_mask_prob``
        of the sequences is masked at the last position only; a sequence left without any
        masked position gets its last one masked, so every sequence contributes to the loss.
        """
        real = seq != 0
        masked = (torch.rand(seq.shape, device=seq.device) < self.config.mask_ratio) & real
        last_only = torch.zeros_like(masked)
        last_only[:, -1] = real[:, -1]
        if self.config.last_mask_prob > 0:
            pick = torch.rand(seq.shape[0], 1, device=seq.device) < self.config.last_mask_prob
            masked = torch.where(pick, last_only, masked)
        empty = ~masked.any(1, keepdim=True)
        return masked | (empty & last_only)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy (or the configured loss) at the masked positions only."""
        (seq,) = trim_left_padding(batch["seq"][:, -self.max_seq_len :])
        masked = self.cloze_mask(seq)
        hidden = self.encode(seq.masked_fill(masked, self.mask_id))
        if not bool(masked.any()):  # only empty sequences in the batch
            return hidden.sum() * 0.0
        users = batch["user"][:, None].expand_as(seq)[masked]
        return self.ranking_loss(self.head(hidden[masked]), seq[masked], users=users)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, max_seq_len={self.max_seq_len}, mask_id={self.mask_id}"
