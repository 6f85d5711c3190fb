"""FM: factorization machine over user, item and side-feature fields, ranked with one matmul.

Rendle. "Factorization Machines." ICDM 2010. With active features ``a`` of values ``x_a``,

    y = w0 + sum_a w_a x_a + sum_{a<b} <v_a, v_b> x_a x_b,
    sum_{a<b} <v_a, v_b> x_a x_b = 1/2 (|sum_a x_a v_a|^2 - sum_a x_a^2 |v_a|^2).

Fields here are the user id, the item id, each categorical feature of users and items (code 0 is
"unknown" and contributes nothing) and each multi-hot feature (a weighted bag: every column is a
feature whose value is the matrix entry). Splitting the active features into the user side U and
the item side I, with ``s_U = sum_U x v`` and ``pair_U = 1/2 (|s_U|^2 - sum_U x^2 |v|^2)``:

    y(u, i) = w0 + lin_U + lin_I + <s_U, s_I> + pair_U + pair_I
            = <[s_U, 1, w0 + lin_U + pair_U], [s_I, lin_I + pair_I, 1]>,

so the query vector [s_U, 1, w0 + lin_U + pair_U] against the item vector [s_I, lin_I + pair_I, 1]
with an inner product is exactly the FM, and full ranking is one matmul (an item-tower model,
usable with ANN retrieval). With no side features it is MF with user and item biases.

Two training modes (``pointwise``): by default a retriever, ranking each observed item above
sampled negatives with the configured loss (BCE over 4 negatives); with ``pointwise=true`` a CTR
model on labelled rows, log loss on every row's label (Rendle's regression/classification
setting) and judged pointwise (AUC, GAUC, log loss), like LR and DeepFM: its data contract
becomes labelled, so ``recstudio run`` gives it the dataset's label rule and an AUC monitor. The
CTR models' split is not implied; pass it for the same protocol, e.g.
``--set model.pointwise=true data.split=entry``. Either way the model is the same function and
still ranks all items by one matmul. Unlike the CTR models (``recstudio.model.fm.fields``), a
multi-hot field here is a weighted bag of features (Rendle's FM: every column is a feature, so
pairs inside the bag interact too), and interaction context fields are not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import FeatureTable, PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import ItemTowerRecommender, pointwise_log_loss
from recstudio.model.contract import DataContract
from recstudio.model.fm.fields import CTR_CONTRACT
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


class _Side(nn.Module):
    """One side's fields (id + categorical + multi-hot): its FM sum vector, linear term and
    within-side pairwise term for given row ids."""

    def __init__(self, num_rows: int, features: FeatureTable, dim: int, init_std: float) -> None:
        super().__init__()
        self.cat_names = sorted(features.categorical)
        self.bag_names = sorted(features.multi_hot)
        self.vec = nn.ModuleDict()
        self.lin = nn.ModuleDict()
        sizes = {"id": num_rows} | {f"c_{n}": int(features.cardinality[n]) for n in self.cat_names}
        for key, size in sizes.items():
            self.vec[key] = nn.Embedding(size, dim, padding_idx=0)
            self.lin[key] = nn.Embedding(size, 1, padding_idx=0)
        for n in self.bag_names:
            width = features.multi_hot[n].shape[1]
            self.vec[f"m_{n}"] = nn.Embedding(width, dim)
            self.lin[f"m_{n}"] = nn.Embedding(width, 1)
            self.register_buffer(f"bag_{n}", features.multi_hot[n].float().clone(), persistent=False)
        for n in self.cat_names:
            self.register_buffer(f"code_{n}", features.categorical[n].long().clone(), persistent=False)
        for table in self.vec.values():
            nn.init.normal_(table.weight, std=init_std)
        for table in self.lin.values():
            nn.init.zeros_(table.weight)
        with torch.no_grad():
            for key in sizes:
                self.vec[key].weight[0].zero_()

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s [..., d], lin + pair [...]) of the given row ids [...]."""
        keys_codes = [("id", rows)] + [(f"c_{n}", getattr(self, f"code_{n}")[rows]) for n in self.cat_names]
        s = 0.0
        sq = 0.0
        lin = 0.0
        for key, codes in keys_codes:  # one active feature per field, value 1
            v = self.vec[key](codes)
            s = s + v
            sq = sq + v.pow(2).sum(-1)
            lin = lin + self.lin[key](codes).squeeze(-1)
        for n in self.bag_names:
            x = getattr(self, f"bag_{n}")[rows]  # [..., w] values of this field's columns
            v, w = self.vec[f"m_{n}"].weight, self.lin[f"m_{n}"].weight.squeeze(-1)
            s = s + x @ v
            sq = sq + x.pow(2) @ v.pow(2).sum(-1)
            lin = lin + x @ w
        pair = 0.5 * (s.pow(2).sum(-1) - sq)
        return s, lin + pair


@register
class FM(ItemTowerRecommender):
    """Factorization machine on id + side-feature fields, decomposed into query and item towers."""

    family: ClassVar[str] = "feature"
    description: ClassVar[str] = (
        "Factorization machine over user/item ids and side features, full ranking by one matmul "
        "(Rendle, ICDM 2010)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {"embed_dim": ">= 1", "init_std": "> 0", "reg_weight": ">= 0"}
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        init_std: float = 0.01
        """Standard deviation of the normal initialisation of the factor vectors."""
        use_features: bool = True
        """Use the dataset's user/item side features; false gives MF with biases."""
        reg_weight: float = 0.0
        """L2 penalty on the id embeddings of the batch's users and items (averaged over the batch)."""
        loss: str = "bce"
        num_negatives: int = 4
        pointwise: bool = False
        """Train on labelled rows with log loss and evaluate pointwise (a CTR model) instead of
        ranking observed items above sampled negatives (a retriever)."""

        def validate(self) -> None:
            super().validate()
            if self.scorer != "inner_product":
                # the query/item decomposition equals the FM only under the inner product
                raise ConfigError(
                    f"config key 'model.scorer' must be inner_product for FM, got '{self.scorer}'"
                )

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embed_dim": {"type": "categorical", "choices": [16, 32, 64, 128]},
        "init_std": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "reg_weight": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4, 1e-3]},
        "num_negatives": {"type": "int", "low": 1, "high": 8, "step": 1},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        # categorical so that the default 0 is a candidate (the defaults trial reproduces it)
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-7, 1e-6, 1e-5, 1e-4]},
    }

    @classmethod
    def data_contract(cls, config: Config) -> DataContract:
        """Labelled rows (``pointwise``) or triplets with sampled negatives (the default)."""
        return CTR_CONTRACT if config.pointwise else cls.contract

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        empty = FeatureTable()
        self.user_side = _Side(
            data.num_users,
            data.user_features if config.use_features else empty,
            config.embed_dim,
            config.init_std,
        )
        self.item_side = _Side(
            data.num_items,
            data.item_features if config.use_features else empty,
            config.embed_dim,
            config.init_std,
        )
        self.bias = nn.Parameter(torch.zeros(()))
        self.build_ranking_parts(data, dim=config.embed_dim + 2)

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[s_U, 1, w0 + lin_U + pair_U] per user."""
        s, rest = self.user_side(batch["user"])
        ones = torch.ones_like(rest)
        return torch.cat([s, ones[..., None], (rest + self.bias)[..., None]], dim=-1)

    def _item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """[s_I, lin_I + pair_I, 1] of the item ids ``rows`` [...]."""
        s, rest = self.item_side(rows)
        return torch.cat([s, rest[..., None], torch.ones_like(rest)[..., None]], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        """[s_I, lin_I + pair_I, 1] for every item id (row 0 is padding, never recommended)."""
        return self._item_vectors(torch.arange(self.num_items, device=self.bias.device))

    def score_pairs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """FM logits [N] of the rows' (user, item) pairs: from the evaluation pass's cached item
        vectors, else from the rows' items only (pointwise training)."""
        if "items" in self.eval_cache:
            return super().score_pairs(batch)
        return (self.query_vectors(batch) * self._item_vectors(batch["item"])).sum(-1)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "label" in batch:  # pointwise: log loss on every labelled row
            loss = pointwise_log_loss(self.score_pairs(batch), batch["label"])
            if self.config.reg_weight > 0:
                reg = (
                    self.user_side.vec["id"](batch["user"]).pow(2).sum()
                    + self.item_side.vec["id"](batch["item"]).pow(2).sum()
                )
                loss = loss + self.config.reg_weight * reg / batch["user"].shape[0]
            return loss
        query = self.query_vectors(batch)
        users, pos = batch["user"], batch["item"]
        neg = batch.get("neg_item")
        if neg is None and not getattr(self.loss_fn, "needs_all_scores", False):
            # drawn here (not inside ranking_loss) so that the penalty covers the same rows
            neg = self.draw_negatives(query, pos.shape[0], users)
        loss = self.ranking_loss(query, pos, neg, users)
        if self.config.reg_weight > 0:
            items = pos if neg is None else torch.cat([pos[:, None], neg], dim=1)
            reg = (
                self.user_side.vec["id"](batch["user"]).pow(2).sum()
                + self.item_side.vec["id"](items).pow(2).sum()
            )
            loss = loss + self.config.reg_weight * reg / pos.shape[0]
        return loss
