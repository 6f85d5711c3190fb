"""ICLRec: intent contrastive learning for sequential recommendation (Chen, Liu, Li, McAuley, Xiong;
WWW 2022, "Intent Contrastive Learning for Sequential Recommendation").

SASRec's causal Transformer trained with L = L_next + lambda L_ICL + beta L_SeqCL:

- intents (E-step): at the start of every training epoch, the encoder (in eval mode) represents
  every training subsequence, and k-means (``faiss.Kmeans``, as the authors' code) clusters these
  representations into ``num_intents`` intent prototypes c_1..c_K;
- intent contrast L_ICL (M-step): each of two augmented views of a sequence (crop / mask /
  reorder, as CL4SRec) must pick out the prototype of its sequence's intent (the nearest
  prototype to the original sequence's representation, detached) against the other views and
  prototypes of the batch; views and prototypes of the same intent are excluded as negatives
  (the authors' false-negative mitigation);
- sequence contrast L_SeqCL: CL4SRec's NT-Xent between the two views.

Both contrasts are ``recstudio.model.seq.cl4srec.pair_contrast`` (the shared
``contrastive_loss``), cosine at temperature 0.2 by default (the authors' code: dot product at
temperature 1; see ``cl4srec`` for why); default weights
lambda = beta = 0.1, 256 intents and augmentation ratios crop 0.2 / mask 0.7 / reorder 0.2 follow
the authors' code.

Departures from the paper, on purpose: training is whole-sequence (every position of a user's
sequence in one pass, as ``SASRec``) with a full-softmax next-item loss by default; the
subsequences clustered are the same as the paper's (every training prefix, here the hidden state
at every position of each user's sequence, which the causal encoder makes the representation of
that prefix), but the contrasts use each view's last-position state (the paper's default pools
the mean over positions). Clustering runs on the CPU through faiss whatever the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.data.views import Seq2SeqDataset
from recstudio.errors import ConfigError
from recstudio.model.cluster import nearest_centroid
from recstudio.model.layers import trim_left_padding
from recstudio.model.registry import register
from recstudio.model.seq.cl4srec import CL4SRec, CL4SRecConfig, pair_contrast


@dataclass
class ICLRecConfig(CL4SRecConfig):
    """ICLRec's hyperparameters: CL4SRec's (``cl_weight`` is lambda, the intent contrast's weight),
    the sequence contrast's weight beta and the number of intents."""

    ranges: ClassVar[dict[str, str]] = {
        "num_intents": ">= 1",
        "seq_cl_weight": ">= 0",
        "kmeans_iters": ">= 1",
    }

    cl_weight: float = 0.1
    """lambda: weight of the intent contrast L_ICL."""
    seq_cl_weight: float = 0.1
    """beta: weight of the sequence (view-view) contrast L_SeqCL (0: intent contrast only)."""
    num_intents: int = 256
    """K: intent prototypes found by k-means each epoch (clamped to the number of subsequences)."""
    kmeans_iters: int = 20
    """Lloyd iterations of each epoch's k-means (faiss's default)."""
    crop_ratio: float = 0.2
    mask_ratio: float = 0.7
    reorder_ratio: float = 0.2

    def validate(self) -> None:
        super().validate()
        for key in ("num_intents", "kmeans_iters"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if self.seq_cl_weight < 0:
            raise ConfigError(f"config key 'model.seq_cl_weight' must be >= 0, got {self.seq_cl_weight}")


@register
class ICLRec(CL4SRec):
    """SASRec plus contrasts of augmented views with their sequence's intent prototype (k-means
    each epoch) and with each other."""

    Config = ICLRecConfig
    description = "Intent contrastive learning with per-epoch k-means intents (Chen et al., WWW 2022)"
    search_space = {
        **CL4SRec.search_space,
        "seq_cl_weight": {"type": "categorical", "choices": [0.0, 0.1, 0.3]},
        "num_intents": {"type": "categorical", "choices": [16, 64, 256, 512]},
    }

    def __init__(
        self,
        config: ICLRecConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        # every user's training input s_1..s_{n-1}: its prefixes are the subsequences clustered
        sequences = Seq2SeqDataset(data, batch_size=1, seed=0, max_len=config.max_seq_len).seq
        self.register_buffer("train_sequences", sequences, persistent=False)
        self.register_buffer("intents", torch.zeros(0, config.hidden_size), persistent=False)

    @torch.no_grad()
    def subsequence_vectors(self, chunk: int = 1024) -> torch.Tensor:
        """The representation [P, d] of every training prefix: the eval-mode hidden state at each
        real position of each user's training sequence (causal: it sees only that prefix)."""
        was_training = self.training
        self.eval()
        parts = []
        for rows in self.train_sequences.split(chunk):  # memory-bounded user blocks
            (seq,) = trim_left_padding(rows)
            parts.append(self.encode(seq)[seq != 0])
        self.train(was_training)
        return torch.cat(parts)

    @torch.no_grad()
    def update_intents(self) -> None:
        """E-step: k-means (faiss) over the subsequence representations -> ``intents`` [K, d]."""
        import faiss

        points = self.subsequence_vectors().float().cpu().contiguous().numpy()
        k = max(1, min(self.config.num_intents, points.shape[0]))
        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # follows the run's seed
        kmeans = faiss.Kmeans(
            points.shape[1],
            k,
            niter=self.config.kmeans_iters,
            seed=seed,
            verbose=False,
            min_points_per_centroid=1,  # small data: no "too few points" warning
        )
        kmeans.train(points)
        self.intents = torch.from_numpy(kmeans.centroids.copy()).to(self.intents.device)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.update_intents()

    def contrastive_term(
        self, seq: torch.Tensor, hidden: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """lambda L_ICL + beta L_SeqCL of two augmented views of each sequence."""
        c = self.config
        if self.intents.shape[0] == 0:  # outside the trainer (no epoch start yet)
            self.update_intents()
        view1, view2 = self.augmented_views(seq)
        intent_ids = nearest_centroid(hidden[:, -1].detach().float(), self.intents)
        prototypes = self.intents[intent_ids].to(view1.dtype)
        intent = 0.5 * (
            pair_contrast(view1, prototypes, c.cl_temperature, c.cl_similarity, groups=intent_ids)
            + pair_contrast(view2, prototypes, c.cl_temperature, c.cl_similarity, groups=intent_ids)
        )
        loss = c.cl_weight * intent
        if c.seq_cl_weight > 0:
            loss = loss + c.seq_cl_weight * pair_contrast(view1, view2, c.cl_temperature, c.cl_similarity)
        return loss
