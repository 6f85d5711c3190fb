"""DeepFM: a factorization machine and a deep network over shared field embeddings.

Guo, Tang, Ye, Li, He. "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction." IJCAI 2017. Every field f (user id, item id, user and item features, context; see
``recstudio.model.fm.fields``) has an embedding e_f [d] and a first-order weight w_f; both parts
read the same embeddings:

    y_FM  = b + sum_f w_f + sum_{f<g} <e_f, e_g>
          = b + sum_f w_f + 1/2 (|sum_f e_f|^2 - sum_f |e_f|^2),
    y_DNN = MLP([e_1; ...; e_F]),
    p(click) = sigmoid(y_FM + y_DNN),

trained with log loss on every labelled row (the paper's objective). The FM part is computed
with the identity above; in full ranking its cross-side part is one matmul per user block and
item chunk, and the MLP's first layer runs once per user and once per item (``FieldSides``).

Departures, stated: the MLP follows RecBole's layer order (dropout before each hidden linear
layer, ReLU after it) and its defaults (RecBole 1.2.1 ``DeepFM.yaml``: embedding 10, hidden
[128, 128, 128], dropout 0.2) rather than the paper's 400-400-400 with dropout 0.5, which was
sized for Criteo-scale data; a multi-hot field is one field whose embedding is the mean of its
active columns' (the paper has one-hot fields only); Adam at 1e-3 without L2 (the section
defaults; ``train.weight_decay`` adds it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.fm.fields import (
    CTR_SEARCH_SPACE,
    DeepTower,
    FieldConfig,
    FieldRecommender,
    FieldSides,
    check_positive,
)
from recstudio.model.registry import register


@register
class DeepFM(FieldRecommender):
    """FM (first order + pairwise) plus an MLP over the same field embeddings, summed logits."""

    description: ClassVar[str] = (
        "DeepFM: factorization machine and MLP over shared field embeddings, log loss on "
        "labelled rows (Guo et al., IJCAI 2017)."
    )

    @dataclass
    class Config(FieldConfig):
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "mlp_hidden_sizes": ">= 1",
            "dropout": "[0, 1)",
            "init_std": "> 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 10
        """Embedding size of every field (RecBole's default 10)."""
        mlp_hidden_sizes: list[int] = field(default_factory=lambda: [128, 128, 128])
        """Hidden layer sizes of the deep part (RecBole 1.2.1's default)."""
        dropout: float = 0.2
        """Dropout before each hidden layer of the deep part (RecBole's default 0.2)."""
        init_std: float = 0.01
        """Standard deviation of the normal initialisation of the field embeddings."""

        def validate(self) -> None:
            super().validate()
            check_positive(self, "embed_dim")
            if not self.mlp_hidden_sizes or any(h < 1 for h in self.mlp_hidden_sizes):
                raise ConfigError(
                    f"config key 'model.mlp_hidden_sizes' must be positive sizes, got {self.mlp_hidden_sizes}"
                )
            if not 0.0 <= self.dropout < 1.0:
                raise ConfigError(f"config key 'model.dropout' must be in [0, 1), got {self.dropout}")
            if self.init_std <= 0:
                raise ConfigError(f"config key 'model.init_std' must be > 0, got {self.init_std}")

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embed_dim": {"type": "categorical", "choices": [8, 10, 16, 32]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "mlp_hidden_sizes": {"type": "categorical", "choices": [[64, 64], [128, 128, 128], [256, 128]]},
        "init_std": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        **CTR_SEARCH_SPACE,
    }

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self.build_fields(data, config.embed_dim, config.init_std)
        self.deep = DeepTower(
            self.fields.num_fields * config.embed_dim, config.mlp_hidden_sizes, config.dropout
        )
        self.pair_width = max(config.mlp_hidden_sizes)

    def logits(self, sides: FieldSides) -> torch.Tensor:
        return self.bias + sides.first_order() + sides.fm_interaction() + self.deep(sides)
