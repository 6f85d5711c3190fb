"""Parts the autoencoders over a user's history share (MultiVAE, MultiDAE, RecVAE, CDAE,
MacridVAE): the history as a float input, its normalisation and dropout, the tanh MLP, the
multinomial log-likelihood, Gaussian KL terms and the linear KL annealing schedule.

One implementation per formula: a model that needs one of these imports it from here.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from recstudio.model.base import TowerFreeRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.layers import dropout
from recstudio.model.ops import l2_normalize


class HistoryAutoencoder(TowerFreeRecommender):
    """A model that trains on each user's multi-hot history (the ``user`` view, batches of 500
    users as Liang et al.) and scores all items from the history in ``score_batch``."""

    family: ClassVar[str] = "general"
    contract: ClassVar[DataContract] = DataContract(inputs=(TrainInput("user"),))
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"batch_size": 500}}


MLP_AUTOENCODER_SPACE: dict[str, dict[str, Any]] = {
    "hidden_dims": {"type": "categorical", "choices": [[300], [600], [1000], [600, 300]]},
    "latent_dim": {"type": "categorical", "choices": [64, 128, 200, 300]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.7},
    "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    # categorical so that the default 0 is a candidate (the defaults trial reproduces it)
    "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4, 1e-3]},
}
"""Search space of the tanh-MLP autoencoders (MultiVAE, MultiDAE): sizes, input dropout,
learning rate and weight decay."""


def history_input(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's multi-hot history as a fresh float tensor [B, I] with the padding column 0
    zeroed: ``history`` of a training batch (the ``user`` view), else ``history_mask`` of an
    evaluation block. The caller's batch is not modified."""
    x = batch["history"] if "history" in batch else batch["history_mask"]
    x = x.float().clone()
    x[:, 0] = 0.0
    return x


def normalized_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The autoencoders' input: each row L2-normalised, then dropped out with rate ``p`` while
    training (inverted dropout, ``recstudio.model.layers.dropout``)."""
    return dropout(l2_normalize(x, dim=1), p, training)


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over users of the negative multinomial log-likelihood ``-sum_i x_i log softmax(logits)_i``
    (logits and counts [B, I])."""
    return -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over the last dimension: [..., d] -> [...]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def log_normal_pdf(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of N(mu, exp(logvar)) at z."""
    return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu).pow(2) / logvar.exp())


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, training: bool, noise_std: float = 1.0
) -> torch.Tensor:
    """A sample ``mu + noise_std * eps * exp(logvar / 2)`` while training, else the mean."""
    if not training:
        return mu
    return mu + torch.randn_like(mu) * (noise_std * torch.exp(0.5 * logvar))


class KLAnnealing:
    """Mixin for an ``nn.Module`` whose KL weight beta grows linearly with the training steps it
    took, from 0 to ``config.anneal_cap`` over ``config.total_anneal_steps`` (0: beta = cap), the
    "partially regularised" objective of Liang et al. The step counter is the buffer
    ``anneal_step`` (it resumes with a checkpoint); ``last_kl_weight`` is the latest beta used."""

    config: Any

    def init_kl_annealing(self) -> None:
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))  # type: ignore[attr-defined]
        self.last_kl_weight = 0.0

    def kl_weight(self) -> float:
        """Current beta: linear in the number of training steps taken, capped at anneal_cap."""
        total = self.config.total_anneal_steps
        if total <= 0:
            return self.config.anneal_cap
        return min(self.config.anneal_cap, float(self.anneal_step) / total)

    def next_kl_weight(self) -> float:
        """The beta of this loss evaluation; advances the schedule when the module is training."""
        beta = self.kl_weight()
        self.last_kl_weight = beta
        if self.training:  # type: ignore[attr-defined]
            self.anneal_step += 1
        return beta


ANNEALING_RANGES = {"anneal_cap": ">= 0", "total_anneal_steps": ">= 0"}
"""Declared ranges of the KL annealing keys (``anneal_cap``, ``total_anneal_steps``)."""

ANNEALING_SPACE: dict[str, dict[str, Any]] = {
    "total_anneal_steps": {"type": "int", "low": 50, "high": 20000, "log": True},
    "anneal_cap": {"type": "float", "low": 0.0, "high": 1.0},
}
"""Search space of the KL annealing keys."""
