"""Negative samplers: draw item ids for sampled losses, with their log-probabilities.

A sampler is an ``nn.Module`` whose tables are (non-persistent) buffers, so ``model.to(device)``
moves it and it draws on the model's device; nothing is saved into checkpoints (the tables are
rebuilt from the data). Every sampler draws real items only (ids 1..num_items-1, never the
padding id 0) and reports ``log q`` of what it drew, for log-Q correction and importance weights.
Excluding the user's positives (``model.exclude_positives``; by default on for the static
samplers, off for the model-based ones): after
``exclude(user, item)`` with the training interactions, a draw for a query whose user is known
(``users`` [n]) never returns one of that user's training items, as in the BPR paper and RecBole.
Draws that hit a positive are redrawn (rejection, vectorised, at most ``MAX_REDRAWS`` rounds; a
user who has interacted with nearly every item may keep a hit after that). The proposal then is
q restricted to the user's non-positives, and ``log q`` is reported for that conditional
distribution: ``log q(i) - log(1 - q(positives of u))``. Without ``users`` (or without
``exclude``) draws are from q over all items, and a negative can equal a positive.

API: ``sample(n, k, pos_items=None, query=None, users=None) -> (neg [n, k] long, log_q_neg
[n, k], log_q_pos [n])``, ``sample_ids(n, k, query=None, users=None) -> neg`` (no log q) and
``log_prob(items, query=None) -> float tensor`` of the same shape as ``items``. Under exclusion
``log_q_pos`` is the positive's log q on the negatives' conditional scale, log q(pos) - log(1 -
q(positives of u)) (the positive itself is never drawn): sampled softmax subtracts both, and
only a shared normaliser leaves the positive's share of the corrected softmax unbiased.

Static samplers (uniform, popularity) ignore ``query``. Model-based samplers (``uses_query``:
cluster_uni, cluster_pop, midx_uni, midx_pop) draw from q(i | query), a cheap approximation of
the model's own softmax over the catalogue, rebuilt from the current item vectors by
``refresh(item_vectors)`` (``ItemTowerRecommender`` calls it on the ``sampler_refresh_epochs``
and ``sampler_refresh_steps`` schedule); ``query`` [n, d] is then required, row r of ``items``
/ of the draws belongs to ``query[r]``, and every reported log q is exact for that query
(conditional under exclusion).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.data.dataset import csr_rows
from recstudio.errors import ConfigError, ModelError
from recstudio.model.cluster import kmeans, nearest_centroid

_SCALE = 1 << 52  # fixed-point unit of the popularity sampler's cumulative table
DENSE_EXCLUSION_LIMIT = 1 << 26
"""Largest num_users x num_items whose positives are kept as a dense bool table (64 MB): one
gather per membership test instead of a binary search over the sorted (user, item) keys (126 us
vs ~10 us for 2048 draws on ml-100k, 2-core CPU)."""
MAX_REDRAWS = 8
"""Rejection rounds for excluded positives (each redraws only the slots that still hit); the
draws still hitting a positive after them (users owning most of the proposal mass) are drawn
exactly from q restricted to the user's non-positives."""
REDRAWS_PER_ROUND = 4
"""Candidates drawn at once for each slot in a rejection round: a user whose positives hold a
share p of the proposal keeps a hit after one round with probability p^4 instead of p."""


class Sampler(nn.Module):
    """Base class: a proposal distribution over item ids 1..num_items-1."""

    uses_query = False
    """True for samplers whose draw depends on the query vectors (model-based samplers): they
    need an item-tower model, which rebuilds them from its item vectors (``refresh``)."""
    needs_popularity: ClassVar[bool] = False
    """Whether ``build_sampler`` must pass the items' training counts."""

    def __init__(self, num_items: int) -> None:
        super().__init__()
        if num_items < 2:
            raise ConfigError(f"a negative sampler needs at least one real item, got num_items={num_items}")
        self.num_items = num_items
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def refresh(self, item_vectors: torch.Tensor) -> None:
        """Rebuild the proposal from the model's current item vectors [num_items, d] (model-based
        samplers; static ones ignore it)."""

    def exclude(self, user: torch.Tensor, item: torch.Tensor, num_users: int) -> None:
        """Never draw ``item[j]`` for user ``user[j]`` (the training interactions) when a draw
        names its users. Stores the sorted distinct (user, item) keys and, for a static sampler,
        per user the proposal mass of its positives (for the conditional log q)."""
        key = torch.unique(user.long().cpu() * self.num_items + item.long().cpu())
        users, items = key // self.num_items, key % self.num_items
        remaining = None
        if not self.uses_query:
            mass = torch.zeros(num_users, dtype=torch.float64)
            mass.index_add_(0, users, self.log_prob(items.to(self.device)).double().exp().cpu())
            # log(1 - mass): the user's share of the proposal that remains drawable
            remaining = torch.log1p(-mass.clamp(max=1.0 - 1e-12)).float().to(self.device)
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        torch.cumsum(torch.bincount(users, minlength=num_users), 0, out=indptr[1:])
        self.num_users = num_users
        self.register_buffer("_excluded", key.to(self.device), persistent=False)
        dense = None
        if num_users * self.num_items <= DENSE_EXCLUSION_LIMIT:
            dense = torch.zeros(num_users * self.num_items, dtype=torch.bool)
            dense[key] = True
        self.register_buffer("_excluded_dense", dense, persistent=False)
        self.register_buffer("_excluded_indptr", indptr.to(self.device), persistent=False)
        self.register_buffer("_log_remaining", remaining, persistent=False)

    @property
    def excludes(self) -> bool:
        return getattr(self, "_excluded", None) is not None

    def log_remaining(self, users: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """log(1 - q(positives of user | query)) [n]: what a draw that avoids the positives of
        ``users`` [n] subtracts from log q to be the conditional log-probability."""
        return self._log_remaining[users.to(self.device).long()]

    def _hits(self, users: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Bool [n, k]: which draws are a training positive of their row's user."""
        keys = self._excluded
        query = users.to(keys.device).long()[:, None] * self.num_items + neg
        if self._excluded_dense is not None:
            return self._excluded_dense[query]
        pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        return keys[pos] == query

    def _redraw_positives(
        self, neg: torch.Tensor, users: torch.Tensor, query: torch.Tensor | None = None
    ) -> torch.Tensor:
        users = users.to(neg.device).long()
        rows, cols = self._hits(users, neg).nonzero(as_tuple=True)
        for _ in range(MAX_REDRAWS):
            if rows.numel() == 0:
                return neg
            # REDRAWS_PER_ROUND fresh draws for each slot that hit (from its own row's proposal);
            # the first one that is not a positive replaces it: the same first success as one
            # draw per round, in fewer rounds (each round costs a dozen small tensor ops)
            fresh = self.draw_rows(rows.repeat_interleave(REDRAWS_PER_ROUND), query)
            fresh = fresh.view(-1, REDRAWS_PER_ROUND)
            miss = ~self._hits(users[rows], fresh)
            found = miss.any(1)
            first = fresh.gather(1, miss.byte().argmax(1, keepdim=True))[:, 0]
            neg = neg.index_put((rows[found], cols[found]), first[found])
            rows, cols = rows[~found], cols[~found]
        if rows.numel():
            exact = self._draw_exact(users[rows], None if query is None else query[rows])
            neg = neg.index_put((rows, cols), exact)
        return neg

    def _draw_exact(
        self, users: torch.Tensor, query: torch.Tensor | None = None, chunk_elements: int = 1 << 24
    ) -> torch.Tensor:
        """One draw per entry of ``users`` (with its ``query`` row) from q restricted to that
        user's non-positives (dense weights over the catalogue, in chunks; only the few
        rejection leftovers come here). A user without any drawable item keeps a uniform draw."""
        keys, indptr = self._excluded, self._excluded_indptr
        out = torch.empty(users.numel(), dtype=torch.long, device=users.device)
        all_items = torch.arange(self.num_items, device=users.device)
        rows_per_chunk = max(1, chunk_elements // self.num_items)
        for start in range(0, users.numel(), rows_per_chunk):
            u = users[start : start + rows_per_chunk]
            q = None if query is None else query[start : start + rows_per_chunk]
            w = self.log_prob(all_items.expand(u.numel(), -1), query=q).exp().clamp_min(0).contiguous()
            row, index = csr_rows(indptr, u)
            w[row, keys[index] % self.num_items] = 0.0
            empty = w.sum(1) <= 0
            w[empty, 1:] = 1.0
            out[start : start + u.numel()] = torch.multinomial(w, 1).view(-1)
        return out

    def log_prob(self, items: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """log q(item | query), same shape as ``items`` (-inf for the padding id 0); row r of
        ``items`` belongs to ``query[r]`` (ignored by static samplers)."""
        raise NotImplementedError

    def draw(self, n: int, k: int, query: torch.Tensor | None = None) -> torch.Tensor:
        """[n, k] item ids drawn i.i.d. from q (row r from q(. | query[r]))."""
        raise NotImplementedError

    def draw_rows(self, rows: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """[m] one draw for each entry of ``rows`` (row indices into ``query``; static samplers
        ignore them): the redraws of the exclusion."""
        return self.draw(rows.numel(), 1, query=None).view(-1)

    def proposal_scope(self, query: torch.Tensor | None) -> contextlib.AbstractContextManager:
        """Context in which the draws and log q of ``query`` share one per-query computation
        (model-based samplers; a no-op here)."""
        return contextlib.nullcontext()

    def sample_ids(
        self, n: int, k: int, query: torch.Tensor | None = None, users: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[n, k] negatives without their log-probabilities, for losses that ignore log q (BPR,
        BCE): saves the two ``log_prob`` passes per step. ``users`` [n] names each row's user
        for the exclusion of positives; ``query`` [n, d] is what a model-based sampler draws
        from."""
        with self.proposal_scope(query):
            neg = self.draw(n, k, query=query)
            if users is not None and self.excludes:
                neg = self._redraw_positives(neg, users, query)
            return neg

    def sample(
        self,
        n: int,
        k: int,
        pos_items: torch.Tensor | None = None,
        query: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K negatives for each of n queries: (neg [n, k], log_q_neg [n, k], log_q_pos [n]).

        ``log_q_pos`` is log q of ``pos_items`` (zeros when they are not given). ``query`` is
        what model-based samplers draw from (static samplers ignore it). With ``users`` and
        exclusion on, negatives avoid each user's positives and ``log_q_neg`` is conditional.
        """
        with self.proposal_scope(query):
            neg = self.sample_ids(n, k, query=query, users=users)
            log_q_neg = self.log_prob(neg, query=query)
            if pos_items is None:
                log_q_pos = torch.zeros(n, device=self.device)
            else:
                log_q_pos = self.log_prob(pos_items.to(self.device), query=query)
            if users is not None and self.excludes:
                # the conditional normaliser log(1 - q(positives of u)), on both: the positive is
                # never drawn, but a correction that subtracted it from the negatives alone would
                # lower them against the positive by -log(1 - q(positives)), which for a proposal
                # that follows the model (most mass on the user's own items) silences the loss
                remaining = self.log_remaining(users, query)
                log_q_neg = log_q_neg - remaining[:, None]
                if pos_items is not None:
                    log_q_pos = log_q_pos - remaining
            return neg, log_q_neg, log_q_pos


class UniformSampler(Sampler):
    """q(i) = 1 / (num_items - 1) for every real item."""

    def log_prob(self, items: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        value = torch.full(items.shape, -math.log(self.num_items - 1), device=items.device)
        return value.masked_fill(items == 0, -math.inf)

    def draw(self, n: int, k: int, query: torch.Tensor | None = None) -> torch.Tensor:
        return torch.randint(1, self.num_items, (n, k), device=self.device)


class PopularitySampler(Sampler):
    """q(i) proportional to (count_i + 1)^alpha over real items (alpha = 0: uniform).

    The +1 keeps items unseen in training drawable. Draws invert a cumulative table with a
    uniform integer + ``searchsorted`` (O(log I) per draw, no Python loop); the table is 52-bit
    fixed point, so rare items keep their share in large catalogues and a half-precision cast of
    the model cannot touch it.
    Reference: Mikolov et al. (2013) use alpha = 0.75 for word2vec negatives.
    """

    needs_popularity = True

    def __init__(self, num_items: int, popularity: torch.Tensor, alpha: float = 1.0) -> None:
        super().__init__(num_items)
        counts = torch.as_tensor(popularity, dtype=torch.float64).flatten()
        if counts.numel() != num_items:
            raise ConfigError(
                f"popularity has {counts.numel()} entries but num_items is {num_items} (padding included)"
            )
        if bool((counts < 0).any()):
            raise ConfigError("popularity counts must be non-negative")
        weight = (counts[1:] + 1.0) ** alpha
        prob = weight / weight.sum()
        # Fixed-point cumulative table: an integer buffer follows .to(device) but not
        # .half()/.to(dtype) (which would wreck a float table), with 2^-52 resolution.
        cdf = torch.round(torch.cumsum(prob, 0) * _SCALE).long()
        cdf[-1] = _SCALE  # rounding must not leave a gap at the top
        self.alpha = alpha
        self.register_buffer("cdf", cdf, persistent=False)
        log_p = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), prob.log()])
        self.register_buffer("log_p", log_p.float(), persistent=False)

    def log_prob(self, items: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_p[items.to(self.log_p.device)]

    def draw(self, n: int, k: int, query: torch.Tensor | None = None) -> torch.Tensor:
        u = torch.randint(0, _SCALE, (n, k), device=self.cdf.device)
        idx = torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.num_items - 2)
        return idx + 1


KMEANS_POINTS_PER_CENTROID = 256
"""k-means of a refresh fits its centroids on at most this many item vectors per centroid (a
random subset, as faiss does) and then assigns every item: a large catalogue refreshes in
O(items x centroids x d) instead of 25 times that."""


@dataclass
class _Proposal:
    """One batch of queries' share of a model-based proposal: the subclass's per-query scores,
    the cells' cumulative mass and the normaliser."""

    query: torch.Tensor
    scores: tuple[torch.Tensor, ...]  # what ``_cell_log_score`` reads (cluster: [n, C])
    cdf: torch.Tensor  # [n, cells]: cumulative exp(score_c + log W_c - shift), in cell order
    mass: torch.Tensor  # [n, cells]: exp(score_c + log W_c - shift)
    log_z: torch.Tensor  # [n]: log sum_c exp(score_c + log W_c)
    last: torch.Tensor  # [n]: last cell with positive mass
    flat: torch.Tensor | None = None  # [n * cells] float64: cumulative mass of all rows in turn


def _fit_centroids(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids [k', d], assignment [n]) of ``x`` [n, d]: ``kmeans`` on a random subset of at
    most ``KMEANS_POINTS_PER_CENTROID * k`` rows, then every row to its nearest centroid."""
    n = x.shape[0]
    limit = KMEANS_POINTS_PER_CENTROID * max(1, k)
    if n <= limit:
        return kmeans(x, k)
    subset = torch.randperm(n)[:limit].to(x.device)
    centroids, _ = kmeans(x[subset], k)
    return centroids, nearest_centroid(x, centroids)


class ModelBasedSampler(Sampler):
    """Base of the samplers that learn with the model: q(i | query) proportional to
    exp(score of i's cell for the query) x w_i, over a partition of the items into cells built
    from the model's item vectors, rebuilt by ``refresh``.

    Why: uniform or popularity negatives are mostly easy (far from the query), so a sampled
    softmax with them is a poor, high-variance estimate of the full softmax; a proposal close to
    the model's own softmax closes most of that gap at a sampled loss's cost. A cell's score
    approximates the inner products of its items with the query, so q tracks the model's
    softmax as the vectors change. w_i is 1 (``_uni``) or (count_i + 1)^alpha (``_pop``, the
    popularity sampler's weights). A draw takes a cell from softmax_c(score_c + log W_c), W_c
    the cell's total weight (empty cells have zero mass), by inverting its cumulative table,
    then an item inside the cell proportional to w_i, from one 52-bit fixed-point table of all
    items sorted by cell. ``log_prob`` is exact: log q(i | query) = score_{c(i)} + log w_i -
    log Z(query). Every step is a batched tensor op (no loop over queries or items), on the
    device of the vectors.

    Excluding positives: draws avoid the user's positives by rejection (the base class) and the
    reported log q is the exact conditional, log q(i) - log(1 - q(positives of u)): the mass of
    the user's positives is summed cell by cell over the distinct (user, cell) pairs of the
    training data (rebuilt at each refresh), one batched gather per step. The inner product
    query . vector defines the proposal whatever the model's scorer (any proposal is valid; log
    q corrects for it). Before the first refresh there is one cell: q is proportional to w_i.
    """

    uses_query = True
    weighted: ClassVar[bool] = False
    """Whether w_i is the popularity weight (count_i + 1)^alpha (else 1)."""

    def __init__(
        self,
        num_items: int,
        popularity: torch.Tensor | None = None,
        alpha: float = 1.0,
        clusters: int | None = None,
    ) -> None:
        super().__init__(num_items)
        if clusters is not None and clusters < 1:
            raise ConfigError(f"sampler clusters must be >= 1, got {clusters}")
        self.clusters = clusters
        log_w = torch.zeros(num_items)
        if self.weighted:
            if popularity is None:
                raise ConfigError(f"the '{self.name}' sampler needs item popularity counts")
            counts = torch.as_tensor(popularity, dtype=torch.float64).flatten()
            if counts.numel() != num_items or bool((counts < 0).any()):
                raise ConfigError(f"popularity must be {num_items} non-negative counts (padding included)")
            log_w = (alpha * torch.log1p(counts)).float()
        log_w[0] = -math.inf
        self.alpha = alpha
        self.register_buffer("log_w", log_w, persistent=False)
        self.refreshes = 0
        """How many times the proposal was rebuilt from item vectors."""
        self._scope: _Proposal | None = None
        self._set_cells(torch.zeros(num_items, dtype=torch.long), 1)

    @property
    def name(self) -> str:
        return next(k for k, v in SAMPLERS.items() if v is type(self))

    # ------------------------------------------------------------------ building
    def _fit(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(cell of each row of ``x`` [num_items - 1, d] (items 1..), number of cells); store
        what ``_scores`` needs."""
        raise NotImplementedError

    def _scores(self, query: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The per-query scores [n, ...] that the cells' scores are made of."""
        raise NotImplementedError

    def _cell_mass(self, scores: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mass [n, cells], shift [n]) with exp(score_c + log W_c) = mass_c exp(shift)."""
        raise NotImplementedError

    def _cell_log_score(
        self, scores: tuple[torch.Tensor, ...], rows: torch.Tensor, cells: torch.Tensor
    ) -> torch.Tensor:
        """score_{cells[j]} of query ``rows[j]`` (same shape as ``cells``)."""
        raise NotImplementedError

    @torch.no_grad()
    def refresh(self, item_vectors: torch.Tensor) -> None:
        vectors = item_vectors.detach().float().to(self.device)
        if vectors.dim() != 2 or vectors.shape[0] != self.num_items:
            raise ModelError(
                f"sampler '{self.name}' needs item vectors [{self.num_items}, d], got {tuple(vectors.shape)}"
            )
        cells, num_cells = self._fit(vectors[1:])
        self._set_cells(torch.cat([cells.new_zeros(1), cells]), num_cells)
        self.refreshes += 1

    def _set_cells(self, item_cell: torch.Tensor, num_cells: int) -> None:
        """Tables of the partition ``item_cell`` [num_items] (padding: any cell, weight 0)."""
        dev = self.device
        item_cell = item_cell.to(dev).long()
        real = item_cell[1:]
        order = torch.argsort(real, stable=True) + 1  # items sorted by cell
        log_w = self.log_w.double()
        top = log_w[1:].max()
        w = (log_w[order] - top).exp()
        cum = torch.round(torch.cumsum(w / w.sum(), 0) * _SCALE).long()
        cum[-1] = _SCALE
        cum0 = torch.cat([cum.new_zeros(1), cum])
        counts = torch.bincount(real, minlength=num_cells)
        first = torch.cumsum(counts, 0) - counts  # position of a cell's first item in ``order``
        weight = torch.zeros(num_cells, dtype=torch.float64, device=dev)
        weight.index_add_(0, real, (log_w[1:] - top).exp())
        self.num_cells = num_cells
        self.register_buffer("item_cell", item_cell, persistent=False)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("cum", cum, persistent=False)
        self.register_buffer("cell_lo", cum0[first], persistent=False)
        self.register_buffer("cell_hi", cum0[first + counts], persistent=False)
        self.register_buffer("cell_first", first, persistent=False)
        self.register_buffer("cell_last", (first + counts - 1).clamp_min(0), persistent=False)
        self.register_buffer("log_cell_weight", (weight.log() + top).float(), persistent=False)
        if self.excludes:
            self._index_positives()

    def exclude(self, user: torch.Tensor, item: torch.Tensor, num_users: int) -> None:
        super().exclude(user, item, num_users)
        self._index_positives()

    def _index_positives(self) -> None:
        """Per user (CSR), its distinct cells and the log of its positives' weight in each."""
        keys = self._excluded
        users, items = keys // self.num_items, keys % self.num_items
        pair = users * self.num_cells + self.item_cell[items]
        distinct, inverse = torch.unique(pair, return_inverse=True)
        weight = torch.zeros(distinct.numel(), dtype=torch.float64, device=keys.device)
        weight.index_add_(0, inverse, self.log_w[items].double().exp())
        indptr = torch.zeros(self.num_users + 1, dtype=torch.long, device=keys.device)
        torch.cumsum(torch.bincount(distinct // self.num_cells, minlength=self.num_users), 0, out=indptr[1:])
        self.register_buffer("_pos_indptr", indptr, persistent=False)
        self.register_buffer("_pos_cell", distinct % self.num_cells, persistent=False)
        self.register_buffer("_pos_log_weight", weight.log().float(), persistent=False)

    # ------------------------------------------------------------------ per batch of queries
    def _proposal(self, query: torch.Tensor | None) -> _Proposal:
        if query is None:
            raise ModelError(f"sampler '{self.name}' draws from the query vectors, but none were given")
        scope = self._scope
        if scope is not None and scope.query is query:
            return scope
        with torch.no_grad():
            scores = self._scores(query.detach().float().to(self.device))
            mass, shift = self._cell_mass(scores)
            cdf = torch.cumsum(mass, dim=1)
            total = cdf[:, -1:].contiguous()
            last = torch.searchsorted(cdf, total).view(-1)  # the first cell reaching the total
        return _Proposal(query, scores, cdf, mass, total.view(-1).log() + shift, last)

    @contextlib.contextmanager
    def _shared(self, query: torch.Tensor | None) -> Iterator[None]:
        if query is None or self._scope is not None:
            yield
            return
        self._scope = self._proposal(query)
        try:
            yield
        finally:
            self._scope = None

    def proposal_scope(self, query: torch.Tensor | None) -> contextlib.AbstractContextManager:
        return self._shared(query)

    def log_prob(self, items: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        p = self._proposal(query)
        items = items.to(self.device)
        rows = torch.arange(items.shape[0], device=self.device).view(-1, *([1] * (items.dim() - 1)))
        rows = rows.expand_as(items)
        score = self._cell_log_score(p.scores, rows, self.item_cell[items])
        return score + self.log_w[items] - p.log_z[rows]

    def log_remaining(self, users: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        p = self._proposal(query)
        users = users.to(self.device).long()
        row, index = csr_rows(self._pos_indptr, users)
        score = self._cell_log_score(p.scores, row, self._pos_cell[index])
        log_mass = score + self._pos_log_weight[index] - p.log_z[row]
        mass = torch.zeros(users.numel(), dtype=torch.float64, device=self.device)
        mass.index_add_(0, row, log_mass.double().exp())
        return torch.log1p(-mass.clamp(max=1.0 - 1e-12)).float()

    def draw(self, n: int, k: int, query: torch.Tensor | None = None) -> torch.Tensor:
        p = self._proposal(query)
        if p.cdf.shape[0] != n:
            raise ModelError(f"sampler '{self.name}': {n} rows asked for {p.cdf.shape[0]} queries")
        return self._draw(p, None, k)

    def draw_rows(self, rows: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        return self._draw(self._proposal(query), rows, 1).view(-1)

    def _draw(self, p: _Proposal, rows: torch.Tensor | None, k: int) -> torch.Tensor:
        """[n, k] draws for every query, or [m, k] for the queries ``rows`` [m]."""
        if rows is None:
            u = torch.rand(p.cdf.shape[0], k, device=self.device) * p.cdf[:, -1:]
            cells = torch.minimum(torch.searchsorted(p.cdf, u, right=True), p.last[:, None])
        else:  # a few rows: one sorted table of all rows' cdfs (row r's in (r, r + 1]), no gather
            width = p.cdf.shape[1]
            if p.flat is None:  # every row's cell masses in turn, cumulated (float64)
                p.flat = torch.cumsum(p.mass.double().view(-1), 0)
            start = torch.where(rows > 0, p.flat[(rows * width - 1).clamp_min(0)], 0.0)[:, None]
            span = p.flat[rows * width + width - 1][:, None] - start
            u = start + torch.rand(rows.numel(), k, dtype=torch.float64, device=self.device) * span
            at = torch.searchsorted(p.flat, u, right=True) - rows[:, None] * width
            cells = torch.minimum(at.clamp_min(0), p.last[rows][:, None])
        # then an item of the cell, proportional to w_i
        first, last_item = self.cell_first[cells], self.cell_last[cells]
        u = torch.rand(cells.shape, dtype=torch.float64, device=self.device)
        if not self.weighted:  # equal weights: a uniform position in the cell's slice of ``order``
            at = first + (u * (last_item - first + 1).double()).long()
            return self.order[torch.minimum(at, last_item)]
        lo, hi = self.cell_lo[cells], self.cell_hi[cells]  # invert the cell's slice of ``cum``
        t = torch.minimum(lo + (u * (hi - lo).double()).long(), hi - 1)
        at = torch.searchsorted(self.cum, t, right=True)
        return self.order[torch.clamp(at, first, last_item)]


class ClusterSampler(ModelBasedSampler):
    """PRIS's cluster proposal with uniform weights within clusters (``cluster_uni``).

    k-means puts the item vectors into C clusters; q(i | query) is proportional to
    exp(query . centroid_{c(i)}) x w_i: a cluster from softmax_c(query . centroid_c + log W_c),
    then an item of the cluster proportional to w_i (here 1). C = ``sampler_clusters`` (None:
    sqrt of the catalogue, between 2 and 128).
    Reference: Lian, Liu and Chen, "Personalized Ranking with Importance Sampling" (WWW 2020).
    """

    def _fit(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        k = self.clusters or min(128, max(2, round(math.sqrt(x.shape[0]))))
        centroids, cells = _fit_centroids(x, k)
        self.register_buffer("centroids", centroids, persistent=False)
        return cells, centroids.shape[0]

    def _scores(self, query: torch.Tensor) -> tuple[torch.Tensor, ...]:
        centroids = getattr(self, "centroids", None)
        if centroids is None:  # not refreshed yet: one cell
            return (query.new_zeros(query.shape[0], 1),)
        return (query @ centroids.T,)

    def _cell_mass(self, scores: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = scores[0] + self.log_cell_weight
        shift = logits.max(dim=1).values
        return (logits - shift[:, None]).exp(), shift

    def _cell_log_score(
        self, scores: tuple[torch.Tensor, ...], rows: torch.Tensor, cells: torch.Tensor
    ) -> torch.Tensor:
        return scores[0][rows, cells]


class ClusterPopularitySampler(ClusterSampler):
    """PRIS's cluster proposal with popularity weights (``cluster_pop``): w_i = (count_i +
    1)^alpha, so within a cluster popular items are drawn more (Lian et al., WWW 2020)."""

    weighted = True
    needs_popularity = True


class MIDXSampler(ModelBasedSampler):
    """MIDX, the inverted multi-index proposal of FastVAE, with uniform weights (``midx_uni``).

    Product quantisation: the d dimensions are split into two halves and k-means puts each half
    of the item vectors into K codewords, so item i sits in cell (k1(i), k2(i)) of a K x K
    index; q(i | query) is proportional to exp(q1 . c1_{k1(i)} + q2 . c2_{k2(i)}) x w_i, with
    q1, q2 the query's halves. The cell is drawn by inverting the cumulative distribution of the
    K x K cells in k1-major order, which is drawing k1 from its marginal and then k2 given k1
    (empty cells have zero mass); then the item within the cell proportional to w_i (here 1).
    K = ``sampler_clusters`` (None: the fourth root of the catalogue, 2 to 32, so that the K^2
    cells number about sqrt(items) as the clusters of ``cluster_uni`` do: 8 x 8 on ml-1m, the
    paper's 32 x 32 from a million items; the per-query cost grows with K^2).
    Reference: Chen, Lian et al., "Fast Variational AutoEncoder with Inverted Multi-Index for
    Collaborative Filtering" (WWW 2022).
    """

    def _fit(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        if x.shape[1] < 2:
            raise ModelError(
                f"sampler '{self.name}' splits item vectors in two halves; they have width {x.shape[1]}"
            )
        half = x.shape[1] // 2
        k = self.clusters or min(32, max(2, round(x.shape[0] ** 0.25)))
        first, cell1 = _fit_centroids(x[:, :half], k)
        second, cell2 = _fit_centroids(x[:, half:], k)
        self.half = half
        self.register_buffer("codewords1", first, persistent=False)
        self.register_buffer("codewords2", second, persistent=False)
        return cell1 * second.shape[0] + cell2, first.shape[0] * second.shape[0]

    def _scores(self, query: torch.Tensor) -> tuple[torch.Tensor, ...]:
        first = getattr(self, "codewords1", None)
        if first is None:  # not refreshed yet: one cell
            zero = query.new_zeros(query.shape[0], 1)
            return zero, zero
        return query[:, : self.half] @ first.T, query[:, self.half :] @ self.codewords2.T

    def _cell_mass(self, scores: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        # exp(s1 + s2 + log W) as a product of three exponentials of [n, K], [n, K] and [K, K]:
        # no exp over the n x K x K cells
        s1, s2 = scores
        weight = self.log_cell_weight.view(s1.shape[1], s2.shape[1])
        top1, top2, top = s1.max(dim=1).values, s2.max(dim=1).values, weight.max()
        e1, e2 = (s1 - top1[:, None]).exp(), (s2 - top2[:, None]).exp()
        mass = e1[:, :, None] * (weight - top).exp()[None] * e2[:, None, :]
        return mass.view(s1.shape[0], -1), top1 + top2 + top

    def _cell_log_score(
        self, scores: tuple[torch.Tensor, ...], rows: torch.Tensor, cells: torch.Tensor
    ) -> torch.Tensor:
        s1, s2 = scores
        return s1[rows, cells // s2.shape[1]] + s2[rows, cells % s2.shape[1]]


class MIDXPopularitySampler(MIDXSampler):
    """MIDX with popularity weights (``midx_pop``): w_i = (count_i + 1)^alpha within each cell
    (Chen, Lian et al., WWW 2022)."""

    weighted = True
    needs_popularity = True


SAMPLERS: dict[str, type[Sampler]] = {
    "uniform": UniformSampler,
    "popularity": PopularitySampler,
    "cluster_uni": ClusterSampler,
    "cluster_pop": ClusterPopularitySampler,
    "midx_uni": MIDXSampler,
    "midx_pop": MIDXPopularitySampler,
}


def build_sampler(
    name: str, num_items: int, popularity: torch.Tensor | None = None, **options: Any
) -> Sampler:
    """Sampler by config name; ``popularity`` [num_items] holds training counts (needed by
    "popularity", "cluster_pop" and "midx_pop"); ``options`` go to the constructor (``alpha``,
    ``clusters``)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}'; valid samplers: {', '.join(SAMPLERS)}")
    cls = SAMPLERS[name]
    if cls.needs_popularity and popularity is None:
        raise ConfigError(f"the '{name}' sampler needs item popularity counts")
    try:
        if cls.needs_popularity or issubclass(cls, ModelBasedSampler):
            return cls(num_items, popularity=popularity, **options)
        return cls(num_items, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for sampler '{name}': {exc}") from None
