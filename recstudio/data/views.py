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

from recstudio.data.dataset import PreparedData, csr_rows
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


class TripletDataset(BaseView):
    """One sample per training interaction: ``user``, ``item``, ``rating`` (float) [B], and
    ``neg_item`` [B, K] when ``static_negatives=K > 0``.

    Static negatives are drawn once, uniformly from items 1..num_items-1 (never padding id 0) and
    never one of the row's user's training items (redrawn until they are not, as the samplers do
    for fresh negatives; a user with every item keeps the last draw).
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
        train = data.train
        label = getattr(train, "label", None)
        if label is not None:  # labelled data: the positives are the interactions to rank
            keep = label > 0.5
            user, item, rating = train.user[keep], train.item[keep], train.rating[keep]
        else:
            user, item, rating = train.user, train.item, train.rating
        super().__init__(int(user.numel()), batch_size, seed, rank, world_size)
        self.user, self.item, self.rating = user, item, rating.float()
        self.neg_item: torch.Tensor | None = None
        if static_negatives < 0:
            raise ConfigError(f"static_negatives must be >= 0, got {static_negatives}")
        if static_negatives:
            if data.num_items < 2:
                raise DataError(f"dataset '{data.name}' has no items to draw negatives from")
            generator = torch.Generator().manual_seed(seed + _NEGATIVE_SEED_OFFSET)
            self.neg_item = _negatives_outside(
                self.user, self.item, data.num_items, static_negatives, generator
            )

    def _batch(self, index: torch.Tensor) -> Batch:
        batch = {"user": self.user[index], "item": self.item[index], "rating": self.rating[index]}
        if self.neg_item is not None:
            batch["neg_item"] = self.neg_item[index]
        return batch

    def _row_nbytes(self) -> int:
        columns = [self.user, self.item, self.rating] + ([self.neg_item] if self.neg_item is not None else [])
        return sum(c[:1].nbytes for c in columns)


def _negatives_outside(
    user: torch.Tensor, item: torch.Tensor, num_items: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """[N, k] uniform item ids, none of them one of its row's user's items (rejection rounds
    over the sorted (user, item) keys; load-time work, not a per-step path)."""
    keys = torch.unique(user * num_items + item)
    neg = torch.randint(1, num_items, (user.numel(), k), generator=generator)
    for _ in range(64):
        query = user[:, None] * num_items + neg
        pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        hits = keys[pos] == query
        if not bool(hits.any()):
            break
        fresh = torch.randint(1, num_items, neg.shape, generator=generator)
        neg = torch.where(hits, fresh, neg)
    return neg


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
        batch_pos, flat = csr_rows(self.indptr, users)
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
    target means no target), ``seq_len`` [B] = min(n - 1, L), ``user`` [B].

    ``chunk_len`` C makes samples of C consecutive positions instead (a user's most recent
    target last in its last chunk; ``seq_len`` is then the chunk's number of inputs; ``max_len``
    None: every position of every user): batches mix chunks of many users, so a user's own
    parameters are stepped several times per epoch, as per-prefix training does. With
    ``context_len`` K = 0 a chunk holds nothing left of its targets (first-order models such as
    FPMC: position t reads s_t alone); K > 0 prefixes each chunk with the K inputs before it,
    with no target there (samples of K + C positions): every target is trained exactly once,
    after at least K items of history where the user has them, as RecBole's per-prefix
    instances of at most K + C items are. Built from the interaction rows directly, without a
    [users, longest sequence] table.
    """

    def __init__(
        self,
        data: PreparedData,
        batch_size: int,
        seed: int,
        max_len: int | None = 50,
        rank: int = 0,
        world_size: int = 1,
        chunk_len: int | None = None,
        context_len: int = 0,
    ) -> None:
        if max_len is not None and max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
        if chunk_len is not None and chunk_len < 1:
            raise ConfigError(f"chunk_len must be >= 1, got {chunk_len}")
        if max_len is None and chunk_len is None:
            raise ConfigError("max_len None (every position) needs chunk_len")
        if context_len < 0 or (context_len and chunk_len is None):
            raise ConfigError(f"context_len must be >= 0 and needs chunk_len, got {context_len}")
        _, counts, from_end = _positions_from_end(data)
        if chunk_len is not None:
            self._chunks(data, counts, from_end, max_len, chunk_len, context_len)
            super().__init__(len(self.users), batch_size, seed, rank, world_size)
            return
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

    def _chunks(
        self,
        data: PreparedData,
        counts: torch.Tensor,
        from_end: torch.Tensor,
        max_len: int | None,
        size: int,
        context: int = 0,
    ) -> None:
        """(user, chunk) samples of ``context + size`` positions. Chunk c of a user holds the
        targets with positions from the end f in [c size, c size + size) (f <= n - 2: not the
        user's first item; f < ``max_len``). The input of target f is the item at g = f + 1; an
        input row g sits in every chunk c with c size < g <= c size + size + context, at column
        context + size - g + c size, with a target where g <= c size + size (its own chunk's
        targets) and none in the context columns before them."""
        user, item = data.train.user, data.train.item
        last_target = counts[user] - 2  # per row: its user's oldest target, counted from the end
        if max_len is not None:
            last_target = last_target.clamp(max=max_len - 1)
        has_input = from_end >= 1
        home = torch.div(from_end - 1, size, rounding_mode="floor")  # the chunk of its own target
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for back in range((size + context - 1) // size + 1):  # chunks an input can precede
            chunk = home - back
            inside = has_input & (chunk >= 0) & (from_end <= chunk * size + size + context)
            inside &= chunk * size <= last_target  # the chunk has a target
            rows = torch.nonzero(inside).flatten()
            parts.append((rows, chunk[rows]))
        index = torch.cat([rows for rows, _ in parts])
        chunk = torch.cat([c for _, c in parts])
        key = user[index].long() * (int(chunk.max()) + 1 if len(index) else 1) + chunk
        rows, slot = torch.unique(key, return_inverse=True)  # sorted: users in order, chunks within
        g = from_end[index]
        column = context + size - g + chunk * size
        self.seq = torch.zeros(len(rows), context + size, dtype=torch.long)
        self.target = torch.zeros(len(rows), context + size, dtype=torch.long)
        self.seq[slot, column] = item[index]
        trained = (g <= chunk * size + size) & (g - 1 <= last_target[index])
        self.target[slot[trained], column[trained]] = item[index[trained] + 1]
        self.users = torch.zeros(len(rows), dtype=user.dtype).index_put_((slot,), user[index])
        self.seq_len = (self.seq > 0).sum(1)

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


class PointwiseDataset(BaseView):
    """One sample per labelled training row: ``user``, ``item`` [B], ``label`` float [B] (0/1),
    and each interaction context field as ``ctx.<name>`` int64 codes [B]. Needs labelled data
    (``data.label``); the rows are every kept interaction, positive or not."""

    def __init__(
        self, data: PreparedData, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        train = data.train
        if getattr(train, "label", None) is None:
            raise DataError(
                f"dataset '{data.name}' has no labels: pointwise training needs a label rule "
                "(set data.label, e.g. 'rating >= 4', or a 'labels:' rule in the dataset spec)"
            )
        super().__init__(len(train), batch_size, seed, rank, world_size)
        self.columns = {"user": train.user, "item": train.item, "label": train.label.float()}
        for name, codes in (getattr(train, "context", None) or {}).items():
            self.columns[f"ctx.{name}"] = codes

    def _batch(self, index: torch.Tensor) -> Batch:
        return {k: v[index] for k, v in self.columns.items()}

    def _row_nbytes(self) -> int:
        return sum(c[:1].nbytes for c in self.columns.values())


class KGDataset(BaseView):
    """One sample per knowledge-graph triple: ``head``, ``relation``, ``tail`` [B] and
    ``neg_tail`` [B, K], K = ``num_negatives`` entities drawn uniformly per batch (a corrupted
    tail, as in TransE/TransR training; a draw may hit a true tail, with probability about the
    head's out-degree over the number of entities)."""

    def __init__(
        self,
        data: PreparedData,
        batch_size: int,
        seed: int,
        num_negatives: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        kg = getattr(data, "kg", None)
        if kg is None:
            raise DataError(f"dataset '{data.name}' has no knowledge graph loaded")
        if num_negatives < 1:
            raise ConfigError(f"kg view: num_negatives must be >= 1, got {num_negatives}")
        super().__init__(int(kg.head.numel()), batch_size, seed, rank, world_size)
        self.head, self.relation, self.tail = kg.head, kg.relation, kg.tail
        self.num_entities = int(kg.num_entities)
        self.num_negatives = num_negatives

    def _batch(self, index: torch.Tensor) -> Batch:
        return {"head": self.head[index], "relation": self.relation[index], "tail": self.tail[index]}

    def _row_nbytes(self) -> int:
        return 3 * self.head[:1].nbytes

    def __iter__(self) -> Iterator[Batch]:
        for batch in super().__iter__():
            n = batch["head"].shape[0]
            batch["neg_tail"] = torch.randint(1, self.num_entities, (n, self.num_negatives))
            yield batch


VIEWS: dict[str, type[BaseView]] = {
    "triplet": TripletDataset,
    "pointwise": PointwiseDataset,
    "user": UserDataset,
    "seq": SeqDataset,
    "seq2seq": Seq2SeqDataset,
    "als": ALSDataset,
    "kg": KGDataset,
}


def build_view(
    name: str,
    data: PreparedData,
    batch_size: int,
    seed: int,
    *,
    static_negatives: int = 0,
    max_len: int | None = 50,
    chunk_len: int | None = None,
    context_len: int = 0,
    num_negatives: int = 1,
    rank: int = 0,
    world_size: int = 1,
) -> BaseView:
    """A training view by name (see ``VIEWS``).

    Options a view does not use are ignored (``static_negatives`` only applies to ``triplet``,
    ``max_len`` to ``seq`` and ``seq2seq``, ``chunk_len`` and ``context_len`` to ``seq2seq``,
    ``num_negatives`` to ``kg``).
    """
    if name not in VIEWS:
        raise ConfigError(f"unknown dataset view '{name}'; views are: {', '.join(VIEWS)}")
    common = {"rank": rank, "world_size": world_size}
    if name == "triplet":
        return TripletDataset(data, batch_size, seed, static_negatives=static_negatives, **common)
    if name == "seq":
        return SeqDataset(data, batch_size, seed, max_len=max_len, **common)
    if name == "seq2seq":
        return Seq2SeqDataset(
            data, batch_size, seed, max_len=max_len, chunk_len=chunk_len, context_len=context_len, **common
        )
    if name == "kg":
        return KGDataset(data, batch_size, seed, num_negatives=num_negatives, **common)
    return VIEWS[name](data, batch_size, seed, **common)


class InputMix(IterableDataset):
    """Several named training views as one epoch of batches (``DataContract.alternate``).

    - ``zip``: one dict per step holding a batch of every view, the first view's keys as they
      are and the others' as ``"<name>.<key>"``;
    - ``step``: the views' batches in turns, each dict tagged ``"input": name``;
    - ``epoch``: every batch of the first view, then of the second..., tagged the same way.

    In ``zip`` and ``step`` the epoch is as long as the longest view; a shorter one starts over
    (with its next seeded permutation) when it runs out.
    """

    def __init__(self, views: dict[str, BaseView], alternate: str) -> None:
        super().__init__()
        if alternate not in ("zip", "step", "epoch"):
            raise ConfigError(f"alternate must be zip, step or epoch, got {alternate!r}")
        self.views = views
        self.alternate = alternate
        self.names = list(views)

    def set_epoch(self, epoch: int) -> None:
        for view in self.views.values():
            view.set_epoch(epoch)

    def __len__(self) -> int:
        lengths = [len(v) for v in self.views.values()]
        if self.alternate == "zip":
            return max(lengths)
        if self.alternate == "step":
            return max(lengths) * len(lengths)
        return sum(lengths)

    def _cycle(self, name: str, steps: int) -> Iterator[Batch]:
        view, done = self.views[name], 0
        while done < steps:
            produced = 0
            for batch in view:
                yield batch
                produced += 1
                done += 1
                if done == steps:
                    return
            if produced == 0:  # an empty view cannot fill the epoch
                return

    def __iter__(self) -> Iterator[Batch]:
        steps = max(len(v) for v in self.views.values())
        if self.alternate == "epoch":
            for name in self.names:
                for batch in self.views[name]:
                    yield {**batch, "input": name}
            return
        streams = {name: self._cycle(name, steps) for name in self.names}
        for _ in range(steps):
            parts = {name: next(stream, None) for name, stream in streams.items()}
            if self.alternate == "zip":
                first, *rest = self.names
                if parts[first] is None:
                    return
                merged = dict(parts[first])
                for name in rest:
                    for key, value in (parts[name] or {}).items():
                        merged[f"{name}.{key}"] = value
                yield merged
            else:
                for name in self.names:
                    if parts[name] is not None:
                        yield {**parts[name], "input": name}


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
