"""SLIM: sparse linear item-item model with an ElasticNet penalty.

Ning, Karypis. "SLIM: Sparse Linear Methods for Top-N Recommender Systems." ICDM 2011. Each
item's column w_j of the item-item matrix W regresses the item's binary user column on the other
items' columns,

    min_{w_j >= 0, w_jj = 0}  1/(2n) |x_j - X w_j|^2 + alpha * l1_ratio * |w_j|_1
                              + 0.5 * alpha * (1 - l1_ratio) * |w_j|^2,

(n = number of users), and scores are ``x_u W``. This is scikit-learn's ElasticNet convention,
which RecBole's SLIMElastic fits item by item; the defaults are RecBole 1.2.1's (alpha = 0.2,
l1_ratio = 0.02, positive_only, hide_item: the zero diagonal).

How it runs here: the objective only involves X through its Gram matrix G = X^T X, and the
columns are independent, so all of them are solved at once by proximal gradient descent on the
whole matrix, ``W <- prox(W - (G W - G) / (n L) - l2 W / L)``, where the prox is the non-negative
soft threshold ``max(0, v - l1 / L)`` with the diagonal set to 0 (the exact projection of the
hide_item constraint). It is accelerated (FISTA) with adaptive restart (O'Donoghue & Candes
2015), L = lambda_max(G) / n + l2 by power iteration; the iterations stop when the largest
change of W falls below ``tol`` times its largest entry, or after ``max_iter``. One iteration
is one num_items^3 matrix product on the training device. Fitted in ``fit_closed_form``;
nothing is trained (one epoch, no optimiser), like EASE.

Departures, on purpose: the paper and RecBole use coordinate descent per item (sklearn); the
problem is strictly convex (l2 > 0), so both reach the same W up to the solver's tolerance;
``tests/test_models_knn.py`` checks the optimality (KKT) conditions. RecBole caps sklearn at 100
coordinate sweeps; here ``max_iter`` caps proximal steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from recstudio.model.itemitem import ItemItemRecommender
from recstudio.model.registry import register


def largest_eigenvalue(sym: torch.Tensor, steps: int = 100) -> float:
    """An upper estimate of the largest eigenvalue of a symmetric PSD matrix (power iteration
    from the all-ones vector, which the Perron vector of a non-negative Gram matrix is close to;
    the Rayleigh quotient is raised by 1% for safety)."""
    v = torch.ones(sym.shape[0], 1, dtype=sym.dtype, device=sym.device)
    for _ in range(steps):
        v = sym @ v
        v = v / v.norm().clamp_min(torch.finfo(sym.dtype).tiny)
    return float((v.T @ sym @ v).squeeze()) * 1.01


def elastic_net_weights(
    gram: torch.Tensor,
    n_rows: int,
    l1: float,
    l2: float,
    positive: bool = True,
    max_iter: int = 500,
    tol: float = 1e-4,
) -> torch.Tensor:
    """W [m, m] minimising, column by column, ``1/(2 n) |x_j - X w_j|^2 + l1 |w_j|_1 + l2/2 |w_j|^2``
    with ``w_jj = 0`` (and ``w_j >= 0`` when ``positive``), given ``gram = X^T X`` and n = n_rows.

    Accelerated proximal gradient over all columns at once (see the module docstring).
    """
    lipschitz = max(largest_eigenvalue(gram) / n_rows + l2, torch.finfo(gram.dtype).tiny)
    step = 1.0 / lipschitz
    threshold = l1 * step
    w = torch.zeros_like(gram)
    y = w
    t = 1.0
    for _ in range(max_iter):
        grad = torch.addmm(gram, gram, y, beta=-1.0).div_(n_rows).add_(y, alpha=l2)  # (G Y - G)/n + l2 Y
        v = y - step * grad
        if positive:
            new = (v - threshold).clamp_min_(0.0)
        else:
            new = torch.sign(v) * (v.abs() - threshold).clamp_min_(0.0)
        new.diagonal().zero_()
        change = new - w
        if float(change.abs().max()) <= tol * max(float(new.abs().max()), torch.finfo(gram.dtype).tiny):
            return new
        if float(((y - new) * change).sum()) > 0:  # the momentum points uphill: restart it
            t = 1.0
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = new + ((t - 1.0) / t_next) * change
        w, t = new, t_next
    return w


@register
class SLIM(ItemItemRecommender):
    """ElasticNet item-item regression, non-negative, zero diagonal, fitted without gradient steps."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Sparse linear item-item model with non-negative ElasticNet weights (Ning & Karypis, ICDM 2011)."
    )

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {
            "alpha": "> 0",
            "l1_ratio": "[0, 1]",
            "max_iter": ">= 1",
            "tol": "> 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        alpha: float = 0.2
        """Overall penalty strength (sklearn's ElasticNet alpha)."""
        l1_ratio: float = 0.02
        """Share of alpha on the L1 term; the rest, halved, on the squared L2 term."""
        positive_only: bool = True
        """Non-negative weights (the paper's constraint)."""
        max_iter: int = 500
        """Most proximal-gradient iterations."""
        tol: float = 1e-4
        """Stop when the largest change of W is below tol times its largest entry."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "alpha": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
        "l1_ratio": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    }

    def fit_weights(self, gram: torch.Tensor) -> torch.Tensor:
        c = self.config
        return elastic_net_weights(
            gram,
            max(1, self.num_users - 1),
            l1=c.alpha * c.l1_ratio,
            l2=c.alpha * (1.0 - c.l1_ratio),
            positive=c.positive_only,
            max_iter=c.max_iter,
            tol=c.tol,
        )
