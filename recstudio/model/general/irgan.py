"""IRGAN: a minimax game between a generative and a discriminative retrieval model.

Wang, Yu, Zhang, Gong, Xu, Wang, Zhang, Zhang. "IRGAN: A Minimax Game for Unifying Generative and
Discriminative Information Retrieval Models." SIGIR 2017 (its item recommendation task). The
generator is a softmax over the catalogue, ``p_theta(i | u) = softmax_i((g_u . g_i + b_i) / t)``;
the discriminator an MF with item bias, ``D(i | u) = sigmoid(f_phi(u, i))``, ``f = d_u . d_i + c_i``.
The discriminator learns to tell the user's observed items from items drawn from the generator
(the generator is its negative sampler); the generator learns, by policy gradient, to draw items
the discriminator takes for observed ones: ``grad J = E_{i ~ p_theta}[grad log p_theta(i | u) *
log(1 + exp(f_phi(u, i)))]``.

How it runs, with the base's several inputs and optimizers (no custom loop): two ``triplet``
inputs, ``main`` (the discriminator: ``training_loss``, optimizer ``main``) and ``generator``
(``generator_loss``, its own optimizer), alternating by ``epoch``: every epoch is a whole
discriminator pass, then a whole generator pass (the paper alternates blocks of epochs). A
discriminator step draws ``num_negatives`` items per observed row from the generator's softmax
(``torch.multinomial`` over the [B, num_items] probabilities, no gradient) and takes the shared
``bce`` loss ``-log sigmoid(f(u, i+)) - mean_k log sigmoid(-f(u, i_k))``. A generator step draws
``num_samples`` items per row of its batch's users and minimises ``-mean(log p_theta(i | u) *
(reward - mean reward of the user's draws))``, the REINFORCE estimate with a per-user mean
baseline. Both add ``reg_weight`` times the squared embedding rows they used over the batch size.

Ranking uses the generator (``rank_with: generator``, the default): the paper's item
recommendation results report IRGAN's generator, the model the game trains to retrieve, and its
softmax scores rank the whole catalogue with one matmul (``score_batch``); ``rank_with:
discriminator`` ranks by ``f_phi`` instead.

Departures, on purpose: no MF pre-training of either player (both start from N(0, init_std^2));
the reward is ``log(1 + exp(f))`` (the paper's equation; its code uses ``2 sigmoid(f) - 1``) with
a mean baseline per user's draws; the generator's draws are plain samples of its softmax (the
paper's code mixes in the observed items with importance weights); one discriminator epoch and
one generator epoch alternate (the paper: blocks of several); the generator's users come from the
training rows (active users weigh more), Adam for both players.
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
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.loss import BCELoss
from recstudio.model.ops import gather_rows, sum_squared_rows, user_item_embeddings
from recstudio.model.registry import register
from recstudio.model.scorer import InnerProductScorer

GENERATOR = "generator"


@register
class IRGAN(TwoTowerRecommender):
    """Softmax generator against an MF discriminator; the generator samples the discriminator's
    negatives and learns from its rewards by policy gradient."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Generator vs discriminator, policy-gradient minimax game (Wang et al., SIGIR 2017)."
    )
    contract: ClassVar[DataContract] = DataContract(
        inputs=(TrainInput("triplet"), TrainInput("triplet", name=GENERATOR, optimizer=GENERATOR)),
        alternate="epoch",
    )

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "num_negatives": ">= 1",
            "num_samples": ">= 1",
            "temperature": "> 0",
            "reg_weight": ">= 0",
            "init_std": "> 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        num_negatives: int = 4
        """Generator draws per observed row for a discriminator step."""
        num_samples: int = 16
        """Generator draws per row for a policy-gradient step."""
        temperature: float = 0.2
        """Temperature of the generator's softmax (the paper's code: 0.2)."""
        reg_weight: float = 1e-4
        """L2 penalty of both players on the rows a step used, over the batch size."""
        init_std: float = 0.1
        rank_with: Literal["generator", "discriminator"] = "generator"
        """Which player ranks the catalogue (the paper reports the generator)."""

        def validate(self) -> None:
            if self.rank_with not in ("generator", "discriminator"):
                raise ConfigError(
                    f"config key 'model.rank_with' must be generator or discriminator, got {self.rank_with!r}"
                )

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "temperature": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
        "num_negatives": {"type": "int", "low": 1, "high": 16},
        "num_samples": {"type": "categorical", "choices": [4, 16, 64]},
        "reg_weight": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    }
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"early_stop_patience": 20}}

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d, std = config.embed_dim, config.init_std
        self.gen_user, self.gen_item = user_item_embeddings(data, d, std=std)
        self.gen_bias = nn.Parameter(torch.zeros(data.num_items, 1))
        self.dis_user, self.dis_item = user_item_embeddings(data, d, std=std)
        self.dis_bias = nn.Parameter(torch.zeros(data.num_items, 1))
        self.scorer = InnerProductScorer()
        self.loss_fn = BCELoss()

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        discriminator = [self.dis_user.weight, self.dis_item.weight, self.dis_bias]
        return {"main": discriminator, GENERATOR: [self.gen_user.weight, self.gen_item.weight, self.gen_bias]}

    # ------------------------------------------------------------------ the two players
    def generator_logits(self, users: torch.Tensor) -> torch.Tensor:
        """``(g_u . g_i + b_i) / t`` over the catalogue [B, num_items]; padding is -inf."""
        item = torch.cat([self.gen_item.weight, self.gen_bias], dim=1)
        user = self.gen_user(users)
        logits = torch.cat([user, user.new_ones(user.shape[0], 1)], dim=1) @ item.T / self.config.temperature
        logits[:, 0] = -torch.inf
        return logits

    def generator_probs(self, users: torch.Tensor) -> torch.Tensor:
        """``p_theta(i | u)`` [B, num_items]: the generator's softmax (0 for padding)."""
        return torch.softmax(self.generator_logits(users), dim=1)

    @torch.no_grad()
    def generate(self, users: torch.Tensor, k: int) -> torch.Tensor:
        """[B, k] items drawn i.i.d. from ``p_theta(. | u)`` for each user: the generator as the
        discriminator's negative sampler."""
        return torch.multinomial(self.generator_probs(users), k, replacement=True)

    def discriminator_logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``f_phi(u, i) = d_u . d_i + c_i`` of each user [B] against its items [B, ...]."""
        user = self.dis_user(users)
        item = gather_rows(self.dis_item.weight, items, padding_idx=0)
        bias = gather_rows(self.dis_bias, items)[..., 0]
        return (user.view(user.shape[0], *([1] * (items.dim() - 1)), -1) * item).sum(-1) + bias

    # ------------------------------------------------------------------ losses
    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The discriminator: observed items against generator draws, bce, L2."""
        users, pos = batch["user"], batch["item"]
        neg = self.generate(users, self.config.num_negatives)
        scores = self.discriminator_logits(users, torch.cat([pos[:, None], neg], dim=1))
        loss = self.loss_fn(scores[:, 0], scores[:, 1:])
        reg = sum_squared_rows(self.dis_user.weight, users)
        reg = reg + sum_squared_rows(self.dis_item.weight, torch.cat([pos[:, None], neg], dim=1))
        return loss + self.config.reg_weight * reg / users.shape[0]

    def generator_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The generator: REINFORCE with the discriminator's reward ``log(1 + exp(f))``."""
        users = batch["user"]
        log_probs = torch.log_softmax(self.generator_logits(users), dim=1)
        samples = torch.multinomial(log_probs.detach().exp(), self.config.num_samples, replacement=True)
        with torch.no_grad():
            reward = F.softplus(self.discriminator_logits(users, samples))
            advantage = reward - reward.mean(dim=1, keepdim=True)
        loss = -(log_probs.gather(1, samples) * advantage).mean()
        reg = sum_squared_rows(self.gen_user.weight, users) + sum_squared_rows(self.gen_item.weight, samples)
        return loss + self.config.reg_weight * reg / users.shape[0]

    # ------------------------------------------------------------------ ranking
    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        if self.config.rank_with == "generator":
            u = self.gen_user(users)
        else:
            u = self.dis_user(users)
        return torch.cat([u, u.new_ones(u.shape[0], 1)], dim=1)

    def item_vectors(self) -> torch.Tensor:
        if self.config.rank_with == "generator":
            return torch.cat([self.gen_item.weight, self.gen_bias], dim=1)
        return torch.cat([self.dis_item.weight, self.dis_bias], dim=1)
