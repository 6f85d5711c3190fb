"""Base classes of the RecStudio taxonomy, on ``pytorch_lightning.LightningModule``.

- ``Recommender``: the common contract. A model declares its ``DataContract`` (what it trains on,
  what its evaluation batches carry, which data parts it needs), implements ``training_loss``
  (and ``<input>_loss`` for further training inputs) and ``score_batch(batch) -> [B, num_items]``
  (full ranking) and/or ``score_pairs(batch) -> [N]`` (labelled rows); this class supplies the
  optimizers, the training/validation/test steps and the evaluation hooks, so no model repeats
  them.
- ``TowerFreeRecommender``: scores come from a joint function of user and item (EASE,
  MultiVAE, WRMF); nothing is assumed about item vectors.
- ``PairwiseRecommender``: a tower-free model that scores (user, item) pairs with a network
  (NCF, DeepFM): it implements ``candidate_scores(batch, items [B, C])``; full ranking runs it
  over memory-bounded item chunks (``score_item_chunks``), sampled and pointwise losses are
  generic.
- ``ItemTowerRecommender``: items are encoded separately (``item_vectors``), queries by
  ``query_vectors(batch)``, and a scorer joins them. This enables generic sampled losses,
  model-based samplers and ANN retrieval.
- ``TwoTowerRecommender``: an item tower whose query is a user tower (``user_vectors``).

Class attributes every concrete model declares: ``family``, ``contract`` (or the classmethod
``data_contract(config)`` when the contract depends on hyperparameters), ``Config`` (a
dataclass: the model's hyperparameters and their defaults, written once; inherit
``recstudio.model.parts.RankingParts`` for a configurable loss, sampler and scorer),
``search_space`` (Optuna distributions as data, see ``recstudio.tune.space``) and optionally
``default_overrides`` (values of the data/train/eval sections this model needs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from recstudio import native
from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError, ModelError, NonFiniteLossError
from recstudio.eval.metrics import higher_is_better
from recstudio.model.contract import MAIN, DataContract
from recstudio.model.loss import BCELoss, BPRLoss, FullSoftmaxLoss
from recstudio.model.ops import (
    full_softmax_inner_product_loss,
    gather_rows,
    sampled_inner_product_loss,
    sum_squared_rows,
)
from recstudio.model.scorer import InnerProductScorer

_FUSED_KINDS: dict[type, str] = {BPRLoss: "bpr", BCELoss: "bce"}
"""Loss classes whose formula the native ``sampled_inner_product_loss`` computes, by kind."""

_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class Recommender(pl.LightningModule):
    family: ClassVar[str] = "general"
    contract: ClassVar[DataContract] = DataContract()
    Config: ClassVar[type]
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}
    default_overrides: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""

    @classmethod
    def data_contract(cls, config: Any) -> DataContract:
        """This model's data contract under ``config`` (default: the class's ``contract``)."""
        return cls.contract

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Checks of ``config`` that depend on the model class, run when the config is built and
        again when the model is: a model without item vectors rejects the ranking parts that
        need them (model-based samplers, DNS)."""
        from recstudio.model.parts import RankingParts

        if isinstance(config, RankingParts) and not issubclass(cls, ItemTowerRecommender):
            config.check_tower_free(cls.__name__)

    def __init__(
        self,
        config: Any,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__()
        type(self).check_config(config)
        self.config = config
        self.train_config = train_config or TrainConfig()
        self.eval_config = eval_config or EvalConfig()
        self.num_users = data.num_users
        self.num_items = data.num_items
        self.data_needs = type(self).data_contract(config)
        missing = [p for p in self.data_needs.parts if getattr(data, p, None) is None]
        if missing:
            raise ModelError(
                f"{type(self).__name__} needs the dataset's {' and '.join(_PART_NAMES[p] for p in missing)}, "
                f"but dataset '{data.name}' has none loaded"
            )
        if self.data_needs.ratings and not data.has_ratings:
            raise ModelError(
                f"{type(self).__name__} needs rating values, but dataset '{data.name}' has none (no "
                "rating column, or ratings binarised to 1: set data.binarize=false)"
            )
        self._epoch_loss_sum: torch.Tensor | None = None
        self._epoch_loss_count = 0
        self.evaluation: Any = None  # set by the pipeline: recstudio.eval.Evaluation
        self.eval_cache: dict[str, torch.Tensor] = {}
        """What ``prepare_evaluation`` computed for the current evaluation pass (emptied after)."""
        # Metrics of the latest validation / test pass. Only the monitor goes through
        # ``self.log`` (early stopping, checkpointing and pruning read it there): Lightning's
        # logging costs ~1.7 ms per key on the 2-core CPU, 33 ms for 19 metrics per validation.
        self.valid_metrics: dict[str, float] = {}
        self.test_metrics: dict[str, float] = {}
        self.optimizer_steps = 0
        """Optimizer steps taken (the plain step does not advance Lightning's global_step)."""
        # One zero_grad/backward/step per batch, written out in ``training_step``: Lightning's
        # automatic optimisation wraps every step in a closure and a dozen hooks.
        self.automatic_optimization = False
        self._plain_step = False  # decided in on_train_start

    # ------------------------------------------------------------------ model API
    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the scalar training loss of one batch of the ``main`` training input."""
        raise NotImplementedError

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores of every item for each query in ``batch``: float tensor [B, num_items].

        ``batch`` is an evaluation block: ``user`` [B], ``history_mask`` bool [B, num_items]
        (items the user has seen, usable as model input), and when the contract asks for it
        ``seq`` [B, L] (chronological history, left-padded with 0) and ``seq_len`` [B].
        """
        raise ModelError(f"{type(self).__name__} does not rank all items (no score_batch)")

    def score_pairs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [N] of labelled rows ``batch`` (``user``, ``item`` [N], context ``ctx.*``)
        for pointwise evaluation; higher means more likely positive."""
        raise ModelError(f"{type(self).__name__} does not score labelled rows (no score_pairs)")

    def prepare_evaluation(self) -> None:
        """Called once before every validation/test pass (gradients off): compute what every
        evaluation block shares (item vectors, propagated graph embeddings) into
        ``self.eval_cache``. Released after the pass."""

    def fit_closed_form(self, data: PreparedData) -> None:
        """Closed-form / ALS models fit here; called once before training (default: nothing)."""

    def optimizer_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters each optimizer of the contract moves (default: one ``main`` optimizer over
        every trainable parameter). Models with several optimizers override this."""
        names = self.data_needs.optimizers
        if names != (MAIN,):
            raise ModelError(
                f"{type(self).__name__} declares optimizers {names}: override optimizer_groups()"
            )
        return {MAIN: [p for p in self.parameters() if p.requires_grad]}

    @torch.no_grad()
    def recommend(self, batch: dict[str, torch.Tensor], k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores, item ids) per query, with ``history_mask`` items and padding excluded."""
        scores = self.score_batch(batch).float()
        scores[:, 0] = -torch.inf
        if "history_mask" in batch:
            scores = scores.masked_fill(batch["history_mask"], -torch.inf)
        return torch.topk(scores, min(k, scores.shape[1]), dim=1)

    # ------------------------------------------------------------------ Lightning hooks
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are flat dicts of tensors (or lists of them, ``StepGroups``): move them
        directly (Lightning's generic collection walk costs ~0.3 ms per step on CPU)."""
        if isinstance(batch, dict):
            return _batch_to(batch, device)
        if isinstance(batch, list) and all(isinstance(one, dict) for one in batch):
            return [_batch_to(one, device) for one in batch]
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_train_start(self) -> None:
        from pytorch_lightning.plugins.precision import Precision
        from pytorch_lightning.strategies import SingleDeviceStrategy

        trainer = self.trainer
        # The plain step (loss.backward + the optimizer's own step) skips what Lightning runs
        # around backward and the optimizer step: only when none of it does anything here, i.e.
        # one process (DDP prepares its reducer in backward), plain 32-bit precision (mixed
        # precision scales the loss), no gradient clipping and no step hooks.
        self._plain_step = (
            type(trainer.strategy) is SingleDeviceStrategy
            and type(trainer.strategy.precision_plugin) is Precision
            and not self.train_config.gradient_clip
            and not _overrides_step_hooks(self, trainer.callbacks)
        )
        optimizers = self.optimizers(use_pl_optimizer=not self._plain_step)
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        self._step_optimizers = dict(zip(self.data_needs.optimizers, optimizers))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a resumed run (recstudio.resume) counts its steps on from here
        checkpoint["recstudio_optimizer_steps"] = self.optimizer_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.optimizer_steps = int(checkpoint.get("recstudio_optimizer_steps", 0))

    def on_train_epoch_start(self) -> None:
        self._epoch_loss_sum = None
        self._epoch_loss_count = 0

    def training_step(
        self, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]], batch_idx: int
    ) -> torch.Tensor | None:
        """One optimizer step per batch; a list (``StepGroups``) is several steps, in order."""
        if isinstance(batch, list):
            loss = None
            for one in batch:
                loss = self._optimizer_step(one)
            return loss
        return self._optimizer_step(batch)

    def _optimizer_step(self, batch: dict[str, Any]) -> torch.Tensor | None:
        name = batch.get("input", MAIN)
        spec = next((i for i in self.data_needs.inputs if i.name == name), None)
        if spec is None:
            raise ModelError(f"{type(self).__name__} got a batch of unknown input '{name}'")
        loss = getattr(self, spec.loss_method())(batch)
        if loss is None:
            return None
        optimizer = self._step_optimizers[spec.optimizer]
        optimizer.zero_grad(set_to_none=True)
        if self._plain_step:
            loss.backward()
            optimizer.step()
        else:
            self.manual_backward(loss)
            clip = self.train_config.gradient_clip
            if clip:
                self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            optimizer.step()
        self.optimizer_steps += 1
        detached = loss.detach()
        self._epoch_loss_sum = detached if self._epoch_loss_sum is None else self._epoch_loss_sum + detached
        self._epoch_loss_count += 1
        return detached

    def epoch_mean_loss(self) -> float | None:
        """Mean training loss of the current epoch so far (None before the first step)."""
        if self._epoch_loss_sum is None:
            return None
        return float(self._epoch_loss_sum) / max(1, self._epoch_loss_count)

    def on_train_epoch_end(self) -> None:
        value = self.epoch_mean_loss()
        if value is None:
            return
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss is {value} at epoch {self.current_epoch}")
        self.log("train_loss", value, prog_bar=True, sync_dist=False)
        for scheduler in _as_list(self.lr_schedulers()):
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()  # manual optimisation: epoch-interval schedulers are stepped here

    # ------------------------------------------------------------------ evaluation
    def _begin_evaluation(self) -> None:
        if self.evaluation is not None:
            self.evaluation.reset()
        with torch.no_grad():
            self.prepare_evaluation()

    def _end_evaluation(self) -> dict[str, float]:
        self.eval_cache = {}
        return self.evaluation.compute() if self.evaluation is not None else {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.evaluation.update(self, batch)

    def on_validation_epoch_start(self) -> None:
        self._begin_evaluation()

    def on_validation_epoch_end(self) -> None:
        metrics = self._end_evaluation()
        if not metrics:
            return
        self.valid_metrics = metrics
        monitor = self.train_config.monitor
        if monitor in metrics:
            self.log("monitor", metrics[monitor], prog_bar=True, sync_dist=False)
            if not self.trainer.sanity_checking:
                for scheduler in _as_list(self.lr_schedulers()):
                    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        scheduler.step(float(metrics[monitor]))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.evaluation.update(self, batch)

    def on_test_epoch_start(self) -> None:
        self._begin_evaluation()

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._end_evaluation()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        groups = self.optimizer_groups()
        names = self.data_needs.optimizers
        if set(groups) != set(names):
            raise ModelError(
                f"{type(self).__name__}: optimizer_groups() names {sorted(groups)}, "
                f"the data contract steps {list(names)}"
            )
        if not any(p.requires_grad for params in groups.values() for p in params):
            return None
        optimizers = [_make_optimizer(groups[name], self.train_config) for name in names]
        scheduler = _make_scheduler(optimizers[0], self.train_config)
        if scheduler is None:
            return optimizers if len(optimizers) > 1 else optimizers[0]
        return optimizers, [scheduler]


_PART_NAMES = {"kg": "knowledge graph", "social": "social graph"}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _make_optimizer(params: list[torch.nn.Parameter], t: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    lr, wd = t.learning_rate, t.weight_decay
    fused = _fused_ok(params)  # one kernel per step instead of ~10 ops per parameter tensor
    if t.learner == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused)
    if t.learner == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused)
    if t.learner == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if t.learner == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if t.learner == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"unknown train.learner '{t.learner}'")  # pragma: no cover - validated


def _make_scheduler(opt: torch.optim.Optimizer, t: TrainConfig) -> Any:
    """The main optimizer's learning-rate schedule (stepped per epoch; plateau on the monitor)."""
    if t.scheduler == "none":
        return None
    if t.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.scheduler_step, gamma=t.scheduler_gamma)
    if t.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=t.scheduler_gamma)
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
    mode = "max" if higher_is_better(t.monitor) else "min"
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=t.scheduler_gamma, patience=max(1, t.scheduler_step // 2)
    )
    return {"scheduler": sched, "monitor": "monitor"}


def _batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def takes_step_groups(model: pl.LightningModule) -> bool:
    """Whether ``model.training_step`` is the base one, which also takes a list of batches."""
    return type(model).training_step is Recommender.training_step


def _overrides_step_hooks(module: pl.LightningModule, callbacks: list[pl.Callback]) -> bool:
    """True when the module or a callback implements a hook the plain training step skips."""
    for hook in _STEP_HOOKS:
        if getattr(type(module), hook) is not getattr(pl.LightningModule, hook):
            return True
        if any(getattr(type(cb), hook) is not getattr(pl.Callback, hook) for cb in callbacks):
            return True
    return False


def _fused_ok(params: list[torch.Tensor]) -> bool | None:
    """Fused Adam needs dense floating-point parameters on CPU or CUDA (torch >= 2.4)."""
    ok = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


def pointwise_log_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits against 0/1 labels: the log loss CTR models train
    on and are judged by (``recstudio.eval.pointwise`` reports the same formula)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class TowerFreeRecommender(Recommender):
    """User and item interact inside the model; ``score_batch`` is implemented by the model."""


# --------------------------------------------------------------------------- pair scoring

SCORE_CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 26}
"""Upper bound on one chunk's pair activations (pairs x ``pair_width``) in full ranking: 2 MiB
chunks stay in cache on CPU (one chunk per block made an NCF validation pass 4x slower on the
2-core machine); on CUDA fewer, larger kernels win."""


def score_item_chunks(
    chunk_scores: Callable[[torch.Tensor], torch.Tensor],
    num_queries: int,
    num_items: int,
    pair_width: int,
    device: torch.device,
    budget: int | None = None,
) -> torch.Tensor:
    """Full-ranking scores [num_queries, num_items] from ``chunk_scores(items [c]) -> [Q, c]``,
    run over contiguous item chunks so that at most ``budget`` pair activations (pairs x
    ``pair_width``) are alive at once: memory stays bounded whatever the catalogue size."""
    if budget is None:
        budget = SCORE_CHUNK_ELEMENTS.get(device.type, SCORE_CHUNK_ELEMENTS["cuda"])
    chunk = max(1, budget // max(1, num_queries * max(1, pair_width)))
    out = torch.empty(num_queries, num_items, device=device)
    for start in range(0, num_items, chunk):
        items = torch.arange(start, min(start + chunk, num_items), device=device)
        out[:, start : start + items.numel()] = chunk_scores(items)
    return out


class PairwiseRecommender(TowerFreeRecommender):
    """A model that scores (query, item) pairs jointly with a network.

    Implement ``candidate_scores(batch, items [B, C]) -> [B, C]`` (each query against its own
    candidates) and set ``pair_width`` (activations per pair, for chunk sizing). Full ranking
    (``score_batch``) runs the block's ``chunk_scorer`` over item chunks via
    ``score_item_chunks``; a model may override ``chunk_scores`` to share work across a chunk, or
    ``chunk_scorer`` to do per-query work (a user tower, the user half of a first layer) once per
    block instead of once per chunk. Training is generic: with the
    ``triplet`` input, the configured loss over the positive and sampled negatives
    (``RankingParts`` config); with the ``pointwise`` input, log loss on the labels.
    """

    pair_width: ClassVar[int] = 64

    def build_ranking_parts(self, data: PreparedData) -> None:
        from recstudio.model.parts import build_parts

        parts = build_parts(self.config, data)
        if getattr(parts.loss, "needs_all_scores", False):
            raise ConfigError(
                f"{type(self).__name__} scores sampled pairs; loss '{self.config.loss}' needs all scores"
            )
        self.loss_fn, self.sampler, self.num_negatives = parts.loss, parts.sampler, parts.num_negatives

    def candidate_scores(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def chunk_scores(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """Scores [B, c] of every query of ``batch`` against the item chunk ``items`` [c]."""
        n = batch["user"].shape[0]
        return self.candidate_scores(batch, items[None, :].expand(n, -1))

    def chunk_scorer(self, batch: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The block's function of an item chunk [c] -> scores [B, c] (``chunk_scores`` bound to
        ``batch``); full ranking calls it once per block and the result once per chunk."""
        return lambda items: self.chunk_scores(batch, items)

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users = batch["user"]
        return score_item_chunks(
            self.chunk_scorer(batch),
            users.shape[0],
            self.num_items,
            self.pair_width,
            users.device,
        )

    def score_pairs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.candidate_scores(batch, batch["item"][:, None])[:, 0]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "label" in batch:  # the pointwise input: every labelled row
            return pointwise_log_loss(self.score_pairs(batch), batch["label"])
        users, pos = batch["user"], batch["item"]
        neg = batch.get("neg_item")
        if neg is None:
            neg, log_q_neg, log_q_pos = self.sampler.sample(
                pos.shape[0], self.num_negatives, pos_items=pos, users=users
            )
        else:
            log_q_neg, log_q_pos = self.sampler.log_prob(neg), self.sampler.log_prob(pos)
        scores = self.candidate_scores(batch, torch.cat([pos[:, None], neg], dim=1))
        return self.loss_fn(scores[:, 0], scores[:, 1:], log_q_pos=log_q_pos, log_q_neg=log_q_neg)


# --------------------------------------------------------------------------- item towers


class ItemTowerRecommender(Recommender):
    """Items have their own encoder; a scorer joins query and item vectors.

    Subclasses implement ``item_vectors()`` -> [num_items, d] and ``query_vectors(batch)`` ->
    [B, d], and call ``build_ranking_parts(data, dim)`` (loss, sampler and scorer from the
    ``RankingParts`` config). ``score_batch``, ``score_pairs`` and the sampled and full-softmax
    losses are generic. Item vectors are computed once per evaluation pass
    (``prepare_evaluation``); a model whose queries also need shared work (graph propagation)
    adds it to ``eval_cache`` there and reads it in ``query_vectors``. Negatives are drawn in one
    place, ``draw_negatives``: from the configured sampler (a model-based one is rebuilt from
    the item vectors at epoch starts, ``refresh_sampler``), and with DNS the best of M draws.
    """

    def item_vectors(self) -> torch.Tensor:
        raise NotImplementedError

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def build_ranking_parts(self, data: PreparedData, dim: int | None = None) -> None:
        """Create scorer, loss and negative sampler from the model's ``RankingParts`` config."""
        from recstudio.model.parts import build_parts

        parts = build_parts(self.config, data, dim)
        self.scorer, self.loss_fn, self.sampler = parts.scorer, parts.loss, parts.sampler
        self.num_negatives = parts.num_negatives
        self.hard_negative_candidates = parts.hard_negative_candidates
        self.sampler_refreshed_at: int | None = None
        """Epoch at whose start a model-based sampler was last rebuilt (None: not yet)."""
        self.sampler_refreshed_step = 0
        """``optimizer_steps`` at the sampler's last rebuild (epoch start or step schedule)."""

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.refresh_sampler()

    def _optimizer_step(self, batch: dict[str, Any]) -> torch.Tensor | None:
        every = getattr(self.config, "sampler_refresh_steps", None)
        if every and self.optimizer_steps - self.sampler_refreshed_step >= every:
            self.refresh_sampler(force=True)
        return super()._optimizer_step(batch)

    @torch.no_grad()
    def refresh_sampler(self, force: bool = False) -> bool:
        """Rebuild a model-based sampler (``Sampler.uses_query``) from the current item vectors
        (detached) at the start of training and then every ``sampler_refresh_epochs`` epochs
        (and every ``sampler_refresh_steps`` optimiser steps, ``_optimizer_step``); True when it
        did. Called at each epoch start (a subclass overriding
        ``on_train_epoch_start`` calls ``super()`` first)."""
        sampler = getattr(self, "sampler", None)
        if sampler is None or not sampler.uses_query:
            return False
        every = getattr(self.config, "sampler_refresh_epochs", 1)
        epoch = self.current_epoch
        last = getattr(self, "sampler_refreshed_at", None)
        if not force and last is not None and epoch - last < every:
            return False
        sampler.refresh(self.item_vectors().detach())
        self.sampler_refreshed_at = epoch
        self.sampler_refreshed_step = self.optimizer_steps
        return True

    def prepare_evaluation(self) -> None:
        self.eval_cache["items"] = self.item_vectors()

    def eval_item_vectors(self) -> torch.Tensor:
        """The pass's cached item vectors inside an evaluation pass, else fresh ones."""
        cached = self.eval_cache.get("items")
        return cached if cached is not None else self.item_vectors()

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scorer.matrix(self.query_vectors(batch), self.eval_item_vectors())

    def score_pairs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        items = gather_rows(self.eval_item_vectors(), batch["item"])
        return self.scorer(self.query_vectors(batch), items)

    def draw_negatives(
        self,
        query: torch.Tensor | None,
        n: int,
        users: torch.Tensor | None = None,
        items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[n, K] sampled negatives (avoiding the positives of ``users`` [n] when the config
        excludes them). With ``hard_negative_candidates`` M > 1 each is the best of M draws
        scored by the current model without gradient: dynamic negative sampling.

        DNS: Zhang, Chen, Wang and Yu, "Optimizing Top-N Collaborative Filtering via Dynamic
        Negative Item Sampling" (SIGIR 2013): uniform negatives are mostly already ranked low,
        so their BPR gradient vanishes; the highest-scoring of M candidates keeps it informative.
        ``items``: the item vectors to score candidates with (default ``item_vectors()``)."""
        k, m = self.num_negatives, getattr(self, "hard_negative_candidates", 1)
        if m <= 1:
            return self.sampler.sample_ids(n, k, query=query, users=users)
        if query is None:
            raise ModelError(f"{type(self).__name__}: dynamic negative sampling needs the query vectors")
        candidates = self.sampler.sample_ids(n, k * m, query=query, users=users)
        with torch.no_grad():
            vectors = (self.item_vectors() if items is None else items).detach()
            scores = self.scorer.gather(query.detach(), gather_rows(vectors, candidates))
            best = scores.view(n, k, m).argmax(dim=2, keepdim=True)
        return candidates.view(n, k, m).gather(2, best).squeeze(2)

    def sample_candidates(
        self,
        query: torch.Tensor,
        pos_items: torch.Tensor,
        neg_items: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
        items: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each query's positive and K negatives: (candidate ids [N, 1+K], log_q_pos [N],
        log_q_neg [N, K]). Negatives come from the sampler (avoiding the positives of ``users``
        [N] when the config excludes them) unless ``neg_items`` [N, K] is given. Under DNS the
        log q are the sampler's own (unconditional) ones of the kept items, not the probability
        of the best-of-M choice: the losses DNS allows ignore them."""
        if neg_items is None and getattr(self, "hard_negative_candidates", 1) <= 1:
            neg_items, log_q_neg, log_q_pos = self.sampler.sample(
                pos_items.shape[0], self.num_negatives, pos_items=pos_items, query=query, users=users
            )
        else:
            if neg_items is None:
                neg_items = self.draw_negatives(query, pos_items.shape[0], users, items)
            with self.sampler.proposal_scope(query):
                log_q_neg = self.sampler.log_prob(neg_items, query=query)
                log_q_pos = self.sampler.log_prob(pos_items, query=query)
        return torch.cat([pos_items.unsqueeze(1), neg_items], dim=1), log_q_pos, log_q_neg

    def score_candidates(
        self,
        query: torch.Tensor,
        pos_items: torch.Tensor,
        neg_items: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
        items: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores of each query's positive and K negatives, with one gather for all candidates.

        Returns (pos_score [N], neg_score [N, K], log_q_pos [N], log_q_neg [N, K], candidate
        ids [N, 1+K]); the ids let a model regularise exactly the rows it scored. ``items``:
        the item vectors to score against (default ``item_vectors()``).
        """
        items = self.item_vectors() if items is None else items
        candidates, log_q_pos, log_q_neg = self.sample_candidates(query, pos_items, neg_items, users, items)
        scores = self.scorer.gather(query, gather_rows(items, candidates))
        return scores[:, 0], scores[:, 1:], log_q_pos, log_q_neg, candidates

    def candidate_ids(
        self,
        query: torch.Tensor | None,
        pos_items: torch.Tensor,
        neg_items: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
        items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[N, 1+K] positive and negative ids, without log q (for the native BPR/BCE kernels).
        ``query`` [N, d] is needed only by samplers that draw from it (``Sampler.uses_query``)
        and by DNS (``needs_query_for_negatives``), which scores candidates against ``items``."""
        if neg_items is None:
            neg_items = self.draw_negatives(query, pos_items.shape[0], users, items)
        return torch.cat([pos_items.unsqueeze(1), neg_items], dim=1)

    @property
    def needs_query_for_negatives(self) -> bool:
        """Whether drawing negatives reads the query vectors (a model-based sampler, or DNS)."""
        return bool(self.sampler.uses_query or getattr(self, "hard_negative_candidates", 1) > 1)

    def fused_loss_kind(self, query: torch.Tensor) -> str | None:
        """The native kernel kind ("bpr" or "bce") that computes this model's sampled loss
        exactly, or None when the generic autograd path runs.

        The one speed path for sampled inner-product losses: C kernels on CPU (built on first
        use, ``recstudio.native``), for the plain inner-product scorer and the BPR and BCE
        losses (exact classes: a subclass may change the formula), with gradients on. On CUDA,
        or without a C compiler, the generic path computes the same formula.
        """
        if query.device.type != "cpu" or not torch.is_grad_enabled():
            return None
        if type(self.scorer) is not InnerProductScorer:
            return None
        kind = _FUSED_KINDS.get(type(self.loss_fn))
        if getattr(self.loss_fn, "positive_weight", 1.0) != 1.0:  # the kernels weigh positives 1
            return None
        if kind is None or query.dtype not in native.DTYPES or native.kernels() is None:
            return None
        return kind

    def fused_full_softmax(self, query: torch.Tensor, items: torch.Tensor) -> bool:
        """Whether ``full_softmax_inner_product_loss`` computes this model's loss: the full
        softmax (``FullSoftmaxLoss``) over inner-product scores (exact classes: a subclass may
        change the formula), float32 as the generic path computes it, on any device."""
        return (
            type(self.loss_fn) is FullSoftmaxLoss
            and type(self.scorer) is InnerProductScorer
            and query.dtype == items.dtype == torch.float32
        )

    def ranking_loss(
        self,
        query: torch.Tensor,
        pos_items: torch.Tensor,
        neg_items: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
        items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of flat queries [N, d] against their positive items [N] with the configured loss.

        Full-softmax losses score all items; the others draw ``num_negatives`` items from the
        sampler (log-probabilities passed along for log-Q correction / importance weights), or
        use ``neg_items`` [N, K] drawn at load time (static negatives). ``users`` [N] lets the
        sampler avoid each user's training positives. ``items``: the item vectors to score
        against (default ``item_vectors()``); a model whose item vectors come out of work shared
        with its queries (a graph propagation) passes the step's own instead of recomputing them.
        """
        return self.scored_ranking_loss(query, pos_items, neg_items, users, items)[0]

    def scored_ranking_loss(
        self,
        query: torch.Tensor,
        pos_items: torch.Tensor,
        neg_items: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
        items: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ranking_loss`` and the item ids it scored: the positives [N] for full-softmax
        losses, else the candidates [N, 1+K] (positive first), so that a model can regularise
        exactly the rows its loss used (BPR-Opt)."""
        items = self.item_vectors() if items is None else items
        if getattr(self.loss_fn, "needs_all_scores", False):
            if self.fused_full_softmax(query, items):
                loss = full_softmax_inner_product_loss(query, items, pos_items, self.loss_fn.temperature)
                return loss, pos_items
            all_scores = self.scorer.matrix(query, items)
            all_scores[:, 0] = -torch.inf  # padding is never a target
            return self.loss_fn(all_scores, pos_items), pos_items
        kind = self.fused_loss_kind(query)
        if kind is not None:
            candidates = self.candidate_ids(query, pos_items, neg_items, users, items)
            loss = sampled_inner_product_loss(query, items, candidates, kind, padding_idx=None)
            return loss, candidates
        pos_score, neg_score, log_q_pos, log_q_neg, candidates = self.score_candidates(
            query, pos_items, neg_items, users, items
        )
        return self.loss_fn(pos_score, neg_score, log_q_pos=log_q_pos, log_q_neg=log_q_neg), candidates

    def penalised_ranking_loss(
        self,
        query: torch.Tensor,
        batch: dict[str, torch.Tensor],
        reg_weight: float,
        user_table: torch.Tensor,
        item_table: torch.Tensor,
    ) -> torch.Tensor:
        """``ranking_loss`` of the batch's users (``query`` [N, d]), positives and (static or
        sampled) negatives, plus ``reg_weight`` times the squared rows of ``user_table`` (the
        batch's users) and ``item_table`` (the items the loss scored), over the batch size: the
        BPR-Opt penalty of the rows a step used."""
        users, pos = batch["user"], batch["item"]
        loss, scored = self.scored_ranking_loss(query, pos, batch.get("neg_item"), users)
        if reg_weight > 0:
            reg = sum_squared_rows(user_table, users) + sum_squared_rows(item_table, scored)
            loss = loss + reg_weight * reg / pos.shape[0]
        return loss


class TwoTowerRecommender(ItemTowerRecommender):
    """Item tower plus a user tower: the query is ``user_vectors(batch['user'])``."""

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_vectors(batch["user"])

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users = batch["user"]
        return self.ranking_loss(self.query_vectors(batch), batch["item"], batch.get("neg_item"), users)
