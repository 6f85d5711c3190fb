"""One evaluation pass of a model on a split: which protocols run, their batches and metrics.

Two protocols share the pipeline and differ only in what they score:

- ``ranking`` (retrievers): every item for each user with a target, history masked (or only the
  targets plus fixed sampled negatives, ``eval.candidates``); ``model.score_batch``; metrics @k
  and full-ranking AUC (``RankingEvaluator``).
- ``pointwise`` (rankers / CTR models): the split's labelled rows; ``model.score_pairs``; AUC,
  GAUC and log loss (``PointwiseEvaluator``).

``eval.protocol: auto`` picks pointwise for models whose data contract is ``labelled``, ranking
for the others; ``both`` runs both (a model that can rank all items and score rows), in which case
the ranking AUC is reported as ``full_auc`` so that ``auc`` is the pointwise one.

A rating model (``DataContract.ratings``) also gets the split's rated rows (``user``, ``item``,
``rating``) scored by ``model.score_pairs`` and judged by RMSE and MAE, whatever the protocol.

``EvalPlan`` owns the split's batches (built once and reused every pass) and an ``Evaluation``
that routes each batch to its evaluator: labelled rows carry ``label``, ranking blocks
``target_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from recstudio.config import EvalConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError, DataError
from recstudio.eval.pointwise import RATING_METRICS, PointwiseEvaluator
from recstudio.eval.ranking import RankingEvaluator, build_eval_split

PROTOCOLS = ("auto", "ranking", "pointwise", "both")


def active_protocols(protocol: str, labelled_model: bool) -> tuple[str, ...]:
    """The protocols ``eval.protocol`` runs for a model (``labelled_model``: its contract)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"config key 'eval.protocol' must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    if protocol == "auto":
        return ("pointwise",) if labelled_model else ("ranking",)
    if protocol == "both":
        return ("ranking", "pointwise")
    return (protocol,)


class Evaluation:
    """Routes evaluation batches to the protocols' evaluators and merges their metrics."""

    def __init__(
        self,
        ranking: RankingEvaluator | None,
        pointwise: PointwiseEvaluator | None,
        rating: PointwiseEvaluator | None = None,
    ) -> None:
        self.ranking = ranking
        self.pointwise = pointwise
        self.rating = rating

    def reset(self) -> None:
        for evaluator in (self.ranking, self.pointwise, self.rating):
            if evaluator is not None:
                evaluator.reset()

    def update(self, model: Any, batch: dict[str, torch.Tensor]) -> None:
        if "label" in batch:
            self.pointwise.update(model.score_pairs(batch), batch)
        elif "rating" in batch:
            self.rating.update(model.score_pairs(batch), batch)
        else:
            self.ranking.update(model.score_batch(batch), batch)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.ranking is not None:
            out.update(self.ranking.compute())
        if self.pointwise is not None:
            if "auc" in out:
                out["full_auc"] = out.pop("auc")
            out.update(self.pointwise.compute())
        if self.rating is not None:
            out.update(self.rating.compute())
        return out

    def keys(self) -> list[str]:
        """The metric names ``compute`` returns."""
        keys: list[str] = []
        if self.ranking is not None:
            keys = list(self.ranking.keys) + (["auc"] if self.ranking.with_auc else [])
        if self.pointwise is not None:
            keys = ["full_auc" if k == "auc" else k for k in keys] + list(self.pointwise.metrics)
        if self.rating is not None:
            keys += list(self.rating.metrics)
        return keys


@dataclass
class LabelledRows:
    """A split's labelled rows (CPU tensors): ``user``, ``item``, ``label`` and ``ctx.*``."""

    columns: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.columns["user"].numel())

    def blocks(
        self, rows_per_block: int, rank: int = 0, world_size: int = 1
    ) -> list[dict[str, torch.Tensor]]:
        """This rank's contiguous share of the rows in blocks; every rank gets the same number
        of blocks (possibly empty) so collectives inside evaluation steps cannot deadlock."""
        total = len(self)
        base, extra = divmod(total, world_size)
        start = rank * base + min(rank, extra)
        share = base + int(rank < extra)
        n_blocks = max(1, math.ceil(math.ceil(total / world_size) / rows_per_block))
        size, bigger = divmod(share, n_blocks)
        out = []
        for i in range(n_blocks):
            stop = start + size + int(i < bigger)
            out.append({k: v[start:stop] for k, v in self.columns.items()})
            start = stop
        return out


def labelled_rows(data: PreparedData, split: str) -> LabelledRows:
    """The labelled rows of ``split`` for pointwise evaluation (DataError without labels)."""
    part = data.valid if split == "valid" else data.test
    label = getattr(part, "label", None)
    if label is None:
        raise DataError(
            f"pointwise evaluation needs labelled data, and dataset '{data.name}' has no labels "
            "(set data.label, e.g. 'rating >= 4', or give the dataset spec a 'labels:' rule)"
        )
    columns = {"user": part.user, "item": part.item, "label": label.float()}
    for name, codes in (getattr(part, "context", None) or {}).items():
        columns[f"ctx.{name}"] = codes
    return LabelledRows(columns)


def rated_rows(data: PreparedData, split: str) -> LabelledRows:
    """The rows of ``split`` with their rating values, for a rating model's RMSE and MAE."""
    part = data.valid if split == "valid" else data.test
    return LabelledRows({"user": part.user, "item": part.item, "rating": part.rating.float()})


class EvalLoader:
    """The batches of one split for one rank: ranking blocks, then labelled-row blocks."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for part in self.parts:
            yield from part


ROWS_PER_POINTWISE_BLOCK_FACTOR = 32
"""Labelled rows per block = eval.batch_size x this (a row costs ~1/num_items of a ranking row)."""


class EvalPlan:
    """Everything evaluation needs for one model on one dataset: the protocols, the batches of
    ``valid`` and ``test`` (built lazily, once), and a fresh ``Evaluation``."""

    def __init__(
        self,
        data: PreparedData,
        eval_config: EvalConfig,
        labelled_model: bool,
        sequence_len: int | None = None,
        rated_model: bool = False,
    ) -> None:
        self.data = data
        self.config = eval_config
        self.protocols = active_protocols(eval_config.protocol, labelled_model)
        self.sequence_len = sequence_len
        self.rated_model = rated_model

    def evaluation(self) -> Evaluation:
        c = self.config
        ranking = (
            RankingEvaluator(c.metrics, c.cutoffs, c.mask_history) if "ranking" in self.protocols else None
        )
        pointwise = PointwiseEvaluator(c.pointwise_metrics) if "pointwise" in self.protocols else None
        rating = PointwiseEvaluator(RATING_METRICS, target="rating") if self.rated_model else None
        return Evaluation(ranking, pointwise, rating)

    def has_split(self, split: str) -> bool:
        part = self.data.valid if split == "valid" else self.data.test
        return len(part) > 0

    def loader(self, split: str, rank: int = 0, world_size: int = 1) -> EvalLoader:
        c = self.config
        parts: list[Any] = []
        if "ranking" in self.protocols:
            eval_split = build_eval_split(
                self.data,
                split,
                max_seq_len=self.sequence_len,
                candidates=c.candidates,
                candidate_sampler=c.candidate_sampler,
                candidate_seed=c.candidate_seed,
            )
            parts.append(eval_split.blocks(c.batch_size, rank, world_size))
        if "pointwise" in self.protocols:
            rows = labelled_rows(self.data, split)
            parts.append(rows.blocks(c.batch_size * ROWS_PER_POINTWISE_BLOCK_FACTOR, rank, world_size))
        if self.rated_model:
            rows = rated_rows(self.data, split)
            parts.append(rows.blocks(c.batch_size * ROWS_PER_POINTWISE_BLOCK_FACTOR, rank, world_size))
        return EvalLoader(parts)
