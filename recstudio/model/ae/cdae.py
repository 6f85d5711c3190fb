"""CDAE: collaborative denoising autoencoder with a user-specific input node.

Wu, DuBois, Zheng, Ester. "Collaborative Denoising Auto-Encoders for Top-N Recommender
Systems." WSDM 2016. A user's multi-hot history ``y_u`` is corrupted by dropout with rate ``q``
(kept entries scaled by 1/(1-q), the paper's unbiased corruption), encoded with a user-specific
node, ``h = act_h(W^T y~_u + V_u + b)``, and reconstructed as ``y^_u = act_o(W'^T h + b')``. The
loss over every item of the user is BCE on the logits (``loss="bce"``: the sigmoid output of the
paper's logistic loss) or squared error on ``act_o`` of them (``loss="mse"``). Scores decode the
clean history (no corruption): with BCE the logits (the sigmoid is monotonic), with MSE
``act_o(logits)``.

How it runs: the ``user`` view (one multi-hot row per user, with its id for ``V_u``), Adam.
Defaults are RecBole 1.2.1's: hidden 64, corruption 0.5, relu hidden activation, sigmoid output
activation, BCE, and its penalty ``reg_weight * (||V||_F + ||W||_F) + reg_l1 * (|V|_1 + |W|_1)``
(reg 0.01, L1 0), with the loss summed over the batch's users and items as RecBole.

Departures, on purpose: the paper penalises ``lambda/2`` times the squared norms of all weights
and samples negatives for the reconstruction loss; this follows RecBole's unsquared penalty on the
user nodes and input weights and reconstructs every item (no negative sampling), the setting
RecBole reports. RecBole feeds batches of interactions (a user appears once per training item);
here a batch is a set of distinct users (the ``user`` view), each reconstructed once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.ae.common import HistoryAutoencoder, history_input
from recstudio.model.layers import dropout
from recstudio.model.registry import register

ACTIVATIONS = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}
"""Activations CDAE's hidden and output layers may use (the paper's identity and sigmoid and
RecBole's relu and tanh)."""

Activation = Literal["relu", "sigmoid", "tanh", "identity"]


@register
class CDAE(HistoryAutoencoder):
    """One-hidden-layer denoising autoencoder over the corrupted history plus a user node."""

    description: ClassVar[str] = (
        "Denoising autoencoder with a user-specific input node (Wu et al., WSDM 2016)."
    )

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "corruption": "[0, 1)",
            "reg_weight": ">= 0",
            "reg_l1": ">= 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Hidden size, also the size of the user node V_u (RecBole: 64)."""
        corruption: float = 0.5
        """Dropout rate q on the input history during training (RecBole: 0.5)."""
        loss: Literal["bce", "mse"] = "bce"
        hid_activation: Activation = "relu"
        out_activation: Activation = "sigmoid"
        """Output activation of the MSE loss and the MSE scores (BCE works on the logits)."""
        reg_weight: float = 0.01
        """Weight of the unsquared Frobenius norms of the user nodes and input weights (RecBole)."""
        reg_l1: float = 0.0
        """Weight of their L1 norms (RecBole: 0)."""

        def validate(self) -> None:
            if self.loss not in ("bce", "mse"):
                raise ConfigError(f"config key 'model.loss' must be bce or mse, got {self.loss!r}")
            for key in ("hid_activation", "out_activation"):
                value = getattr(self, key)
                if value not in ACTIVATIONS:
                    raise ConfigError(
                        f"config key 'model.{key}' must be one of {', '.join(ACTIVATIONS)}, got {value!r}"
                    )

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128, 256]},
        "corruption": {"type": "float", "low": 0.0, "high": 0.8},
        "hid_activation": {"type": "categorical", "choices": ["relu", "sigmoid", "tanh", "identity"]},
        "reg_weight": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"batch_size": 128}}

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self.user_node = nn.Embedding(data.num_users, config.embed_dim)
        self.encoder = nn.Linear(data.num_items, config.embed_dim)
        self.decoder = nn.Linear(config.embed_dim, data.num_items)
        for module in (self.user_node, self.encoder, self.decoder):
            nn.init.xavier_normal_(module.weight)
        for linear in (self.encoder, self.decoder):
            nn.init.zeros_(linear.bias)
        self.hid_act = ACTIVATIONS[config.hid_activation]
        self.out_act = ACTIVATIONS[config.out_activation]

    def forward(self, x: torch.Tensor, users: torch.Tensor, corruption: float = 0.0) -> torch.Tensor:
        """Output logits [B, I] of histories x [B, I] of ``users`` [B], corrupted with rate
        ``corruption`` while training."""
        h = self.encoder(dropout(x, corruption, self.training)) + self.user_node(users)
        return self.decoder(self.hid_act(h))

    def penalty(self) -> torch.Tensor:
        """RecBole's penalty on the user nodes and input weights (unsquared L2 plus L1)."""
        weights = (self.user_node.weight, self.encoder.weight)
        loss = self.config.reg_weight * sum(w.norm() for w in weights)
        if self.config.reg_l1 > 0:
            loss = loss + self.config.reg_l1 * sum(w.abs().sum() for w in weights)
        return loss

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = history_input(batch)
        logits = self(x, batch["user"], self.config.corruption)
        if self.config.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        else:
            loss = F.mse_loss(self.out_act(logits), x, reduction="sum")
        return loss + self.penalty()

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decode the clean history: deterministic in any mode."""
        logits = self(history_input(batch), batch["user"])
        return logits if self.config.loss == "bce" else self.out_act(logits)
