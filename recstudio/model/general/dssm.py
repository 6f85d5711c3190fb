"""DSSM: deep structured semantic model, as a two-tower recommender over user and item features.

Huang, He, Gao, Deng, Acero, Heck. "Learning Deep Structured Semantic Models for Web Search using
Clickthrough Data." CIKM 2013. A query tower and a document tower (multi-layer tanh networks)
map their inputs to one semantic space; relevance is the cosine of the two outputs; training
maximises the softmax likelihood of the clicked document against sampled unclicked ones,
``exp(gamma cos(q, d+)) / sum_{d'} exp(gamma cos(q, d'))``.

As a recommender (the usual two-tower reading, RecBole's and DeepMatch's): the query is the user,
the document the item, and each tower's input is the concatenation of its side's field
embeddings: the id and every side feature (categorical codes, multi-hot fields pooled by their
mean: ``recstudio.model.fm.fields.FieldEmbedding``, the CTR models' encoding). Each tower is
``tanh_mlp`` (tanh after every layer, as the paper); the score is the cosine scorer; the loss is
the sampled softmax over ``num_negatives`` uniform non-positives at ``temperature`` = 1/gamma.
Full ranking runs the item tower once per evaluation pass (``prepare_evaluation``) and one
cosine matmul per user block.

Departures, on purpose: the paper's inputs are letter-trigram hashes of query and document text;
here they are the dataset's ids and side features (a dataset with neither user nor item features
fails in one line: the model would be a plain MF); the towers are [300, 300, 128] as the paper's
hidden layers, fed by embeddings of width 64 per field instead of the 30k-dimensional word
hashing layer; gamma is a fixed temperature (0.1) rather than tuned per held-out set; Adam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError, ModelError
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.fm.fields import FieldEmbedding
from recstudio.model.layers import tanh_mlp
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@register
class DSSM(TwoTowerRecommender):
    """User and item towers (tanh MLPs over id + side-feature embeddings), cosine, softmax."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Two tanh towers over user and item features, cosine, sampled softmax (Huang et al., CIKM 2013)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {"embed_dim": ">= 1", "tower_sizes": ">= 1", "init_std": "> 0"}
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        loss: str = "sampled_softmax"
        scorer: str = "cosine"
        num_negatives: int = 4
        """Sampled negatives per positive (the paper: 4 unclicked documents)."""
        temperature: float | None = 0.1
        """Softmax temperature, 1 / the paper's smoothing factor gamma."""
        embed_dim: int = 64
        """Width of each field's embedding (id and each side feature)."""
        tower_sizes: list[int] = field(default_factory=lambda: [300, 300, 128])
        """Layer sizes of both towers (the paper: 300, 300, 128); the last is the vector width."""
        init_std: float = 0.01
        """Standard deviation of the field embeddings' normal initialisation."""

        def validate(self) -> None:
            super().validate()
            if not self.tower_sizes:
                raise ConfigError("config key 'model.tower_sizes' needs at least one layer size")

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "temperature": {"type": "float", "low": 0.02, "high": 1.0, "log": True},
        "num_negatives": {"type": "categorical", "choices": [4, 16, 64]},
        "embed_dim": {"type": "categorical", "choices": [16, 32, 64]},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
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
        if data.user_features.is_empty() and data.item_features.is_empty():
            raise ModelError(
                f"DSSM needs user or item side features for its towers, but dataset '{data.name}' "
                "has none (declare user_features / item_features in its spec)"
            )
        d = config.embed_dim
        self.fields = FieldEmbedding(data, d, use_context=False, init_std=config.init_std)
        self.user_tower = tanh_mlp(
            [self.fields.user.num_fields * d, *config.tower_sizes], last_activation=True
        )
        self.item_tower = tanh_mlp(
            [self.fields.item.num_fields * d, *config.tower_sizes], last_activation=True
        )
        self.register_buffer("all_items", torch.arange(data.num_items), persistent=False)
        self.build_ranking_parts(data, dim=config.tower_sizes[-1])

    def _side_input(self, side: Any, ids: torch.Tensor) -> torch.Tensor:
        """The concatenated field embeddings [N, F_side * d] of the ids [N] of one side."""
        return side.lookup(self.fields.table, ids)[..., :-1].flatten(-2)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_tower(self._side_input(self.fields.user, users))

    def item_vectors(self) -> torch.Tensor:
        return self.item_tower(self._side_input(self.fields.item, self.all_items))
