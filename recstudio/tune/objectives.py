"""Multi-objective studies: the validation metric against costs of a trial (issue 12).

``recstudio tune --cost fit_seconds`` (or ``--cost model_size``, or both) makes the study
optimise the validation metric *and* minimise each cost; Optuna keeps the trials no other trial
beats on every objective, the Pareto front (``study.best_trials``). The first objective is always
the metric: "the best trial" of such a study is the front's trial with the best metric (the one
a single-objective study would pick), so the comparison with the defaults, ``recstudio best`` and
the exported config mean the same as before; the front itself is recorded on the parent run.

Optuna cannot prune multi-objective trials (``Trial.report`` is single-objective), so such a
study runs every trial to its end: ``--pruner`` must be left out or ``none``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from recstudio.errors import ConfigError

COSTS: dict[str, str] = {
    "fit_seconds": "seconds the trial spent training (gradient epochs with their validations, plus any "
    "closed-form solve)",
    "model_size": "numbers in the trained model's state (its parameters and stored matrices, the size of "
    "its checkpoint in floats)",
}
"""Cost name -> what it measures (every cost is minimised)."""


def check_costs(costs: Iterable[str]) -> tuple[str, ...]:
    """The cost names, validated and without repeats (order kept)."""
    out: list[str] = []
    for name in costs:
        if name not in COSTS:
            raise ConfigError(f"unknown cost '{name}'; expected one of {', '.join(COSTS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def study_directions(metric_direction: str, costs: Sequence[str]) -> list[str]:
    """Optuna directions: the metric's, then ``minimize`` for every cost."""
    return [metric_direction] + ["minimize"] * len(costs)


def cost_values(result: dict[str, Any], costs: Sequence[str]) -> list[float]:
    """The costs of one finished run (``pipeline.run``'s result dict), in ``costs`` order."""
    timings = result.get("timings") or {}
    values: list[float] = []
    for name in costs:
        if name == "fit_seconds":
            seconds = float(timings.get("fit_seconds", 0.0)) + float(timings.get("closed_form_seconds", 0.0))
            values.append(seconds)
        elif name == "model_size":
            values.append(float(result.get("model_size") or 0))
        else:  # check_costs guards the names
            raise ConfigError(f"unknown cost '{name}'")
    return values


def primary_value(trial: optuna.trial.FrozenTrial) -> float | None:
    """The metric's value of a trial (its first objective), single- or multi-objective."""
    values = trial.values
    return float(values[0]) if values else None


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The completed trials on the Pareto front, best metric first (ties: earlier trial)."""
    if not is_multi_objective(study):
        return []
    front = [t for t in study.best_trials if t.state == TrialState.COMPLETE and t.values]
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(front, key=lambda t: (sign * t.values[0], t.number))


def objective_names(study: optuna.Study) -> list[str]:
    """The names of the study's objectives: the metric, then its costs."""
    metric = study.user_attrs.get("metric") or "objective"
    return [metric, *(study.user_attrs.get("costs") or [])][: len(study.directions)]
