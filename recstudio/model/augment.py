"""Sequence augmentations for contrastive sequential models, as batched tensor code.

Every function takes a left-padded id batch ``seq`` [B, L] (0 = padding, most recent item last)
and returns a new left-padded batch of the same shape; a row's real items stay right-aligned.
Random draws use ``generator`` (default: torch's global RNG), on the device of ``seq``. Nothing
loops over sequences: per-row lengths, offsets and chosen positions are tensors, and rows are
rebuilt with ``gather`` / ``scatter``. n below is a row's number of real items.

- ``crop`` (CL4SRec's item crop, ratio eta): a random contiguous run of max(1, floor(eta n))
  items.
- ``mask`` (item mask, ratio gamma): floor(gamma n) random positions replaced by ``mask_id``
  (an id the caller reserves, e.g. ``num_items``, an extra embedding row).
- ``reorder`` (item reorder, ratio beta): a random contiguous window of floor(beta n) items is
  shuffled; everything outside it stays put.
- ``substitute`` (CoSeRec, ratio): max(1, floor(ratio n)) random items are replaced by their
  most correlated item.
- ``insert`` (CoSeRec, ratio): before max(1, floor(ratio n)) random items, their most correlated
  item is inserted; the sequence grows, and what no longer fits (the oldest items) is dropped.
- ``choose``: one of several candidate augmentations per row (all candidates are computed, then
  one is gathered per row), optionally from a per-row allowed subset (CoSeRec's rule for short
  sequences).

References: Xie et al., "Contrastive Learning for Sequential Recommendation" (ICDE 2022) for
crop / mask / reorder; Liu et al., "Contrastive Self-supervised Sequential Recommendation with
Robust Augmentation" (arXiv 2108.06479, 2021) for substitute / insert.

Item correlation (``itemcf_iuf_neighbours``): CoSeRec's offline ItemCF-IUF similarity,
w_ij = sum_{u: i, j in S_u} 1 / log(1 + |S_u|) / sqrt(|N_i| |N_j|), computed once from the
training interactions as a sparse item-user product (in item chunks, so memory is bounded by
``chunk_elements`` whatever the catalogue size) and kept as a table of each item's top-k
neighbours [num_items, k]. An item with no co-occurring item is its own neighbour (substituting
or inserting it changes nothing about its identity). CoSeRec's optional switch to the model's own
embedding similarity after a warm-up is not implemented.
"""

from __future__ import annotations

import torch
from torch import nn

METHODS = ("crop", "mask", "reorder", "substitute", "insert")
"""Augmentation names ``SequenceAugmenter`` knows, in the order of its candidate stack."""


def lengths(seq: torch.Tensor) -> torch.Tensor:
    """Number of real (non-zero) items per row [B]."""
    return (seq != 0).sum(1)


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=like.device, generator=generator)


def _random_positions(
    seq: torch.Tensor, count: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Bool [B, L]: ``count[b]`` distinct real positions of each row, uniformly at random."""
    keys = _uniform(tuple(seq.shape), seq, generator).masked_fill(seq == 0, 2.0)
    rank = keys.argsort(1).argsort(1)  # rank of each position's key within its row
    return rank < count[:, None]


def crop(seq: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random contiguous sub-sequence of max(1, floor(ratio n)) items of each row."""
    batch, length = seq.shape
    n = lengths(seq)
    keep = (n.float() * ratio).floor().long().clamp(min=1)
    keep = torch.minimum(keep, n)
    offset = (_uniform((batch,), seq, generator) * (n - keep + 1).float()).floor().long()  # from the end
    offset = torch.minimum(offset, (n - keep).clamp(min=0))
    from_end = torch.arange(length - 1, -1, -1, device=seq.device)  # output column -> position from end
    source = (length - 1 - (offset[:, None] + from_end[None, :])).clamp(min=0)
    return torch.where(from_end[None, :] < keep[:, None], seq.gather(1, source), seq.new_zeros(()))


def mask(
    seq: torch.Tensor, ratio: float, mask_id: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """floor(ratio n) random real items of each row replaced by ``mask_id``."""
    count = (lengths(seq).float() * ratio).floor().long()
    chosen = _random_positions(seq, count, generator)
    return seq.masked_fill(chosen, mask_id)


def reorder(seq: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random contiguous window of floor(ratio n) items of each row, shuffled in place.

    Each column gets a sort key equal to its index; the window's columns get keys drawn
    uniformly in [start - 1/2, start + size - 1/2) instead, so sorting the keys keeps every item
    outside the window in place and permutes the window uniformly."""
    batch, length = seq.shape
    n = lengths(seq)
    size = (n.float() * ratio).floor().long()
    offset = (_uniform((batch,), seq, generator) * (n - size + 1).float()).floor().long()
    offset = torch.minimum(offset, (n - size).clamp(min=0))
    start = length - offset - size  # first column of the window
    cols = torch.arange(length, device=seq.device)[None, :].expand(batch, -1)
    inside = (cols >= start[:, None]) & (cols < (start + size)[:, None])
    jitter = _uniform((batch, length), seq, generator) * size[:, None].float()
    shuffled = start[:, None].float() - 0.5 + jitter
    keys = torch.where(inside, shuffled, cols.float())
    return seq.gather(1, keys.argsort(1))


def _neighbour(similar: torch.Tensor, items: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A correlated item of each id in ``items``: one of the k columns of ``similar`` at random."""
    if similar.dim() == 1:
        return similar[items]
    k = similar.shape[1]
    column = (_uniform(tuple(items.shape), items, generator) * k).floor().long().clamp(max=k - 1)
    return similar[items, column]


def substitute(
    seq: torch.Tensor, ratio: float, similar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """max(1, floor(ratio n)) random real items of each row replaced by a correlated item.

    ``similar``: [num_items] (each item's most correlated item) or [num_items, k] (one of its k
    neighbours, at random)."""
    n = lengths(seq)
    count = torch.minimum((n.float() * ratio).floor().long().clamp(min=1), n)
    chosen = _random_positions(seq, count, generator)
    return torch.where(chosen, _neighbour(similar, seq, generator), seq)


def insert(
    seq: torch.Tensor, ratio: float, similar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A correlated item inserted before max(1, floor(ratio n)) random real items of each row.

    Each real column takes 1 + (inserted before it) output slots; an item's output position
    counted from the end is the number of slots taken by the columns after it, its inserted
    neighbour the next one. Rows are scattered into a 2L-wide buffer whose last L columns are
    kept, so the oldest items of a row that outgrows L are dropped."""
    batch, length = seq.shape
    n = lengths(seq)
    count = torch.minimum((n.float() * ratio).floor().long().clamp(min=1), n)
    chosen = _random_positions(seq, count, generator)
    real = seq != 0
    slots = real.long() + chosen.long()
    after = slots.flip(1).cumsum(1).flip(1) - slots  # slots taken by later columns
    width = 2 * length
    item_col = torch.where(real, width - 1 - after, torch.zeros_like(after))
    new_col = torch.where(chosen, width - 2 - after, torch.zeros_like(after))
    out = seq.new_zeros(batch, width)
    # padding and non-inserted positions write 0 to column 0, which is always discarded; a real
    # item never shares a column with an inserted one
    out.scatter_(1, new_col, torch.where(chosen, _neighbour(similar, seq, generator), 0))
    out.scatter_(1, item_col, torch.where(real, seq, 0))
    return out[:, length:]


def choose(
    candidates: torch.Tensor, allowed: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One of A candidate batches [A, B, L] per row, uniformly at random (among ``allowed``
    [B, A] bool where given; every row needs at least one allowed candidate) -> [B, L]."""
    num, batch, _ = candidates.shape
    if allowed is None:
        pick = (_uniform((batch,), candidates, generator) * num).floor().long().clamp(max=num - 1)
    else:
        pick = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
    return candidates[pick, torch.arange(batch, device=candidates.device)]


@torch.no_grad()
def itemcf_iuf_neighbours(
    user: torch.Tensor,
    item: torch.Tensor,
    num_users: int,
    num_items: int,
    k: int = 1,
    chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """Top-k ItemCF-IUF neighbours [num_items, k] of every item from (user, item) rows (see the
    module docstring); row 0 (padding) and items without co-occurrences point to themselves."""
    k = max(1, min(k, num_items - 1))
    key = torch.unique(user.long() * num_items + item.long())  # each (user, item) pair once
    u, i = key // num_items, key % num_items
    per_user = torch.bincount(u, minlength=num_users).float()
    per_item = torch.bincount(i, minlength=num_items).float().clamp(min=1.0)
    iuf = 1.0 / torch.log1p(per_user[u])
    # item x user, IUF-weighted: co-occurrence of a chunk = item_user @ (chunk's user columns)
    item_user = torch.sparse_coo_tensor(
        torch.stack([i, u]), iuf, (num_items, num_users), check_invariants=True
    ).coalesce()
    order = torch.argsort(i, stable=True)
    i_sorted, u_sorted = i[order], u[order]
    bounds = torch.searchsorted(i_sorted, torch.arange(num_items + 1))
    chunk = max(1, chunk_elements // max(1, num_items, num_users))
    table = torch.arange(num_items)[:, None].repeat(1, k)
    for start in range(0, num_items, chunk):  # item chunks: bounded memory, not a per-item loop
        stop = min(num_items, start + chunk)
        lo, hi = int(bounds[start]), int(bounds[stop])
        users_of_chunk = torch.zeros(num_users, stop - start)
        users_of_chunk[u_sorted[lo:hi], i_sorted[lo:hi] - start] = 1.0
        co = torch.sparse.mm(item_user, users_of_chunk).T  # [c, num_items]
        co = co / (per_item[start:stop, None] * per_item[None, :]).sqrt()
        ids = torch.arange(start, stop)
        co[torch.arange(stop - start), ids] = -torch.inf  # never an item's own neighbour
        co[:, 0] = -torch.inf
        score, best = co.topk(k, dim=1)
        table[start:stop] = torch.where(score > 0, best, ids[:, None])
    table[0] = 0
    return table


class SequenceAugmenter(nn.Module):
    """One random augmentation per row from ``methods`` (names of ``METHODS``) at the given ratios.

    Rows with at most ``short_threshold`` real items choose among ``short_methods`` instead
    (CoSeRec: insert, substitute and mask for short sequences, since cropping or reordering two or
    three items destroys them). ``mask_id`` is needed for "mask", ``similar`` (a neighbour table,
    kept as a non-persistent buffer so it follows the model's device) for "substitute" and
    "insert"."""

    def __init__(
        self,
        methods: tuple[str, ...],
        crop_ratio: float = 0.6,
        mask_ratio: float = 0.3,
        reorder_ratio: float = 0.6,
        substitute_ratio: float = 0.1,
        insert_ratio: float = 0.4,
        mask_id: int | None = None,
        similar: torch.Tensor | None = None,
        short_threshold: int = 0,
        short_methods: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        unknown = [m for m in (*methods, *short_methods) if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"augmentations must be a non-empty subset of {METHODS}, got {methods}")
        used = set(methods) | set(short_methods if short_threshold > 0 else ())
        if "mask" in used and mask_id is None:
            raise ValueError("the mask augmentation needs a mask_id")
        if used & {"substitute", "insert"} and similar is None:
            raise ValueError("substitute and insert need an item correlation table (similar)")
        self.methods = tuple(methods)
        self.short_methods = tuple(short_methods) if short_threshold > 0 else ()
        self.short_threshold = short_threshold
        self.ratios = {
            "crop": crop_ratio,
            "mask": mask_ratio,
            "reorder": reorder_ratio,
            "substitute": substitute_ratio,
            "insert": insert_ratio,
        }
        self.mask_id = mask_id
        self.register_buffer("similar", similar, persistent=False)

    def apply(self, name: str, seq: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The augmentation ``name`` on every row of ``seq``."""
        ratio = self.ratios[name]
        if name == "crop":
            return crop(seq, ratio, generator)
        if name == "mask":
            return mask(seq, ratio, int(self.mask_id), generator)  # type: ignore[arg-type]
        if name == "reorder":
            return reorder(seq, ratio, generator)
        if name == "substitute":
            return substitute(seq, ratio, self.similar, generator)
        return insert(seq, ratio, self.similar, generator)

    def forward(self, seq: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One augmented view [B, L] of ``seq`` [B, L]: each row with its own random method."""
        names = list(dict.fromkeys((*self.methods, *self.short_methods)))
        if len(names) == 1:
            return self.apply(names[0], seq, generator)
        candidates = torch.stack([self.apply(name, seq, generator) for name in names])
        long_ok = torch.tensor([name in self.methods for name in names], device=seq.device)
        if not self.short_methods:
            allowed = long_ok[None, :].expand(seq.shape[0], -1)
        else:
            short_ok = torch.tensor([name in self.short_methods for name in names], device=seq.device)
            is_short = (lengths(seq) <= self.short_threshold)[:, None]
            allowed = torch.where(is_short, short_ok[None, :], long_ok[None, :])
        return choose(candidates, allowed, generator)

    def extra_repr(self) -> str:
        names = dict.fromkeys((*self.methods, *self.short_methods))
        ratios = ", ".join(f"{m}={self.ratios[m]}" for m in names)
        short = f", short (<= {self.short_threshold}): {self.short_methods}" if self.short_methods else ""
        return f"methods={self.methods}, {ratios}{short}"
