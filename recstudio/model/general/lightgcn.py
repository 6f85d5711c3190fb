"""LightGCN: linear graph convolution over the user–item graph.

He, Deng, Wang, Li, Zhang, Wang. "LightGCN: Simplifying and Powering Graph Convolution Network
for Recommendation." SIGIR 2020. User and item embeddings (layer 0) are propagated over the
symmetrically normalised bipartite graph of the training interactions, ``E^(k+1) = Â E^(k)`` with
``Â = D^-1/2 A D^-1/2``, with no weight matrices and no nonlinearity; the final embedding is the
mean of layers 0..K (the paper's alpha_k = 1/(K+1)); the score is the inner product. Training is
BPR on (user, positive, uniform negative) with the L2 penalty of BPR-Opt on the layer-0 rows of
the batch (users, positives, negatives), as in the paper's code and RecBole.

How it runs: the graph is one ``SparseMatrix`` (CSR buffers, ``recstudio.model.graph``) built
once from the training interactions (on labelled data: the label-1 rows) and moved with the
model. A training step propagates the whole graph once and gathers the batch's rows from the
result; an evaluation pass propagates once in ``prepare_evaluation`` and every block reads the
cached tables (``eval_cache``).

Departures, on purpose: negatives exclude the user's training items (the project's default, as
the paper's sampler does); the penalty is ``reg_weight * (sum of squared layer-0 rows) / batch``,
the project's BPR convention, which is the paper's ``lambda/2 * ... / batch`` with
``reg_weight = lambda / 2`` (RecBole 1.2.1's default penalty sums unsquared norms instead);
embeddings start from N(0, 0.1^2) as in the authors' code (RecBole: Xavier uniform). The loss,
sampler and scorer are ``RankingParts`` options like any other model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.graph import PropagatedTwoTower, mean_of_layers, normalized_adjacency, split_nodes
from recstudio.model.ops import Embedding
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@register
class LightGCN(PropagatedTwoTower):
    """Embeddings propagated over the normalised user–item graph (mean of K+1 layers), inner
    product, BPR with the BPR-Opt penalty on the layer-0 rows of the batch."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Linear graph convolution over the user-item graph, BPR loss (He et al., SIGIR 2020)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "num_layers": ">= 0",
            "reg_weight": ">= 0",
            "init_std": "> 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Dimension of the layer-0 user and item embeddings (RecBole: 64)."""
        num_layers: int = 2
        """Propagation layers K; the final embedding is the mean of layers 0..K (RecBole: 2)."""
        reg_weight: float = 1e-4
        """L2 penalty on the layer-0 embeddings the batch used (users, positives, negatives):
        summed squares over the batch, divided by the batch size. 1e-4 (the authors' lambda,
        halved by their 1/2 factor, is 5e-5 here) validated above RecBole's 1e-5 on ml-100k
        (benchmarks/README.md, pilots)."""
        init_std: float | None = 0.1
        """Standard deviation of the normal initialisation of both tables (authors' code: 0.1);
        None: Xavier uniform per table, as RecBole initialises every graph model (std
        sqrt(2 / (rows + d)): 0.018 for ml-1m's 6,040 users)."""

        def validate(self) -> None:
            super().validate()
            if self.embed_dim < 1:
                raise ConfigError(f"config key 'model.embed_dim' must be >= 1, got {self.embed_dim}")
            if self.num_layers < 0:
                raise ConfigError(f"config key 'model.num_layers' must be >= 0, got {self.num_layers}")
            if self.reg_weight < 0:
                raise ConfigError(f"config key 'model.reg_weight' must be >= 0, got {self.reg_weight}")
            if self.init_std is not None and self.init_std <= 0:
                raise ConfigError(f"config key 'model.init_std' must be > 0, got {self.init_std}")

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "num_layers": {"type": "int", "low": 1, "high": 4},
        "reg_weight": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "init_std": {"type": "float", "low": 1e-3, "high": 3e-1, "log": True},
    }
    # lr 1e-3 and batch 2048 (the section defaults) as RecBole; the propagated embeddings keep
    # improving slowly for ~270 epochs on ml-100k, with flat stretches of up to 29 epochs
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"epochs": 500, "early_stop_patience": 30}}

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        self.num_layers = config.num_layers
        self.user_emb = Embedding(data.num_users, d, padding_idx=0)
        self.item_emb = Embedding(data.num_items, d, padding_idx=0)
        for table in (self.user_emb, self.item_emb):
            if config.init_std is None:
                nn.init.xavier_uniform_(table.weight)
            else:
                nn.init.normal_(table.weight, std=config.init_std)
            with torch.no_grad():
                table.weight[0].zero_()
        train = data.positives("train")
        self.adjacency = normalized_adjacency(train.user, train.item, data.num_users, data.num_items)
        self.build_ranking_parts(data, dim=d)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [num_users, d] and item [num_items, d] embeddings: the mean of layers
        0..K over the whole graph (one propagation)."""
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        out = mean_of_layers(self.adjacency, x, self.num_layers)
        return split_nodes(out, self.num_users)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, edges={self.adjacency.nnz // 2}"
