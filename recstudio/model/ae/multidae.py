"""Mult-DAE: denoising autoencoder with a multinomial likelihood for implicit feedback.

Liang, Krishnan, Hoffman, Jebara. "Variational Autoencoders for Collaborative Filtering."
WWW 2018 (the paper's Mult-DAE, beside Mult-VAE). A user's multi-hot history is L2-normalised,
corrupted by dropout, and passed through one tanh MLP ``[I -> 600 -> 200 -> 600 -> I]`` (tanh
after every layer but the last, the 200-unit bottleneck included, as in the authors' code); the
loss is the multinomial negative log-likelihood ``-sum_i x_i log softmax(logits)_i``, with no KL
term. Scores decode the clean (not dropped-out) history, so they are deterministic.

How it runs: the ``user`` view (one multi-hot row per user), batch 500 as the paper, Adam with
the project's default learning rate 1e-3 (the paper's) and the shared autoencoder parts of
``recstudio.model.ae.common``.

Departures, on purpose: the paper's L2 penalty on the weights is ``train.weight_decay`` (default
0; the authors' notebook sets the penalty to 0 for ML-20M as well); RecBole 1.2.1 drops the tanh
at the bottleneck, the paper's code keeps it and so does this model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.ae.common import (
    MLP_AUTOENCODER_SPACE,
    HistoryAutoencoder,
    history_input,
    multinomial_nll,
    normalized_dropout,
)
from recstudio.model.layers import tanh_mlp
from recstudio.model.registry import register


@register
class MultiDAE(HistoryAutoencoder):
    """Tanh MLP [I -> 600 -> 200 -> 600 -> I] over the normalised, dropped-out history,
    multinomial likelihood."""

    description: ClassVar[str] = (
        "Denoising autoencoder with multinomial likelihood (Mult-DAE, Liang et al., WWW 2018)."
    )

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {"hidden_dims": ">= 1", "latent_dim": ">= 1", "dropout": "[0, 1)"}
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        hidden_dims: list[int] = field(default_factory=lambda: [600])
        """Encoder hidden sizes (the decoder mirrors them; paper and RecBole: [600])."""
        latent_dim: int = 200
        """Bottleneck size (paper and RecBole: 200)."""
        dropout: float = 0.5
        """Dropout on the normalised input during training (paper and RecBole: 0.5)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = MLP_AUTOENCODER_SPACE

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        encoder = [data.num_items, *config.hidden_dims, config.latent_dim]
        self.network = tanh_mlp(encoder + encoder[-2::-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, I] of a float history [B, I] whose padding column is zero."""
        return self.network(normalized_dropout(x, self.config.dropout, self.training))

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = history_input(batch)
        return multinomial_nll(self(x), x)

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decode the clean history (no dropout): deterministic in any mode."""
        return self.network(normalized_dropout(history_input(batch), 0.0, False))
