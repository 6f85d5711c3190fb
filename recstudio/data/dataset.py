"""The prepared dataset: what preprocessing produces, the cache stores, and views read.

Id convention: users and items are remapped to contiguous ids starting at 1; id 0 is padding
(sequences are padded with 0, and evaluation never recommends item 0). ``num_users`` and
``num_items`` count the padding id, so they are valid embedding table sizes.

Each split's rows are sorted by (user, time) with ties in file order, so a user's rows are a
contiguous, chronological block: sequences and CSR offsets come from it without sorting again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Interactions:
    """One split as parallel 1-D tensors (length N), sorted by (user, time, file order)."""

    user: torch.Tensor  # int64
    item: torch.Tensor  # int64
    rating: torch.Tensor  # float32 (1.0 where binarized)
    time: torch.Tensor  # float64 timestamps, or the file row order when there is no time column

    def __len__(self) -> int:
        return int(self.user.numel())

    def csr(self, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indptr [num_users+1], items [N]) of this split, user-major (rows are already sorted)."""
        counts = torch.bincount(self.user, minlength=num_users)
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=indptr[1:])
        return indptr, self.item

    @staticmethod
    def concat(parts: list[Interactions]) -> Interactions:
        """Concatenate splits and restore (user, time, order) sorting with a stable sort."""
        user = torch.cat([p.user for p in parts])
        item = torch.cat([p.item for p in parts])
        rating = torch.cat([p.rating for p in parts])
        time = torch.cat([p.time for p in parts])
        order = torch.argsort(time, stable=True)
        order = order[torch.argsort(user[order], stable=True)]
        return Interactions(user[order], item[order], rating[order], time[order])


@dataclass
class FeatureTable:
    """Side features of users or items, row i describing internal id i (row 0 is padding).

    ``categorical`` maps a field to int64 codes [num_rows] (0 = unknown/padding) and its
    cardinality; ``multi_hot`` maps a field to a float32 matrix [num_rows, width] (e.g. genres).
    """

    categorical: dict[str, torch.Tensor] = field(default_factory=dict)
    cardinality: dict[str, int] = field(default_factory=dict)
    multi_hot: dict[str, torch.Tensor] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.categorical and not self.multi_hot


@dataclass
class PreparedData:
    """A preprocessed, split dataset, loaded from (or written to) the parquet cache."""

    name: str
    num_users: int
    num_items: int
    train: Interactions
    valid: Interactions
    test: Interactions
    user_vocab: list[Any]
    """Raw user id of internal id i (index 0 is the padding placeholder)."""
    item_vocab: list[Any]
    user_features: FeatureTable = field(default_factory=FeatureTable)
    item_features: FeatureTable = field(default_factory=FeatureTable)
    manifest: dict[str, Any] = field(default_factory=dict)
    """Cache key, options, counts and provenance, as stored in manifest.json."""

    @property
    def cache_key(self) -> str:
        return str(self.manifest.get("key", ""))

    def item_popularity(self) -> torch.Tensor:
        """Training-set count per item id, float32 [num_items] (padding id 0 has count 0)."""
        return torch.bincount(self.train.item, minlength=self.num_items).float()

    def summary(self) -> dict[str, Any]:
        n_inter = len(self.train) + len(self.valid) + len(self.test)
        real_users, real_items = self.num_users - 1, self.num_items - 1
        return {
            "users": real_users,
            "items": real_items,
            "interactions": n_inter,
            "train": len(self.train),
            "valid": len(self.valid),
            "test": len(self.test),
            "density": n_inter / max(1, real_users * real_items),
        }
