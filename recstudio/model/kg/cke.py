"""CKE: collaborative knowledge base embedding (the structural-knowledge part).

Zhang, Yuan, Lian, Xie, Ma. "Collaborative Knowledge Base Embedding for Recommender Systems."
KDD 2016. An item's latent vector is its own offset plus the embedding of the knowledge-graph
entity it is linked to,

    e_i = eta_i + v_{entity(i)}            (v = 0 for an item without an entity),

the score is ``u^T e_i``, and one loss trains both sides jointly: BPR on (user, item, negative)
plus the TransR structural loss on (head, relation, tail, corrupted tail),

    L = -ln sigma(u^T e_i - u^T e_j) - ln sigma(f_r(h, t') - f_r(h, t)) + penalties,

with f_r the TransR distance (``recstudio.model.layers.TransR``). The entity vectors are shared
by the item vectors and the TransR loss, which is how the knowledge graph shapes the ranking.

How it trains: the data contract zips two inputs, the interaction triplets (``main``) and the KG
triples (``kg``, one uniformly corrupted tail each), so every step sees one batch of each and
takes one optimizer step on the summed loss. An epoch is one pass over the interactions; the KG
batch size defaults to the KG's share of the interactions' batch size (``kg_batch_size``), so an
epoch also passes over every triple once.

Departures, on purpose: the paper's textual and visual knowledge (stacked denoising and
convolutional auto-encoders) are left out: no dataset here carries item texts or images (RecBole
leaves them out too). TransR's norm constraints are held with equality (unit-normalised projected
entities and relations, as RecBole 1.2.1 does) instead of the paper's Gaussian priors on them;
since the TransR loss is then scale-invariant in the relation vectors and projections, they get no
penalty. The penalties are squared L2 norms of the rows a batch used, over the batch size (the
project's BPR-Opt convention, i.e. the paper's priors; RecBole 1.2.1 adds unsquared norms):
``reg_weights[0]`` on the user, item-offset and item-entity rows the ranking loss scored,
``reg_weights[1]`` on the entity rows of the KG batch. Negatives exclude the user's training items
(the project's default). Defaults follow RecBole 1.2.1's ``CKE.yaml`` (embedding_size 64,
kg_embedding_size 64, reg_weights [1e-2, 1e-2]).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import TwoTowerRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.layers import TransR
from recstudio.model.loss import BPRLoss
from recstudio.model.ops import Embedding, gather_rows, sum_squared_rows
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


def kg_batch_size(num_interactions: int, num_triples: int, batch_size: int) -> int:
    """Triples per step such that the KG takes no more steps than the interactions do: the KG's
    share of the interactions' batch, ``ceil(T * B / N)`` (so one epoch covers both once)."""
    return max(1, math.ceil(num_triples * batch_size / max(1, num_interactions)))


@register
class CKE(TwoTowerRecommender):
    """Item vector = item offset + TransR entity vector of its linked entity; BPR jointly with the
    TransR structural loss on KG triples, one summed loss per step (zipped inputs)."""

    family: ClassVar[str] = "knowledge"
    description: ClassVar[str] = (
        "Collaborative Knowledge Base Embedding: BPR with TransR on the item KG (Zhang et al., KDD 2016)."
    )

    @dataclass
    class Config(RankingParts):
        ranges: ClassVar[dict[str, str]] = {
            "embed_dim": ">= 1",
            "kg_embed_dim": ">= 1",
            "reg_weights": ">= 0",
            "kg_batch_size": ">= 1",
            "init_std": "> 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        embed_dim: int = 64
        """Dimension of user, item-offset and entity vectors (RecBole embedding_size: 64)."""
        kg_embed_dim: int = 64
        """Dimension k of the TransR relation space (RecBole kg_embedding_size: 64)."""
        reg_weights: list[float] = field(default_factory=lambda: [1e-2, 1e-2])
        """L2 penalties (squared norms of the batch's rows over the batch size): [0] on the user,
        item-offset and item-entity rows the ranking loss scored, [1] on the KG batch's entity
        rows (RecBole reg_weights: [1e-2, 1e-2])."""
        kg_batch_size: int | None = None
        """KG triples per step; None: the KG's share of train.batch_size, ceil(T * B / N) for T
        triples and N training interactions, so an epoch passes over both once."""
        init_std: float = 0.01
        """Standard deviation of the normal initialisation of the user, item, entity and
        relation tables (TransR projections start as the identity)."""

        def validate(self) -> None:
            super().validate()
            for key in ("embed_dim", "kg_embed_dim"):
                if getattr(self, key) < 1:
                    raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
            if len(self.reg_weights) != 2 or any(w < 0 for w in self.reg_weights):
                raise ConfigError(
                    f"config key 'model.reg_weights' must be two weights >= 0, got {self.reg_weights}"
                )
            if self.kg_batch_size is not None and self.kg_batch_size < 1:
                raise ConfigError(f"config key 'model.kg_batch_size' must be >= 1, got {self.kg_batch_size}")
            if self.init_std <= 0:
                raise ConfigError(f"config key 'model.init_std' must be > 0, got {self.init_std}")

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "kg_embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "init_std": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "reg_weights": {"type": "categorical", "choices": [[1e-3, 1e-3], [1e-2, 1e-2], [1e-1, 1e-1]]},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }

    # chosen on ml-100k validation NDCG@10 (benchmarks/README.md, pilots): 1e-3 with patience 10
    # stopped at 0.2254, 2e-3 with patience 20 (BPR's settings) reached 0.2384
    default_overrides: ClassVar[dict[str, Any]] = {
        "train": {"learning_rate": 2e-3, "early_stop_patience": 20}
    }

    @classmethod
    def data_contract(cls, config: Config) -> DataContract:
        return DataContract(
            inputs=(
                TrainInput("triplet"),
                TrainInput("kg", name="kg", options={"num_negatives": 1}, batch_size=config.kg_batch_size),
            ),
            alternate="zip",
            parts=("kg",),
        )

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        kg = data.kg
        assert kg is not None  # the base class has checked the contract's parts
        d = config.embed_dim
        self.user_emb = Embedding(data.num_users, d, padding_idx=0)
        self.item_emb = Embedding(data.num_items, d, padding_idx=0)
        self.entity_emb = Embedding(kg.num_entities, d, padding_idx=0)
        for table in (self.user_emb, self.item_emb, self.entity_emb):
            nn.init.normal_(table.weight, std=config.init_std)
            with torch.no_grad():
                table.weight[0].zero_()
        self.transr = TransR(kg.num_relations, d, config.kg_embed_dim, init_std=config.init_std)
        self.register_buffer("item_entity", kg.item_entity.long().clone(), persistent=False)
        self.kg_loss_fn = BPRLoss()
        if config.kg_batch_size is None:  # the contract cannot see the data: size the KG input here
            main, kg_input = self.data_needs.inputs
            size = kg_batch_size(len(data.positives("train")), len(kg), self.train_config.batch_size)
            self.data_needs = dataclasses.replace(
                self.data_needs, inputs=(main, dataclasses.replace(kg_input, batch_size=size))
            )
        self.build_ranking_parts(data, dim=d)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users)

    def linked_entities(self) -> torch.Tensor:
        """v_{entity(i)} for every item [num_items, d] (zero for items without an entity)."""
        return gather_rows(self.entity_emb.weight, self.item_entity, padding_idx=0)

    def item_vectors(self) -> torch.Tensor:
        """eta_i + v_{entity(i)} for every item; the padding entity 0 (no link) adds zero."""
        return self.item_emb.weight + self.linked_entities()

    def kg_loss(self, batch: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """TransR loss of (head, relation, tail, corrupted tails) plus ``reg_weights[1]`` times the
        squared entity rows it used, over the batch size. ``rows`` [M, 2 + K, d]: the entity rows
        of (head, tail, corrupted tails), when the caller has gathered them already."""
        if rows is None:
            rows = gather_rows(self.entity_emb.weight, _kg_entities(batch), padding_idx=0)
        distance = self.transr.distance(rows[:, 0], batch["relation"], rows[:, 1:])
        loss = self.kg_loss_fn(-distance[:, 0], -distance[:, 1:])
        weight = self.config.reg_weights[1]
        if weight > 0:
            loss = loss + weight * rows.square().sum() / rows.shape[0]
        return loss

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One zipped step: the ranking loss of the interactions plus the KG loss of the
        ``kg.*`` triples (absent when the batch has none, e.g. a direct call on triplets).

        The entity rows of the items and of the KG batch come from one gather: each gather's
        backward materialises a gradient the size of the entity table (34,629 x 64 on ml-100k),
        which dominated the step when done three times."""
        users, pos = batch["user"], batch["item"]
        kg = {k[3:]: v for k, v in batch.items() if k.startswith("kg.")}
        num_items = self.item_entity.shape[0]
        index = self.item_entity
        if kg:
            entities = _kg_entities(kg)
            index = torch.cat([index, entities.flatten()])
        rows = gather_rows(self.entity_emb.weight, index, padding_idx=0)
        linked = rows[:num_items]
        query = self.user_vectors(users)
        items = self.item_emb.weight + linked
        loss, scored = self.scored_ranking_loss(query, pos, batch.get("neg_item"), users, items)
        weight = self.config.reg_weights[0]
        if weight > 0:
            reg = sum_squared_rows(self.user_emb.weight, users, rows=query)
            reg = reg + sum_squared_rows(self.item_emb.weight, scored)
            reg = reg + sum_squared_rows(linked, scored)  # the scored items' entity rows
            loss = loss + weight * reg / pos.shape[0]
        if kg:
            loss = loss + self.kg_loss(kg, rows[num_items:].view(*entities.shape, -1))
        return loss


def _kg_entities(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[M, 2 + K] entity ids of each triple: head, tail, corrupted tails."""
    return torch.cat([batch["head"].unsqueeze(1), batch["tail"].unsqueeze(1), batch["neg_tail"]], dim=1)
