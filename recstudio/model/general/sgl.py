"""SGL: self-supervised graph learning, LightGCN plus contrast between two augmented graphs.

Wu, Wang, Feng, He, Chen, Lian, Xie. "Self-supervised Graph Learning for Recommendation."
SIGIR 2021. The recommendation task is LightGCN's (mean of layers 0..K over the normalised
training graph, inner product, BPR plus the BPR-Opt penalty on the layer-0 rows of the batch).
Alongside, two views of the graph are drawn once per epoch and every step propagates the same
layer-0 embeddings over each of them; the views of a node are pulled together and pushed away
from the other nodes' by InfoNCE on cosine similarities at temperature ``ssl_temp``, for the
users and the positive items of the batch: loss = BPR + reg + ``ssl_weight`` (L_user + L_item).

Augmentations (``augmentation``): ``edge`` (the paper's and its code's default) keeps
(1 - ``drop_ratio``) of the distinct edges, one subgraph per view used by every layer;
``node`` drops ``drop_ratio`` of the users and of the items with their edges; ``walk`` (the
paper's random walk) draws an edge-dropout subgraph per layer. Each subgraph is renormalised,
D'^-1/2 A' D'^-1/2 (``recstudio.model.graph.dropout_adjacency``).

How it runs: the views are new ``SparseMatrix`` buffers, built from the kept edges with tensor
ops in ``on_train_epoch_start`` (on CPU, then moved to the model's device); a training step runs
three propagations (the graph and the two views), an evaluation pass one, on the full graph
(``prepare_evaluation``, as LightGCN). The contrastive loss is
``recstudio.model.loss.contrastive_loss``, shared with SimGCL, XSimGCL and NCL.

Defaults are the authors' code (SGL-Torch, conf/SGL.ini; the paper, section 4.1): 3 layers,
edge dropout 0.1, ssl_weight 0.1, reg 1e-4, embedding 64, lr 1e-3, batch 2048; except the
temperature, 0.5 as RecBole 1.2.1's SGL.yaml (which has ssl weight 0.05, reg 1e-5): on ml-100k
the authors' 0.2 held validation NDCG@10 below 0.01 for the first epochs (the contrast spreads
the ~900 users of a batch, nearly all of them, over the sphere before BPR has learnt anything),
0.5 reached 0.228 by epoch 46 (LightGCN: 0.239 after ~190 epochs).

Departures, on purpose: InfoNCE's negatives are the other distinct users (items) of the batch,
each node once (``torch.unique``; the authors' and RecBole's code contrast the batch rows with
repeats, which makes a repeated user its own negative); both losses are batch means (the
authors' code sums BPR and InfoNCE, the same balance); the penalty and initialisation follow
this project's LightGCN (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.general.lightgcn import LightGCN
from recstudio.model.graph import dropout_adjacency, layer_outputs, split_nodes
from recstudio.model.loss import view_contrast
from recstudio.model.registry import register

AUGMENTATIONS = ("edge", "node", "walk")


@register
class SGL(LightGCN):
    """LightGCN with InfoNCE between two edge-dropout (node-dropout, random-walk) views of the
    graph, redrawn every epoch."""

    family: ClassVar[str] = "general"
    description: ClassVar[str] = (
        "LightGCN plus contrast between edge/node-dropout graph views (Wu et al., SIGIR 2021)."
    )

    @dataclass
    class Config(LightGCN.Config):
        ranges: ClassVar[dict[str, str]] = {
            "drop_ratio": "[0, 1)",
            "ssl_temp": "> 0",
            "ssl_weight": ">= 0",
        }
        """Allowed values, checked when the config is built (``--set`` errors name the key)."""
        num_layers: int = 3
        """Propagation layers K (the authors' code and RecBole: 3)."""
        augmentation: str = "edge"
        """How the two views are drawn each epoch: edge (edge dropout), node (node dropout),
        walk (edge dropout drawn per layer)."""
        drop_ratio: float = 0.1
        """Share of edges (edge, walk) or of users and items (node) dropped in each view."""
        ssl_temp: float = 0.5
        """Temperature of the InfoNCE between the views (RecBole: 0.5; authors: 0.2, which
        stalls on ml-100k, see the module docstring)."""
        ssl_weight: float = 0.1
        """Weight of the contrastive loss (authors: 0.1; RecBole: 0.05)."""

        def validate(self) -> None:
            super().validate()
            if self.augmentation not in AUGMENTATIONS:
                raise ConfigError(
                    f"config key 'model.augmentation' must be one of {', '.join(AUGMENTATIONS)}; "
                    f"got {self.augmentation!r}"
                )

    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        **LightGCN.search_space,
        "augmentation": {"type": "categorical", "choices": list(AUGMENTATIONS)},
        "drop_ratio": {"type": "float", "low": 0.0, "high": 0.5},
        "ssl_temp": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
        "ssl_weight": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    }
    default_overrides: ClassVar[dict[str, Any]] = {"train": {"epochs": 500, "early_stop_patience": 20}}

    def __init__(
        self,
        config: Config,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        train = data.positives("train")
        self._edges = (train.user.long().cpu(), train.item.long().cpu())
        self.views = nn.ModuleList()
        self.draw_views()

    def draw_views(self) -> None:
        """Two new augmented views of the training graph (``num_layers`` subgraphs each for
        ``walk``, one shared by every layer otherwise), on the model's device."""
        c = self.config
        mode = "node" if c.augmentation == "node" else "edge"
        per_view = self.num_layers if c.augmentation == "walk" else 1
        device = self.adjacency.crow.device
        graphs = [
            dropout_adjacency(*self._edges, self.num_users, self.num_items, c.drop_ratio, mode).to(device)
            for _ in range(2 * per_view)
        ]
        self.views = nn.ModuleList(graphs)
        self._per_view = per_view

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.draw_views()

    def view_tables(self, view: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item tables propagated over augmented view 0 or 1."""
        graphs = list(self.views[view * self._per_view : (view + 1) * self._per_view])
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        layers = layer_outputs(graphs if len(graphs) > 1 else graphs[0], x, self.num_layers)
        out = torch.stack(layers).mean(0)
        return split_nodes(out, self.num_users)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """LightGCN's loss on the full graph plus ``ssl_weight`` times the in-batch InfoNCE of
        the two views (users and positive items)."""
        loss = super().training_loss(batch)
        if self.config.ssl_weight > 0:
            ssl = view_contrast(
                self.view_tables(0), self.view_tables(1), batch["user"], batch["item"], self.config.ssl_temp
            )
            loss = loss + self.config.ssl_weight * ssl
        return loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, augmentation={self.config.augmentation}"
