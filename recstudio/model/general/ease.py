"""EASE: embarrassingly shallow autoencoder, an item-item linear model in closed form.

Steck. "Embarrassingly Shallow Autoencoders for Sparse Data." WWW 2019. Learn an item-item weight
matrix B minimising ``|X - X B|_F^2 + lambda |B|_F^2`` subject to ``diag(B) = 0`` (so an item
cannot predict itself). The Lagrangian gives the closed form

    P = (X^T X + lambda I)^-1,   B = I - P diag(1 / diag(P)),  i.e. B_ij = -P_ij / P_jj, B_jj = 0.

It is fitted once in ``fit_closed_form`` (one Gram matrix and one Cholesky inverse of size
num_items^2; ``recstudio.model.itemitem`` holds what EASE, ItemKNN and SLIM share); there is
nothing to train, so one epoch with no optimiser suffices and the pipeline's validation of that
epoch picks the checkpoint. Scores are ``x_u B``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from recstudio.model.itemitem import ItemItemRecommender
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
class EASE(ItemItemRecommender):
    """Closed-form item-item regression with a zero diagonal."""

    family: ClassVar[str] = "general"
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

    def fit_weights(self, gram: torch.Tensor) -> torch.Tensor:
        return ease_weights(gram, self.config.reg_weight)
