"""DuoRec: contrastive learning with model-level augmentation (Qiu, Huang, Yin, Wang; WSDM 2022,
"Contrastive Learning for Representation Degeneration Problem in Sequential Recommendation").

SASRec's causal Transformer trained with the next-item loss plus lambda times a contrast of two
views of each sequence that are made by the model, not by editing the sequence:

- unsupervised view: the sequence itself encoded with dropout (dropout is the augmentation);
- supervised positive: another training sequence with the same target (next) item, encoded
  with its own dropout.

The two views of each of the N sequences of the batch are contrasted with NT-Xent over the 2N
views (``recstudio.model.seq.cl4srec.pair_contrast``, the shared ``contrastive_loss``), as in
the authors' default ``us_x`` mode with lambda = 0.1; similarity cosine at temperature 0.2 by
default (the authors' code: dot product at temperature 1; see ``cl4srec`` for why).

Supervised positives are drawn as tensor code from a table built once from the training data:
every training prefix (s_1..s_{t-1} of a user, target s_t, at most ``max_seq_len`` items) is
grouped by its target; a sequence of the batch (target: the user's last training item) draws a
random other member of its target's group (itself when it is the only one), and that prefix
is gathered from the flat training sequence.

Departures from the paper, on purpose: the next-item loss is whole-sequence and defaults to a
full softmax (as ``SASRec``), and the contrast covers each user's whole training sequence (its
last-position representation) rather than every prefix sample. The unsupervised dropout view is
the main pass's last hidden state, which is already an independent dropout sample; the authors'
code runs one more forward pass of the same sequence for it (same distribution, one pass less).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.model.layers import trim_left_padding
from recstudio.model.registry import register
from recstudio.model.seq.cl4srec import CONTRASTIVE_SEARCH_SPACE, ContrastiveSASRecConfig, pair_contrast
from recstudio.model.seq.sasrec import SASRec


@dataclass
class DuoRecConfig(ContrastiveSASRecConfig):
    """DuoRec's hyperparameters: SASRec's plus the contrast's (lambda = 0.1)."""


@register
class DuoRec(SASRec):
    """SASRec plus a contrast between a sequence's dropout view and a sequence with the same target."""

    Config = DuoRecConfig
    description = "Contrastive learning with dropout and same-target positives (Qiu et al., WSDM 2022)"
    search_space = dict(CONTRASTIVE_SEARCH_SPACE)

    def __init__(
        self,
        config: DuoRecConfig,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__(config, data, train_config, eval_config)
        self._build_same_target_table(data)

    def _build_same_target_table(self, data: PreparedData) -> None:
        """Training prefixes grouped by target item, and each user's own (last) prefix's rank in
        its group (so that it can be skipped when drawing)."""
        indptr, items = data.train.csr(self.num_users)
        user = data.train.user
        position = torch.arange(len(items)) - indptr[user]  # index within the user's sequence
        entries = torch.nonzero(position >= 1).flatten()  # rows that are some prefix's target
        target = items[entries]
        order = torch.argsort(target, stable=True)
        counts = torch.bincount(target, minlength=self.num_items)
        group_start = torch.zeros(self.num_items + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=group_start[1:])
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        own_rank = torch.zeros(self.num_users, dtype=torch.long)  # each user's last row, in its group
        own_target = torch.zeros(self.num_users, dtype=torch.long)
        last = indptr[1:] - 1
        has = (indptr[1:] - indptr[:-1]) >= 2
        entry_of_row = torch.full((len(items),), -1, dtype=torch.long)
        entry_of_row[entries] = torch.arange(len(entries))
        own_entry = entry_of_row[last[has]]
        own_target[has] = target[own_entry]
        own_rank[has] = rank[own_entry] - group_start[own_target[has]]
        self.register_buffer("flat_items", items.clone(), persistent=False)
        self.register_buffer(
            "prefix_end", (entries - 1)[order], persistent=False
        )  # flat row of the last input
        self.register_buffer("prefix_first", indptr[user[entries]][order], persistent=False)
        self.register_buffer("group_start", group_start, persistent=False)
        self.register_buffer("own_rank", own_rank, persistent=False)
        self.register_buffer("own_target", own_target, persistent=False)

    def same_target_sequences(self, users: torch.Tensor) -> torch.Tensor:
        """A random training prefix [B, max_seq_len] (left-padded) whose target is the last training
        item of each user in ``users`` [B], other than the user's own when there is another."""
        target = self.own_target[users]
        start = self.group_start[target]
        others = self.group_start[target + 1] - start - 1
        draw = (torch.rand(users.shape, device=users.device) * others.clamp(min=0).float()).floor().long()
        draw = torch.where(others > 0, draw + (draw >= self.own_rank[users]).long(), self.own_rank[users])
        entry = start + draw
        end, first = self.prefix_end[entry], self.prefix_first[entry]
        rows = end[:, None] - torch.arange(self.max_seq_len - 1, -1, -1, device=users.device)[None, :]
        inside = rows >= first[:, None]
        return torch.where(inside, self.flat_items[rows.clamp(min=0)], 0)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Whole-sequence next-item loss plus lambda times the dropout / same-target contrast."""
        c = self.config
        seq, target = trim_left_padding(
            batch["seq"][:, -self.max_seq_len :], batch["target"][:, -self.max_seq_len :]
        )
        hidden = self.encode(seq)
        valid = target != 0
        if not bool(valid.any()):
            return hidden.sum() * 0.0
        users = batch["user"]
        loss = self.ranking_loss(hidden[valid], target[valid], users=users[:, None].expand_as(target)[valid])
        if c.cl_weight > 0:
            (positive,) = trim_left_padding(self.same_target_sequences(users))
            supervised = self.encode(positive)[:, -1]
            loss = loss + c.cl_weight * pair_contrast(
                hidden[:, -1], supervised, c.cl_temperature, c.cl_similarity
            )
        return loss
