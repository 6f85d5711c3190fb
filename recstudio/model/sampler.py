"""Negative samplers: draw item ids for sampled losses, with their log-probabilities.

A sampler is an ``nn.Module`` whose tables are (non-persistent) buffers, so ``model.to(device)``
moves it and it draws on the model's device; nothing is saved into checkpoints (the tables are
rebuilt from the data). Every sampler draws real items only (ids 1..num_items-1, never the
padding id 0) and reports ``log q`` of what it drew, for log-Q correction and importance weights.
Negatives are drawn independently of the positive: an accidental hit (a negative equal to the
positive) is possible and, with these catalogue-wide proposals, rare.

API: ``sample(n, k, pos_items=None, query=None) -> (neg [n, k] long, log_q_neg [n, k],
log_q_pos [n])``, ``sample_ids(n, k, query=None) -> neg`` (no log q) and
``log_prob(items) -> float tensor`` of the same shape as ``items``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recstudio.errors import ConfigError

_SCALE = 1 << 52  # fixed-point unit of the popularity sampler's cumulative table


class Sampler(nn.Module):
    """Base class: a proposal distribution over item ids 1..num_items-1."""

    uses_query = False
    """True for samplers whose draw depends on the query vectors (model-based samplers)."""

    def __init__(self, num_items: int) -> None:
        super().__init__()
        if num_items < 2:
            raise ConfigError(f"a negative sampler needs at least one real item, got num_items={num_items}")
        self.num_items = num_items
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        """log q(item), same shape as ``items`` (-inf for the padding id 0)."""
        raise NotImplementedError

    def draw(self, n: int, k: int) -> torch.Tensor:
        """[n, k] item ids drawn i.i.d. from q."""
        raise NotImplementedError

    def sample_ids(self, n: int, k: int, query: torch.Tensor | None = None) -> torch.Tensor:
        """[n, k] negatives without their log-probabilities, for losses that ignore log q (BPR,
        BCE): saves the two ``log_prob`` passes per step. A sampler whose draw depends on
        ``query`` overrides this together with ``sample``."""
        return self.draw(n, k)

    def sample(
        self,
        n: int,
        k: int,
        pos_items: torch.Tensor | None = None,
        query: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K negatives for each of n queries: (neg [n, k], log_q_neg [n, k], log_q_pos [n]).

        ``log_q_pos`` is log q of ``pos_items`` (zeros when they are not given). ``query`` is
        accepted for model-based samplers; these static samplers ignore it.
        """
        neg = self.draw(n, k)
        log_q_neg = self.log_prob(neg)
        if pos_items is None:
            log_q_pos = torch.zeros(n, device=self.device)
        else:
            log_q_pos = self.log_prob(pos_items.to(self.device))
        return neg, log_q_neg, log_q_pos


class UniformSampler(Sampler):
    """q(i) = 1 / (num_items - 1) for every real item."""

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        value = torch.full(items.shape, -math.log(self.num_items - 1), device=items.device)
        return value.masked_fill(items == 0, -math.inf)

    def draw(self, n: int, k: int) -> torch.Tensor:
        return torch.randint(1, self.num_items, (n, k), device=self.device)


class PopularitySampler(Sampler):
    """q(i) proportional to (count_i + 1)^alpha over real items (alpha = 0: uniform).

    The +1 keeps items unseen in training drawable. Draws invert a cumulative table with a
    uniform integer + ``searchsorted`` (O(log I) per draw, no Python loop); the table is 52-bit
    fixed point, so rare items keep their share in large catalogues and a half-precision cast of
    the model cannot touch it.
    Reference: Mikolov et al. (2013) use alpha = 0.75 for word2vec negatives.
    """

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

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        return self.log_p[items.to(self.log_p.device)]

    def draw(self, n: int, k: int) -> torch.Tensor:
        u = torch.randint(0, _SCALE, (n, k), device=self.cdf.device)
        idx = torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.num_items - 2)
        return idx + 1


SAMPLERS: dict[str, type[Sampler]] = {"uniform": UniformSampler, "popularity": PopularitySampler}


def build_sampler(
    name: str, num_items: int, popularity: torch.Tensor | None = None, **options: Any
) -> Sampler:
    """Sampler by config name; ``popularity`` [num_items] holds training counts (needed by
    "popularity"); ``options`` go to the constructor (``alpha``)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}'; valid samplers: {', '.join(SAMPLERS)}")
    try:
        if name == "uniform":
            return UniformSampler(num_items, **options)
        if popularity is None:
            raise ConfigError("the 'popularity' sampler needs item popularity counts")
        return PopularitySampler(num_items, popularity, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for sampler '{name}': {exc}") from None
