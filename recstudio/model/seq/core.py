"""CORE: consistent representation space for session-based recommendation (Hou, Hu, Zhao & Wen,
"CORE: Simple and Effective Session-based Recommendation within Consistent Representation
Space", SIGIR 2022).

Representation-consistent encoder: the session representation is a weighted sum of the item
embeddings themselves, h = sum_i alpha_i x_i (no non-linear encoder output), so sessions and
items live in the same space. The weights come from mean pooling (``encoder="ave"``, CORE-ave:
alpha_i = 1/n) or from a Transformer (``encoder="trm"``, CORE-trm, the default: alpha =
softmax_i(w . H_i) with H the Transformer's outputs). Robust distance measuring: scores are
cosine similarities divided by a temperature (``scorer="cosine"``, ``temperature=0.07``),
trained with the softmax cross-entropy over all items, with dropout on the item embeddings
of the output side (``item_dropout``) and on the session's input embeddings (``sess_dropout``).

Training is whole-sequence and causal: the representation at position t weights items <= t
only. For CORE-trm the Transformer is causal (as in RecBole's CORE, whose default attention
mask is unidirectional), so the logit w . H_i of item i depends on items <= i only, and the
weights of prefix t are the softmax of those logits over i <= t
(``recstudio.model.seq_blocks.prefix_softmax``). This is exactly what each prefix would compute
as its own session (RecBole trains every prefix as a sample), in one forward pass per user;
CORE-ave is the running mean. The paper's CORE-trm reads the whole session with bidirectional
attention when the session is given; with a causal Transformer only the last position's
weights change (nothing beyond t is visible), which is what next-item training needs.

Departures, on purpose: positions are counted from the end of the sequence (the shared
``SequenceEmbedding``), not from its start; the Transformer's input uses its own dropout draw
(``SequenceEmbedding``'s) while the weighted sum reads the ``sess_dropout`` draw (RecBole feeds
the same draw to both); attention and hidden dropout share one rate.
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
    SequenceEmbedding,
    TransformerEncoder,
    attention_mask,
    init_weights,
    next_item_loss,
    trim_left_padding,
)
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register
from recstudio.model.seq_blocks import prefix_softmax

ENCODERS = ("trm", "ave")


@dataclass
class COREConfig(RankingParts):
    """Hyperparameters of CORE; defaults as RecBole's CORE (the paper's settings)."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 1",
        "hidden_size": ">= 1",
        "inner_size": ">= 1",
        "num_layers": ">= 1",
        "num_heads": ">= 1",
        "dropout": "[0, 1)",
        "sess_dropout": "[0, 1)",
        "item_dropout": "[0, 1)",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    encoder: str = "trm"
    """How the item weights are computed: trm (CORE-trm, a Transformer) or ave (CORE-ave, mean)."""
    max_seq_len: int = 50
    """Longest input sequence (the most recent items are kept)."""
    hidden_size: int = 64
    inner_size: int = 256
    """Width of the Transformer's feed-forward layer."""
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.5
    """Dropout inside the weighting Transformer (attention and hidden states)."""
    sess_dropout: float = 0.2
    """Dropout on the session's item embeddings that are summed."""
    item_dropout: float = 0.2
    """Dropout on the candidate item embeddings during training."""
    loss: str = "softmax"
    scorer: str = "cosine"
    """cosine: the paper's robust distance; inner_product drops the normalisation."""
    temperature: float | None = 0.07
    """tau of the softmax over cosine scores (the paper's 0.07)."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        if self.encoder not in ENCODERS:
            raise ConfigError(
                f"config key 'model.encoder' must be one of {', '.join(ENCODERS)}; got {self.encoder!r}"
            )
        for key in ("max_seq_len", "hidden_size", "inner_size", "num_layers", "num_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"config key 'model.hidden_size' must be divisible by model.num_heads, "
                f"but got hidden_size={self.hidden_size}, num_heads={self.num_heads}"
            )
        for key in ("dropout", "sess_dropout", "item_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"config key 'model.{key}' must be in [0, 1), got {getattr(self, key)}")


@register
class CORE(ItemTowerRecommender):
    """Session = weighted sum of its item embeddings (Transformer or mean weights), scored by
    cosine / temperature against the same embeddings."""

    family = "sequential"
    Config = COREConfig
    description = "Consistent representation space: weighted sums of item embeddings (Hou et al., SIGIR 2022)"
    # 4 steps of 256 users per ml-100k epoch: lr 5e-3 validated above RecBole's 1e-3 (valid
    # NDCG@10 0.1190, early-stopped at epoch 27, vs 0.1025 when the 12-minute budget cut 1e-3)
    default_overrides = {
        **SEQUENCE_DEFAULT_OVERRIDES,
        "train": {**SEQUENCE_DEFAULT_OVERRIDES["train"], "learning_rate": 5e-3},
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
        "encoder": {"type": "categorical", "choices": ["trm", "ave"]},
        "num_layers": {"type": "int", "low": 1, "high": 3},
        "dropout": {"type": "float", "low": 0.0, "high": 0.6},
        "sess_dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "item_dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "temperature": {"type": "categorical", "choices": [0.05, 0.07, 0.1, 0.2]},
        "max_seq_len": {"type": "categorical", "choices": [50, 100, 200]},
    }

    @classmethod
    def data_contract(cls, config: COREConfig) -> DataContract:
        """Whole sequences of at most ``max_seq_len`` items; evaluation reads the same tail."""
        view = sequence_input(config.max_seq_len)
        return DataContract(inputs=(view,), eval_sequence=config.max_seq_len)

    def __init__(
        self,
        config: COREConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.hidden_size
        self.max_seq_len = config.max_seq_len
        self.embedding = SequenceEmbedding(
            data.num_items, config.max_seq_len, d, config.dropout, layer_norm=True
        )
        self.sess_dropout = Dropout(config.sess_dropout)
        self.item_dropout = Dropout(config.item_dropout)
        self.encoder: nn.Module | None = None
        if config.encoder == "trm":
            self.encoder = TransformerEncoder(
                config.num_layers,
                d,
                config.num_heads,
                config.inner_size,
                config.dropout,
                "gelu",
                norm_first=False,
            )
            self.weight_head = nn.Linear(d, 1)
        init_weights(self)
        self.build_ranking_parts(data, dim=d)

    def weights(self, seq: torch.Tensor) -> torch.Tensor:
        """alpha [B, L, L]: ``alpha[b, t, i]`` is item i's weight in the representation at position
        t; zero for i > t and for padding, each real row sums to 1."""
        mask = attention_mask(seq, causal=True)
        if self.encoder is None:  # CORE-ave: equal logits, the running mean
            logits = torch.zeros(seq.shape, device=seq.device)
        else:
            hidden = self.encoder(self.embedding(seq), mask)
            logits = self.weight_head(hidden).squeeze(-1)
        return prefix_softmax(logits.float(), mask[:, 0])

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Session representations [B, L, d] of every prefix of a left-padded batch [B, L]."""
        x = self.sess_dropout(self.embedding.item(seq))
        return self.weights(seq).to(x.dtype) @ x

    def item_vectors(self) -> torch.Tensor:
        """The item embedding table [num_items, d] (the space sessions are built in)."""
        return self.embedding.item.weight

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Representation of the whole history [B, d] (the last position's)."""
        (seq,) = trim_left_padding(batch["seq"][:, -self.max_seq_len :])
        return self.encode(seq)[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position that has a target, against dropped-out item embeddings."""
        items = self.item_dropout(self.item_vectors())
        return next_item_loss(self, batch, self.encode, items=items)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, max_seq_len={self.max_seq_len}, encoder={self.config.encoder}"
