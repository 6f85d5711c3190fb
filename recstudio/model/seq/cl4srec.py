"""CL4SRec: contrastive learning for sequential recommendation (Xie, Sun, Liu, Gao, Ding, Lin, Cui;
ICDE 2022, "Contrastive Learning for Sequential Recommendation").

SASRec's causal Transformer (``recstudio.model.seq.sasrec``) trained with the next-item loss plus
lambda times a self-supervised contrast: two augmented views of each sequence in the batch (item
crop, mask and reorder, one chosen at random per view and row; ``recstudio.model.augment``) are
encoded, and each view must pick out its twin among the 2N views of the batch (NT-Xent,
``recstudio.model.loss.contrastive_loss`` on stacked views with the anchor itself excluded).

This module also holds what the other contrastive SASRec variants (DuoRec, ICLRec, CoSeRec)
share: ``ContrastiveSASRecConfig`` (weight, temperature, similarity of the contrast),
``pair_contrast`` (the 2N-view NT-Xent) and ``CL4SRec`` itself, whose augmentation and
auxiliary loss the others override.

Departures from the paper, on purpose:

- The next-item loss is whole-sequence (every position, as ``SASRec``) and defaults to a full
  softmax; the paper trains one (prefix, next item) sample at a time with BCE against a sampled
  negative. The contrast uses each view's last-position hidden state as the sequence
  representation (as the paper) on the user's whole training sequence s_1..s_{n-1} (one pair of
  views per user and step instead of one per prefix).
- Similarity defaults to cosine at temperature 0.2; the authors' code uses the dot product at
  temperature 1 (``cl_similarity="dot"``, ``cl_temperature=1``). With this repository's
  whole-sequence training and pre-LN encoder (final LayerNorm: |h| ~ sqrt(d)), dot products at
  temperature 1 give logits of tens and the contrast swamped the next-item loss: on ml-100k
  (LOO, 32 epochs) validation NDCG@10 was 0.042 (dot, t=1) vs 0.082 (cosine, t=0.2) for
  CL4SRec and 0.042 vs 0.084 for DuoRec, hence the default (shared by DuoRec, ICLRec, CoSeRec).
- Default ratios eta = 0.6 (crop), gamma = 0.3 (mask), beta = 0.6 (reorder) follow the DuoRec
  authors' CL4SRec code; the paper tunes them per dataset.
- The [mask] token is an extra row (id ``num_items``) of the input embedding; output item
  vectors are the first ``num_items`` rows (shared input/output embedding, as SASRec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.augment import SequenceAugmenter
from recstudio.model.layers import (
    TRANSFORMER_SEARCH_SPACE,
    SequenceEmbedding,
    init_weights,
    trim_left_padding,
)
from recstudio.model.loss import contrastive_loss
from recstudio.model.registry import register
from recstudio.model.seq.sasrec import SASRec, SASRecConfig


def pair_contrast(
    view1: torch.Tensor,
    view2: torch.Tensor,
    temperature: float,
    similarity: str = "dot",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent over the 2N stacked rows of two views [N, d] (SimCLR's form, used by CL4SRec,
    DuoRec, ICLRec and CoSeRec): row i's positive is its twin i + N (and back), the other 2N - 2
    rows are its negatives; the anchor itself is excluded. With ``groups`` [N] (ICLRec's intent
    ids), rows of the same group are excluded as well: they are false negatives."""
    n = view1.shape[0]
    stacked = torch.cat([view1, view2])
    index = torch.arange(2 * n, device=stacked.device)
    target = index.roll(n)  # i <-> i + n
    exclude = index[:, None] == index[None, :]
    if groups is not None:
        both = groups.repeat(2)
        exclude = exclude | (both[:, None] == both[None, :])
    return contrastive_loss(stacked, stacked, temperature, target, similarity=similarity, exclude=exclude)


@dataclass
class ContrastiveSASRecConfig(SASRecConfig):
    """SASRec's hyperparameters plus the weight, temperature and similarity of a contrastive term."""

    ranges: ClassVar[dict[str, str]] = {"cl_weight": ">= 0", "cl_temperature": "> 0"}

    cl_weight: float = 0.1
    """lambda: weight of the contrastive term next to the next-item loss (0: plain SASRec)."""
    cl_temperature: float = 0.2
    """Temperature of the contrastive softmax (the authors' code: 1 with dot products)."""
    cl_similarity: str = "cosine"
    """cosine (default, chosen on ml-100k validation) or dot (the authors' code, with temperature 1)."""

    def validate(self) -> None:
        super().validate()
        if self.cl_weight < 0:
            raise ConfigError(f"config key 'model.cl_weight' must be >= 0, got {self.cl_weight}")
        if self.cl_temperature <= 0:
            raise ConfigError(f"config key 'model.cl_temperature' must be > 0, got {self.cl_temperature}")
        if self.cl_similarity not in ("dot", "cosine"):
            raise ConfigError(
                f"config key 'model.cl_similarity' must be one of dot, cosine; got {self.cl_similarity!r}"
            )


CONTRASTIVE_SEARCH_SPACE: dict = {
    **TRANSFORMER_SEARCH_SPACE,
    "cl_weight": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    "cl_temperature": {"type": "float", "low": 0.05, "high": 2.0, "log": True},
}
"""SASRec's search space plus the contrastive weight and temperature."""


def _ratio(config: object, key: str, low_open: bool = False) -> None:
    value = getattr(config, key)
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    if not ok:
        raise ConfigError(
            f"config key 'model.{key}' must be in {'(0' if low_open else '[0'}, 1], got {value}"
        )


@dataclass
class CL4SRecConfig(ContrastiveSASRecConfig):
    """CL4SRec's hyperparameters: SASRec's, the contrast's, and the augmentation ratios."""

    ranges: ClassVar[dict[str, str]] = {
        "crop_ratio": "(0, 1]",
        "mask_ratio": "[0, 1]",
        "reorder_ratio": "[0, 1]",
    }

    crop_ratio: float = 0.6
    """eta: share of a sequence that item crop keeps (a contiguous run, at least one item)."""
    mask_ratio: float = 0.3
    """gamma: share of a sequence's items that item mask replaces by the [mask] token."""
    reorder_ratio: float = 0.6
    """beta: share of a sequence (a contiguous window) that item reorder shuffles."""

    def validate(self) -> None:
        super().validate()
        _ratio(self, "crop_ratio", low_open=True)
        _ratio(self, "mask_ratio")
        _ratio(self, "reorder_ratio")


@register
class CL4SRec(SASRec):
    """SASRec plus a contrast between two random augmentations (crop / mask / reorder) per sequence."""

    Config = CL4SRecConfig
    description = "Contrastive learning for sequential recommendation (Xie et al., ICDE 2022)"
    search_space = {
        **CONTRASTIVE_SEARCH_SPACE,
        "crop_ratio": {"type": "float", "low": 0.1, "high": 0.9},
        "mask_ratio": {"type": "float", "low": 0.1, "high": 0.9},
        "reorder_ratio": {"type": "float", "low": 0.1, "high": 0.9},
    }
    augmentations: ClassVar[tuple[str, ...]] = ("crop", "mask", "reorder")

    def __init__(
        self,
        config: CL4SRecConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        # one more input row: the [mask] token (id num_items) of the mask augmentation
        self.embedding = SequenceEmbedding(
            self.num_items + 1,
            config.max_seq_len,
            config.hidden_size,
            config.dropout,
            scale=True,
            layer_norm=False,
        )
        init_weights(self.embedding)
        self.augmenter = self.build_augmenter(config, data)

    def build_augmenter(self, config: CL4SRecConfig, data: PreparedData) -> SequenceAugmenter:
        """Crop, mask or reorder, one at random per row and view."""
        return SequenceAugmenter(
            self.augmentations,
            crop_ratio=config.crop_ratio,
            mask_ratio=config.mask_ratio,
            reorder_ratio=config.reorder_ratio,
            mask_id=self.num_items,
        )

    def item_vectors(self) -> torch.Tensor:
        """Rows 0..num_items-1 of the output table (the input table's [mask] row is never an output)."""
        return super().item_vectors()[: self.num_items]

    def next_item_loss(self, hidden: torch.Tensor, target: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """SASRec's loss at every position that has a target."""
        valid = target != 0
        if not bool(valid.any()):
            return hidden.sum() * 0.0
        return self.ranking_loss(hidden[valid], target[valid], users=users[:, None].expand_as(target)[valid])

    def augmented_views(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-position representations [B, d] of two augmentations of ``seq`` (one encoder pass)."""
        views = torch.cat([self.augmenter(seq), self.augmenter(seq)])
        (views,) = trim_left_padding(views)
        return self.encode(views)[:, -1].chunk(2)

    def contrastive_term(
        self, seq: torch.Tensor, hidden: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """lambda times the NT-Xent between two augmented views of each sequence. ``seq``: the
        untrimmed input [B, max_seq_len]; ``hidden``: the main pass's hidden states."""
        c = self.config
        view1, view2 = self.augmented_views(seq)
        return c.cl_weight * pair_contrast(view1, view2, c.cl_temperature, c.cl_similarity)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Whole-sequence next-item loss plus the contrastive term."""
        full_seq = batch["seq"][:, -self.max_seq_len :]
        seq, target = trim_left_padding(full_seq, batch["target"][:, -self.max_seq_len :])
        hidden = self.encode(seq)
        loss = self.next_item_loss(hidden, target, batch["user"])
        if self.config.cl_weight > 0:
            loss = loss + self.contrastive_term(full_seq, hidden, batch)
        return loss
