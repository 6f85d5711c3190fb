"""What a study found, as plain data: summaries, trial counts, the best trial, its exported config.

Read by ``run_study``'s summary, by ``recstudio studies`` and ``recstudio best``; one module so
that "best" means the same everywhere. The best trial is the completed trial with the best value
of the tuned metric in its direction (``logloss`` is minimised, ranking metrics maximised); ties
go to the earlier trial. In a multi-objective study (``--cost``) the metric is the first
objective, so its best trial is the Pareto front's member with the best metric.
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
from recstudio.tune.calibrated import is_defaults_trial
from recstudio.tune.objectives import is_multi_objective, objective_names, pareto_front, primary_value
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
    complete = [t for t in trials if t.state == TrialState.COMPLETE and primary_value(t) is not None]
    if not complete:
        return None
    sign = 1.0 if maximizes(study) else -1.0
    return max(complete, key=lambda t: (sign * primary_value(t), -t.number))


def maximizes(study: optuna.Study) -> bool:
    """Whether the study maximises its metric (its first objective)."""
    return study.directions[0] == StudyDirection.MAXIMIZE


def summarize(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> dict[str, Any]:
    """Study facts and its best trial (value, params, MLflow run id) as plain data."""
    trials = trials if trials is not None else study.get_trials(deepcopy=False)
    best = best_completed(study, trials)
    defaults = defaults_completed(trials)
    metric = study.user_attrs.get("metric")
    return {
        "study": study.study_name,
        "model": study.user_attrs.get("model"),
        "dataset": study.user_attrs.get("dataset"),
        "metric": study.user_attrs.get("metric"),
        "direction": study.directions[0].name.lower(),
        "trials": state_counts(trials),
        "parent_run_id": study.user_attrs.get(ATTR_PARENT_RUN),
        "best": trial_summary(best) if best is not None else None,
        "defaults": trial_summary(defaults) if defaults is not None else None,
        "vs_defaults": compare(best, defaults, metric, maximizes(study))
        if best is not None and defaults is not None
        else None,
        **pareto_summary(study),
    }


def pareto_summary(study: optuna.Study) -> dict[str, Any]:
    """``objectives`` and ``pareto_front`` (trial summaries, best metric first) of a
    multi-objective study; nothing for a single-objective one."""
    if not is_multi_objective(study):
        return {}
    return {
        "objectives": objective_names(study),
        "pareto_front": [trial_summary(t) for t in pareto_front(study)],
    }


def defaults_completed(trials: Iterable[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The study's completed defaults trial (the first, if a resume added another)."""
    done = [
        t
        for t in trials
        if is_defaults_trial(t) and t.state == TrialState.COMPLETE and primary_value(t) is not None
    ]
    return min(done, key=lambda t: t.number) if done else None


def compare(
    best: optuna.trial.FrozenTrial, defaults: optuna.trial.FrozenTrial, metric: str | None, maximize: bool
) -> dict[str, Any]:
    """How the best trial compares with the defaults trial on validation (the objective) and on
    test (reported, never used to choose): values, absolute and relative differences.

    ``abs`` is best minus defaults; ``gain`` is that difference in the study's direction (positive
    = better, also for a minimised metric such as log loss); ``rel`` is ``gain / |defaults|``.
    """

    def pair(b: float | None, d: float | None) -> dict[str, Any] | None:
        if b is None or d is None:
            return None
        gain = (b - d) if maximize else (d - b)
        return {
            "best": b,
            "defaults": d,
            "abs": b - d,
            "gain": gain,
            "rel": gain / abs(d) if d else None,
        }

    def test_of(t: optuna.trial.FrozenTrial) -> float | None:
        value = ((t.user_attrs.get("result") or {}).get("test") or {}).get(metric) if metric else None
        return float(value) if value is not None else None

    return {
        "metric": metric,
        "best_trial": best.number,
        "defaults_trial": defaults.number,
        "best_is_defaults": best.number == defaults.number,
        "valid": pair(primary_value(best), primary_value(defaults)),
        "test": pair(test_of(best), test_of(defaults)),
    }


def trial_summary(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as plain data: value, params (as config overrides), MLflow run id, result."""
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": primary_value(trial),
        "values": list(trial.values) if trial.values and len(trial.values) > 1 else None,
        "costs": trial.user_attrs.get("costs"),
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
                "direction": study.directions[0].name.lower(),
                "costs": study.user_attrs.get("costs") or [],
                "trials": state_counts(trials),
                "best_value": primary_value(best) if best else None,
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
        f"# Best trial {trial.number} of Optuna study '{study.study_name}': "
        f"{metric} = {primary_value(trial):.6g} "
        "(validation).\n"
        f"# MLflow run {run_id}. The full resolved config; reproduce with:\n"
        f"#   recstudio run --config {Path(path).name}\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path
