"""What a study found, as plain data: summaries, trial counts, the best trial, its exported config.

Read by ``run_study``'s summary, by ``recstudio studies`` and ``recstudio best``; one module so
that "best" means the same everywhere. The best trial is the completed trial with the best value
in the study's direction (which ``create_or_load`` takes from the tuned metric: ``logloss`` is
minimised, ranking metrics maximised); ties go to the earlier trial.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from recstudio.errors import ConfigError
from recstudio.tune.study import ATTR_PARENT_RUN

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def state_counts(trials: Iterable[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Trials by state name (every state present, zeros included)."""
    counts = Counter(t.state.name for t in trials)
    return {state: counts.get(state, 0) for state in STATES}


def best_completed(
    study: optuna.Study, trials: Iterable[optuna.trial.FrozenTrial] | None = None
) -> optuna.trial.FrozenTrial | None:
    """The best completed trial of ``study`` (of ``trials``, if given) in the study's direction."""
    trials = trials if trials is not None else study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    return max(complete, key=lambda t: (sign * t.value, -t.number))


def summarize(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> dict[str, Any]:
    """Study facts and its best trial (value, params, MLflow run id) as plain data."""
    trials = trials if trials is not None else study.get_trials(deepcopy=False)
    best = best_completed(study, trials)
    return {
        "study": study.study_name,
        "model": study.user_attrs.get("model"),
        "dataset": study.user_attrs.get("dataset"),
        "metric": study.user_attrs.get("metric"),
        "direction": study.direction.name.lower(),
        "trials": state_counts(trials),
        "parent_run_id": study.user_attrs.get(ATTR_PARENT_RUN),
        "best": trial_summary(best) if best is not None else None,
    }


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


def list_studies(storage: Any) -> list[dict[str, Any]]:
    """Every study in ``storage``: facts, trial counts by state, best value."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        best = best_completed(study, trials)
        rows.append(
            {
                "study": summary.study_name,
                "model": study.user_attrs.get("model"),
                "dataset": study.user_attrs.get("dataset"),
                "metric": study.user_attrs.get("metric"),
                "direction": study.direction.name.lower(),
                "trials": state_counts(trials),
                "best_value": best.value if best else None,
                "best_trial": best.number if best else None,
                "started": str(summary.datetime_start) if summary.datetime_start else None,
                "parent_run_id": study.user_attrs.get(ATTR_PARENT_RUN),
            }
        )
    return rows


def best_trial(storage: Any, study_name: str) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    """(study, best completed trial) or a ConfigError naming what is missing."""
    names = optuna.get_all_study_names(storage)
    if study_name not in names:
        close = difflib.get_close_matches(study_name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"no study named '{study_name}' in this storage{hint}; `recstudio studies` lists them"
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    best = best_completed(study)
    if best is None:
        raise ConfigError(f"study '{study_name}' has no completed trial yet")
    return study, best


def export_config(study: optuna.Study, trial: optuna.trial.FrozenTrial, path: str | Path) -> Path:
    """Write the trial's full resolved config as YAML that ``recstudio run --config`` reproduces."""
    import yaml

    config = trial.user_attrs.get("config")
    if not isinstance(config, dict):
        raise ConfigError(
            f"trial {trial.number} of study '{study.study_name}' has no recorded config "
            "(it was not run by recstudio tune)"
        )
    metric = study.user_attrs.get("metric", "value")
    run_id = trial.user_attrs.get("mlflow_run_id") or "-"
    header = (
        f"# Best trial {trial.number} of Optuna study '{study.study_name}': {metric} = {trial.value:.6g} "
        "(validation).\n"
        f"# MLflow run {run_id}. The full resolved config; reproduce with:\n"
        f"#   recstudio run --config {Path(path).name}\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path
