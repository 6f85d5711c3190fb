"""One place where a model's loss, negative sampler and scorer are built from its config.

A model whose config inherits ``RankingParts`` gets the fields below as ordinary hyperparameters:
settable with ``--set model.loss=sampled_softmax model.temperature=0.1``, validated at config time
(unknown names list the valid ones), logged to MLflow and searchable by ``recstudio tune`` like
any other field. ``build_parts(config, data, dim)`` turns them into modules; every base class
calls it, so no model builds or wires these parts itself.

Option fields apply to the parts that take them and are ignored by the others (a loss without a
margin ignores ``margin``); ``None`` keeps the part's own default (InfoNCE's temperature 0.1,
the hinge margin 1.0, the popularity exponent 1.0).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from recstudio.errors import ConfigError


@dataclass
class RankingParts:
    """Loss, sampler and scorer options of a model (inherit this in the model's ``Config``)."""

    ranges: ClassVar[dict[str, str]] = {
        "num_negatives": ">= 1",
        "sampler_alpha": ">= 0",
        "sampler_clusters": ">= 1",
        "sampler_refresh_epochs": ">= 1",
        "sampler_refresh_steps": ">= 1",
        "hard_negative_candidates": ">= 1",
        "temperature": "> 0",
        "margin": ">= 0",
        "negative_weight": ">= 0",
        "positive_weight": "> 0",
        "gbce_calibration": "[0, 1]",
        "scorer_hidden_sizes": ">= 1",
    }
    """Allowed values, checked when the config is built (``--set`` errors name the key)."""

    loss: str = "bpr"
    """Training loss: softmax, sampled_softmax, bpr, bce, gbce, hinge, warp, infonce, wrmf, pris, ccl."""
    num_negatives: int = 1
    """Negatives drawn per positive for sampled losses."""
    sampler: str = "uniform"
    """Negative sampler: uniform; popularity (q proportional to (count + 1)^sampler_alpha); or one
    that learns with the model, for item-tower models only (rebuilt from the item vectors every
    ``sampler_refresh_epochs``; q depends on the query and log q is exact, for sampled softmax's
    correction): cluster_uni / cluster_pop (PRIS, WWW 2020: k-means clusters of the item vectors,
    q(i|u) proportional to exp(u . centroid of i) x 1 or x (count_i + 1)^sampler_alpha), midx_uni
    / midx_pop (MIDX of FastVAE, WWW 2022: a product-quantised inverted multi-index, q(i|u)
    proportional to exp(u1 . c1 + u2 . c2 of i's two codewords) x 1 or the popularity weight)."""
    exclude_positives: bool | None = None
    """Never draw one of the user's training items as its negative (the BPR paper, RecBole);
    false samples from the whole catalogue. None (default): on for the static samplers (uniform,
    popularity), off for the model-based ones, whose proposal follows the model and so puts most
    of its mass on the user's own items: excluding them costs redraws and a per-user normaliser
    every step, and moves the sampled softmax away from the full softmax the proposal
    approximates (which keeps the user's other items in its partition). Measured (BPR-MF, sampled
    softmax; benchmarks/README.md "Excluding positives"): ml-100k test NDCG@10 midx_uni 0.2684 ->
    0.2833, cluster_uni 0.2643 -> 0.2821 without the exclusion (two seeds alike); ml-1m pairs
    cluster_uni 0.2688 -> 0.2823 at 7.8 s instead of 16 s per epoch (that one on a busy core)."""
    sampler_alpha: float | None = None
    """Exponent of the popularity weights of popularity, cluster_pop and midx_pop (None: 1.0;
    word2vec uses 0.75)."""
    sampler_clusters: int | None = None
    """Clusters of cluster_uni / cluster_pop (None: sqrt of the catalogue, 2 to 128) and codewords
    K per half of midx_uni / midx_pop (None: fourth root of the catalogue, 2 to 32: K x K cells)."""
    sampler_refresh_epochs: int = 1
    """A model-based sampler is rebuilt from the current item vectors at the start of training and
    of every this many epochs."""
    sampler_refresh_steps: int | None = None
    """Also rebuild it every this many optimiser steps inside an epoch (None: at epoch starts
    only), for a proposal closer to the current model; each rebuild costs one k-means of the item
    vectors. Measured on ml-100k (BPR-MF, 40 steps per epoch): no gain at 1 or 5 steps."""
    hard_negative_candidates: int = 1
    """Dynamic negative sampling (DNS, Zhang et al., SIGIR 2013) for item-tower models: each
    negative is the highest-scoring of this many sampler draws, scored by the current model
    without gradient (1: off). For pairwise losses (bpr, bce, hinge...), not the softmax family."""
    scorer: str = "inner_product"
    """How query and item vectors become a score: inner_product, cosine, euclidean, mlp."""
    temperature: float | None = None
    """Softmax temperature of softmax, sampled_softmax and infonce (None: 1.0, infonce 0.1)."""
    sampled_softmax_estimator: str = "importance"
    """How sampled_softmax corrects its sampled logits: importance (the partition function's
    importance-sampling estimate: each negative corrected by log(K q), the target not; exact with
    the model's softmax as proposal) or logq (every logit minus its log q, the target's included:
    TensorFlow's sampled_softmax_loss and the original RecStudio)."""
    margin: float | None = None
    """Margin of the hinge and warp losses (None: 1.0) and of ccl (None: 0.9)."""
    negative_weight: float | None = None
    """Weight of the negative term of the ccl and wrmf losses (None: 1.0)."""
    positive_weight: float | None = None
    """Confidence weight of the positive term of bce (None: 1.0; LogisticMF's alpha)."""
    gbce_calibration: float | None = None
    """Calibration t of the gbce loss (None: 0.75, gSASRec's default; 0: BCE with summed negatives)."""
    scorer_hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    """Hidden layer sizes of the mlp scorer."""

    def excludes_positives(self) -> bool:
        """``exclude_positives`` resolved: None means on for static samplers, off for model-based."""
        if self.exclude_positives is not None:
            return self.exclude_positives
        from recstudio.model.sampler import SAMPLERS

        return not SAMPLERS[self.sampler].uses_query

    def validate(self) -> None:
        from recstudio.model.loss import LOSSES, SAMPLED_SOFTMAX_ESTIMATORS
        from recstudio.model.sampler import SAMPLERS
        from recstudio.model.scorer import SCORERS

        if self.sampled_softmax_estimator not in SAMPLED_SOFTMAX_ESTIMATORS:
            raise ConfigError(
                "config key 'model.sampled_softmax_estimator' must be one of "
                f"{', '.join(SAMPLED_SOFTMAX_ESTIMATORS)}; got {self.sampled_softmax_estimator!r}"
            )
        for key, valid in (("loss", LOSSES), ("sampler", SAMPLERS), ("scorer", SCORERS)):
            value = getattr(self, key)
            if value not in valid:
                raise ConfigError(
                    f"config key 'model.{key}' must be one of {', '.join(valid)}; got {value!r}"
                )
        counts = (
            "num_negatives",
            "sampler_clusters",
            "sampler_refresh_epochs",
            "sampler_refresh_steps",
            "hard_negative_candidates",
        )
        for key in counts:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {value}")
        if self.hard_negative_candidates > 1 and not getattr(LOSSES[self.loss], "hard_negatives_ok", True):
            raise ConfigError(
                f"config key 'model.hard_negative_candidates' (DNS) is for pairwise losses (bpr, bce, "
                f"hinge...); loss '{self.loss}' is softmax-family: set it to 1, got "
                f"{self.hard_negative_candidates}"
            )
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"config key 'model.temperature' must be > 0, got {self.temperature}")
        if self.margin is not None and self.margin < 0:
            raise ConfigError(f"config key 'model.margin' must be >= 0, got {self.margin}")
        if self.negative_weight is not None and self.negative_weight < 0:
            raise ConfigError(f"config key 'model.negative_weight' must be >= 0, got {self.negative_weight}")
        if self.positive_weight is not None and self.positive_weight <= 0:
            raise ConfigError(f"config key 'model.positive_weight' must be > 0, got {self.positive_weight}")
        if self.gbce_calibration is not None and not 0.0 <= self.gbce_calibration <= 1.0:
            raise ConfigError(
                f"config key 'model.gbce_calibration' must be in [0, 1], got {self.gbce_calibration}"
            )
        if not self.scorer_hidden_sizes or any(h < 1 for h in self.scorer_hidden_sizes):
            raise ConfigError(
                "config key 'model.scorer_hidden_sizes' must be positive sizes, "
                f"got {self.scorer_hidden_sizes}"
            )

    def check_tower_free(self, model: str) -> None:
        """One ConfigError when ``model`` (a tower-free model: no item vectors) is given a part
        that needs item vectors: a model-based sampler or DNS."""
        from recstudio.model.sampler import SAMPLERS

        if SAMPLERS[self.sampler].uses_query:
            raise ConfigError(
                f"{model} is tower-free: sampler '{self.sampler}' needs item vectors; "
                "use uniform or popularity"
            )
        if self.hard_negative_candidates > 1:
            raise ConfigError(
                f"{model} is tower-free: config key 'model.hard_negative_candidates' (DNS) scores "
                "candidates with item vectors; set it to 1"
            )


def _accepted(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``cls.__init__`` takes, without None values (None keeps its default)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in params and v is not None}


def build_loss_from(config: RankingParts, num_items: int) -> nn.Module:
    from recstudio.model.loss import LOSSES

    options = {
        "temperature": config.temperature,
        "estimator": config.sampled_softmax_estimator,
        "margin": config.margin,
        "negative_weight": config.negative_weight,
        "positive_weight": config.positive_weight,
        "calibration": config.gbce_calibration,
        "num_negatives": config.num_negatives,
        "num_items": num_items,
    }
    cls = LOSSES[config.loss]
    return cls(**_accepted(cls, options))


def build_scorer_from(config: RankingParts, dim: int | None) -> nn.Module:
    from recstudio.model.scorer import SCORERS

    options = {"dim": dim, "hidden_sizes": list(config.scorer_hidden_sizes)}
    cls = SCORERS[config.scorer]
    return cls(**_accepted(cls, options))


def resolved_params(model_config: Any) -> dict[str, Any]:
    """What a None option of ``model_config`` resolved to, as ``model.<key>.resolved`` params,
    so that MLflow shows what ran beside the logged None (which only says "decided by the
    sampler"); empty when nothing was left to the model."""
    resolve = getattr(model_config, "excludes_positives", None)
    if resolve is None or getattr(model_config, "exclude_positives", False) is not None:
        return {}
    return {"model.exclude_positives.resolved": resolve()}


def build_sampler_from(config: RankingParts, data: Any) -> nn.Module:
    """The negative sampler over the data's items; with ``exclude_positives`` it knows every
    user's training items (labelled data: its positive rows)."""
    from recstudio.model.sampler import SAMPLERS, build_sampler

    options = {"alpha": config.sampler_alpha, "clusters": config.sampler_clusters}
    options = _accepted(SAMPLERS[config.sampler], options)
    sampler = build_sampler(config.sampler, data.num_items, data.item_popularity(), **options)
    if config.excludes_positives():
        train = data.train
        label = getattr(train, "label", None)
        user, item = (
            (train.user, train.item) if label is None else (train.user[label > 0.5], train.item[label > 0.5])
        )
        sampler.exclude(user, item, data.num_users)
    return sampler


@dataclass
class Parts:
    """The built modules (the model registers them as submodules)."""

    loss: nn.Module
    sampler: nn.Module
    scorer: nn.Module
    num_negatives: int
    hard_negative_candidates: int = 1


def build_parts(config: RankingParts, data: Any, dim: int | None = None) -> Parts:
    """Loss, sampler and scorer of ``config`` for ``data``; ``dim`` is the query/item width
    (needed by the mlp scorer)."""
    if not isinstance(config, RankingParts):
        raise ConfigError(f"{type(config).__name__} does not declare ranking parts (inherit RankingParts)")
    return Parts(
        loss=build_loss_from(config, data.num_items),
        sampler=build_sampler_from(config, data),
        scorer=build_scorer_from(config, dim),
        num_negatives=config.num_negatives,
        hard_negative_candidates=config.hard_negative_candidates,
    )
