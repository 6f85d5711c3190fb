"""FPMC: factorizing personalized Markov chains.

Rendle, Freudenthaler, Schmidt-Thieme. "Factorizing Personalized Markov Chains for Next-Basket
Recommendation." WWW 2010. The score of item i for user u after item l is the sum of a matrix
factorisation term and a factorised first-order transition term:

    x(u, l, i) = <V_u^{UI}, V_i^{IU}> + <V_i^{IL}, V_l^{LI}>

(the paper's pairwise user-item and item-item interactions of its Tucker decomposition; the
user-last-item term cancels in the ranking and is dropped there too). Written as one inner
product, the query is ``[V_u^{UI}, V_l^{LI}]`` and the item vector ``[V_i^{IU}, V_i^{IL}]``, so
FPMC is an item-tower model: every shared loss and sampler applies, and full ranking is one
matmul.

Training (the ``seq2seq`` view) scores every transition: at position t the previous item l is
s_t and the target s_{t+1}. By default each sample is one transition (``chunk_len`` 1) and a
batch of 4096 mixes the transitions of many users, as the paper's S-BPR draws (user, basket)
pairs and RecBole trains per-prefix instances; every transition of every user is used
(``max_seq_len`` None). Why not one whole sequence per user, as the other sequential models
train: a user's factors V^{UI} are then stepped once per epoch, and on ml-100k (three seeds
each, ``benchmarks/README.md``) whole-sequence training reached valid / test NDCG@10 0.0848 /
0.0896 against ~0.10 / ~0.103 per transition (RecBole 1.2.1: 0.0998 / 0.1004). Batch 4096 and
2048 (both at lr 2e-3) validate alike (means 0.1021 / 0.1021, test 0.1031 / 0.1035) and 4096
halves the steps: an epoch costs ~0.07 s against RecBole's ~0.85 s side by side (12x; 2048:
0.09 s, 9.5x). ``chunk_len`` null selects whole sequences. The query at evaluation uses the
user's most recent item.

Departures: the paper's baskets are single items here (sequences of interactions, as RecBole
does); the paper's S-BPR with one sampled negative and SGD becomes BPR (the default ``loss``,
faithful to S-BPR) with Adam, over sampled negatives that exclude the user's training items;
the paper's L2 penalty on the factors is ``train.weight_decay``. Factors start Xavier-normal
(RecBole's), not the paper's N(0, 0.01^2): see ``init_std``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError
from recstudio.model.base import ItemTowerRecommender
from recstudio.model.contract import DataContract, TrainInput
from recstudio.model.layers import SEQUENCE_DEFAULT_OVERRIDES, next_item_loss
from recstudio.model.ops import Embedding
from recstudio.model.parts import RankingParts
from recstudio.model.registry import register


@dataclass
class FPMCConfig(RankingParts):
    """Hyperparameters of FPMC; embedding size as RecBole 1.2.1's FPMC."""

    ranges: ClassVar[dict[str, str]] = {
        "max_seq_len": ">= 1",
        "chunk_len": ">= 1",
        "embed_dim": ">= 1",
        "init_std": "> 0",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    max_seq_len: int | None = None
    """The most recent transitions of each user trained on; None: all of them (as RecBole's
    per-prefix instances). FPMC reads only the previous item, so this bounds the data, not the
    context: on ml-100k the last 50 per user gave valid NDCG@10 0.0921, 200 gave 0.0965, all
    0.1014 (``benchmarks/README.md``)."""
    chunk_len: int | None = 1
    """Training samples of this many consecutive transitions (the ``seq2seq`` view's
    ``chunk_len``; chunks lose no context for a first-order model). 1, the default: one
    transition per sample, so a batch mixes many users' transitions and each user's factors are
    stepped many times per epoch, as in the paper's S-BPR and RecBole; None: one sample per user
    (whole-sequence training: 4x fewer seconds per epoch, 10% lower NDCG@10 on ml-100k)."""
    embed_dim: int = 64
    """Width of each of the four factor tables (query and item vectors are twice as wide)."""
    init_std: float | None = None
    """Standard deviation of the normal initialisation of the factors; None: Xavier-normal per
    table (RecBole's; std 0.034 for ml-100k's item tables). The paper's 0.01 stopped early in
    two of three seeds on ml-100k (best epochs 7 and 9; test NDCG@10 0.0744 / 0.0900 / 0.0729)
    against 0.0908 / 0.0954 / 0.0839 at std 0.034 (``benchmarks/README.md``)."""
    loss: str = "bpr"
    """bpr: the paper's S-BPR with sampled negatives; any other ``RankingParts`` loss works."""

    def validate(self) -> None:
        """Reject values that would fail later with a less clear message."""
        super().validate()
        if self.embed_dim < 1:
            raise ConfigError(f"config key 'model.embed_dim' must be >= 1, got {self.embed_dim}")
        if self.max_seq_len is None and self.chunk_len is None:
            raise ConfigError(
                "config key 'model.max_seq_len' must be set when model.chunk_len is null "
                "(one sample per user holds at most max_seq_len positions)"
            )
        if self.init_std is not None and self.init_std <= 0:
            raise ConfigError(f"config key 'model.init_std' must be > 0, got {self.init_std}")


@register
class FPMC(ItemTowerRecommender):
    """Matrix factorisation plus a factorised first-order Markov chain; query = [user, last item]."""

    family = "sequential"
    Config = FPMCConfig
    description = "Factorizing personalized Markov chains (Rendle et al., WWW 2010)"
    default_overrides = {
        **SEQUENCE_DEFAULT_OVERRIDES,
        "train": {**SEQUENCE_DEFAULT_OVERRIDES["train"], "learning_rate": 2e-3, "batch_size": 4096},
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "train.weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5, 1e-4]},
        "embed_dim": {"type": "categorical", "choices": [32, 64, 128]},
        "loss": {"type": "categorical", "choices": ["bpr", "bce", "softmax"]},
        "num_negatives": {"type": "categorical", "choices": [1, 4, 16]},
        "train.batch_size": {"type": "categorical", "choices": [512, 2048, 4096, 8192]},
    }

    @classmethod
    def data_contract(cls, config: FPMCConfig) -> DataContract:
        """Transitions in samples of ``chunk_len`` (or whole sequences of at most ``max_seq_len``
        items); evaluation reads the last item."""
        options = {"max_len": config.max_seq_len, "chunk_len": config.chunk_len}
        view = TrainInput("seq2seq", options=options)
        return DataContract(inputs=(view,), eval_sequence=1)  # the query reads the last item only

    def __init__(
        self,
        config: FPMCConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        d = config.embed_dim
        # ``next_item_loss`` keeps the last max_seq_len positions of a sample: all of them here
        self.max_seq_len = config.max_seq_len or 1 << 30
        self.user_ui = Embedding(data.num_users, d)  # V^{UI}
        # [V^{IU} | V^{IL}] in one table: the item vectors are its weight, with no per-step cat
        self.item_factors = Embedding(data.num_items, 2 * d)
        self.last_li = Embedding(data.num_items, d, padding_idx=0)  # V^{LI}
        with torch.no_grad():
            tables = (self.user_ui.weight, *self.item_factors.weight.split(d, dim=1), self.last_li.weight)
            for table in tables:  # each factor table initialised as its own [rows, d] matrix
                if config.init_std is None:
                    nn.init.xavier_normal_(table)
                else:
                    nn.init.normal_(table, std=config.init_std)
            self.last_li.weight[0].zero_()
        self.build_ranking_parts(data, dim=2 * d)

    def encode(self, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Queries [B, L, 2d]: ``[V_u^{UI}, V_{s_t}^{LI}]`` at every position t (after item s_t)."""
        user = self.user_ui(users)[:, None, :].expand(-1, seq.shape[1], -1)
        return torch.cat([user, self.last_li(seq)], dim=-1)

    def item_vectors(self) -> torch.Tensor:
        """``[V_i^{IU}, V_i^{IL}]`` [num_items, 2d]."""
        return self.item_factors.weight

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Query after the most recent item [B, 2d]."""
        return self.encode(batch["seq"][:, -1:], batch["user"])[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position that has a target, in one step per batch."""
        return next_item_loss(self, batch, lambda seq: self.encode(seq, batch["user"]))

    def extra_repr(self) -> str:
        return f"num_users={self.num_users}, num_items={self.num_items}"
