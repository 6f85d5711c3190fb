"""The ``calibrated`` pruner: successive halving that waits for the model's own convergence.

Why not Optuna's stock pruners: recommendation models converge slowly and unevenly. BPR on
ml-100k reaches its best validation NDCG@10 after 90-110 epochs; Hyperband with
``min_resource=1`` compares trials after 1, 3 and 9 epochs, so it keeps fast starters (high
learning rates, small regularisation) and prunes the configurations that end best (issue 12).
The median pruner's fixed ``n_warmup_steps`` has the same problem with a different number.

The rule here:

1. **Warm-up.** No trial is pruned before ``W = ceil(F * (E + 1))`` epochs, where ``E`` is the
   best epoch (0-based) of the study's *defaults trial* (trial 0, the model's untuned config),
   so the warm-up is a fixed fraction of how long the model actually needs. Until the defaults
   trial has finished (parallel workers, or ``--no-defaults-trial``), ``E`` is the median best
   epoch of the completed trials, and with none yet it is ``train.epochs - 1``, i.e. a warm-up
   of ``F * train.epochs``: long enough that nothing is pruned on a guess.
2. **Rungs.** After the warm-up, rung ``k`` is at ``W * r**k`` epochs (``k = 0, 1, ...``). A trial
   that reaches a rung is compared, by its best validation value so far, with every other trial
   that reached the rung (its best value up to the rung epoch) or finished before it; it goes on
   only if it is among the best ``max(1, floor(n / r))`` of the ``n`` trials there. With fewer
   than ``min_trials`` other trials at a rung nothing is pruned.
3. **The defaults trial is never pruned** (it is the study's starting point), but its reported
   values are the bar every other trial meets at each rung. Nor is any trial at its last epoch
   (``train.epochs``): that saves nothing (EASE trains one epoch).

``F`` (``warmup_fraction``) and ``r`` (``reduction_factor``) come per family
(``PROFILES``): ranking models (general, knowledge, social, sequential) converge over tens to
hundreds of epochs with noisy early validation, so they get ``F=0.5, r=2``; feature-based
(CTR) models reach their best AUC within a few epochs and overfit after, so ``F=0.3, r=3``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

ATTR_DEFAULTS = "defaults"
"""Trial user attr marking the defaults trial."""
ATTR_ENQUEUED = "enqueued"
"""User attr of a trial queued by ``--enqueue`` (pruned and sampled like any other)."""


@dataclass(frozen=True)
class PruningProfile:
    """The calibrated pruner's knobs for one model family."""

    warmup_fraction: float
    reduction_factor: int
    min_trials: int = 2

    def describe(self) -> str:
        return (
            f"calibrated: warm-up {self.warmup_fraction:g} x (defaults' best epoch + 1) epochs, "
            f"then successive halving with reduction factor {self.reduction_factor}"
        )


PROFILES: dict[str, PruningProfile] = {
    "general": PruningProfile(0.5, 2),
    "knowledge": PruningProfile(0.5, 2),
    "social": PruningProfile(0.5, 2),
    "sequential": PruningProfile(0.5, 2),
    "feature": PruningProfile(0.3, 3),
}
"""Per model family: see the module docstring for why these values."""


def profile_for(family: str | None) -> PruningProfile:
    return PROFILES.get(family or "", PROFILES["general"])


def is_defaults_trial(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(ATTR_DEFAULTS))


class CalibratedPruner(optuna.pruners.BasePruner):
    """Warm-up from the defaults trial's best epoch, then successive-halving rungs (module docs).

    ``max_epochs`` is ``train.epochs`` of the study's fixed config (the fallback reference).
    Stateless apart from a cache of the reference epoch once the defaults trial has finished,
    so every worker process can build its own.
    """

    def __init__(
        self,
        warmup_fraction: float = 0.5,
        reduction_factor: int = 2,
        min_trials: int = 2,
        max_epochs: int | None = None,
    ) -> None:
        if not 0.0 < warmup_fraction <= 1.0:
            raise ValueError(
                f"`0 < warmup_fraction <= 1` must hold, but got warmup_fraction={warmup_fraction}"
            )
        if int(reduction_factor) < 2:
            raise ValueError(
                f"`reduction_factor >= 2` must hold, but got reduction_factor={reduction_factor}"
            )
        if int(min_trials) < 1:
            raise ValueError(f"`min_trials >= 1` must hold, but got min_trials={min_trials}")
        self.warmup_fraction = float(warmup_fraction)
        self.reduction_factor = int(reduction_factor)
        self.min_trials = int(min_trials)
        self.max_epochs = int(max_epochs) if max_epochs else None
        self._defaults_epoch: int | None = None

    # ------------------------------------------------------------------ the schedule
    def warmup(self, reference_epoch: int | None) -> int:
        """Epochs every trial runs before it can be pruned, given the reference best epoch."""
        if reference_epoch is None:
            if self.max_epochs is None:
                return 1 << 30  # no reference at all: never prune
            reference_epoch = self.max_epochs - 1
        return max(1, math.ceil(self.warmup_fraction * (reference_epoch + 1)))

    def rungs(self, warmup: int, up_to: int) -> list[int]:
        """0-based epochs of the rungs (``warmup * r**k - 1``) not beyond ``up_to``."""
        out, resource = [], warmup
        while resource - 1 <= up_to:
            out.append(resource - 1)
            resource *= self.reduction_factor
        return out

    def reference_epoch(self, trials: list[FrozenTrial]) -> int | None:
        """The defaults trial's best epoch; else the median best epoch of completed trials."""
        if self._defaults_epoch is not None:
            return self._defaults_epoch
        best_epochs = []
        for t in trials:
            if t.state != TrialState.COMPLETE:
                continue
            epoch = (t.user_attrs.get("result") or {}).get("best_epoch")
            if epoch is None:
                continue
            if is_defaults_trial(t):
                self._defaults_epoch = int(epoch)
                return self._defaults_epoch
            best_epochs.append(int(epoch))
        return int(statistics.median(best_epochs)) if best_epochs else None

    # ------------------------------------------------------------------ Optuna's hook
    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or is_defaults_trial(trial):
            return False
        if self.max_epochs is not None and step >= self.max_epochs - 1:
            return False  # the last epoch: pruning saves nothing and would discard the result
        trials = study.get_trials(deepcopy=False)
        warmup = self.warmup(self.reference_epoch(trials))
        if step < warmup - 1:
            return False
        rung_epochs = self.rungs(warmup, step)
        if not rung_epochs:
            return False
        rung = rung_epochs[-1]
        earlier = [s for s in trial.intermediate_values if s < step]
        if earlier and max(earlier) >= rung:
            return False  # this rung was decided at an earlier report
        maximize = study.direction == StudyDirection.MAXIMIZE
        mine = _best_up_to(trial, rung, maximize)
        if mine is None:
            return False
        others = []
        for t in trials:
            if t.number == trial.number:
                continue
            reached = t.last_step is not None and t.last_step >= rung
            if not (reached or t.state == TrialState.COMPLETE):
                continue
            value = _best_up_to(t, rung, maximize)
            if value is not None:
                others.append(value)
        if len(others) < self.min_trials:
            return False
        values = sorted([*others, mine], reverse=maximize)
        keep = max(1, len(values) // self.reduction_factor)
        cutoff = values[keep - 1]
        return mine < cutoff if maximize else mine > cutoff


def _best_up_to(trial: FrozenTrial, epoch: int, maximize: bool) -> float | None:
    values = [v for s, v in trial.intermediate_values.items() if s <= epoch and math.isfinite(v)]
    if not values:
        return None
    return max(values) if maximize else min(values)


def describe_profile(family: str | None) -> dict[str, Any]:
    """A family's profile as data (``recstudio models NAME``)."""
    p = profile_for(family)
    return {
        "pruner": "calibrated",
        "warmup_fraction": p.warmup_fraction,
        "reduction_factor": p.reduction_factor,
        "min_trials": p.min_trials,
        "rule": p.describe(),
    }
