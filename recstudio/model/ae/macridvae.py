"""MacridVAE: macro- and micro-disentangled variational autoencoder.

Ma, Zhou, Cui, Yang, Zhu. "Learning Disentangled Representations for Recommendation."
NeurIPS 2019. Macro disentanglement: K concept prototypes ``m_k`` and item embeddings ``h_i``
(both L2-normalised) assign every item to concepts, ``c_i = softmax_k(cos(h_i, m_k) / tau)``
(while training a Gumbel-softmax sample of it, at evaluation its mode). For each concept the
user's normalised, dropped-out history restricted to it, ``x * c_{:,k}``, goes through one shared
tanh MLP encoder to a normalised mean ``mu_k`` and ``logvar_k``; ``z_k = mu_k + std * eps *
exp(logvar_k / 2)`` while training (micro disentanglement: a beta-VAE whose KL is annealed). The
decoder is the mixture over concepts ``p(i) ∝ sum_k c_ik exp(cos(z_k, h_i) / tau)`` and the loss
is the multinomial negative log-likelihood of the history plus ``beta * sum_k KL_k``.

How it runs: the ``user`` view; the K concepts are one batched computation (the encoder runs on
[B * K, I] rows, the decoder is a log-sum-exp over [B, K, I]), no loop over concepts. Defaults
are RecBole 1.2.1's: encoder [600], embedding 64, K 10, tau 0.1, dropout 0.5, Gumbel-softmax on,
noise std 0.01, anneal cap 0.2.

Departures, on purpose: the KL annealing runs over 200 steps (RecBole: 200000, the ML-20M
length, which on ml-100k's 2 steps an epoch would keep beta at 0; MultiVAE measured 200 better
on ml-100k); the KL includes the ``mu^2`` term that RecBole drops (a constant after the
normalisation of mu); RecBole's optional L2 penalties (``reg_weights``, default 0) are
``train.weight_decay`` here; the log of the mixture is a log-sum-exp rather than the log of the
sum of exponentials (the same value, without overflow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.ae.common import (
    ANNEALING_RANGES,
    ANNEALING_SPACE,
    HistoryAutoencoder,
    KLAnnealing,
    gaussian_kl,
    history_input,
    multinomial_nll,
    normalized_dropout,
    reparameterize,
)
from recstudio.model.layers import tanh_mlp
from recstudio.model.ops import l2_normalize
from recstudio.model.registry import register


@register
class MacridVAE(KLAnnealing, HistoryAutoencoder):
    """K concept prototypes over cosine item embeddings, one shared VAE encoder per concept,
    multinomial likelihood over the mixture of the K concept decoders."""

    description: ClassVar[str] = (
        "Macro/micro disentangled VAE over K item concepts (Ma et al., NeurIPS 2019)."
    )

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {
            "hidden_dims": ">= 1",
            "embed_dim": ">= 1",
            "kfac": ">= 1",
            "tau": "> 0",
            "dropout": "[0, 1)",
            "std": ">= 0",
            **ANNEALING_RANGES,
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        hidden_dims: list[int] = field(default_factory=lambda: [600])
        """Encoder hidden sizes (RecBole: [600])."""
        embed_dim: int = 64
        """Size of item embeddings, prototypes and latents (RecBole: 64)."""
        kfac: int = 10
        """Number of macro concepts K (RecBole: 10)."""
        tau: float = 0.1
        """Temperature of the cosine similarities (RecBole: 0.1)."""
        dropout: float = 0.5
        """Dropout on the normalised input during training."""
        nogb: bool = False
        """True: concept assignments by softmax while training too (no Gumbel sampling)."""
        std: float = 0.01
        """Scale of the reparameterisation noise (RecBole: 0.01)."""
        anneal_cap: float = 0.2
        """Largest KL weight beta."""
        total_anneal_steps: int = 200
        """Training steps over which beta grows linearly from 0 to anneal_cap (0: beta = cap)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "kfac": {"type": "int", "low": 2, "high": 20},
        "tau": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.7},
        "std": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        **ANNEALING_SPACE,
    }

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        self.encoder = tanh_mlp([data.num_items, *config.hidden_dims, 2 * d])
        self.item_emb = nn.Parameter(nn.init.xavier_normal_(torch.empty(data.num_items, d)))
        self.concepts = nn.Parameter(nn.init.xavier_normal_(torch.empty(config.kfac, d)))
        self.init_kl_annealing()

    def concept_weights(self, items: torch.Tensor, sample: bool) -> torch.Tensor:
        """Item-to-concept assignments [I, K] of normalised items: a Gumbel-softmax sample when
        ``sample`` (unless ``nogb``), the softmax otherwise."""
        logits = items @ l2_normalize(self.concepts, dim=1).T / self.config.tau
        if sample and not self.config.nogb:
            return F.gumbel_softmax(logits, tau=1.0, hard=False, dim=-1)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log mixture probabilities [B, I], mu [B, K, d], logvar [B, K, d]) of a float history
        [B, I] whose padding column is zero; ``sample``: dropout, Gumbel assignments and latent
        noise (training), else the deterministic mode."""
        d, tau = self.config.embed_dim, self.config.tau
        items = l2_normalize(self.item_emb, dim=1)
        cates = self.concept_weights(items, sample)  # [I, K]
        h = normalized_dropout(x, self.config.dropout, sample)
        per_concept = h[:, None, :] * cates.T[None]  # [B, K, I]
        out = self.encoder(per_concept)  # [B, K, 2d]
        mu = l2_normalize(out[..., :d], dim=-1)
        logvar = -out[..., d:]
        z = l2_normalize(reparameterize(mu, logvar, sample, self.config.std), dim=-1)
        logits = z @ items.T / tau  # [B, K, I]
        log_mix = torch.logsumexp(logits + cates.T.log()[None], dim=1)
        return log_mix, mu, logvar

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = history_input(batch)
        log_mix, mu, logvar = self(x, self.training)
        kl = gaussian_kl(mu, logvar).sum(dim=1).mean()
        return multinomial_nll(log_mix, x) + self.next_kl_weight() * kl

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log mixture probabilities of the clean history at the concept mode and latent means
        (deterministic in any mode)."""
        return self(history_input(batch), False)[0]
