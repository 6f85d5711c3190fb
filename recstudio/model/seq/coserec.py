"""CoSeRec: contrastive self-supervised sequential recommendation with robust augmentation (Liu,
Chen, Xiong, Li, Wang, McAuley, Yu; arXiv 2108.06479, 2021, "Contrastive Self-supervised
Sequential Recommendation with Robust Augmentation").

CL4SRec (``recstudio.model.seq.cl4srec``) with two informative augmentations added to crop, mask
and reorder, both driven by item correlation:

- substitute: a share of the items is replaced by a highly correlated item;
- insert: a highly correlated item is inserted before a share of the items.

Each view of each sequence applies one of the five at random; sequences of at most
``augment_threshold`` items choose among insert, substitute and mask only (the authors' ``SIM``
rule for short sequences, which cropping or reordering would destroy). The correlation is the
authors' offline ItemCF-IUF similarity computed once from the training interactions, kept as each
item's most similar item (``recstudio.model.augment.itemcf_iuf_neighbours``). The contrast is
CL4SRec's NT-Xent over the 2N views (lambda = 0.1 as in the authors' code; cosine at temperature
0.2 by default where their code uses the dot product at temperature 1, see ``cl4srec``); default
ratios crop 0.2, mask 0.7, reorder 0.2, substitute 0.1, insert 0.4 and threshold 4
are the authors' code defaults.

Departures from the paper, on purpose: training is whole-sequence (as ``SASRec``) with a
full-softmax next-item loss by default and the contrast runs on each user's whole training
sequence; the paper's hybrid correlation (switching to the model's own item-embedding similarity
after a warm-up) is not implemented: the ItemCF-IUF table stays fixed. The mask augmentation uses
a dedicated [mask] token (the authors' code masks with the padding id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.augment import SequenceAugmenter, itemcf_iuf_neighbours
from recstudio.model.registry import register
from recstudio.model.seq.cl4srec import CL4SRec, CL4SRecConfig, _ratio


@dataclass
class CoSeRecConfig(CL4SRecConfig):
    """CoSeRec's hyperparameters: CL4SRec's plus the informative augmentations' ratios."""

    ranges: ClassVar[dict[str, str]] = {
        "substitute_ratio": "[0, 1]",
        "insert_ratio": "[0, 1]",
        "augment_threshold": ">= 0",
    }

    crop_ratio: float = 0.2
    mask_ratio: float = 0.7
    reorder_ratio: float = 0.2
    substitute_ratio: float = 0.1
    """Share of a sequence's items replaced by their most correlated item (at least one)."""
    insert_ratio: float = 0.4
    """Share of a sequence's items before which their most correlated item is inserted (at least one)."""
    augment_threshold: int = 4
    """Sequences of at most this many items use only insert, substitute and mask (0: never)."""

    def validate(self) -> None:
        super().validate()
        _ratio(self, "substitute_ratio")
        _ratio(self, "insert_ratio")
        if self.augment_threshold < 0:
            raise ConfigError(
                f"config key 'model.augment_threshold' must be >= 0, got {self.augment_threshold}"
            )


@register
class CoSeRec(CL4SRec):
    """CL4SRec with correlation-based substitute and insert augmentations (ItemCF-IUF neighbours)."""

    Config = CoSeRecConfig
    description = "Contrastive sequential recommendation with robust augmentation (Liu et al., 2021)"
    search_space = {
        **CL4SRec.search_space,
        "substitute_ratio": {"type": "float", "low": 0.1, "high": 0.9},
        "insert_ratio": {"type": "float", "low": 0.1, "high": 0.9},
    }
    augmentations: ClassVar[tuple[str, ...]] = ("crop", "mask", "reorder", "substitute", "insert")

    def build_augmenter(self, config: CoSeRecConfig, data: PreparedData) -> SequenceAugmenter:
        """All five augmentations, the short-sequence rule, and the ItemCF-IUF neighbour table."""
        similar = itemcf_iuf_neighbours(data.train.user, data.train.item, self.num_users, self.num_items)
        return SequenceAugmenter(
            self.augmentations,
            crop_ratio=config.crop_ratio,
            mask_ratio=config.mask_ratio,
            reorder_ratio=config.reorder_ratio,
            substitute_ratio=config.substitute_ratio,
            insert_ratio=config.insert_ratio,
            mask_id=self.num_items,
            similar=similar[:, 0],
            short_threshold=config.augment_threshold,
            short_methods=("insert", "substitute", "mask"),
        )
