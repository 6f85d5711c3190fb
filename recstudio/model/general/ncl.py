"""NCL: LightGCN with structural and prototype (semantic) neighbourhood contrast.

Lin, Tian, Hou, Zhao. "Improving Graph Collaborative Filtering with Neighborhood-enriched
Contrastive Learning." WWW 2022. LightGCN's recommendation task (mean of layers 0..K, inner
product, BPR plus the penalty on the batch's layer-0 rows) plus two InfoNCE terms at
temperature ``ssl_temp``, both on cosine similarities:

- structural: a node's even layer 2h (``hyper_layers`` h, its h-hop homogeneous neighbours) is
  pulled towards its own layer-0 embedding against every other node's layer 0 (users against
  all users, items against all items, the item term weighted by ``alpha``), weight ``ssl_reg``;
- prototype: a node's layer-0 embedding is pulled towards the (L2-normalised) centroid of its
  k-means cluster against all ``num_clusters`` centroids, weight ``proto_reg``; the clusters of
  the layer-0 user and item embeddings are recomputed (E-step) every ``m_step`` epochs in
  ``on_train_epoch_start``, and the term joins the loss after ``warm_up_epochs`` epochs.

How it runs: one propagation per training step (max(K, 2h) layers, the final embedding the mean
of layers 0..K) and one per evaluation pass, as LightGCN. k-means is tensor code on the
model's device (``recstudio.model.cluster.kmeans``, Lloyd's algorithm as faiss.Kmeans runs it,
25 iterations); the InfoNCE is ``recstudio.model.loss.contrastive_loss``, shared with SGL,
SimGCL and XSimGCL.

Defaults are RecBole 1.2.1's NCL.yaml: 3 layers, reg 1e-4, ssl_temp 0.1, ssl_reg 1e-7,
hyper_layers 1, alpha 1, proto_reg 8e-8, 1000 clusters, an E-step every epoch, 20 warm-up
epochs, embedding 64, lr 1e-3, batch 2048. The contrastive weights keep RecBole's meaning: they
multiply the InfoNCE summed over the batch rows (RecBole sums them, its BPR is a batch mean);
the sum is taken over the batch's distinct ids weighted by their counts (the same value from
~2x fewer anchors on ml-100k).

Departures, on purpose: the number of clusters is clamped to the number of users (items) with
interactions (RecBole's faiss k-means refuses fewer points than clusters, e.g. ml-100k's 943
users for 1000 clusters); k-means runs in torch, so on CUDA it stays on the device (RecBole
moves to faiss); the padding ids are neither clustered nor candidates; the penalty follows
this project's LightGCN (see its docstring). The initialisation is RecBole's Xavier uniform,
not LightGCN's N(0, 0.1^2) (``init_std``): from 0.1 the structural contrast against all nodes
held ml-1m's BPR loss near log 2 for 7 epochs (valid NDCG@10 0.017), and on ml-100k Xavier
validates higher (three seeds: valid / test NDCG@10 0.2456 / 0.2800, against 0.2397 / 0.2772
from 0.1 and RecBole's 0.2376 / 0.2760; benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.cluster import kmeans
from recstudio.model.general.lightgcn import LightGCN
from recstudio.model.graph import layer_outputs, split_nodes
from recstudio.model.loss import contrastive_loss
from recstudio.model.ops import l2_normalize
from recstudio.model.registry import register


@register
class NCL(LightGCN):
    """LightGCN plus InfoNCE of each node's layer 2h against its layer 0 and of its layer 0
    against its k-means prototype."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "LightGCN plus structural and prototype neighbour contrast (Lin et al., WWW 2022)."
    )

    @dataclass
    class Config(LightGCN.Config):
        ranges: ClassVar[dict[str, str]] = {
            "ssl_temp": "> 0",
            "ssl_reg": ">= 0",
            "hyper_layers": ">= 1",
            "alpha": ">= 0",
            "proto_reg": ">= 0",
            "num_clusters": ">= 1",
            "m_step": ">= 1",
            "warm_up_epochs": ">= 0",
            "kmeans_iters": ">= 1",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        num_layers: int = 3
        """Propagation layers K; the final embedding is the mean of layers 0..K (RecBole: 3)."""
        init_std: float | None = None
        """None: Xavier uniform per table, as RecBole's NCL (not LightGCN's 0.1; see the module
        docstring)."""
        ssl_temp: float = 0.1
        """Temperature of both contrastive terms (RecBole: 0.1)."""
        ssl_reg: float = 1e-7
        """Weight of the structural contrast, on its sum over the batch (RecBole: 1e-7)."""
        hyper_layers: int = 1
        """The structural contrast pairs layer 2 * hyper_layers with layer 0 (RecBole: 1)."""
        alpha: float = 1.0
        """Weight of the item side of the structural contrast (RecBole: 1)."""
        proto_reg: float = 8e-8
        """Weight of the prototype contrast, on its sum over the batch (RecBole: 8e-8)."""
        num_clusters: int = 1000
        """Prototypes per side (k of k-means), clamped to the users / items (RecBole: 1000)."""
        m_step: int = 1
        """Epochs between two k-means E-steps (RecBole: 1, every epoch)."""
        warm_up_epochs: int = 20
        """Epochs trained without the prototype contrast (RecBole's warm_up_step: 20)."""
        kmeans_iters: int = 25
        """Lloyd iterations per k-means (faiss.Kmeans's default: 25)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        **LightGCN.search_space,
        # None: Xavier (the default); LightGCN's log range cannot hold it
        "init_std": {"type": "categorical", "choices": [None, 0.01, 0.1]},
        "ssl_temp": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
        "ssl_reg": {"type": "float", "low": 1e-8, "high": 1e-5, "log": True},
        "proto_reg": {"type": "float", "low": 1e-8, "high": 1e-5, "log": True},
        "alpha": {"type": "float", "low": 0.5, "high": 1.5},
        "num_clusters": {"type": "categorical", "choices": [100, 300, 1000, 2000]},
    }
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"epochs": 500, "early_stop_patience": 30}}

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self.prototypes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        """"user" / "item": (normalised centroids [k, d], cluster of every id [n]), per E-step."""

    def cluster(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised centroids [k, d], cluster of each row [n]) of k-means on the rows
        1.. of a layer-0 table (the padding row 0 is left out and gets cluster 0)."""
        centroids, assignment = kmeans(table[1:], self.config.num_clusters, self.config.kmeans_iters)
        return l2_normalize(centroids, dim=1), F.pad(assignment, (1, 0))

    def e_step(self) -> None:
        """Prototypes of the current layer-0 user and item embeddings."""
        self.prototypes = {
            "user": self.cluster(self.user_emb.weight.detach()),
            "item": self.cluster(self.item_emb.weight.detach()),
        }

    def proto_active(self) -> bool:
        return self.config.proto_reg > 0 and self.current_epoch >= self.config.warm_up_epochs

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        since = self.current_epoch - self.config.warm_up_epochs
        if self.proto_active() and (since % self.config.m_step == 0 or not self.prototypes):
            self.e_step()

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """LightGCN's loss on the mean of layers 0..K, plus the structural contrast (layer 2h
        against layer 0 of all nodes) and, after the warm-up, the prototype contrast."""
        c = self.config
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        layers = layer_outputs(self.adjacency, x, max(self.num_layers, 2 * c.hyper_layers))
        final = torch.stack(layers[: self.num_layers + 1]).mean(0)
        loss = self.propagated_ranking_loss(batch, *split_nodes(final, self.num_users))
        center, context = layers[0], layers[2 * c.hyper_layers]
        sides = (
            ("user", batch["user"], 0, self.num_users, 1.0),
            ("item", batch["item"], self.num_users, None, c.alpha),
        )
        for side, rows, start, stop, weight in sides:
            # RecBole's weights multiply sums over the batch rows: each distinct id once, times
            # how often the batch holds it (the same sum, from fewer anchors)
            ids, count = torch.unique(rows, return_counts=True)
            center_side, context_side = center[start:stop], context[start:stop]
            if c.ssl_reg > 0:
                # candidates: layer 0 of every id but padding, so id j is candidate j - 1
                structural = contrastive_loss(context_side[ids], center_side[1:], c.ssl_temp, ids - 1, "none")
                loss = loss + c.ssl_reg * weight * (count * structural).sum()
            if self.proto_active():
                if not self.prototypes:
                    self.e_step()
                centroids, cluster = self.prototypes[side]
                proto = contrastive_loss(center_side[ids], centroids, c.ssl_temp, cluster[ids], "none")
                loss = loss + c.proto_reg * (count * proto).sum()
        return loss
