"""LR: logistic regression over the CTR fields, the classic click-through-rate baseline.

Richardson, Dominowska, Ragno. "Predicting Clicks: Estimating the Click-Through Rate for New
Ads." WWW 2007 (logistic regression on one-hot features; RecBole's LR cites it). With the fields
of ``recstudio.model.fm.fields`` (user id, item id, user and item features, context),

    p(click | u, i, ctx) = sigmoid(b + sum_f w_f),

one learned weight per feature value (a multi-hot field contributes the mean of its active
columns' weights), i.e. the first-order term of a factorization machine and nothing else: no
interaction between fields, so it cannot model "users of this kind like items of that kind"
beyond the per-user and per-item rates. Trained with log loss on every labelled row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.fm.fields import CTR_SEARCH_SPACE, FieldConfig, FieldRecommender, FieldSides
from recstudio.model.registry import register


@register
class LR(FieldRecommender):
    """Logistic regression: a bias plus one weight per active field value, log loss on labelled rows."""

    description: ClassVar[str] = (
        "Logistic regression over user, item, feature and context fields, the CTR baseline "
        "(Richardson et al., WWW 2007)."
    )

    @dataclass
    class Config(FieldConfig):
        """LR has no hyperparameters beyond its fields (regularise with ``train.weight_decay``)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = dict(CTR_SEARCH_SPACE)

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self.build_fields(data, dim=0)  # first-order weights only

    def logits(self, sides: FieldSides) -> torch.Tensor:
        return self.bias + sides.first_order()
