"""WRMF: weighted regularised matrix factorisation by alternating least squares.

Hu, Koren, Volinsky. "Collaborative Filtering for Implicit Feedback Datasets." ICDM 2008.
Every (user, item) cell has a preference ``p = 1`` if observed else 0 and a confidence
``c = 1 + alpha * r``; the objective is

    sum_{u,i} c_ui (p_ui - x_u^T y_i)^2 + lambda (sum_u |x_u|^2 + sum_i |y_i|^2).

With the item factors Y fixed it is a ridge regression per user with the closed form
``x_u = (Y^T C_u Y + lambda I)^-1 Y^T C_u p_u``; the paper's trick writes
``Y^T C_u Y = Y^T Y + Y^T (C_u - I) Y`` so only the user's observed items cost anything beyond
the shared Gram matrix. The "als" view hands a block of users (then of items) to each
``training_step``, which solves that block exactly with batched tensor code. There is no
gradient: the factors are parameters with ``requires_grad=False`` and optimisation is manual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TowerFreeRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.registry import register


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, ...]:
    """(indptr [n_rows+1], cols, vals) with entries grouped by row (stable order within a row)."""
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=n_rows)
    indptr = torch.zeros(n_rows + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=indptr[1:])
    return indptr, cols[order].contiguous(), vals[order].contiguous()


def _accumulate_rows(
    A: torch.Tensor,
    rhs: torch.Tensor,
    fixed: torch.Tensor,
    cols: torch.Tensor,
    extra: torch.Tensor,
    starts: torch.Tensor,
    lens: torch.Tensor,
    chunk_elements: int,
) -> None:
    """Write ``F_r^T diag(extra) F_r`` to ``A[r]`` and ``F_r^T (1 + extra)`` to ``rhs[r]`` for every
    non-empty block row r, whose entries are ``cols/extra[starts[r] : starts[r] + lens[r]]``."""
    d = fixed.shape[1]
    rows_all = torch.arange(lens.shape[0], device=lens.device)
    nonempty = lens > 0
    bucket = torch.zeros_like(lens)
    bucket[nonempty] = torch.log2(lens[nonempty].double()).ceil().long()
    for k in torch.unique(bucket[nonempty]).tolist():
        rows = rows_all[nonempty & (bucket == k)]
        per_chunk = max(1, chunk_elements // ((1 << k) * d))
        for s in range(0, rows.shape[0], per_chunk):
            r = rows[s : s + per_chunk]
            n = lens[r]
            width = int(n.max())
            offsets = torch.arange(width, device=lens.device)
            valid = offsets[None, :] < n[:, None]  # [m, L]
            pos = torch.where(valid, starts[r][:, None] + offsets[None, :], 0)
            mask = valid.to(fixed.dtype)
            f = fixed[cols[pos]] * mask[..., None]  # [m, L, d], zero rows on padding
            w = extra[pos].to(fixed.dtype) * mask  # c - 1 on entries, 0 on padding
            # every row lies in exactly one chunk: plain writes, no scatter-add
            A[r] = torch.bmm(f.transpose(1, 2), f * w[..., None])
            rhs[r] = torch.bmm((w + mask)[:, None, :], f).squeeze(1)


@register
class WRMF(TowerFreeRecommender):
    """Implicit-feedback matrix factorisation solved exactly block by block (ALS)."""

    family: ClassVar[str] = "general"
    contract: ClassVar[DataContract] = DataContract(inputs=(TrainInput("als"),))
    description: ClassVar[str] = (
        "Weighted implicit-feedback matrix factorisation by alternating least squares (Hu et al., ICDM 2008)."
    )

    @dataclass
    class Config:
        embed_dim: int = 64
        alpha: float = 10.0
        """Confidence slope: c = 1 + alpha * rating for observed cells, 1 elsewhere."""
        reg_weight: float = 50.0
        """lambda, the L2 penalty on user and item factors. Too large a value for the data's
        confidence mass collapses the factors to zero; tune it together with alpha."""
        init_std: float = 0.01
        """Standard deviation of the normal initialisation of the factors."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128, 256]},
        "alpha": {"type": "float", "low": 0.5, "high": 100.0, "log": True},
        "reg_weight": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
    }
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"epochs": 20, "early_stop_patience": 5}}

    chunk_elements: ClassVar[int] = 1 << 24
    """Upper bound on the gathered factor elements (padded entries x dim) held at once (64 MiB)."""

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self.automatic_optimization = False
        d = config.embed_dim
        self.user_factors = nn.Parameter(
            torch.randn(data.num_users, d) * config.init_std, requires_grad=False
        )
        self.item_factors = nn.Parameter(
            torch.randn(data.num_items, d) * config.init_std, requires_grad=False
        )
        with torch.no_grad():
            self.user_factors[0].zero_()
            self.item_factors[0].zero_()
        train = data.train
        # alpha * r: the extra confidence of an observed cell (c - 1)
        extra = config.alpha * train.rating.float()
        for name, (indptr, cols, vals) in {
            "user": _csr(train.user, train.item, extra, data.num_users),
            "item": _csr(train.item, train.user, extra, data.num_items),
        }.items():
            self.register_buffer(f"{name}_indptr", indptr, persistent=False)
            self.register_buffer(f"{name}_cols", cols, persistent=False)
            self.register_buffer(f"{name}_extra", vals, persistent=False)
        self._gram: tuple[int, torch.Tensor] | None = None  # (side it serves, Gram of the fixed side)

    # ------------------------------------------------------------------ ALS
    @torch.no_grad()
    def solve_block(self, side: int, ids: torch.Tensor) -> None:
        """Set the factors of ``ids`` (side 0: users, 1: items) to their exact least-squares
        solution given the other side's factors.

        For each row r in the block: ``A_r = F^T F + F_r^T (C_r - I) F_r + lambda I`` and
        ``b_r = F_r^T C_r p_r``, where F_r holds the factors of the row's observed entries (its
        CSR slice). The per-row sums are batched matrix products over padded slices: rows are
        bucketed by length (powers of two, so padding at most doubles the work) and each bucket
        is cut into chunks of at most ``chunk_elements`` gathered factor elements; this avoids
        materialising one d x d outer product per interaction. Then one batched Cholesky solve
        for the block.
        """
        if side == 0:
            target, fixed = self.user_factors, self.item_factors
            indptr, cols, extra = self.user_indptr, self.user_cols, self.user_extra
        else:
            target, fixed = self.item_factors, self.user_factors
            indptr, cols, extra = self.item_indptr, self.item_cols, self.item_extra
        ids = ids.to(indptr.device).long()
        d = fixed.shape[1]
        if self._gram is None or self._gram[0] != side:
            self._gram = (side, fixed.T @ fixed)
        gram = self._gram[1]

        starts = indptr[ids]
        lens = indptr[ids + 1] - starts
        total = int(lens.sum())
        b = ids.shape[0]
        A = torch.zeros(b, d, d, device=fixed.device, dtype=fixed.dtype)
        rhs = torch.zeros(b, d, device=fixed.device, dtype=fixed.dtype)
        if total > 0:
            _accumulate_rows(A, rhs, fixed, cols, extra, starts, lens, self.chunk_elements)
        shared = gram.clone()
        shared.diagonal().add_(self.config.reg_weight)
        A += shared
        # A is symmetric positive definite (lambda > 0): Cholesky, with LU as the fallback when
        # rounding breaks definiteness (tiny lambda)
        chol, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            solution = torch.linalg.solve(A, rhs.unsqueeze(-1)).squeeze(-1)
        else:
            solution = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        solution[ids == 0] = 0.0  # padding keeps a zero vector
        target[ids] = solution
        # the cached Gram (of the fixed side) stays valid for the next block of this side; it is
        # recomputed when the view switches sides, since then the factors just solved are fixed.

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._gram = None  # factors may have changed outside training_step (e.g. a checkpoint load)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        side, ids = int(batch["side"]), batch["ids"]
        self.solve_block(side, ids)
        try:
            world_size = self.trainer.world_size
        except RuntimeError:  # stepped outside a Trainer (tests, direct fits)
            world_size = 1
        if world_size > 1:
            # under DDP each rank solved its own block (the als view gives every rank blocks of
            # equal size): share the solved rows so all replicas keep identical factors.
            target = self.user_factors if side == 0 else self.item_factors
            with torch.no_grad():
                all_ids = self.all_gather(ids.to(target.device)).reshape(-1)
                all_rows = self.all_gather(target[ids]).reshape(-1, target.shape[1])
                target[all_ids] = all_rows
        return None

    @torch.no_grad()
    def weighted_loss(self) -> torch.Tensor:
        """The full WRMF objective (all cells, unobserved ones with c = 1), without forming the
        dense matrix: ``sum_all s^2 = trace(X^T X Y^T Y)`` plus corrections on observed cells."""
        X, Y = self.user_factors, self.item_factors
        dense_part = (X.T @ X * (Y.T @ Y)).sum()
        rows = torch.repeat_interleave(
            torch.arange(self.num_users, device=X.device), self.user_indptr[1:] - self.user_indptr[:-1]
        )
        s = (X[rows] * Y[self.user_cols]).sum(1)
        c = 1.0 + self.user_extra
        observed = (c * (1.0 - s).pow(2) - s.pow(2)).sum()
        reg = self.config.reg_weight * (X.pow(2).sum() + Y.pow(2).sum())
        return dense_part + observed + reg

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError("WRMF is fitted by exact ALS steps in training_step")

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_factors[batch["user"]] @ self.item_factors.T
