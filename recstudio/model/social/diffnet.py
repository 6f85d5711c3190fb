"""DiffNet: neural influence diffusion over the social graph.

Wu, Sun, Fu, Hong, Wang, Wang. "A Neural Influence Diffusion Model for Social Recommendation."
SIGIR 2019. A user's latent vector starts from a free embedding (fused with the user's features
when the dataset has them) and diffuses over the social graph for K layers,

    h_u^{k+1} = s( W^k [h_u^k ; mean_{f in friends(u)} h_f^k] ),

then the user vector adds the mean of the vectors of the items the user consumed in training, and
the score is the inner product with the item vector:

    u = h_u^K + (1 / |R_u|) sum_{i in R_u} v_i,        v_i = q_i (+ sigma(F y_i)),    s(u, i) = u^T v_i.

Trained with BPR on (user, item, sampled negative) and an L2 penalty on the final user and item
vectors the batch scored.

How it runs: the row-normalised user–user adjacency (the friends' mean; weighted by the link
weights when the data has them, which are 1 for plain friendship lists) and the user -> item mean
of training interactions are two ``SparseMatrix`` operators (CSR buffers, ``recstudio.model.graph``)
built once and moved with the model. A training step runs the diffusion once over all users and
gathers the batch's rows; an evaluation pass runs it once in ``prepare_evaluation`` and every block
reads the cached tables (``eval_cache``).

Departures, stated: features are fused additively on both sides, ``h^0 = p_u + sigma(F_U x_u)``
like the paper's item side (and the authors' released code for users), rather than the paper's
``g(W^0 [x_u ; p_u])`` for users; ``F y`` is a sum of learned field embeddings
(``recstudio.model.layers.FeatureVectors``: categorical codes and multi-hot bags) instead of fixed
review vectors. The layer has no bias (the paper's ``W^k [.]``); s is tanh, chosen on lastfm-2k
validation over sigmoid and identity (the paper calls for a non-linear transformation; relu
was not measured). The penalty is on the *final* vectors the batch scored (squared, over the
batch size), not on the free embeddings as in RecBole-GNN (which has no layer weights): with the
paper's unpenalised W, a penalty on the free embeddings alone can be scaled away by W, and
lastfm-2k validation Recall@10 stayed at 0.109 (identity s), 0.098 (sigmoid), 0.104 (tanh),
against 0.161, 0.156 and 0.177 with the penalty on the final vectors (benchmarks/README.md,
pilots). Negatives exclude the user's training items (the project's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.graph import SparseMatrix, row_norm
from recstudio.model.layers import FeatureVectors
from recstudio.model.ops import Embedding, gather_rows, sum_squared_rows
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register

DiffusionActivation = Literal["sigmoid", "relu", "tanh", "identity"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


class DiffusionLayer(nn.Module):
    """One influence diffusion layer: ``s(W [h ; A h])`` with A the row-normalised social
    adjacency (``A h`` is each user's mean over the friends; zero for a user without friends)."""

    def __init__(self, dim: int, activation: DiffusionActivation = "sigmoid") -> None:
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim, bias=False)
        nn.init.xavier_uniform_(self.linear.weight)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, h: torch.Tensor, neighbours: nn.Module) -> torch.Tensor:
        """``h`` [num_users, d] -> [num_users, d]; ``neighbours(h)`` is the friends' mean."""
        return self.activation(self.linear(torch.cat([h, neighbours(h)], dim=1)))


def mean_operator(
    rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int], weight: torch.Tensor | None = None
) -> SparseMatrix:
    """The row-normalised matrix of edges (rows, cols) with optional weights: ``M x`` is each
    row's (weighted) mean of its columns' vectors, zero for a row without edges. A repeated edge
    counts once, with its mean weight."""
    key, inverse = torch.unique(rows.long() * shape[1] + cols.long(), return_inverse=True)
    r, c = key // shape[1], key % shape[1]
    value = None
    if weight is not None:
        count = torch.bincount(inverse, minlength=key.shape[0]).float()
        value = torch.zeros(key.shape[0]).index_add_(0, inverse, weight.float()) / count
    return SparseMatrix(r, c, row_norm(r, c, shape[0], value), shape)


@register
class DiffNet(TwoTowerRecommender):
    """Free user embeddings diffused over the social graph for K layers, plus the mean of the
    user's consumed item vectors; inner product with item vectors; BPR."""

    family: ClassVar[str] = "social"
    description: ClassVar[str] = (
        "Neural influence diffusion over the social graph, BPR loss (Wu et al., SIGIR 2019)."
    )
    contract: ClassVar[DataContract] = DataContract(inputs=(TrainInput("triplet"),), parts=("social",))

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
        """Dimension of user and item vectors (RecBole-GNN embedding_size: 64)."""
        num_layers: int = 2
        """Influence diffusion layers K (RecBole-GNN n_layers: 2)."""
        activation: DiffusionActivation = "tanh"
        """The layers' nonlinearity s: tanh, sigmoid, relu, or identity (a linear layer); tanh
        was best on lastfm-2k validation."""
        reg_weight: float = 5e-3
        """L2 penalty on the final user and item vectors the batch scored (squared rows summed,
        divided by the batch size); 5e-3 as BPR's, 1e-2 was lower on lastfm-2k validation."""
        use_features: bool = True
        """Fuse the dataset's user/item features (when it has any) into h^0 and the item vectors."""
        init_std: float = 0.01
        """Standard deviation of the normal initialisation of the free embeddings."""

        def validate(self) -> None:
            super().validate()
            if self.embed_dim < 1:
                raise ConfigError(f"config key 'model.embed_dim' must be >= 1, got {self.embed_dim}")
            if self.num_layers < 0:
                raise ConfigError(f"config key 'model.num_layers' must be >= 0, got {self.num_layers}")
            if self.activation not in ACTIVATIONS:
                raise ConfigError(
                    f"config key 'model.activation' must be one of {', '.join(ACTIVATIONS)}; "
                    f"got {self.activation!r}"
                )
            if self.reg_weight < 0:
                raise ConfigError(f"config key 'model.reg_weight' must be >= 0, got {self.reg_weight}")
            if self.init_std <= 0:
                raise ConfigError(f"config key 'model.init_std' must be > 0, got {self.init_std}")

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "num_layers": {"type": "int", "low": 1, "high": 3},
        "activation": {"type": "categorical", "choices": ["tanh", "sigmoid", "relu", "identity"]},
        "reg_weight": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "init_std": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    }
    # BPR's training settings; chosen on lastfm-2k validation (1e-3 / patience 10 stopped early)
    default_overrides: ClassVar[dict[str, Any]] = {
        "train": {"learning_rate": 2e-3, "early_stop_patience": 20}
    }

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        social = data.social
        assert social is not None  # the base class has checked the contract's parts
        d = config.embed_dim
        self.user_emb = Embedding(data.num_users, d, padding_idx=0)
        self.item_emb = Embedding(data.num_items, d, padding_idx=0)
        for table in (self.user_emb, self.item_emb):
            nn.init.normal_(table.weight, std=config.init_std)
            with torch.no_grad():
                table.weight[0].zero_()
        self.layers = nn.ModuleList(DiffusionLayer(d, config.activation) for _ in range(config.num_layers))
        users = (data.num_users, data.num_users)
        self.friends = mean_operator(social.source, social.target, users, social.weight)
        train = data.positives("train")
        self.consumed = mean_operator(train.user, train.item, (data.num_users, data.num_items))
        self.user_features = self.item_features = None
        if config.use_features and not data.user_features.is_empty():
            self.user_features = FeatureVectors(data.user_features, d, config.init_std)
        if config.use_features and not data.item_features.is_empty():
            self.item_features = FeatureVectors(data.item_features, d, config.init_std)
        self.build_ranking_parts(data, dim=d)

    # ------------------------------------------------------------------ propagation
    def item_table(self) -> torch.Tensor:
        """v = q (+ sigma(F y)) for every item [num_items, d]."""
        items = self.item_emb.weight
        if self.item_features is not None:
            items = items + torch.sigmoid(self.item_features())
        return items

    def user_table(self, items: torch.Tensor) -> torch.Tensor:
        """u = h^K + mean of consumed item vectors, for every user [num_users, d]: one diffusion."""
        h = self.user_emb.weight
        if self.user_features is not None:
            h = h + torch.sigmoid(self.user_features())
        for layer in self.layers:
            h = layer(h, self.friends)
        return h + self.consumed(items)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user table, item table) of the current parameters."""
        items = self.item_table()
        return self.user_table(items), items

    def prepare_evaluation(self) -> None:
        """One diffusion per evaluation pass; every block reads these tables."""
        self.eval_cache["users"], self.eval_cache["items"] = self.propagate()

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        table = self.eval_cache.get("users")
        return (table if table is not None else self.propagate()[0])[users]

    def item_vectors(self) -> torch.Tensor:
        table = self.eval_cache.get("items")
        return table if table is not None else self.item_table()

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ranking loss of the diffused user vectors (one diffusion for the whole batch) plus
        ``reg_weight`` times the squared final user and item vectors it scored, over the batch
        size (penalising the free embeddings alone lets the unpenalised layer weights scale
        them up: see the module docstring)."""
        users, pos = batch["user"], batch["item"]
        user_table, item_table = self.propagate()
        query = gather_rows(user_table, users)
        loss, scored = self.scored_ranking_loss(query, pos, batch.get("neg_item"), users, items=item_table)
        if self.config.reg_weight > 0:
            reg = query.square().sum() + sum_squared_rows(item_table, scored)
            loss = loss + self.config.reg_weight * reg / pos.shape[0]
        return loss

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, social_edges={self.friends.nnz}, consumed={self.consumed.nnz}"
