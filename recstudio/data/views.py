"""Training views over a PreparedData: iterables of CPU tensor batches, one per model ``view``.

Every view prebuilds its tensors once (from the train split, which is sorted by user and time)
and yields batches that are index slices of a seeded permutation: epoch e uses the permutation
drawn from ``seed + e`` (the counter advances on each ``iter()``; ``set_epoch`` sets it, as
Lightning/DDP samplers do). No Python loop runs per sample or per user.

Under DDP (``world_size > 1``) each rank takes every ``world_size``-th index of the same epoch
permutation after trimming it to a multiple of ``world_size``, so the ranks see disjoint shares of
equal size (and the same number of batches); the trimmed remainder (< world_size rows) changes
every epoch.

Use a view directly, or wrap it as ``DataLoader(view, batch_size=None)`` with ``num_workers=0``
(batches are already built; worker processes would each replay the whole epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset

from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError, DataError

Batch = dict[str, torch.Tensor]

EPOCH_GATHER_LIMIT = 256 << 20
"""Largest epoch (bytes) a row-aligned view gathers at once; larger ones build batch by batch."""

_NEGATIVE_SEED_OFFSET = 1 << 31
"""Static negatives use ``seed + 2**31`` so their stream differs from the epoch permutations."""


class BaseView(IterableDataset):
    """Shared permutation, sharding and batching; subclasses define ``_batch(index)``."""

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def shard_size(self) -> int:
        return self.num_rows // self.world_size

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's row indices for ``epoch``, in the epoch's seeded order."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.num_rows, generator=generator)
        return perm[: self.shard_size * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Batch]:
        index = self.epoch_indices(self.epoch)
        self.epoch += 1
        row_bytes = self._row_nbytes()
        if row_bytes is not None and row_bytes * len(index) <= EPOCH_GATHER_LIMIT:
            # One gather per column for the whole epoch, then contiguous slices: a step's batch
            # gather was three small random reads into cold memory, ~0.1 ms each on the 2-core
            # machine, against ~1 ms per epoch this way. Same batches, same order.
            rows = self._batch(index)
            for start in range(0, len(index), self.batch_size):
                yield {k: v[start : start + self.batch_size] for k, v in rows.items()}
            return
        for start in range(0, len(index), self.batch_size):
            yield self._batch(index[start : start + self.batch_size])

    def _batch(self, index: torch.Tensor) -> Batch:
        raise NotImplementedError

    def _row_nbytes(self) -> int | None:
        """Bytes per sample when ``_batch`` only gathers row-aligned columns (so a whole epoch can
        be gathered at once and sliced), else None (batches are built one by one)."""
        return None


def _gather_rows(indptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For CSR ``indptr`` and selected ``rows``: (batch position, flat position) of every entry."""
    start, count = indptr[rows], indptr[rows + 1] - indptr[rows]
    batch_pos = torch.repeat_interleave(torch.arange(len(rows)), count)
    first = torch.cumsum(count, 0) - count
    offset = torch.arange(int(count.sum())) - torch.repeat_interleave(first, count)
    return batch_pos, torch.repeat_interleave(start, count) + offset


class TripletDataset(BaseView):
    """One sample per training interaction: ``user``, ``item``, ``rating`` (float) [B], and
    ``neg_item`` [B, K] when ``static_negatives=K > 0``.

    Static negatives are drawn once, uniformly from items 1..num_items-1 with ``torch.randint``
    (never padding id 0). They are not checked against the user's positives, so a negative can
    collide with a positive (probability ~ the user's share of items); samplers that must exclude
    positives draw fresh negatives per batch instead.
    """

    def __init__(
        self,
        data: PreparedData,
        batch_size: int,
        seed: int,
        static_negatives: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(len(data.train), batch_size, seed, rank, world_size)
        self.user, self.item, self.rating = data.train.user, data.train.item, data.train.rating.float()
        self.neg_item: torch.Tensor | None = None
        if static_negatives < 0:
            raise ConfigError(f"static_negatives must be >= 0, got {static_negatives}")
        if static_negatives:
            if data.num_items < 2:
                raise DataError(f"dataset '{data.name}' has no items to draw negatives from")
            generator = torch.Generator().manual_seed(seed + _NEGATIVE_SEED_OFFSET)
            self.neg_item = torch.randint(
                1, data.num_items, (len(data.train), static_negatives), generator=generator
            )

    def _batch(self, index: torch.Tensor) -> Batch:
        batch = {"user": self.user[index], "item": self.item[index], "rating": self.rating[index]}
        if self.neg_item is not None:
            batch["neg_item"] = self.neg_item[index]
        return batch

    def _row_nbytes(self) -> int:
        columns = [self.user, self.item, self.rating] + ([self.neg_item] if self.neg_item is not None else [])
        return sum(c[:1].nbytes for c in columns)


class UserDataset(BaseView):
    """One sample per user with training items: ``user`` [B] and ``history`` float [B, num_items],
    the multi-hot of the user's training items, built per batch from CSR offsets."""

    def __init__(
        self, data: PreparedData, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.indptr, self.items = data.train.csr(data.num_users)
        self.users = torch.nonzero(self.indptr[1:] > self.indptr[:-1]).flatten()
        self.num_items = data.num_items
        super().__init__(len(self.users), batch_size, seed, rank, world_size)

    def _batch(self, index: torch.Tensor) -> Batch:
        users = self.users[index]
        batch_pos, flat = _gather_rows(self.indptr, users)
        history = torch.zeros(len(users), self.num_items)
        history[batch_pos, self.items[flat]] = 1.0
        return {"user": users, "history": history}


def _positions_from_end(data: PreparedData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indptr, per-user train counts, per-row position counted from the user's last row: 0 = last)."""
    indptr, _ = data.train.csr(data.num_users)
    counts = indptr[1:] - indptr[:-1]
    user = data.train.user
    from_end = indptr[user + 1] - 1 - torch.arange(len(user))
    return indptr, counts, from_end


class SeqDataset(BaseView):
    """One sample per user with training items: ``user`` [B], ``seq`` [B, L] holding the last
    ``max_len`` training items left-padded with 0 (most recent last), ``seq_len`` [B]."""

    def __init__(
        self,
        data: PreparedData,
        batch_size: int,
        seed: int,
        max_len: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
        _, counts, from_end = _positions_from_end(data)
        self.users = torch.nonzero(counts).flatten()
        row_of = torch.full((data.num_users,), -1, dtype=torch.long)
        row_of[self.users] = torch.arange(len(self.users))
        keep = from_end < max_len
        self.seq = torch.zeros(len(self.users), max_len, dtype=torch.long)
        self.seq[row_of[data.train.user[keep]], max_len - 1 - from_end[keep]] = data.train.item[keep]
        self.seq_len = counts[self.users].clamp(max=max_len)
        super().__init__(len(self.users), batch_size, seed, rank, world_size)

    def _batch(self, index: torch.Tensor) -> Batch:
        return {"user": self.users[index], "seq": self.seq[index], "seq_len": self.seq_len[index]}


class Seq2SeqDataset(BaseView):
    """One sample per user with at least 2 training items: ``seq`` [B, L] = s_1..s_{n-1} and
    ``target`` [B, L] = s_2..s_n (each the last ``max_len`` positions, left-padded with 0; a 0
    target means no target), ``seq_len`` [B] = min(n - 1, L), ``user`` [B]."""

    def __init__(
        self,
        data: PreparedData,
        batch_size: int,
        seed: int,
        max_len: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
        _, counts, from_end = _positions_from_end(data)
        self.users = torch.nonzero(counts >= 2).flatten()
        row_of = torch.full((data.num_users,), -1, dtype=torch.long)
        row_of[self.users] = torch.arange(len(self.users))
        user, item = data.train.user, data.train.item
        row = row_of[user]
        eligible = row >= 0
        n = counts[user]
        self.seq = torch.zeros(len(self.users), max_len, dtype=torch.long)
        self.target = torch.zeros(len(self.users), max_len, dtype=torch.long)
        as_input = eligible & (from_end >= 1) & (from_end <= max_len)  # s_1..s_{n-1}
        self.seq[row[as_input], max_len - from_end[as_input]] = item[as_input]
        as_target = eligible & (from_end <= n - 2) & (from_end < max_len)  # s_2..s_n
        self.target[row[as_target], max_len - 1 - from_end[as_target]] = item[as_target]
        self.seq_len = (counts[self.users] - 1).clamp(max=max_len)
        super().__init__(len(self.users), batch_size, seed, rank, world_size)

    def _batch(self, index: torch.Tensor) -> Batch:
        return {
            "user": self.users[index],
            "seq": self.seq[index],
            "target": self.target[index],
            "seq_len": self.seq_len[index],
        }


class ALSDataset(BaseView):
    """Alternating blocks for ALS: every epoch yields all user blocks (``side`` = 0), then all
    item blocks (``side`` = 1); ``ids`` [b] are user or item ids 1..n-1 in a seeded order. Under
    DDP both id ranges are sharded like rows (see the module docstring)."""

    def __init__(
        self, data: PreparedData, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.user_view = _IdBlocks(data.num_users - 1, batch_size, seed, rank, world_size)
        self.item_view = _IdBlocks(
            data.num_items - 1, batch_size, seed + _NEGATIVE_SEED_OFFSET, rank, world_size
        )
        super().__init__(
            self.user_view.num_rows + self.item_view.num_rows, batch_size, seed, rank, world_size
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.user_view) + len(self.item_view)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        for side, view in ((0, self.user_view), (1, self.item_view)):
            index = view.epoch_indices(epoch) + 1  # ids start at 1
            for start in range(0, len(index), self.batch_size):
                yield {"side": torch.tensor(side), "ids": index[start : start + self.batch_size]}


class _IdBlocks(BaseView):
    def _batch(self, index: torch.Tensor) -> Batch:  # pragma: no cover - ALSDataset iterates itself
        return {"ids": index + 1}


VIEWS: dict[str, type[BaseView]] = {
    "triplet": TripletDataset,
    "user": UserDataset,
    "seq": SeqDataset,
    "seq2seq": Seq2SeqDataset,
    "als": ALSDataset,
}


def build_view(
    name: str,
    data: PreparedData,
    batch_size: int,
    seed: int,
    *,
    static_negatives: int = 0,
    max_len: int = 50,
    rank: int = 0,
    world_size: int = 1,
) -> BaseView:
    """The training view a model declares (``triplet``, ``user``, ``seq``, ``seq2seq``, ``als``).

    Options a view does not use are ignored (``static_negatives`` only applies to ``triplet``,
    ``max_len`` to ``seq`` and ``seq2seq``).
    """
    if name not in VIEWS:
        raise ConfigError(f"unknown dataset view '{name}'; views are: {', '.join(VIEWS)}")
    common = {"rank": rank, "world_size": world_size}
    if name == "triplet":
        return TripletDataset(data, batch_size, seed, static_negatives=static_negatives, **common)
    if name in ("seq", "seq2seq"):
        return VIEWS[name](data, batch_size, seed, max_len=max_len, **common)
    return VIEWS[name](data, batch_size, seed, **common)


class StepGroups(IterableDataset):
    """Consecutive batches of a view, ``steps`` at a time, as lists: one Lightning batch each.

    Lightning's loop costs ~0.4 ms per batch on the 2-core CPU (data fetcher, hooks, progress
    bookkeeping), a quarter of a BPR step on ml-1m. A model whose ``training_step`` takes a list
    makes one optimizer step per element, so the batches, their order and the optimizer steps are
    exactly those of the ungrouped view; only Lightning's per-batch work runs ``steps`` times less.
    """

    def __init__(self, view: BaseView, steps: int) -> None:
        super().__init__()
        if steps < 1:
            raise ConfigError(f"steps per group must be >= 1, got {steps}")
        self.view = view
        self.steps = steps

    def set_epoch(self, epoch: int) -> None:
        self.view.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.view) / self.steps)

    def __iter__(self) -> Iterator[list[Batch]]:
        group: list[Batch] = []
        for batch in self.view:
            group.append(batch)
            if len(group) == self.steps:
                yield group
                group = []
        if group:
            yield group
