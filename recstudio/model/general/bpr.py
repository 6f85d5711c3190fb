"""BPR: matrix factorisation trained with Bayesian Personalized Ranking.

Rendle, Freudenthaler, Gantner, Schmidt-Thieme. "BPR: Bayesian Personalized Ranking from Implicit
Feedback." UAI 2009. A user and an item embedding table; the score is their inner product and the
loss pushes an observed item above a sampled one, ``-log sigmoid(s(u, i) - s(u, j))``.

The scorer, loss and sampler are ordinary config fields, so the same two towers also give e.g. MF
with a sampled softmax or with popularity negatives without a new model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.ops import Embedding, sampled_inner_product_loss, sum_squared_rows
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@register
class BPR(TwoTowerRecommender):
    """User/item embeddings, inner product, BPR pairwise loss with uniform negatives that are not
    the user's training items (as in the paper)."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = "Matrix factorisation with the BPR pairwise loss (Rendle et al., UAI 2009)."

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {"embed_dim": ">= 1", "init_std": "> 0", "reg_weight": ">= 0"}
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Dimension of user and item embeddings."""
        init_std: float = 0.01
        """Standard deviation of the normal initialisation of both tables."""
        reg_weight: float = 5e-3
        """L2 penalty on the embeddings used in the batch (users, positives, negatives), summed
        over the dimension and averaged over the batch; the BPR-Opt regulariser of the paper."""
        reg_negatives: bool = True
        """Whether the penalty also covers the drawn negatives' rows (BPR-Opt). False: only the
        user's and the positive's, as with the full softmax, so that samplers that draw
        different items are penalised alike (benchmarks/README.md, sampler tables)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        # every default inside (register checks it); log scales for the rate-like knobs
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128, 256]},
        "reg_weight": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        # the initial scale decides how fast BPR leaves the flat start (issue 12)
        "init_std": {"type": "float", "low": 1e-3, "high": 3e-1, "log": True},
        "num_negatives": {"type": "int", "low": 1, "high": 4},
    }
    # init_std, reg_weight and this rate come from a small ml-100k sweep: benchmarks/README.md
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
        d = config.embed_dim
        self.user_emb = Embedding(data.num_users, d, padding_idx=0)
        self.item_emb = Embedding(data.num_items, d, padding_idx=0)
        for table in (self.user_emb, self.item_emb):
            nn.init.normal_(table.weight, std=config.init_std)
            with torch.no_grad():
                table.weight[0].zero_()
        self.build_ranking_parts(data, dim=d)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users)

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ranking loss plus ``reg_weight`` times the batch embeddings' squared norm.

        The regulariser covers exactly the rows the loss scored (the user, the positive and its
        negatives, counted as often as the batch used them), as in BPR-Opt; with
        ``reg_negatives`` false, the user and the positive only.
        """
        users, pos = batch["user"], batch["item"]
        table = self.user_emb.weight
        # the user rows are gathered inside the fused loss (query_index), so no [N, d] query is
        # built for the loss: only for the plain user table (a subclass may compute user vectors
        # otherwise); a model-based sampler or DNS reads the detached rows to draw negatives
        plain_users = type(self).user_vectors is BPR.user_vectors
        fusable = plain_users and (self.config.reg_negatives or self.config.reg_weight == 0)
        kind = self.fused_loss_kind(table) if fusable else None
        if kind is not None:  # the generic code below, as a few fused ops: same value and gradients
            drawn_from = table[users].detach() if self.needs_query_for_negatives else None
            items = self.item_emb.weight
            candidates = self.candidate_ids(drawn_from, pos, batch.get("neg_item"), users, items)
            return sampled_inner_product_loss(
                table,
                self.item_emb.weight,
                candidates,
                kind,
                self.config.reg_weight,
                padding_idx=0,
                query_index=users,
                query_padding_idx=0,
            )
        query = self.user_vectors(users)
        if getattr(self.loss_fn, "needs_all_scores", False):
            loss = self.ranking_loss(query, pos)
            scored = pos
        else:
            pos_s, neg_s, log_q_pos, log_q_neg, scored = self.score_candidates(
                query, pos, batch.get("neg_item"), users
            )
            loss = self.loss_fn(pos_s, neg_s, log_q_pos=log_q_pos, log_q_neg=log_q_neg)
            if not self.config.reg_negatives:
                scored = pos
        if self.config.reg_weight > 0:
            reg = sum_squared_rows(self.user_emb.weight, users, rows=query)
            reg = reg + sum_squared_rows(self.item_emb.weight, scored)
            loss = loss + self.config.reg_weight * reg / pos.shape[0]
        return loss
