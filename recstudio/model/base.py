"""Base classes of the RecStudio taxonomy, on ``pytorch_lightning.LightningModule``.

- ``Recommender``: the common contract. A model implements ``training_loss(batch)`` and
  ``score_batch(batch) -> [B, num_items]``; this class supplies optimisers, schedulers, the
  training/validation/test steps and full-ranking evaluation, so no model repeats them.
- ``TowerFreeRecommender``: scores come from a joint function of user and item (NCF, EASE,
  MultiVAE); nothing is assumed about item vectors.
- ``ItemTowerRecommender``: items are encoded separately (``item_vectors``), queries by
  ``query_vectors(batch)``, and a scorer joins them. This enables generic sampled losses,
  model-based samplers and ANN retrieval.
- ``TwoTowerRecommender``: an item tower whose query is a user tower (``user_vectors``).

Class attributes every concrete model declares: ``family``, ``view``, ``Config`` (a dataclass:
the model's hyperparameters and their defaults, written once), ``search_space`` (Optuna
distributions as data, see ``recstudio.tune.space``) and optionally ``default_overrides`` (values
of the data/train/eval sections this model needs, e.g. ``{"data": {"split": "loo"}}``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch

from recstudio.config import EvalConfig, TrainConfig
from recstudio.data.dataset import PreparedData
from recstudio.errors import ConfigError, NonFiniteLossError
from recstudio.model.loss import BCELoss, BPRLoss
from recstudio.model.ops import gather_rows, sampled_inner_product_loss
from recstudio.model.scorer import InnerProductScorer

_FUSED_KINDS: dict[type, str] = {BPRLoss: "bpr", BCELoss: "bce"}
"""Loss classes whose formula ``sampled_inner_product_loss`` computes, by its ``kind`` name."""


class Recommender(pl.LightningModule):
    family: ClassVar[str] = "general"
    view: ClassVar[str] = "triplet"
    Config: ClassVar[type]
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}
    default_overrides: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""

    def __init__(
        self,
        config: Any,
        data: PreparedData,
        train_config: TrainConfig | None = None,
        eval_config: EvalConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.train_config = train_config or TrainConfig()
        self.eval_config = eval_config or EvalConfig()
        self.num_users = data.num_users
        self.num_items = data.num_items
        self._epoch_loss_sum: torch.Tensor | None = None
        self._epoch_loss_count = 0
        self.evaluator = None  # set by the pipeline: recstudio.eval.ranking.RankingEvaluator
        self.epoch_history: list[dict[str, float]] = []
        # Metrics of the latest validation / test pass. Only the monitor goes through
        # ``self.log`` (early stopping, checkpointing and pruning read it there): Lightning's
        # logging costs ~1.7 ms per key on the 2-core CPU, 33 ms for 19 metrics per validation,
        # as long as the whole ml-100k validation pass itself.
        self.valid_metrics: dict[str, float] = {}
        self.test_metrics: dict[str, float] = {}
        # One zero_grad/backward/step per batch, written out in ``training_step``: Lightning's
        # automatic optimisation wraps every step in a closure and a dozen hooks, which cost
        # about 1 ms per step on the 2-core CPU (a third of a BPR step on ml-100k).
        self.automatic_optimization = False
        self._direct_step = False  # decided in on_train_start

    # ------------------------------------------------------------------ model API
    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the scalar training loss of one batch of the model's view."""
        raise NotImplementedError

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores of every item for each query in ``batch``: float tensor [B, num_items].

        ``batch`` is an evaluation block: ``user`` [B], ``history_mask`` bool [B, num_items]
        (items the user has seen, usable as model input), and for sequential models ``seq``
        [B, L] (chronological history, left-padded with 0) and ``seq_len`` [B].
        """
        raise NotImplementedError

    def fit_closed_form(self, data: PreparedData) -> None:
        """Closed-form / ALS models fit here; called once before training (default: nothing)."""

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
        """Batches are flat dicts of tensors: move them directly (Lightning's generic collection
        walk costs about 0.3 ms per step, a tenth of a small training step on CPU)."""
        if isinstance(batch, dict):
            return _batch_to(batch, device)
        if isinstance(batch, list) and all(isinstance(one, dict) for one in batch):
            return [_batch_to(one, device) for one in batch]  # a StepGroups group
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_train_start(self) -> None:
        from pytorch_lightning.plugins.precision import Precision
        from pytorch_lightning.strategies import SingleDeviceStrategy

        trainer = self.trainer
        # The direct step skips the hooks Lightning runs around backward and the optimizer step
        # (on_before_backward, on_after_backward, on_before_optimizer_step): only when none does
        # anything here, i.e. one process (DDP prepares its reducer in backward), plain 32-bit
        # precision (mixed precision scales the loss) and no gradient clipping.
        self._direct_step = (
            type(trainer.strategy) is SingleDeviceStrategy
            and type(trainer.strategy.precision_plugin) is Precision
            and not self.train_config.gradient_clip
            and not _overrides_step_hooks(self, trainer.callbacks)
            and hasattr(self.optimizers(), "_on_before_step")  # LightningOptimizer, Lightning 2.x
        )

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

    def _optimizer_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        loss = self.training_loss(batch)
        if loss is None:
            return None
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        if self._direct_step:
            # what manual_backward + optimizer.step do for one process in 32-bit precision, minus
            # Lightning's per-step hook dispatch (~0.5 ms per step on the 2-core CPU, 25-30% of
            # a BPR step); the step callbacks keep trainer.global_step counting
            loss.backward()
            optimizer._on_before_step()
            optimizer.optimizer.step()
            optimizer._on_after_step()
        else:
            self.manual_backward(loss)
            clip = self.train_config.gradient_clip
            if clip:
                self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            optimizer.step()
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
        scheduler = self.lr_schedulers()
        if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()  # manual optimisation: epoch-interval schedulers are stepped here

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.evaluator.update(self.score_batch(batch), batch)

    def on_validation_epoch_start(self) -> None:
        if self.evaluator is not None:
            self.evaluator.reset()

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None:
            return
        metrics = self.evaluator.compute()
        self.valid_metrics = metrics
        monitor = self.train_config.monitor
        if monitor in metrics:
            self.log("monitor", metrics[monitor], prog_bar=True, sync_dist=False)
            scheduler = self.lr_schedulers() if not self.trainer.sanity_checking else None
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(float(metrics[monitor]))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.evaluator.update(self.score_batch(batch), batch)

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self.evaluator.compute()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        t = self.train_config
        lr, wd = t.learning_rate, t.weight_decay
        fused = _fused_ok(params)  # one kernel per step instead of ~10 ops per parameter tensor
        if t.learner == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused)
        elif t.learner == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused)
        elif t.learner == "sgd":
            opt = torch.optim.SGD(params, lr=lr, weight_decay=wd)
        elif t.learner == "adagrad":
            opt = torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
        elif t.learner == "rmsprop":
            opt = torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
        else:  # pragma: no cover - guarded by config validation
            raise ConfigError(f"unknown train.learner '{t.learner}'")
        if t.scheduler == "none":
            return opt
        if t.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=t.scheduler_step, gamma=t.scheduler_gamma)
        elif t.scheduler == "exponential":
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=t.scheduler_gamma)
        elif t.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
        else:  # plateau: on the validation monitor
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=t.scheduler_gamma, patience=max(1, t.scheduler_step // 2)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "monitor"}}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def _batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def takes_step_groups(model: pl.LightningModule) -> bool:
    """Whether ``model.training_step`` is the base one, which also takes a list of batches."""
    return type(model).training_step is Recommender.training_step


def _overrides_step_hooks(module: pl.LightningModule, callbacks: list[pl.Callback]) -> bool:
    """True when the module or a callback implements a hook the direct training step skips."""
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


class TowerFreeRecommender(Recommender):
    """User and item interact inside the model; ``score_batch`` is implemented by the model."""


class ItemTowerRecommender(Recommender):
    """Items have their own encoder; a scorer joins query and item vectors.

    Subclasses implement ``item_vectors()`` -> [num_items, d] and ``query_vectors(batch)`` ->
    [B, d] (or [B, L, d] for sequence models), and build ``self.scorer``, ``self.loss_fn`` and
    ``self.sampler`` (see ``build_ranking_parts``). ``score_batch`` and ``sampled_loss`` are
    generic.
    """

    def item_vectors(self) -> torch.Tensor:
        raise NotImplementedError

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def build_ranking_parts(
        self, data: PreparedData, scorer: str, loss: str, sampler: str, num_negatives: int
    ) -> None:
        """Create scorer, loss and negative sampler from their config names."""
        from recstudio.model.loss import build_loss
        from recstudio.model.sampler import build_sampler
        from recstudio.model.scorer import build_scorer

        self.scorer = build_scorer(scorer)
        self.loss_fn = build_loss(loss)
        self.num_negatives = num_negatives
        self.sampler = build_sampler(sampler, data.num_items, data.item_popularity())

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scorer.matrix(self.query_vectors(batch), self.item_vectors())

    def sample_candidates(
        self, query: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each query's positive and K negatives: (candidate ids [N, 1+K], log_q_pos [N],
        log_q_neg [N, K]). Negatives come from the sampler unless ``neg_items`` [N, K] (static
        negatives) is given."""
        if neg_items is None:
            neg_items, log_q_neg, log_q_pos = self.sampler.sample(
                pos_items.shape[0], self.num_negatives, pos_items=pos_items, query=query
            )
        else:
            log_q_neg, log_q_pos = self.sampler.log_prob(neg_items), self.sampler.log_prob(pos_items)
        return self.candidate_ids(query, pos_items, neg_items), log_q_pos, log_q_neg

    def score_candidates(
        self, query: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores of each query's positive and K negatives, with one gather for all candidates.

        Returns (pos_score [N], neg_score [N, K], log_q_pos [N], log_q_neg [N, K], candidate
        ids [N, 1+K]); the ids let a model regularise exactly the rows it scored.
        """
        candidates, log_q_pos, log_q_neg = self.sample_candidates(query, pos_items, neg_items)
        vectors = gather_rows(self.item_vectors(), candidates)
        scores = self.scorer.gather(query, vectors)
        return scores[:, 0], scores[:, 1:], log_q_pos, log_q_neg, candidates

    def candidate_ids(
        self, query: torch.Tensor | None, pos_items: torch.Tensor, neg_items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[N, 1+K] positive and negative ids, without log q (for the fused BPR/BCE losses).
        ``query`` [N, d] is needed only by samplers that draw from it (``Sampler.uses_query``)."""
        if neg_items is None:
            neg_items = self.sampler.sample_ids(pos_items.shape[0], self.num_negatives, query=query)
        return torch.cat([pos_items.unsqueeze(1), neg_items], dim=1)

    def fused_loss_kind(self, query: torch.Tensor) -> str | None:
        """The ``sampled_inner_product_loss`` kind that computes this model's sampled loss
        exactly ("bpr" or "bce"), or None when the generic path must run.

        Fused only on CPU with gradients on, for the plain inner-product scorer and the BPR and
        BCE losses (exact classes: a subclass may change the formula). On CUDA the autograd
        path is already fast and keeps the stock, deterministic-capable kernels.
        """
        if query.device.type != "cpu" or not torch.is_grad_enabled():
            return None
        if type(self.scorer) is not InnerProductScorer:
            return None
        return _FUSED_KINDS.get(type(self.loss_fn))

    def ranking_loss(
        self, query: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of flat queries [N, d] against their positive items [N] with the configured loss.

        Full-softmax losses score all items; the others draw ``num_negatives`` items from the
        sampler (log-probabilities passed along for log-Q correction / importance weights), or
        use ``neg_items`` [N, K] drawn at load time (static negatives).
        """
        if getattr(self.loss_fn, "needs_all_scores", False):
            all_scores = self.scorer.matrix(query, self.item_vectors())
            all_scores[:, 0] = -torch.inf  # padding is never a target
            return self.loss_fn(all_scores, pos_items)
        kind = self.fused_loss_kind(query)
        if kind is not None:
            candidates = self.candidate_ids(query, pos_items, neg_items)
            return sampled_inner_product_loss(query, self.item_vectors(), candidates, kind, padding_idx=None)
        pos_score, neg_score, log_q_pos, log_q_neg, _ = self.score_candidates(query, pos_items, neg_items)
        return self.loss_fn(pos_score, neg_score, log_q_pos=log_q_pos, log_q_neg=log_q_neg)


class TwoTowerRecommender(ItemTowerRecommender):
    """Item tower plus a user tower: the query is ``user_vectors(batch['user'])``."""

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def query_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_vectors(batch["user"])

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.ranking_loss(self.query_vectors(batch), batch["item"], batch.get("neg_item"))
