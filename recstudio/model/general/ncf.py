"""NCF: Neural Collaborative Filtering (GMF, MLP and their fusion NeuMF).

He, Liao, Zhang, Nie, Hu, Chua. "Neural Collaborative Filtering." WWW 2017. The score of a
(user, item) pair is a learned function of both embeddings, not an inner product:

- GMF: ``h^T (p_u * q_i)`` (a weighted inner product),
- MLP: a tower of ReLU layers over ``[p_u; q_i]``,
- NeuMF: the last GMF and MLP layers concatenated and fed to one output unit; GMF and MLP keep
  separate embeddings, as in the paper.

Trained pointwise (binary cross-entropy on the logit) with ``num_negatives`` uniform negatives per
positive, the paper's log loss (the loss, sampler and their options are ``RankingParts`` config).
Because the score is not a dot product, full ranking evaluates the network on every (user, item)
pair, through the base class's memory-bounded item chunks; ``chunk_scorer`` shares work across a
block: NeuMF's output layer is linear over [GMF; MLP], so the GMF half is one matmul per block, and
the first MLP layer is split into a user half (once per block) and an item half (once per chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import PairwiseRecommender
from recstudio.model.ops import Embedding, gather_rows
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register

Variant = Literal["gmf", "mlp", "neumf"]


@register
class NCF(PairwiseRecommender):
    """GMF / MLP / NeuMF scored pointwise with BCE over sampled negatives."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Neural Collaborative Filtering: GMF, MLP or NeuMF, BCE on sampled negatives (He et al., WWW 2017)."
    )

    @dataclass
    class Config(RankingParts):
        variant: Variant = "neumf"
        """gmf: weighted inner product; mlp: MLP over concatenated embeddings; neumf: both."""
        embed_dim: int = 64
        """Embedding size of each branch (GMF and MLP have their own tables)."""
        mlp_layers: list[int] = field(default_factory=lambda: [128, 64, 32])
        """Hidden sizes of the MLP tower (input is 2 * embed_dim)."""
        dropout: float = 0.0
        """Dropout after each hidden MLP layer."""
        init_std: float = 0.01
        """Standard deviation of the normal initialisation of the embeddings (paper: 0.01)."""
        loss: str = "bce"
        num_negatives: int = 4
        """Negatives per positive (paper: 4)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "variant": {"type": "categorical", "choices": ["gmf", "mlp", "neumf"]},
        "embed_dim": {"type": "categorical", "choices": [16, 32, 64, 128]},
        "mlp_layers": {"type": "categorical", "choices": [[64, 32], [128, 64, 32], [256, 128, 64]]},
        "init_std": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "num_negatives": {"type": "int", "low": 1, "high": 8, "step": 1},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        # categorical so that the default 0 is a candidate (the defaults trial reproduces it)
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-7, 1e-6, 1e-5, 1e-4]},
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
        self.use_gmf = config.variant in ("gmf", "neumf")
        self.use_mlp = config.variant in ("mlp", "neumf")
        out_dim = 0
        if self.use_gmf:
            self.gmf_user = Embedding(data.num_users, d, padding_idx=0)
            self.gmf_item = Embedding(data.num_items, d, padding_idx=0)
            out_dim += d
        if self.use_mlp:
            if not config.mlp_layers:
                raise ConfigError("config key 'model.mlp_layers' needs a layer for variant mlp/neumf")
            self.mlp_user = Embedding(data.num_users, d, padding_idx=0)
            self.mlp_item = Embedding(data.num_items, d, padding_idx=0)
            sizes = [2 * d, *config.mlp_layers]
            # the first layer is kept apart: W [p; q] = W_p p + W_q q lets full ranking apply it
            # once per user and once per item instead of once per pair.
            self.mlp_first_user = nn.Linear(d, sizes[1])
            self.mlp_first_item = nn.Linear(d, sizes[1], bias=False)
            layers: list[nn.Module] = [nn.ReLU(), nn.Dropout(config.dropout)]
            for a, b in zip(sizes[1:-1], sizes[2:]):
                layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(config.dropout)]
            self.mlp = nn.Sequential(*layers)
            out_dim += sizes[-1]
        self.predict = nn.Linear(out_dim, 1)
        self.pair_width = max(config.mlp_layers) if self.use_mlp else 1
        self._init_weights(config.init_std)
        self.build_ranking_parts(data)

    def _init_weights(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                with torch.no_grad():
                    module.weight[0].zero_()
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ scoring
    def _hidden(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Input of the output layer for aligned user and item ids of the same shape [...]."""
        parts = []
        if self.use_gmf:
            parts.append(self.gmf_user(users) * self.gmf_item(items))
        if self.use_mlp:
            first = self.mlp_first_user(self.mlp_user(users)) + self.mlp_first_item(self.mlp_item(items))
            parts.append(self.mlp(first))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of aligned (user, item) pairs; ``users`` broadcasts against ``items``."""
        users, items = torch.broadcast_tensors(users, items)
        return self.predict(self._hidden(users, items)).squeeze(-1)

    def candidate_scores(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of each user of ``batch`` against its own candidates ``items`` [B, C].

        The same function as ``pair_scores``, arranged for training: the user side (GMF vector,
        first MLP layer) is computed once per user instead of once per candidate, and the item
        side of the first MLP layer once per catalogue item when the catalogue is smaller than
        the batch's candidates.
        """
        users = batch["user"]
        parts = []
        if self.use_gmf:
            parts.append(self.gmf_user(users)[:, None, :] * self.gmf_item(items))
        if self.use_mlp:
            user_first = self.mlp_first_user(self.mlp_user(users))[:, None, :]
            if self.num_items < items.numel():
                item_first = gather_rows(self.mlp_first_item(self.mlp_item.weight), items)
            else:
                item_first = self.mlp_first_item(self.mlp_item(items))
            parts.append(self.mlp(user_first + item_first))
        hidden = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return self.predict(hidden).squeeze(-1)

    def chunk_scorer(self, batch: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Logits [B, c] of every user of ``batch`` against an item chunk ``items`` [c].

        NeuMF's output layer is linear over [gmf; mlp], so its GMF half is a weighted inner
        product: one matmul over all items per block. The user half of the first MLP layer is
        computed once per block too; only the MLP tower runs per (user, item) pair, per chunk.
        """
        users = batch["user"]
        weight, bias = self.predict.weight.squeeze(0), self.predict.bias
        d = self.config.embed_dim
        if self.use_gmf:  # bias + h_gmf^T (p * q) = bias + (p * h_gmf) . q, all items at once
            base = torch.addmm(bias, self.gmf_user(users) * weight[:d], self.gmf_item.weight.T)
        else:
            base = bias.expand(users.shape[0], self.num_items)
        if not self.use_mlp:
            return lambda items: base[:, items]
        w_mlp = weight[d:] if self.use_gmf else weight
        user_first = self.mlp_first_user(self.mlp_user(users))[:, None, :]

        def scores(items: torch.Tensor) -> torch.Tensor:
            item_first = self.mlp_first_item(self.mlp_item(items))[None, :, :]
            return base[:, items] + self.mlp(user_first + item_first) @ w_mlp

        return scores
