"""Exact full-ranking evaluation: evaluation splits, per-block batches and the evaluator.

``build_eval_split`` keeps, per evaluated user, the history (train for ``valid``; train+valid for
``test``) and the targets as CSR arrays, plus the last ``max_seq_len`` history items for
sequential models. ``EvalSplit.blocks`` turns a block of users into dense masks with one scatter
each. ``RankingEvaluator.update`` masks padding (and the history), takes one ``topk`` per block,
and accumulates per-user metric sums; ``compute`` all-reduces them under DDP. Metric definitions
are in ``recstudio.eval.metrics`` and docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from recstudio.data.dataset import Interactions, PreparedData, csr_rows
from recstudio.errors import ConfigError
from recstudio.eval.metrics import (
    ALL_METRICS,
    TOPK_METRICS,
    auc_from_prepared,
    prepare_scores,
    row_counts,
    topk_metrics,
)

# --------------------------------------------------------------------------- CSR helpers


def subset_csr(
    indptr: torch.Tensor, values: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR of the given rows only (row i of the result is ``rows[i]``), without a Python loop."""
    lengths = indptr[rows + 1] - indptr[rows]
    new_indptr = torch.zeros(rows.numel() + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=new_indptr[1:])
    _, pos = csr_rows(indptr, rows)
    return new_indptr, values[pos]


def dense_mask(
    indptr: torch.Tensor, values: torch.Tensor, start: int, stop: int, num_items: int, device: torch.device
) -> torch.Tensor:
    """bool [stop - start, num_items] with the CSR values of rows start..stop-1 set: one scatter."""
    lengths = indptr[start + 1 : stop + 1] - indptr[start:stop]
    local = torch.repeat_interleave(torch.arange(stop - start), lengths)
    flat = local * num_items + values[int(indptr[start]) : int(indptr[stop])]
    mask = torch.zeros(stop - start, num_items, dtype=torch.bool, device=device)
    mask.view(-1).index_fill_(0, flat.to(device, non_blocking=True), True)
    return mask


# --------------------------------------------------------------------------- split and blocks


@dataclass
class EvalSplit:
    """Users with >= 1 target in one split, with their history and targets (CPU tensors).

    Row i describes user ``users[i]``: history items ``history_items[history_indptr[i]:
    history_indptr[i+1]]`` in chronological order, targets likewise. ``seq`` [U, L] holds the
    last L history items left-padded with 0 (most recent last) and ``seq_len`` [U] their count,
    when the split was built with ``max_seq_len``.
    """

    split: str
    num_items: int
    users: torch.Tensor
    history_indptr: torch.Tensor
    history_items: torch.Tensor
    target_indptr: torch.Tensor
    target_items: torch.Tensor
    seq: torch.Tensor | None = None
    seq_len: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    """[U, N] sampled negative items per user (sampled-candidate evaluation), else None."""

    def __len__(self) -> int:
        return int(self.users.numel())

    @property
    def num_targets(self) -> torch.Tensor:
        """Number of target rows per user [U] (duplicates included; metrics count distinct)."""
        return self.target_indptr[1:] - self.target_indptr[:-1]

    def blocks(
        self, batch_size: int, rank: int = 0, world_size: int = 1, device: torch.device | str | None = None
    ) -> EvalBlocks:
        """Batches of at most ``batch_size`` users; ``rank``/``world_size`` shard users for DDP.

        Rank r takes the r-th of ``world_size`` contiguous, near-equal slices of the users
        (disjoint, covering every user once), and every rank yields the same number of blocks so
        that collective ops inside evaluation steps cannot deadlock (a rank with fewer users than
        blocks yields empty blocks). ``device`` builds the masks directly there.
        """
        if batch_size < 1:
            raise ConfigError(f"eval batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        return EvalBlocks(self, batch_size, rank, world_size, device)


class EvalBlocks:
    """Iterable (with ``__len__``) of evaluation batches of one rank's share of an EvalSplit.

    The batches are the same every pass, and building their dense masks cost as much as scoring
    them (ml-100k: ~0.05 s of a validation pass on the 2-core CPU), so the first pass keeps them
    when they fit in ``cache_bytes``; later passes (every epoch's validation) reuse them. Models
    and the evaluator treat batches as read-only.
    """

    cache_bytes: int = 512 << 20

    def __init__(
        self, split: EvalSplit, batch_size: int, rank: int, world_size: int, device: torch.device | str | None
    ) -> None:
        self.split = split
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        total = len(split)
        base, extra = divmod(total, world_size)
        start = rank * base + min(rank, extra)
        share = base + int(rank < extra)
        self.num_blocks = math.ceil(math.ceil(total / world_size) / batch_size)
        self.bounds: list[tuple[int, int]] = []
        self._cached: list[dict[str, torch.Tensor]] | None = None
        mask_bytes = 2 * share * split.num_items  # history and target masks, one byte per entry
        self._cacheable = mask_bytes <= self.cache_bytes
        if self.num_blocks:
            size, bigger = divmod(share, self.num_blocks)
            for i in range(self.num_blocks):
                stop = start + size + int(i < bigger)
                self.bounds.append((start, stop))
                start = stop

    def __len__(self) -> int:
        return self.num_blocks

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._cached is not None:
            yield from self._cached
            return
        built = []
        for start, stop in self.bounds:
            batch = self._batch(start, stop)
            if self._cacheable:
                built.append(batch)
            yield batch
        if self._cacheable and len(built) == len(self.bounds):
            self._cached = built

    def _batch(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        s, dev = self.split, self.device
        history = dense_mask(s.history_indptr, s.history_items, start, stop, s.num_items, dev)
        history[:, 0] = True  # padding is never a candidate
        batch = {
            "user": s.users[start:stop].to(dev),
            "history_mask": history,
            "target_mask": dense_mask(s.target_indptr, s.target_items, start, stop, s.num_items, dev),
        }
        if s.seq is not None and s.seq_len is not None:
            batch["seq"] = s.seq[start:stop].to(dev)
            batch["seq_len"] = s.seq_len[start:stop].to(dev)
        if s.candidates is not None:  # the targets and the user's fixed sampled negatives
            candidate = batch["target_mask"].clone()
            candidate.scatter_(1, s.candidates[start:stop].to(dev), True)
            batch["candidate_mask"] = candidate
        return batch


def last_items(indptr: torch.Tensor, items: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's last ``max_len`` items left-padded with 0, and their count: [U, L], [U]."""
    ends = indptr[1:]
    lengths = ends - indptr[:-1]
    seq_len = lengths.clamp(max=max_len)
    col = torch.arange(max_len)
    pos = ends[:, None] - max_len + col[None, :]  # the chronological tail, right-aligned
    valid = col[None, :] >= (max_len - seq_len)[:, None]
    if items.numel() == 0:
        return torch.zeros(len(lengths), max_len, dtype=torch.long), seq_len
    seq = torch.where(valid, items[pos.clamp(0, items.numel() - 1)], 0)
    return seq, seq_len


def _positive_rows(part: Interactions) -> Interactions:
    """The rows that are targets: all of them, or the label-1 rows of labelled data."""
    label = getattr(part, "label", None)
    if label is None:
        return part
    keep = label > 0.5
    return Interactions(part.user[keep], part.item[keep], part.rating[keep], part.time[keep])


def build_eval_split(
    data: PreparedData,
    split: str,
    max_seq_len: int | None = None,
    candidates: int = 0,
    candidate_sampler: str = "uniform",
    candidate_seed: int = 2020,
) -> EvalSplit:
    """Evaluation split of ``data``: users with a target in ``split`` ("valid" or "test").

    History is the train split for ``valid`` and train+valid for ``test`` (chronological per user,
    as PreparedData sorts each split by (user, time)). Targets are the split's rows (on labelled
    data: its label-1 rows; every row of the history counts as seen). With ``max_seq_len`` L,
    ``seq``/``seq_len`` hold each user's last L history items for sequential models. History
    masking itself is the ``RankingEvaluator``'s ``mask_history`` option: models may read
    ``history_mask`` either way.

    ``candidates`` N > 0 switches to sampled-candidate evaluation (as papers that rank a target
    among 100 sampled items report): each user gets N negatives drawn once, without replacement,
    from the items the user never interacted with in any split, uniformly or in proportion to
    training popularity (``candidate_sampler``), from a generator seeded with ``candidate_seed``
    and the split name, so every epoch and every model sees the same candidates. Blocks then carry
    ``candidate_mask`` and the evaluator ranks only targets and those negatives.
    """
    if split not in ("valid", "test"):
        raise ConfigError(f"evaluation split must be 'valid' or 'test', got {split!r}")
    if isinstance(max_seq_len, bool) or (max_seq_len is not None and max_seq_len < 1):
        raise ConfigError(f"max_seq_len must be a positive integer or None, got {max_seq_len!r}")
    targets: Interactions = _positive_rows(data.valid if split == "valid" else data.test)
    history = data.train if split == "valid" else Interactions.concat([data.train, data.valid])
    t_indptr, t_items = targets.csr(data.num_users)
    h_indptr, h_items = history.csr(data.num_users)
    counts = t_indptr[1:] - t_indptr[:-1]
    users = torch.nonzero(counts > 0).flatten()
    h_indptr, h_items = subset_csr(h_indptr, h_items, users)
    t_indptr, t_items = subset_csr(t_indptr, t_items, users)
    seq = seq_len = None
    if max_seq_len is not None:
        seq, seq_len = last_items(h_indptr, h_items, max_seq_len)
    sampled = None
    if candidates:
        sampled = sample_candidates(data, users, split, candidates, candidate_sampler, candidate_seed)
    return EvalSplit(
        split, data.num_items, users, h_indptr, h_items, t_indptr, t_items, seq, seq_len, sampled
    )


CANDIDATE_SAMPLERS = ("uniform", "popularity")


def sample_candidates(
    data: PreparedData, users: torch.Tensor, split: str, n: int, sampler: str, seed: int
) -> torch.Tensor:
    """[U, n] negatives per user, without replacement, never an item the user interacted with in
    any split (Gumbel top-n over the allowed items: exact sampling in proportion to the weights).
    """
    if sampler not in CANDIDATE_SAMPLERS:
        raise ConfigError(
            f"config key 'eval.candidate_sampler' must be one of {', '.join(CANDIDATE_SAMPLERS)}"
        )
    generator = torch.Generator().manual_seed(seed + (0 if split == "valid" else 1))
    if sampler == "uniform":
        log_w = torch.zeros(data.num_items)
    else:
        log_w = torch.log(data.item_popularity() + 1.0)
    log_w[0] = -math.inf
    seen = Interactions.concat([data.train, data.valid, data.test])
    s_indptr, s_items = seen.csr(data.num_users)
    s_indptr, s_items = subset_csr(s_indptr, s_items, users)
    most_seen = int((s_indptr[1:] - s_indptr[:-1]).max()) if users.numel() else 0
    if n > data.num_items - 1 - most_seen:
        raise ConfigError(
            f"config key 'eval.candidates' ({n}) exceeds the items some user has not seen "
            f"({data.num_items - 1 - most_seen})"
        )
    out = torch.empty(users.numel(), n, dtype=torch.long)
    rows = max(1, (1 << 22) // max(1, data.num_items))
    for start in range(0, users.numel(), rows):
        stop = min(start + rows, users.numel())
        gumbel = -torch.log(-torch.log(torch.rand(stop - start, data.num_items, generator=generator)))
        keys = log_w[None, :] + gumbel
        keys.masked_fill_(dense_mask(s_indptr, s_items, start, stop, data.num_items, keys.device), -math.inf)
        out[start:stop] = torch.topk(keys, n, dim=1).indices
    return out


# --------------------------------------------------------------------------- evaluator


class RankingEvaluator:
    """Accumulates full-ranking metrics over evaluation blocks; means over evaluated users.

    ``update`` excludes padding item 0 always and the history when ``mask_history``, ranks with
    one ``topk(max(cutoffs))``, and adds per-user metric values to float64 sums kept on the
    scores' device (no host sync besides AUC's block width). ``compute`` returns
    ``{"recall@5": ..., "auc": ...}``; under ``torch.distributed`` sums and counts are
    all-reduced first, so every rank returns the global means.
    """

    def __init__(self, metrics: list[str], cutoffs: list[int], mask_history: bool = True) -> None:
        unknown = [m for m in metrics if m not in ALL_METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {unknown}; valid: {', '.join(ALL_METRICS)}")
        if not metrics:
            raise ConfigError("at least one evaluation metric is required")
        cutoffs = list(cutoffs)
        if any(m in TOPK_METRICS for m in metrics) and (
            not cutoffs or any(not isinstance(k, int) or k < 1 for k in cutoffs)
        ):
            raise ConfigError(f"eval cutoffs must be positive integers, got {cutoffs}")
        self.topk_names = [m for m in dict.fromkeys(metrics) if m in TOPK_METRICS]
        self.cutoffs = sorted(set(cutoffs))
        self.with_auc = "auc" in metrics
        self.mask_history = mask_history
        self.keys = [f"{m}@{k}" for m in self.topk_names for k in self.cutoffs]
        self.reset()

    def reset(self) -> None:
        """Forget accumulated sums (call at the start of every evaluation epoch)."""
        self._sums: torch.Tensor | None = None  # [len(keys) + auc] float64
        self._counts: torch.Tensor | None = None  # [users, auc users] float64

    @torch.no_grad()
    def update(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Add one block: ``scores`` [B, num_items] and its batch (``target_mask``, ``history_mask``).

        Users without a target in the block are skipped. Masked items end at -inf, so a top-k
        position holding -inf (fewer candidates than the cutoff) is never a hit.
        """
        device = scores.device
        target = batch["target_mask"].to(device, non_blocking=True)
        history = batch.get("history_mask") if self.mask_history else None
        if history is not None:
            history = history.to(device, non_blocking=True)
        candidate = batch.get("candidate_mask")
        if candidate is not None:  # sampled-candidate evaluation: rank targets + drawn negatives
            outside = ~candidate.to(device, non_blocking=True)
            history = outside if history is None else history | outside
        x = prepare_scores(scores, history)
        if self.with_auc:  # the target list serves both the counts and AUC's queries
            rows, cols = target.nonzero(as_tuple=True)
            n_targets = row_counts(rows, target.shape[0])
        else:
            n_targets = target.view(torch.uint8).sum(1, dtype=torch.int32)
        has_target = n_targets > 0

        parts: list[torch.Tensor] = []
        if self.topk_names:
            k = min(self.cutoffs[-1], x.shape[1])
            top_values, top = torch.topk(x, k, dim=1, sorted=True)
            parts.append(self._topk_sums(top, top_values > -math.inf, target, n_targets))
        n_auc = torch.zeros((), dtype=torch.float64, device=device)
        if self.with_auc:
            auc_values, valid = auc_from_prepared(x, rows, cols)
            valid &= has_target
            parts.append(torch.where(valid, auc_values, 0.0).sum().reshape(1))
            n_auc = valid.sum().to(torch.float64)
        self._add(torch.cat(parts), torch.stack([has_target.sum().to(torch.float64), n_auc]))

    @torch.no_grad()
    def update_ranked(
        self, top_ids: torch.Tensor, ranked: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> None:
        """Add one block ranked elsewhere (e.g. by an ANN index): ``top_ids`` [B, K] best first,
        ``ranked`` bool [B, K] false where a position holds no item (never a hit).

        The caller has already excluded history and padding; metrics are the same top-k formulas
        as ``update``'s. AUC needs every item's score, so an evaluator with AUC refuses.
        """
        if self.with_auc:
            raise ValueError("update_ranked cannot compute AUC (it needs all scores); drop 'auc'")
        target = batch["target_mask"].to(top_ids.device, non_blocking=True)
        n_targets = target.view(torch.uint8).sum(1, dtype=torch.int32)
        has_target = n_targets > 0
        sums = self._topk_sums(top_ids, ranked, target, n_targets)
        zero = torch.zeros((), dtype=torch.float64, device=top_ids.device)
        self._add(sums, torch.stack([has_target.sum().to(torch.float64), zero]))

    def _topk_sums(
        self, top: torch.Tensor, ranked: torch.Tensor, target: torch.Tensor, n_targets: torch.Tensor
    ) -> torch.Tensor:
        """Sums over the block's users with a target of every top-k metric [len(keys)] float64:
        the one place where ranked ids and target masks become metric values."""
        hits = target.gather(1, top) & ranked
        values = topk_metrics(hits, n_targets, self.topk_names, self.cutoffs)
        per_user = torch.stack([values[key] for key in self.keys], 1)
        return (per_user * (n_targets > 0)[:, None]).sum(0)

    def _add(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        if self._sums is None or self._counts is None:
            self._sums, self._counts = sums, counts
        else:
            self._sums = self._sums + sums.to(self._sums.device)
            self._counts = self._counts + counts.to(self._counts.device)

    def _reduce_device(self) -> torch.device:
        if self._sums is not None:
            return self._sums.device
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def compute(self) -> dict[str, float]:
        """Mean of every metric over evaluated users (NaN when no user was evaluated)."""
        n_sums = len(self.keys) + int(self.with_auc)
        device = self._reduce_device()
        if self._sums is None or self._counts is None:
            sums = torch.zeros(n_sums, dtype=torch.float64, device=device)
            counts = torch.zeros(2, dtype=torch.float64, device=device)
        else:
            sums, counts = self._sums, self._counts
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            packed = torch.cat([sums, counts])
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            sums, counts = packed[:n_sums], packed[n_sums:]
        values = sums.cpu().tolist()
        n_users, n_auc = counts.cpu().tolist()
        out = {key: (values[i] / n_users if n_users else math.nan) for i, key in enumerate(self.keys)}
        if self.with_auc:
            out["auc"] = values[-1] / n_auc if n_auc else math.nan
        return out
