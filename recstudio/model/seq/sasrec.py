"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A causal Transformer reads a user's item sequence; the hidden state at position t predicts the
item at t+1, scored by inner product with the item embedding table (the same table embeds the
input, as in the paper's shared-embedding variant).

Training is whole-sequence: each user's sequence is one sample from the ``seq2seq`` view
(``seq`` = s_1..s_{n-1}, ``target`` = s_2..s_n), and one causal forward pass yields a loss at
every non-padding position, as in the paper. This is much cheaper than feeding each prefix as
its own sample (one forward pass per user instead of one per interaction), with the same
gradient signal. Causal masking guarantees no position sees its own target. By default only
each user's last ``max_seq_len`` targets train; ``window_context=K`` trains every target in
overlapping windows (ml-100k, three seeds: validation +4%, test -2%, three times the epoch
cost; benchmarks/README.md), so it is an option, not the default.

Departures from the reference implementation, on purpose: the loss defaults to a full softmax
over all items (cross-entropy), which is stronger than the paper's binary cross-entropy with one
sampled negative (Klenitskiy & Vasilev, RecSys 2023, "Turning Dross Into Gold Loss: is BERT4Rec
really better than SASRec?"); ``loss="bce"`` with ``num_negatives=1`` restores the paper's
objective. Positions are counted from the end of the sequence (see
``recstudio.model.layers.SequenceEmbedding``), which equals the paper's absolute positions for
fixed-length left-padded input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import ItemTowerRecommender
from recstudio.model.contract import DataContract, check_window_context, sequence_input
from recstudio.model.layers import (
    SEQUENCE_DEFAULT_OVERRIDES,
    TRANSFORMER_SEARCH_SPACE,
    SequenceEmbedding,
    TransformerEncoder,
    attention_mask,
    init_weights,
    next_item_loss,
    trim_left_padding,
)
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@dataclass
class SASRecConfig(RankingParts):
    """Hyperparameters of SASRec; defaults follow the paper at ml-1m scale (d=50 there, 64 here)."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 1",
        "window_context": ">= 0",
        "hidden_size": ">= 1",
        "inner_size": ">= 1",
        "num_layers": ">= 1",
        "num_heads": ">= 1",
        "dropout": "[0, 1)",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int = 50
    """Longest input sequence (the most recent items are kept); also sizes the positional table.
    The pipeline passes it to the ``seq2seq`` view and to the evaluation split."""
    window_context: int | None = None
    """None: each user's last ``max_seq_len`` targets, one sample per user (the paper's). K:
    every target, in windows of ``max_seq_len`` items whose first K are context only
    (``contract.sequence_input``), as RecBole's per-prefix training sees them."""
    hidden_size: int = 64
    inner_size: int | None = None
    """Width of the position-wise feed-forward layer; None: hidden_size, as in the paper."""
    num_layers: int = 2
    num_heads: int = 2
    """Attention heads (the paper uses 1); hidden_size must be divisible by it."""
    dropout: float = 0.2
    """Dropout on embeddings, attention weights and hidden states."""
    separate_output_embedding: bool = False
    """Score items against their own output table instead of the input embedding table (the
    paper ties them; the gSASRec authors' code unties them, ``reuse_item_embeddings=False``)."""
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
        if self.inner_size is not None and self.inner_size < 1:
            raise ConfigError(f"config key 'model.inner_size' must be >= 1 or null, got {self.inner_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"config key 'model.hidden_size' must be divisible by model.num_heads, "
                f"but got hidden_size={self.hidden_size}, num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")
        check_window_context(self.max_seq_len, self.window_context)


@register
class SASRec(ItemTowerRecommender):
    """Causal self-attention over the item sequence; query = hidden state at the last position."""

    family = "sequential"
    Config = SASRecConfig
    description = "Self-attentive sequential recommendation (Kang & McAuley, ICDM 2018)"
    default_overrides = SEQUENCE_DEFAULT_OVERRIDES
    search_space = dict(TRANSFORMER_SEARCH_SPACE)

    @classmethod
    def data_contract(cls, config: SASRecConfig) -> DataContract:
        """Whole sequences of at most ``max_seq_len`` items (or windows, ``window_context``);
        evaluation reads the same tail."""
        view = sequence_input(config.max_seq_len, config.window_context)
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: SASRecConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.hidden_size
        self.max_seq_len = config.max_seq_len
        # The paper scales item embeddings by sqrt(d) and adds positions without a LayerNorm;
        # the pre-LN blocks normalise before attention.
        self.embedding = SequenceEmbedding(
            self.num_items, config.max_seq_len, d, config.dropout, scale=True, layer_norm=False
        )
        self.encoder = TransformerEncoder(
            config.num_layers,
            d,
            config.num_heads,
            config.inner_size or d,
            config.dropout,
            activation="relu",
            norm_first=True,
        )
        self.output_item = (
            torch.nn.Embedding(self.num_items, d, padding_idx=0) if config.separate_output_embedding else None
        )
        init_weights(self)
        self.build_ranking_parts(data, dim=d)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] of a left-padded sequence batch [B, L]; position t sees items <= t."""
        return self.encoder(self.embedding(seq), attention_mask(seq, causal=True))

    def item_vectors(self) -> torch.Tensor:
        """The output item table [num_items, d]: the input embedding table unless
        ``separate_output_embedding``."""
        if self.output_item is not None:
            return self.output_item.weight
        return self.embedding.item.weight

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden state at the last position [B, d]: the representation of the whole history."""
        (seq,) = trim_left_padding(batch["seq"][:, -self.max_seq_len :])
        return self.encode(seq)[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position that has a target, in one forward pass per batch."""
        return next_item_loss(self, batch, self.encode)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, max_seq_len={self.max_seq_len}"
