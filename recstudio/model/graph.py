"""Sparse graph operators shared by graph models (LightGCN, NGCF, SGL, SimGCL, NCL, DiffNet ...).

A graph model multiplies dense embedding tables by a fixed sparse matrix built once from the
training data: the normalised user–item bipartite adjacency, a user–user social graph, a
user -> item mean aggregation. This module builds those matrices from edge lists with tensor ops
(no Python loop per edge) and multiplies by them on CPU and CUDA alike.

- ``bipartite_edges``: the undirected user–item graph of interactions as (row, col) node pairs,
  users first (node u) then items (node num_users + i), each pair once, both directions.
- ``symmetric_norm`` / ``row_norm``: edge values of D^-1/2 A D^-1/2 and D^-1 A; nodes without
  edges (the padding ids) get nothing, not a division by zero.
- ``SparseMatrix``: a fixed sparse matrix as an ``nn.Module`` whose CSR parts are
  non-persistent buffers, so ``model.to(device)`` moves it, checkpoints do not store it (it is
  rebuilt from the data) and DDP only ever sees dense buffers. Calling it multiplies a dense
  [n_cols, d] tensor, with a backward through the stored transpose (the matrix itself when it is
  symmetric).
- ``normalized_adjacency``: LightGCN's D^-1/2 A D^-1/2 of the interaction graph as a
  ``SparseMatrix``; ``mean_of_layers``: LightGCN's propagation, the mean of A^k x for k = 0..K;
  ``layer_outputs``: the single layers, optionally with SimGCL's noise (``perturb``) per layer.
- ``dropout_adjacency``: SGL's augmented views, the normalised adjacency of a random subgraph
  (edge or node dropout), rebuilt as a new ``SparseMatrix`` once per epoch per view.
- ``SparseMatrix.forward(x, value=...)`` / ``dropout(p)``: the same positions with other entries
  (NGCF's node dropout, LightGCL's edge dropout, DGCF's per-intent weights), backward through the
  matching transpose (``t_perm``). ``symmetric_norm`` also normalises [E, K] weightings at once.
- ``LowRankBipartite``: the rank-q SVD of the normalised user–item block (LightGCL's view);
  ``constraint_betas`` / ``item_item_topk``: UltraGCN's coefficients and item–item neighbours.
- ``PropagatedTwoTower``: the base of models whose towers come out of one propagation (LightGCN,
  NGCF, LightGCL, DGCF): one propagation per evaluation pass, LightGCN's BPR-Opt training step.

Why CSR parts, an embedding-bag product and a hand-written backward: on the project's 2-core
CPU, two layers of propagation over the ml-100k graph (2,519 nodes, 132,026 edges, d = 64)
forward and backward took 2.3-3.2 ms with a CSR tensor and this backward, 15-35 ms with
``torch.sparse.mm`` on a coalesced COO tensor, and 18-27 ms with CSR and autograd's own backward
(which transposes the CSR matrix on every step). Multiplying from the CSR parts with
``F.embedding_bag`` (``csr_product``) then cut each product another 2-3x (0.66 vs 1.93 ms, one
loaded core; ``benchmarks/README.md``, graph speed).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from recstudio.model.base import TwoTowerRecommender
from recstudio.model.ops import gather_rows, l2_normalize, sampled_inner_product_loss, sum_squared_rows


def bipartite_edges(
    user: torch.Tensor, item: torch.Tensor, num_users: int, num_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) int64 node ids of the undirected user–item graph of the interactions
    ``user``/``item`` [N]: user u is node u, item i is node ``num_users + i``; a repeated
    interaction is one edge; every edge appears in both directions (2E entries)."""
    key = torch.unique(user.long().cpu() * num_items + item.long().cpu())
    u, i = key // num_items, key % num_items + num_users
    return torch.cat([u, i]), torch.cat([i, u])


def _degree(index: torch.Tensor, value: torch.Tensor, n: int) -> torch.Tensor:
    """Row sums of the entries ``value`` [E] (or [E, K]: K weightings of the same edges) at
    rows ``index``, on ``value``'s device, differentiable in ``value``."""
    out = torch.zeros((n, *value.shape[1:]), dtype=value.dtype, device=value.device)
    return out.index_add(0, index.to(value.device), value)


def _inverse_power(degree: torch.Tensor, power: float) -> torch.Tensor:
    """degree^-power, 0 where the degree is 0 (isolated nodes such as padding)."""
    out = degree.clamp_min(torch.finfo(degree.dtype).tiny).pow(-power)
    return torch.where(degree > 0, out, torch.zeros_like(out))


def symmetric_norm(
    row: torch.Tensor, col: torch.Tensor, num_nodes: int, value: torch.Tensor | None = None
) -> torch.Tensor:
    """Edge values of D^-1/2 A D^-1/2 (A's entries ``value``, default 1; D its row sums), the
    GCN normalisation (Kipf & Welling, ICLR 2017) that LightGCN uses without self-loops.

    ``value`` may be [E, K], K edge weightings normalised at once (DGCF's per-intent graphs);
    the result is differentiable in ``value`` and on its device."""
    value = torch.ones(row.shape[0], device=row.device) if value is None else value.float()
    row, col = row.to(value.device), col.to(value.device)
    d = _inverse_power(_degree(row, value, num_nodes), 0.5)
    return d[row] * value * d[col]


def row_norm(
    row: torch.Tensor, col: torch.Tensor, num_rows: int, value: torch.Tensor | None = None
) -> torch.Tensor:
    """Edge values of D^-1 A: each row sums to 1 (the mean over a node's neighbours)."""
    value = torch.ones(row.shape[0]) if value is None else value.float()
    return _inverse_power(_degree(row, value, num_rows), 1.0)[row] * value


def _csr_parts(
    row: torch.Tensor, col: torch.Tensor, value: torch.Tensor, num_rows: int, num_cols: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow_indices, col_indices, values) of the [num_rows, num_cols] matrix with entries
    ``value`` at (row, col); entries at the same position are summed."""
    key = row.long() * num_cols + col.long()
    key, inverse = torch.unique(key, return_inverse=True)  # sorted by (row, col)
    summed = torch.zeros(key.shape[0], dtype=value.dtype).index_add_(0, inverse, value)
    crow = torch.zeros(num_rows + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(key // num_cols, minlength=num_rows), 0, out=crow[1:])
    return crow, key % num_cols, summed


CsrParts = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(crow_indices [rows + 1], col_indices [nnz], values [nnz]) of a CSR matrix."""


def csr_product(parts: CsrParts, x: torch.Tensor) -> torch.Tensor:
    """``M @ x`` [rows, d] for M given by its CSR ``parts`` and dense x [cols, d], as one
    weighted embedding-bag sum: row r of the result sums ``value[k] * x[col[k]]`` over its
    entries k, the bags delimited by ``crow``. Rows without entries are 0.

    Why not ``sparse_csr_tensor @ x``: the same product (same sums, float rounding aside) runs
    2-3x faster through ``F.embedding_bag`` on the project's CPU, one core: the ml-100k graph
    (2,519 nodes, 132k entries, d = 64) 0.66 vs 1.93 ms; an ml-1m-sized graph (1.5M entries)
    11.7 vs 31.9 ms at d = 64, 67 vs 118 ms at d = 256; 4M entries 231 vs 625 ms
    (``benchmarks/README.md``, graph speed). ``embedding_bag`` is a fused kernel on CUDA too."""
    crow, col, value = parts
    flat = x.reshape(x.shape[0], -1)
    out = nn.functional.embedding_bag(
        col, flat, crow, mode="sum", per_sample_weights=value.to(flat.dtype), include_last_offset=True
    )
    return out.reshape(crow.shape[0] - 1, *x.shape[1:])


class _SpMM(torch.autograd.Function):
    """``M @ x`` whose gradient for ``x`` is ``M^T @ grad`` from a transpose built once
    (autograd's own backward of a sparse product transposes the matrix on every call)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, matrix: CsrParts, transposed: CsrParts) -> torch.Tensor:
        ctx.transposed = transposed
        return csr_product(matrix, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return csr_product(ctx.transposed, grad), None, None


class SparseMatrix(nn.Module):
    """A fixed sparse matrix [num_rows, num_cols]: ``m(x)`` is ``M @ x`` for dense x [num_cols, d].

    Stored as CSR parts in non-persistent buffers (they follow ``.to(device)``, stay out of
    checkpoints, and are dense tensors, which DDP can broadcast); ``csr_product`` multiplies
    from the parts directly. ``symmetric=True`` declares M = M^T, so the backward reuses M;
    otherwise the transpose's CSR parts are stored too.
    """

    def __init__(
        self,
        row: torch.Tensor,
        col: torch.Tensor,
        value: torch.Tensor,
        shape: tuple[int, int],
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        self.symmetric = symmetric
        if symmetric and self.shape[0] != self.shape[1]:
            raise ValueError(f"a symmetric matrix must be square, got shape {self.shape}")
        row, col, value = row.long().cpu(), col.long().cpu(), value.float().cpu()
        if row.numel() and (int(row.max()) >= self.shape[0] or int(col.max()) >= self.shape[1]):
            raise ValueError(f"edge index out of range for shape {self.shape}")
        parts = _csr_parts(row, col, value, *self.shape)
        for name, tensor in zip(("crow", "col", "value"), parts):
            self.register_buffer(name, tensor, persistent=False)
        if not symmetric:
            parts = _csr_parts(col, row, value, self.shape[1], self.shape[0])
            for name, tensor in zip(("t_crow", "t_col", "t_value"), parts):
                self.register_buffer(name, tensor, persistent=False)
        # entry k of M^T in CSR order is entry t_perm[k] of M: lets a call replace the values
        # (edge dropout) and still run the backward through the matching transpose
        stored_row = torch.repeat_interleave(torch.arange(self.shape[0]), torch.diff(self.crow))
        self.register_buffer("t_perm", torch.argsort(self.col * self.shape[0] + stored_row), persistent=False)

    @property
    def nnz(self) -> int:
        return int(self.value.numel())

    def parts(self, value: torch.Tensor | None = None) -> CsrParts:
        """M's CSR parts; with ``value`` (entries in M's CSR order) those entries instead."""
        return self.crow, self.col, self.value if value is None else value

    def transposed_parts(self, value: torch.Tensor | None = None) -> CsrParts:
        """M^T's CSR parts (M's own when symmetric); with ``value`` (entries in M's CSR order,
        see ``forward``) the transpose of that matrix."""
        crow, col = (self.crow, self.col) if self.symmetric else (self.t_crow, self.t_col)
        if value is not None:
            return crow, col, value[self.t_perm]
        return crow, col, self.value if self.symmetric else self.t_value

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """M as a sparse CSR tensor on the buffers' device (for inspection and tests)."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(self.crow, self.col, self.value.to(dtype), self.shape)

    def to_dense(self) -> torch.Tensor:
        return self.matrix().to_dense()

    def dropout(self, p: float) -> torch.Tensor:
        """The stored entries with each one zeroed with probability ``p`` and the rest scaled by
        1 / (1 - p) (NGCF's node dropout / LightGCL's edge dropout on the normalised matrix);
        pass the result to ``forward(x, value=...)``."""
        return nn.functional.dropout(self.value, p, training=True)

    def forward(self, x: torch.Tensor, value: torch.Tensor | None = None) -> torch.Tensor:
        """``M @ x`` [num_rows, d] for x [num_cols, d], differentiable in x. ``value``: other
        entries for the same positions (M's CSR order, e.g. ``dropout(p)``), no gradient."""
        if x.shape[0] != self.shape[1]:
            raise ValueError(f"cannot multiply a {self.shape} matrix by x of shape {tuple(x.shape)}")
        value = None if value is None else value.detach()
        if not (torch.is_grad_enabled() and x.requires_grad):
            return csr_product(self.parts(value), x)
        return _SpMM.apply(x, self.parts(value), self.transposed_parts(value))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, nnz={self.nnz}, symmetric={self.symmetric}"


def normalized_adjacency(
    user: torch.Tensor, item: torch.Tensor, num_users: int, num_items: int
) -> SparseMatrix:
    """D^-1/2 A D^-1/2 of the user–item bipartite graph of the interactions ``user``/``item``
    (nodes as in ``bipartite_edges``), as a symmetric ``SparseMatrix`` of side
    ``num_users + num_items``. Padding ids (no interactions) are isolated nodes."""
    n = num_users + num_items
    row, col = bipartite_edges(user, item, num_users, num_items)
    return SparseMatrix(row, col, symmetric_norm(row, col, n), (n, n), symmetric=True)


def split_nodes(table: torch.Tensor, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(user rows, item rows) of a node table [num_users + num_items, ...].

    ``split`` rather than two slices: in the backward, two slices each zero-fill and copy a
    gradient of the whole table, ``split`` concatenates the two parts once (~1.5 ms of a ~25 ms
    NGCF step on the 2-core CPU)."""
    users, items = table.split([num_users, table.shape[0] - num_users])
    return users, items


def mean_of_layers(propagate: nn.Module, x: torch.Tensor, num_layers: int) -> torch.Tensor:
    """(x + A x + A^2 x + ... + A^K x) / (K + 1) with ``propagate(x) = A x``: LightGCN's layer
    combination with alpha_k = 1 / (K + 1) (He et al., SIGIR 2020, eq. 4)."""
    total, h = x, x
    for _ in range(num_layers):
        h = propagate(h)
        total = total + h
    return total / (num_layers + 1)


def layer_outputs(
    propagate: nn.Module | Sequence[nn.Module], x: torch.Tensor, num_layers: int, noise_eps: float = 0.0
) -> list[torch.Tensor]:
    """The layers [x, A x, A^2 x, ..., A^K x] of a LightGCN-style propagation, for models that
    combine or contrast single layers (SimGCL, XSimGCL, NCL). ``propagate`` is one operator, or
    one per layer (SGL's random-walk views). With ``noise_eps > 0`` every propagated layer is
    perturbed by ``perturb`` before the next one (SimGCL's noisy views)."""
    layers, h = [x], x
    for k in range(num_layers):
        step = propagate[k] if isinstance(propagate, Sequence | nn.ModuleList) else propagate
        h = step(h)
        if noise_eps > 0:
            h = perturb(h, noise_eps)
        layers.append(h)
    return layers


def perturb(x: torch.Tensor, eps: float) -> torch.Tensor:
    """SimGCL's uniform noise (Yu et al., SIGIR 2022, eq. 7): ``x + eps * sign(x) * n / |n|``
    with n ~ U(0, 1)^d per row: each row moves by exactly ``eps`` (L2), into the hyperoctant
    of x, so the noise rotates an embedding by a small angle and never flips a coordinate.
    The shift is a constant for autograd (sign' = 0: the gradient reaches x unchanged), built in
    place without a graph: the same values and gradients as ``x + eps * sign(x) * noise``, 1.7x
    faster forward and backward on one CPU core (9,746 x 64, ml-1m's nodes)."""
    with torch.no_grad():
        shift = l2_normalize(torch.rand_like(x), dim=-1).mul_(torch.sign(x)).mul_(eps)
    return x + shift


EDGE_CPU_BLOCK_ELEMENTS = 1 << 21
"""Gathered floats per edge block of ``edge_dot`` on CPU (8 MB per operand): below glibc's
mmap threshold, so the blocks reuse memory instead of faulting fresh pages in every time."""
EDGE_BLOCK_ELEMENTS = 1 << 26
"""Gathered floats per edge block on other devices: few, large kernels."""


@torch.no_grad()
def edge_dot(a: torch.Tensor, b: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Per-edge inner products over the last dimension, ``(a[row] * b[col]).sum(-1)`` for node
    tables a, b [N, ...] and edges (row, col) [E]: [E, ...] without autograd. Computed in edge
    blocks, so the [E, ..., d] gathers are never materialised whole: the same values, 4x faster
    on one CPU core for DGCF's ml-1m routing (1.6M edges x 4 intents x 16: 1,222 -> 301 ms)."""
    width = max(1, a[0].numel())
    budget = EDGE_CPU_BLOCK_ELEMENTS if a.device.type == "cpu" else EDGE_BLOCK_ELEMENTS
    block = max(1, budget // width)
    out = a.new_empty((row.shape[0], *a.shape[1:-1]))
    for start in range(0, row.shape[0], block):
        stop = start + block
        product = a.index_select(0, row[start:stop]).mul_(b.index_select(0, col[start:stop]))
        torch.sum(product, -1, out=out[start:stop])
    return out


def dropout_adjacency(
    user: torch.Tensor,
    item: torch.Tensor,
    num_users: int,
    num_items: int,
    ratio: float,
    mode: str = "edge",
    generator: torch.Generator | None = None,
) -> SparseMatrix:
    """SGL's augmented graph (Wu et al., SIGIR 2021, section 3.1): D^-1/2 A' D^-1/2 of a random
    subgraph of the interaction graph, renormalised over what is kept, as a symmetric
    ``SparseMatrix`` (nodes as in ``bipartite_edges``).

    ``mode="edge"``: keep floor(E * (1 - ratio)) of the E distinct user–item edges, drawn
    without replacement (a dropped edge goes in both directions). ``mode="node"``: drop
    floor(num_users * ratio) users and floor(num_items * ratio) items with all their edges.
    Tensor code on CPU (``generator`` draws the sample); move the result with ``.to(device)``.
    """
    if mode not in ("edge", "node"):
        raise ValueError(f"mode must be 'edge' or 'node', got {mode!r}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    row, col = bipartite_edges(user, item, num_users, num_items)
    half = row.shape[0] // 2
    user, item = row[:half], col[:half] - num_users  # each distinct edge once
    if mode == "edge":
        keep = torch.randperm(half, generator=generator)[: int(half * (1.0 - ratio))]
    else:
        dropped_users = torch.zeros(num_users, dtype=torch.bool)
        dropped_users[torch.randperm(num_users, generator=generator)[: int(num_users * ratio)]] = True
        dropped_items = torch.zeros(num_items, dtype=torch.bool)
        dropped_items[torch.randperm(num_items, generator=generator)[: int(num_items * ratio)]] = True
        keep = ~(dropped_users[user] | dropped_items[item])
    return normalized_adjacency(user[keep], item[keep], num_users, num_items)


def normalized_biadjacency(
    user: torch.Tensor, item: torch.Tensor, num_users: int, num_items: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(user ids, item ids, values) of the user–item block R̂ = D_u^-1/2 R D_i^-1/2 of the
    normalised adjacency (``normalized_adjacency`` is [[0, R̂], [R̂^T, 0]]), each edge once."""
    row, col = bipartite_edges(user, item, num_users, num_items)
    value = symmetric_norm(row, col, num_users + num_items)
    keep = row < num_users
    return row[keep], col[keep] - num_users, value[keep]


class LowRankBipartite(nn.Module):
    """The rank-q truncated SVD R̃ = U S V^T of the normalised user–item block R̂ (randomised:
    ``torch.svd_lowrank``, Halko et al. 2011), applied as the bipartite matrix [[0, R̃], [R̃^T, 0]]
    to node embeddings [num_users + num_items, d] in two thin products (LightGCL's SVD view,
    Cai et al., ICLR 2023). Computed once from the training interactions; the factors are
    non-persistent buffers (rebuilt from the data, moved with the model)."""

    def __init__(
        self, user: torch.Tensor, item: torch.Tensor, num_users: int, num_items: int, rank: int
    ) -> None:
        super().__init__()
        if not 1 <= rank <= min(num_users, num_items):
            raise ValueError(f"rank must be in 1..{min(num_users, num_items)}, got {rank}")
        self.num_users, self.rank = num_users, rank
        u_id, i_id, value = normalized_biadjacency(user, item, num_users, num_items)
        r = torch.sparse_coo_tensor(torch.stack([u_id, i_id]), value, (num_users, num_items)).coalesce()
        u, s, v = torch.svd_lowrank(r, q=rank)
        for name, tensor in (("u", u), ("v", v), ("s", s)):
            self.register_buffer(name, tensor.contiguous(), persistent=False)

    def block(self) -> torch.Tensor:
        """R̃ [num_users, num_items], dense (for tests and inspection)."""
        return (self.u * self.s) @ self.v.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[[0, R̃], [R̃^T, 0]] @ x for x [num_users + num_items, d]."""
        x_u, x_i = split_nodes(x, self.num_users)
        return torch.cat([(self.u * self.s) @ (self.v.T @ x_i), (self.v * self.s) @ (self.u.T @ x_u)])


def constraint_betas(row_degree: torch.Tensor, col_degree: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """UltraGCN's constraint coefficients (Mao et al., CIKM 2021, eq. 6) as row and column
    factors, beta_ij = beta_row[i] * beta_col[j] = sqrt(d_i + 1) / d_i * 1 / sqrt(d_j + 1),
    the limit of infinitely many graph-convolution layers; rows of degree 0 get 0."""
    row_degree, col_degree = row_degree.float(), col_degree.float()
    beta_row = (row_degree + 1).sqrt() / row_degree.clamp_min(1)
    beta_row = torch.where(row_degree > 0, beta_row, torch.zeros_like(beta_row))
    return beta_row, (col_degree + 1).rsqrt()


def item_item_topk(
    user: torch.Tensor,
    item: torch.Tensor,
    num_users: int,
    num_items: int,
    k: int,
    block_elements: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """UltraGCN's item–item constraint graph (Mao et al., CIKM 2021, section 3.3): with the
    co-occurrence counts G = R^T R (diagonal kept, as in the authors' code) and g_i = sum_j G_ij,
    the weight w_ij = G_ij / g_i * sqrt((g_i + 1) / (g_j + 1)); each item keeps its ``k``
    largest. Returns (neighbours [num_items, k] long, weights [num_items, k]); rows of items
    without interactions (padding) have weight 0.

    Tensor code over blocks of items: G's rows for a block are R^T times the block's dense
    columns of R (a sparse product), so memory stays at ``block_elements`` (num_items x block),
    not num_items^2.
    """
    key = torch.unique(user.long().cpu() * num_items + item.long().cpu())
    u, i = key // num_items, key % num_items
    user_degree = torch.bincount(u, minlength=num_users).float()
    g = torch.zeros(num_items).index_add_(0, i, user_degree[u])  # g_i = sum_{u in N(i)} d_u
    beta_row, beta_col = constraint_betas(g, g)
    k = min(k, num_items)
    items_by_users = SparseMatrix(i, u, torch.ones(i.shape[0]), (num_items, num_users))  # R^T
    block = max(1, block_elements // max(1, num_items))
    neighbours = torch.empty(num_items, k, dtype=torch.long)
    weights = torch.empty(num_items, k)
    for start in range(0, num_items, block):
        stop = min(start + block, num_items)
        cols = torch.zeros(num_users, stop - start)
        inside = (i >= start) & (i < stop)
        cols[u[inside], i[inside] - start] = 1.0
        rows = items_by_users(cols).T  # G[start:stop, :]
        rows = rows * beta_row[start:stop, None] * beta_col[None, :]
        weights[start:stop], neighbours[start:stop] = torch.topk(rows, k, dim=1)
    return neighbours, weights


class PropagatedTwoTower(TwoTowerRecommender):
    """A two-tower model whose user and item vectors come out of one propagation over the whole
    graph (``propagate() -> (users [num_users, d], items [num_items, d])``): an evaluation pass
    propagates once in ``prepare_evaluation`` and every block reads the cached tables; a
    training step propagates once and gathers its batch's rows.

    The default ``training_loss`` is LightGCN's: the configured ranking loss of the propagated
    vectors plus ``config.reg_weight`` times the squared layer-0 rows the loss scored (tables
    ``user_emb`` / ``item_emb``), over the batch size (BPR-Opt), plus ``auxiliary_loss``.
    """

    user_emb: nn.Embedding
    item_emb: nn.Embedding

    def auxiliary_loss(
        self, batch: dict[str, torch.Tensor], users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor | None:
        """A model's further loss term from the step's propagated tables (default: none)."""
        return None

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user_table, item_table = self.propagate()
        loss = self.propagated_ranking_loss(batch, user_table, item_table)
        extra = self.auxiliary_loss(batch, user_table, item_table)
        return loss if extra is None else loss + extra

    def propagated_ranking_loss(
        self, batch: dict[str, torch.Tensor], user_table: torch.Tensor, item_table: torch.Tensor
    ) -> torch.Tensor:
        """The ranking loss of final tables [num_users, d] / [num_items, d] plus the BPR-Opt
        penalty on the layer-0 rows it scored (the graph contrastive models score their own
        propagations with it)."""
        users, pos = batch["user"], batch["item"]
        kind = self.fused_loss_kind(user_table)
        if kind is not None:
            # the native kernel reads the batch's user rows from the table (``query_index``):
            # no [N, d] query and no scatter of its gradient (N = 2048 rows against NGCF's 944
            # users on ml-100k); the same value and gradients as gathering first
            drawn_from = user_table[users].detach() if self.needs_query_for_negatives else None
            scored = self.candidate_ids(drawn_from, pos, batch.get("neg_item"), users, item_table)
            loss = sampled_inner_product_loss(
                user_table, item_table, scored, kind, padding_idx=None, query_index=users
            )
        else:
            query = gather_rows(user_table, users)
            loss, scored = self.scored_ranking_loss(
                query, pos, batch.get("neg_item"), users, items=item_table
            )
        reg_weight = self.config.reg_weight
        if reg_weight > 0:
            reg = sum_squared_rows(self.user_emb.weight, users)
            reg = reg + sum_squared_rows(self.item_emb.weight, scored)
            loss = loss + reg_weight * reg / pos.shape[0]
        return loss

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def prepare_evaluation(self) -> None:
        """One propagation per evaluation pass; every block reads these tables."""
        self.eval_cache["users"], self.eval_cache["items"] = self.propagate()

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        table = self.eval_cache.get("users")
        return (table if table is not None else self.propagate()[0])[users]

    def item_vectors(self) -> torch.Tensor:
        table = self.eval_cache.get("items")
        return table if table is not None else self.propagate()[1]
