"""EASE: embarrassingly shallow autoencoder, an item-item linear model in closed form.

Steck. "Embarrassingly Shallow Autoencoders for Sparse Data." WWW 2019. Learn an item-item weight
matrix B minimising ``|X - X B|_F^2 + lambda |B|_F^2`` subject to ``diag(B) = 0`` (so an item
cannot predict itself). The Lagrangian gives the closed form

    P = (X^T X + lambda I)^-1,   B = I - P diag(1 / diag(P)),  i.e. B_ij = -P_ij / P_jj, B_jj = 0.

It is fitted once in ``fit_closed_form`` (one Gram matrix and one Cholesky inverse of size
num_items^2); there is nothing to train, so one epoch with no optimiser suffices and the
pipeline's validation of that epoch picks the checkpoint. Scores are ``x_u B``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TowerFreeRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.registry import register


def ease_weights(gram: torch.Tensor, reg_weight: float) -> torch.Tensor:
    """EASE's closed-form B from the item Gram matrix ``X^T X`` (float64 for a stable inverse)."""
    g = gram.double().clone()
    g.diagonal().add_(reg_weight)
    # cholesky_solve against I is markedly faster than cholesky_inverse or inv on CPU
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    p = torch.cholesky_solve(eye, torch.linalg.cholesky(g))
    b = -p / p.diagonal()[None, :]
    b.diagonal().zero_()
    return b


@register
class EASE(TowerFreeRecommender):
    """Closed-form item-item regression with a zero diagonal."""

    family: ClassVar[str] = "general"
    contract: ClassVar[DataContract] = DataContract(inputs=(TrainInput("user"),))
    description: ClassVar[str] = "Closed-form item-item autoencoder with zero diagonal (Steck, WWW 2019)."

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {"reg_weight": "> 0"}
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        reg_weight: float = 250.0
        """lambda, the L2 penalty on B (the paper finds a few hundred works on MovieLens-sized data)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "reg_weight": {"type": "float", "low": 1.0, "high": 1e4, "log": True},
    }
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"epochs": 1, "early_stop_patience": 0}}

    gram_chunk_entries: ClassVar[int] = 1 << 22
    """Interactions turned into a dense user-chunk at once while building X^T X."""

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self.automatic_optimization = False  # nothing to optimise
        # persistent, so the pipeline's best checkpoint carries the fitted weights
        self.register_buffer("item_weights", torch.zeros(data.num_items, data.num_items))

    @torch.no_grad()
    def fit_closed_form(self, data: PreparedData) -> None:
        """Compute B on the device of the model from the binary train matrix."""
        device = self.item_weights.device
        n_items = self.num_items
        users, items = data.train.user.to(device), data.train.item.to(device)
        # binary X (duplicates count once): unique (user, item) pairs, already user-sorted
        key = torch.unique(users * n_items + items)
        users, items = key // n_items, key % n_items
        gram = torch.zeros(n_items, n_items, device=device)
        # X^T X = sum over users of outer products of their item sets; build it from dense
        # chunks of consecutive users so the memory stays at chunk_users * n_items.
        user_ids, counts = torch.unique_consecutive(users, return_counts=True)
        chunk_users = max(1, self.gram_chunk_entries // max(1, n_items))
        offsets = torch.zeros(counts.numel() + 1, dtype=torch.long, device=device)
        torch.cumsum(counts, 0, out=offsets[1:])
        for s in range(0, user_ids.numel(), chunk_users):
            e = min(s + chunk_users, user_ids.numel())
            lo, hi = int(offsets[s]), int(offsets[e])
            local = torch.repeat_interleave(torch.arange(e - s, device=device), counts[s:e])
            x = torch.zeros(e - s, n_items, device=device)
            x[local, items[lo:hi]] = 1.0
            gram.addmm_(x.T, x)
        self.item_weights.copy_(ease_weights(gram, self.config.reg_weight).to(self.item_weights.dtype))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        return None

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError("EASE is fitted in closed form by fit_closed_form")

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["history_mask"].to(self.item_weights.dtype) @ self.item_weights
