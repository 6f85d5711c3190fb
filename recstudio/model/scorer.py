"""Scorers: how a query vector and an item vector become a score (higher = more relevant).

Every scorer offers the three shapes the training and evaluation code needs, so that models never
write the batched variants themselves:

- ``forward(q [N, d], v [N, d]) -> [N]``: paired scores (positives of a batch);
- ``matrix(q [N, d], V [M, d]) -> [N, M]``: every query against every item (full ranking,
  full softmax);
- ``gather(q [N, d], V [N, K, d]) -> [N, K]``: each query against its own K items (sampled
  negatives).

``build_scorer(name, **options)`` creates one by its config name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recstudio.errors import ConfigError
from recstudio.model.ops import l2_normalize


class Scorer(nn.Module):
    """Base class; subclasses implement the three shapes (see module docstring)."""

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def matrix(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gather(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InnerProductScorer(Scorer):
    """s(q, v) = q . v (matrix factorisation, two-tower retrieval; ANN metric "ip")."""

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (q * v).sum(-1)

    def matrix(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return q @ items.T

    def gather(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # broadcast multiply-sum: ~3x faster than bmm for the few candidates per query here
        return (q.unsqueeze(1) * items).sum(-1)


class CosineScorer(InnerProductScorer):
    """s(q, v) = q . v / (|q| |v|): scale-free scores in [-1, 1] (ANN metric "cosine")."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x, dim=-1, eps=self.eps)

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return super().forward(self._unit(q), self._unit(v))

    def matrix(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return super().matrix(self._unit(q), self._unit(items))

    def gather(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return super().gather(self._unit(q), self._unit(items))


class EuclideanScorer(Scorer):
    """s(q, v) = -|q - v|^2, negative squared distance (metric learning, CML; ANN metric "l2").

    ``matrix`` expands |q|^2 - 2 q.v + |v|^2 (one matmul) and clamps the distance at 0 against
    rounding.
    """

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return -((q - v) ** 2).sum(-1)

    def matrix(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dist = (q * q).sum(-1, keepdim=True) - 2.0 * (q @ items.T) + (items * items).sum(-1)[None, :]
        return -dist.clamp_min(0.0)

    def gather(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return -((q.unsqueeze(1) - items) ** 2).sum(-1)


class MLPScorer(Scorer):
    """s(q, v) = MLP([q; v]) -> scalar (NCF-style learned matching).

    The first layer on the concatenation is split into a query and an item projection
    (W [q; v] = W_q q + W_v v), so ``matrix`` projects each side once and only the hidden layers
    run per pair, in query chunks holding at most ``chunk_elements`` hidden activations.
    ``dim`` is the query/item width; ``None`` infers it at the first call (lazy layers).
    """

    def __init__(
        self,
        dim: int | None = None,
        hidden_sizes: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        activation: str = "relu",
        chunk_elements: int = 1 << 24,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ConfigError("mlp scorer needs at least one hidden layer size")
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
        if activation not in acts:
            raise ConfigError(f"mlp scorer activation must be one of {', '.join(acts)}, got '{activation}'")
        first = hidden_sizes[0]
        self.q_proj = nn.Linear(dim, first) if dim else nn.LazyLinear(first)
        self.v_proj = nn.Linear(dim, first, bias=False) if dim else nn.LazyLinear(first, bias=False)
        layers: list[nn.Module] = [acts[activation](), nn.Dropout(dropout)]
        for a, b in zip(hidden_sizes[:-1], hidden_sizes[1:]):
            layers += [nn.Linear(a, b), acts[activation](), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden_sizes[-1], 1))
        self.head = nn.Sequential(*layers)
        self.chunk_elements = chunk_elements

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.head(self.q_proj(q) + self.v_proj(v)).squeeze(-1)

    def matrix(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        hq = self.q_proj(q)  # [N, h]
        hv = self.v_proj(items)  # [M, h]
        rows = max(1, self.chunk_elements // max(1, hv.shape[0] * hv.shape[1]))
        out = [self.head(chunk[:, None, :] + hv[None, :, :]).squeeze(-1) for chunk in hq.split(rows)]
        return torch.cat(out, 0) if out else hq.new_zeros(0, items.shape[0])

    def gather(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.head(self.q_proj(q).unsqueeze(1) + self.v_proj(items)).squeeze(-1)


SCORERS: dict[str, type[Scorer]] = {
    "inner_product": InnerProductScorer,
    "cosine": CosineScorer,
    "euclidean": EuclideanScorer,
    "mlp": MLPScorer,
}


def build_scorer(name: str, **options: Any) -> Scorer:
    """Scorer by config name; ``options`` go to its constructor (e.g. ``hidden_sizes`` for mlp)."""
    if name not in SCORERS:
        raise ConfigError(f"unknown scorer '{name}'; valid scorers: {', '.join(SCORERS)}")
    try:
        return SCORERS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for scorer '{name}': {exc}") from None
