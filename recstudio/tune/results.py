"""What a study found, as plain data: summaries and trial counts.

Read by ``run_study``'s summary and by the parent run's trial counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.trial import TrialState

from recstudio.tune.study import ATTR_PARENT_RUN

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def state_counts(trials: Iterable[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Trials by state name (every state present, zeros included)."""
    counts = Counter(t.state.name for t in trials)
    return {state: counts.get(state, 0) for state in STATES}


def summarize(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> dict[str, Any]:
    """Study facts and its best trial (value, params, MLflow run id) as plain data."""
    trials = trials if trials is not None else study.get_trials(deepcopy=False)
    out: dict[str, Any] = {
        "study": study.study_name,
        "model": study.user_attrs.get("model"),
        "dataset": study.user_attrs.get("dataset"),
        "metric": study.user_attrs.get("metric"),
        "direction": study.direction.name.lower(),
        "trials": state_counts(trials),
        "parent_run_id": study.user_attrs.get(ATTR_PARENT_RUN),
        "best": None,
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        out["best"] = trial_summary(best)
    return out


def trial_summary(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as plain data: value, params (as config overrides), MLflow run id, result."""
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.user_attrs.get("overrides", trial.params),
        "run_id": trial.user_attrs.get("mlflow_run_id"),
        "best_epoch": (trial.user_attrs.get("result") or {}).get("best_epoch"),
        "test": (trial.user_attrs.get("result") or {}).get("test"),
        "error": trial.user_attrs.get("error"),
        "duration_seconds": trial.duration.total_seconds() if trial.duration else None,
    }
