"""The prepared dataset: what preprocessing produces, the cache stores, and views read.

Id convention: users and items are remapped to contiguous ids starting at 1; id 0 is padding
(sequences are padded with 0, and evaluation never recommends item 0). ``num_users`` and
``num_items`` count the padding id, so they are valid embedding table sizes.

Each split's rows are sorted by (user, time) with ties in file order, so a user's rows are a
contiguous, chronological block: sequences and CSR offsets come from it without sorting again.

Besides the interactions, a prepared dataset may carry typed relation parts, each remapped to the
same vocabularies and loaded only when asked for (``prepare(..., parts=("kg", "social"))``):

- ``kg``: a ``KnowledgeGraph`` of (head, relation, tail) entity triples plus the item -> entity
  links; entity and relation ids start at 1 (0 is padding), like users and items.
- ``social``: a ``SocialGraph`` of user -> user links over the user ids of the interactions.

Labels (``data.label``) and interaction context fields (the spec's ``interactions.fields``) are
columns of the splits themselves: ``Interactions.label`` and ``Interactions.context``.
Everything a model reads is a CPU tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def csr_rows(indptr: torch.Tensor, owners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand the CSR lists of ``owners`` [n] (``indptr`` [N+1]): (row [m], index [m]) with
    ``index`` running over owner ``owners[row]``'s entries, all lists back to back."""
    lengths = indptr[owners + 1] - indptr[owners]
    row = torch.repeat_interleave(torch.arange(owners.numel(), device=owners.device), lengths)
    offset = torch.arange(row.numel(), device=owners.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    return row, torch.repeat_interleave(indptr[owners], lengths) + offset


@dataclass
class Interactions:
    """One split as parallel 1-D tensors (length N), sorted by (user, time, file order).

    ``label`` (float32 0/1, None when the data is unlabelled) and ``context`` (int64 codes per
    row, 0 = unknown; one entry per interaction context field) are optional trailing fields, so
    ``Interactions(user, item, rating, time)`` builds an unlabelled split.
    """

    user: torch.Tensor  # int64
    item: torch.Tensor  # int64
    rating: torch.Tensor  # float32 (1.0 where binarized; the raw value when labelled)
    time: torch.Tensor  # float64 timestamps, or the file row order when there is no time column
    label: torch.Tensor | None = None  # float32 0/1, or None
    context: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> int64 codes [N]

    def __len__(self) -> int:
        return int(self.user.numel())

    def csr(self, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indptr [num_users+1], items [N]) of this split, user-major (rows are already sorted)."""
        counts = torch.bincount(self.user, minlength=num_users)
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=indptr[1:])
        return indptr, self.item

    def take(self, index: torch.Tensor) -> Interactions:
        """The rows at ``index`` (an int64 index or a bool mask), every column alike."""
        return Interactions(
            self.user[index],
            self.item[index],
            self.rating[index],
            self.time[index],
            self.label[index] if self.label is not None else None,
            {name: codes[index] for name, codes in self.context.items()},
        )

    @staticmethod
    def concat(parts: list[Interactions]) -> Interactions:
        """Concatenate splits and restore (user, time, order) sorting with a stable sort.

        The label is kept when every part has one; context fields that every part has are kept.
        """
        user = torch.cat([p.user for p in parts])
        time = torch.cat([p.time for p in parts])
        order = torch.argsort(time, stable=True)
        order = order[torch.argsort(user[order], stable=True)]
        label = None
        if parts and all(p.label is not None for p in parts):
            label = torch.cat([p.label for p in parts])[order]  # type: ignore[misc]
        names = [n for n in (parts[0].context if parts else {}) if all(n in p.context for p in parts)]
        return Interactions(
            user[order],
            torch.cat([p.item for p in parts])[order],
            torch.cat([p.rating for p in parts])[order],
            time[order],
            label,
            {n: torch.cat([p.context[n] for p in parts])[order] for n in names},
        )


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
class KnowledgeGraph:
    """Entity triples and the item -> entity links, remapped (id 0 is padding everywhere).

    ``head``/``relation``/``tail`` are int64 [T] with entity ids 1..num_entities-1 and relation
    ids 1..num_relations-1, in file order (exact duplicate triples dropped). ``item_entity`` is
    int64 [num_items]: the entity of each item id, 0 for items without one (and for padding).
    Entities that are not items are kept. ``entity_vocab``/``relation_vocab`` hold the raw id of
    each internal id (index 0 is None); ids follow the sorted raw ids.
    """

    head: torch.Tensor
    relation: torch.Tensor
    tail: torch.Tensor
    num_entities: int
    num_relations: int
    item_entity: torch.Tensor
    entity_vocab: list[Any]
    relation_vocab: list[Any]

    def __len__(self) -> int:
        return int(self.head.numel())

    def triples(self) -> torch.Tensor:
        """int64 [T, 3]: (head, relation, tail) per row."""
        return torch.stack([self.head, self.relation, self.tail], dim=1)

    def linked_items(self) -> torch.Tensor:
        """Item ids that have an entity, ascending (int64)."""
        return torch.nonzero(self.item_entity, as_tuple=True)[0]

    def summary(self) -> dict[str, int]:
        item_entities = self.item_entity[self.item_entity > 0]
        return {
            "triples": len(self),
            "entities": self.num_entities - 1,
            "relations": self.num_relations - 1,
            "linked_items": int(item_entities.numel()),
            "item_entities": int(torch.unique(item_entities).numel()),
        }


@dataclass
class SocialGraph:
    """User -> user links over the interactions' user ids, sorted by (source, target).

    ``weight`` is float32 (1.0 when the file has none). An undirected graph stores each link in
    both directions (``directed`` False), so models never symmetrise it; no self-loops, no
    duplicate (source, target) pairs.
    """

    source: torch.Tensor  # int64 [E]
    target: torch.Tensor  # int64 [E]
    weight: torch.Tensor  # float32 [E]
    directed: bool

    def __len__(self) -> int:
        return int(self.source.numel())

    def edge_index(self) -> torch.Tensor:
        """int64 [2, E]: sources in row 0, targets in row 1."""
        return torch.stack([self.source, self.target])

    def summary(self) -> dict[str, Any]:
        users = torch.unique(torch.cat([self.source, self.target]))
        links = len(self) if self.directed else len(self) // 2
        return {"links": links, "edges": len(self), "users": int(users.numel()), "directed": self.directed}


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
    kg: KnowledgeGraph | None = None
    """The knowledge graph, when asked for (``prepare(..., parts=("kg",))``)."""
    social: SocialGraph | None = None
    """The social graph, when asked for (``prepare(..., parts=("social",))``)."""
    context_cardinality: dict[str, int] = field(default_factory=dict)
    """Number of codes (including 0 = unknown) of each interaction context field."""

    @property
    def cache_key(self) -> str:
        return str(self.manifest.get("key", ""))

    @property
    def labelled(self) -> bool:
        """True when the splits carry 0/1 labels (``data.label`` was set)."""
        return all(s.label is not None for s in (self.train, self.valid, self.test))

    @property
    def has_ratings(self) -> bool:
        """True when the training rows carry rating values: some rating differs from 1.0 (the
        value every row gets when the data is binarised or has no rating column)."""
        return bool((self.train.rating != 1.0).any())

    def split(self, name: str) -> Interactions:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be train, valid or test, got {name!r}")
        return getattr(self, name)

    def positives(self, split: str = "train") -> Interactions:
        """The split's label-1 rows (every row when the data is unlabelled)."""
        inter = self.split(split)
        return inter if inter.label is None else inter.take(inter.label > 0.5)

    def item_popularity(self) -> torch.Tensor:
        """Training-set count per item id, float32 [num_items] (padding id 0 has count 0).

        Labelled data counts its label-1 rows only."""
        return torch.bincount(self.positives("train").item, minlength=self.num_items).float()

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

    def order(self) -> str:
        """What a user's row order follows: ``time`` (a timestamp column), ``position`` (sequence
        files: the position in each list) or ``file`` (no time: the order of the rows in the file,
        which sequential models and time-ordered splits then take for time)."""
        spec = self.manifest.get("spec") or {}
        sources = [spec.get("interactions"), *(spec.get("splits") or {}).values()]
        sources = [s for s in sources if s]
        if sources and all(s.get("kind") == "sequences" for s in sources):
            return "position"
        if sources and all("timestamp" in (s.get("roles") or {}) for s in sources):
            return "time"
        return "file" if sources else "unknown"

    def label_summary(self) -> dict[str, float | None] | None:
        """Share of label-1 rows per split (None when unlabelled, and for an empty split)."""
        if not self.labelled:
            return None
        out: dict[str, float | None] = {}
        for name in ("train", "valid", "test"):
            label = self.split(name).label
            assert label is not None
            out[name] = float(label.mean()) if label.numel() else None
        return out
