"""UltraGCN: graph convolution approximated by constraint losses, without message passing.

Mao, Zhu, Xiao, Lu, Wang, He. "UltraGCN: Ultra Simplification of Graph Convolutional Networks for
Recommendation." CIKM 2021. Plain user and item embeddings scored by inner product; what an
infinitely deep graph convolution would enforce is added to the loss instead of propagated:

- the user–item constraint (eq. 6): each training pair's BCE is weighted by
  beta_ui = sqrt(d_u + 1) / d_u * 1 / sqrt(d_i + 1) from the degrees, w1 + w2 beta_ui for the
  positive and w3 + w4 beta_uj for each of ``num_negatives`` negatives, the negatives' mean
  scaled by ``negative_weight`` (L_C + L_O, eq. 12, ``loss.constraint_bce_loss``);
- the item–item constraint (eq. 14): with co-occurrences G = R^T R and the same coefficients on
  G's degrees, every positive item's ``ii_neighbors`` strongest neighbours j add
  ``-lambda * w_ij log sigmoid(e_u . e_j)`` (L_I);
- ``gamma / 2`` times the squared norm of both tables (the authors' norm loss).

How it runs: the degrees, coefficients and the item–item top-K table are built once from the
training interactions in tensor code (``graph.constraint_betas``, ``graph.item_item_topk``:
G's rows per block of items through a sparse product, no loop per item) and kept as buffers;
a step draws the negatives on the model's device, gathers rows and sums. Evaluation is one
matmul of the two tables, like MF.

Defaults: the authors' ml-1m configuration (their repository's ``ultragcn_m1.ini``) with
embedding 64: w1 = 1e-7, w2 = 1, w3 = 1e-7, w4 = 1, 200 negatives with negative_weight 200,
gamma 1e-4, lambda 1e-3, 10 item neighbours, N(0, 1e-4^2) initialisation, learning rate 1e-3,
batch 1024; negatives are drawn uniformly from all items, positives included, as in the authors'
code (``sampling_sift_pos = no``; ``exclude_positives`` turns the project's exclusion on); the
item–item neighbours keep G's diagonal, as the authors' code does (``ii_diagonal_zero=False``).
With these weights validation sits at popularity level for the first ~110 epochs (ml-100k,
valid NDCG@10 ~0.11) before it rises (the authors' own training code, run on the same split
for 25 epochs, sits on the same plateau), so the run trains at least 150 epochs
(``train.min_epochs``) with the authors' patience of 50 checks (their ``early_stop_epoch``), up
to 500 epochs. On ml-100k that reaches valid / test NDCG@10 0.2388 / 0.2790 (mean of three
seeds; LightGCN's defaults 0.2410 / 0.2769); the earlier "test 0.128 with these defaults" was
early stopping on the plateau. A 40-trial study's configuration (``train.learning_rate=5.4e-3
model.num_negatives=100 model.negative_weight=63 model.gamma=4.6e-3 model.lambda_=3.3e-5
model.w2=5.6 model.ii_neighbors=20``) peaks by epoch ~35 but lower (0.2373 / 0.2747). On
ml-1m pairs the plateau lasts 17 epochs (~13k steps; ml-100k ~7k) and one hour (108 epochs, still
rising) reached test Recall@20 / NDCG@20 0.2952 / 0.3102, converged LightGCN 0.2678 / 0.2854;
there the 150-epoch minimum is longer than needed (``--set train.min_epochs=...`` lowers it).
``benchmarks/README.md`` has the curves.
RecBole 1.2.1 has no UltraGCN.
Departure, on purpose: none in the formulas; the scores of a step's negatives come from one
[batch, items] matmul where the catalogue is small (``candidate_scores``), the same values as the
authors' gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.graph import constraint_betas, item_item_topk
from recstudio.model.loss import constraint_bce_loss
from recstudio.model.ops import gather_rows, user_item_tables
from recstudio.model.registry import register
from recstudio.model.sampler import UniformSampler
from recstudio.model.scorer import InnerProductScorer


@register
class UltraGCN(TwoTowerRecommender):
    """MF embeddings trained with UltraGCN's degree-weighted BCE constraint loss, many negatives
    and an item–item co-occurrence constraint; scores by inner product."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "Graph convolution replaced by degree-weighted constraint losses on MF embeddings "
        "(Mao et al., CIKM 2021)."
    )

    @dataclass
    class Config:
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "w1": ">= 0",
            "w2": ">= 0",
            "w3": ">= 0",
            "w4": ">= 0",
            "num_negatives": ">= 1",
            "negative_weight": ">= 0",
            "gamma": ">= 0",
            "lambda_": ">= 0",
            "ii_neighbors": ">= 0",
            "init_std": "> 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Dimension of the user and item embeddings."""
        w1: float = 1e-7
        """Constant part of a positive pair's weight (authors' ml-1m: 1e-7)."""
        w2: float = 1.0
        """Weight of beta_ui in a positive pair's weight (authors' ml-1m: 1)."""
        w3: float = 1e-7
        """Constant part of a negative pair's weight (authors' ml-1m: 1e-7)."""
        w4: float = 1.0
        """Weight of beta_uj in a negative pair's weight (authors' ml-1m: 1)."""
        num_negatives: int = 200
        """Uniform negatives per positive (authors' ml-1m: 200)."""
        negative_weight: float = 200.0
        """Scale of the negatives' mean loss against the positive's (authors' ml-1m: 200)."""
        gamma: float = 1e-4
        """Weight of the L2 norm loss, gamma/2 * (|E_user|^2 + |E_item|^2) (authors': 1e-4)."""
        lambda_: float = 1e-3
        """Weight of the item–item constraint loss L_I (authors' ml-1m: 1e-3)."""
        ii_neighbors: int = 10
        """Item–item neighbours kept per item (authors': 10); 0 turns L_I off."""
        exclude_positives: bool = False
        """Never draw one of the user's training items as its negative. Off, as in the authors'
        code (``sampling_sift_pos = no``): 200 draws per positive are the step's largest cost
        after the scores, and the rejection of positives doubles it."""
        init_std: float = 1e-4
        """Standard deviation of the normal initialisation (authors' initial_weight: 1e-4)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "negative_weight": {"type": "float", "low": 10.0, "high": 500.0, "log": True},
        "num_negatives": {"type": "categorical", "choices": [50, 100, 200, 400]},
        "gamma": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "lambda_": {"type": "float", "low": 1e-5, "high": 10.0, "log": True},
        "w2": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
        "ii_neighbors": {"type": "categorical", "choices": [5, 10, 20]},
    }
    default_overrides: ClassVar[dict[str, Any]] = {
        "train": {
            "learning_rate": 1e-3,
            "batch_size": 1024,
            "epochs": 500,
            "early_stop_patience": 50,
            "min_epochs": 150,
        }
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
        self.user_emb, self.item_emb = user_item_tables(
            data.num_users, data.num_items, d, partial(nn.init.normal_, std=config.init_std)
        )
        train = data.positives("train")
        key = torch.unique(train.user.long() * data.num_items + train.item.long())
        user, item = key // data.num_items, key % data.num_items
        beta_user, beta_item = constraint_betas(
            torch.bincount(user, minlength=data.num_users), torch.bincount(item, minlength=data.num_items)
        )
        self.register_buffer("beta_user", beta_user, persistent=False)
        self.register_buffer("beta_item", beta_item, persistent=False)
        neighbours, weights = item_item_topk(user, item, data.num_users, data.num_items, config.ii_neighbors)
        self.register_buffer("ii_neighbours", neighbours, persistent=False)
        self.register_buffer("ii_weights", weights, persistent=False)
        self.scorer = InnerProductScorer()
        self.sampler = UniformSampler(data.num_items)
        if config.exclude_positives:
            self.sampler.exclude(user, item, data.num_users)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users)

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        users, pos = batch["user"], batch["item"]
        neg = self.sampler.sample_ids(pos.shape[0], c.num_negatives, users=users)
        query = self.user_emb(users)  # [N, d]
        pos_score = (query * self.item_emb(pos)).sum(-1)
        ii = self.ii_neighbours[pos] if c.lambda_ > 0 and c.ii_neighbors > 0 else None
        neg_score, ii_score = self.candidate_scores(query, neg, ii)
        beta_u = self.beta_user[users]
        pos_weight = c.w1 + c.w2 * beta_u * self.beta_item[pos]
        neg_weight = c.w3 + c.w4 * beta_u[:, None] * self.beta_item[neg]
        loss = constraint_bce_loss(pos_score, neg_score, pos_weight, neg_weight, c.negative_weight)
        if c.gamma > 0:
            loss = loss + c.gamma / 2 * (
                self.user_emb.weight.square().sum() + self.item_emb.weight.square().sum()
            )
        if ii_score is not None:
            loss = loss - c.lambda_ * (self.ii_weights[pos] * F.logsigmoid(ii_score)).sum()
        return loss

    def candidate_scores(
        self, query: torch.Tensor, neg: torch.Tensor, ii: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores of the queries [N, d] against their negatives [N, K] and item neighbours
        [N, k]. Where the catalogue is small against K (ml-100k: 1,682 items, K = 200) one
        [N, num_items] matmul and a gather beat gathering N x K item rows (a memory-bound
        [N, K, d] copy and its scatter backward: 0.9 s against ~0.1 s per step of 1024 on the
        2-core CPU); on large catalogues the rows are gathered."""
        if self.num_items <= 32 * neg.shape[1]:
            full = query @ self.item_emb.weight.T
            return full.gather(1, neg), (None if ii is None else full.gather(1, ii))

        def rows(ids: torch.Tensor) -> torch.Tensor:
            return (gather_rows(self.item_emb.weight, ids) * query.unsqueeze(1)).sum(-1)

        return rows(neg), (None if ii is None else rows(ii))

    def extra_repr(self) -> str:
        c = self.config
        return f"negatives={c.num_negatives}, ii_neighbors={c.ii_neighbors}"
