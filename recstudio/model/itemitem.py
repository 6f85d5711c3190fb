"""Closed-form item-item models: a weight matrix W [num_items, num_items] fitted once, scores ``x_u W``.

EASE, ItemKNN and SLIM share everything but the fit: the binary train matrix X (as the item Gram
matrix ``X^T X``, built from dense user chunks so memory stays at one chunk plus the Gram), the
persistent ``item_weights`` buffer (so the pipeline's best checkpoint carries the fitted weights),
scoring a block as ``history @ W``, and the way they tell the pipeline there is nothing to train:
no parameters (so no optimizer), a ``training_step`` that does nothing, one epoch
(``CLOSED_FORM_OVERRIDES``) whose validation picks the checkpoint. A model implements
``fit_weights(gram) -> W``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TowerFreeRecommender
from recstudio.model.contract import DataContract, TrainInput

CLOSED_FORM_OVERRIDES: dict[str, Any] = {"train": {"epochs": 1, "early_stop_patience": 0}}
"""One epoch, no patience: the weights are final after ``fit_closed_form``."""


def item_gram(
    users: torch.Tensor, items: torch.Tensor, num_items: int, chunk_entries: int = 1 << 22
) -> torch.Tensor:
    """``X^T X`` [num_items, num_items] (float32, on the ids' device) of the binary user-item matrix
    X of the (user, item) pairs (duplicates count once).

    X^T X is the sum over users of outer products of their item sets; it is built from dense
    chunks of consecutive users, so memory stays at ``chunk_entries`` plus the Gram matrix.
    """
    device = users.device
    key = torch.unique(users * num_items + items)  # sorted: grouped by user
    users, items = key // num_items, key % num_items
    gram = torch.zeros(num_items, num_items, device=device)
    user_ids, counts = torch.unique_consecutive(users, return_counts=True)
    chunk_users = max(1, chunk_entries // max(1, num_items))
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.long, device=device)
    torch.cumsum(counts, 0, out=offsets[1:])
    for s in range(0, user_ids.numel(), chunk_users):
        e = min(s + chunk_users, user_ids.numel())
        lo, hi = int(offsets[s]), int(offsets[e])
        local = torch.repeat_interleave(torch.arange(e - s, device=device), counts[s:e])
        x = torch.zeros(e - s, num_items, device=device)
        x[local, items[lo:hi]] = 1.0
        gram.addmm_(x.T, x)
    return gram


class ItemItemRecommender(TowerFreeRecommender):
    """Base of the closed-form item-item models (see the module docstring)."""

    contract: ClassVar[DataContract] = DataContract(inputs=(TrainInput("user"),))
    default_overrides: ClassVar[dict[str, Any]] = CLOSED_FORM_OVERRIDES

    gram_chunk_entries: ClassVar[int] = 1 << 22
    """Interactions turned into a dense user-chunk at once while building X^T X."""

    def __init__(
        self,
        config: Any,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self.register_buffer("item_weights", torch.zeros(data.num_items, data.num_items))

    def fit_weights(self, gram: torch.Tensor) -> torch.Tensor:
        """The item-item weights W [num_items, num_items] from the Gram matrix ``X^T X``."""
        raise NotImplementedError

    @torch.no_grad()
    def fit_closed_form(self, data: PreparedData) -> None:
        """Fit W on the device of the model from the binary train matrix (label-1 rows)."""
        device = self.item_weights.device
        train = data.positives("train")
        gram = item_gram(
            train.user.to(device), train.item.to(device), self.num_items, self.gram_chunk_entries
        )
        self.item_weights.copy_(self.fit_weights(gram).to(self.item_weights.dtype))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None  # nothing to optimise: W was fitted in fit_closed_form

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is fitted in closed form by fit_closed_form")

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["history_mask"].to(self.item_weights.dtype) @ self.item_weights
