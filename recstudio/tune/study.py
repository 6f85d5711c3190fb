"""A study's life in its storage: create or resume it, check that a resume is compatible, load it
in a worker, and fail the trials of killed processes.

Creating and resuming are one step (``create_or_load``) because a name that exists is a
resume, and a resume must tune the same model, dataset and metric with a space Optuna accepts;
checking that here, once, turns what would be a study of failed trials into one clear error.
The study's direction is the tuned metric's (``recstudio.eval.metrics.higher_is_better``).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from recstudio.errors import ConfigError
from recstudio.tune.objectives import study_directions
from recstudio.tune.settings import TuneSettings
from recstudio.tune.space import SearchSpace
from recstudio.tune.storage import make_storage, redact
from recstudio.tune.strategies import sampler_and_pruner

log = logging.getLogger("recstudio.tune")

ATTR_PARENT_RUN = "mlflow_parent_run_id"
"""Study user attr: the id of the study's MLflow parent run."""
ATTR_TRACKING_URI = "mlflow_tracking_uri"
"""Study user attr: the tracking URI that parent run lives in."""


def metric_direction(metric: str) -> str:
    """``"maximize"`` or ``"minimize"``: the Optuna direction of a study that tunes ``metric``."""
    from recstudio.eval.metrics import higher_is_better

    return "maximize" if higher_is_better(metric) else "minimize"


class StaleTrialCallback:
    """Heartbeat-stale trial (its process was killed): mark its MLflow child run FAILED, then
    re-enqueue it (``max_retry`` times). Runs in whichever process notices the stale trial; the
    parent run id is read from the study, so every process can build this callback up front."""

    def __init__(self, tracking_uri: str | None, experiment: str, max_retry: int = 1) -> None:
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracking_uri = tracking_uri
        self.experiment = experiment

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning("trial %d stopped sending heartbeats (its process died): marked FAIL", trial.number)
        parent_run_id = study.user_attrs.get(ATTR_PARENT_RUN)
        if self.tracking_uri and parent_run_id:
            from recstudio.tune.objective import ChildRuns

            try:
                runs = ChildRuns(self.tracking_uri, self.experiment, parent_run_id)
                run_id = runs.find(trial.number)
                if run_id is not None:
                    message = "heartbeat lost: the process running this trial was killed"
                    runs.failed(run_id, message, message, terminate=True)
            except Exception:
                log.exception("could not mark the MLflow run of stale trial %d", trial.number)
        self.retry(study, trial)


def storage_for(settings: TuneSettings, create_tables: bool = True) -> Any:
    """The study's storage with heartbeats and the stale-trial callback (MLflow + retry)."""
    stale = (
        StaleTrialCallback(
            settings.tracking_uri if settings.tracking else None, settings.experiment, settings.max_retry
        )
        if settings.heartbeat_interval
        else None
    )
    return make_storage(
        settings.storage,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        max_retry=settings.max_retry,
        stale_callback=stale,
        create_tables=create_tables,
    )


def create_or_load(
    settings: TuneSettings, storage: optuna.storages.BaseStorage, worker: int = 0
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when the name exists (resume); returns (study, resumed).

    A resumed study must tune the same model, dataset and metric: another one under the same
    name would mix incomparable trials, so that is an error; a changed search space or fixed
    config is allowed (Optuna handles changing spaces) but logged.
    """
    existing = settings.study_name in optuna.get_all_study_names(storage)
    sampler, pruner = sampler_and_pruner(settings, worker)
    direction = metric_direction(settings.metric)
    directions = study_directions(direction, settings.costs)
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        directions=directions,
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    actual = [d.name.lower() for d in study.directions]
    if len(actual) != len(directions):
        costs = study.user_attrs.get("costs") or []
        raise ConfigError(
            f"study '{settings.study_name}' has {len(actual)} objective(s) "
            f"({', '.join([settings.metric, *costs])}), "
            f"this invocation asks for {len(directions)} (--cost {' '.join(settings.costs) or 'none'}); "
            "use the same --cost values or choose another --study-name"
        )
    if actual[0] != direction:
        raise ConfigError(
            f"study '{settings.study_name}' {actual[0]}s its objective, "
            f"but {settings.metric} is {direction}d; "
            "choose another --study-name"
        )
    check_space_compatible(study, settings.space)
    attrs = study.user_attrs
    if settings.defaults_trial:
        enqueue_defaults(study, settings)
    if settings.enqueue:
        enqueue_given(study, settings.enqueue)
    if not existing or "model" not in attrs:
        for key, value in {
            "model": settings.model,
            "dataset": settings.dataset,
            "metric": settings.metric,
            "costs": list(settings.costs),
            "search_space": settings.space,
            "base_config": settings.base_config,
            "recstudio.version": _version(),
        }.items():
            study.set_user_attr(key, value)
        return study, existing
    mismatch = [
        f"{key} {attrs.get(key)!r} (asked: {value!r})"
        for key, value in (
            ("model", settings.model),
            ("dataset", settings.dataset),
            ("metric", settings.metric),
            ("costs", list(settings.costs)),
        )
        if (attrs.get(key) or ([] if key == "costs" else None)) != value
    ]
    if mismatch:
        raise ConfigError(
            f"study '{settings.study_name}' in {redact(settings.storage)} was created with "
            f"{', '.join(mismatch)}; choose another --study-name"
        )
    if attrs.get("search_space") != settings.space:
        log.warning(
            "study '%s': the search space differs from the one it was created with", settings.study_name
        )
    changed = _diff_keys(attrs.get("base_config") or {}, settings.base_config)
    if changed:
        log.warning(
            "study '%s': fixed config differs from its first invocation in %s",
            settings.study_name,
            ", ".join(changed[:10]),
        )
    return study, existing


def enqueue_defaults(study: optuna.Study, settings: TuneSettings) -> bool:
    """Enqueue the defaults trial unless the study already has one; True when it did.

    Called once per invocation in the process that creates the study, before any worker starts,
    so parallel workers never enqueue it twice; only worker 0 pops it
    (``workers.wait_for_queued_defaults``: on SQLite two workers can pop one WAITING trial).
    A resumed study that was created without one (an older study, or ``--no-defaults-trial``
    earlier) gets it now: the comparison needs it.
    """
    from recstudio.tune.calibrated import ATTR_DEFAULTS, is_defaults_trial
    from recstudio.tune.space import defaults_params

    if any(is_defaults_trial(t) for t in study.get_trials(deepcopy=False)):
        return False
    params = defaults_params(settings.space, settings.base_config)
    study.enqueue_trial(params, user_attrs={ATTR_DEFAULTS: True})
    outside = sorted(set(settings.space) - set(params))
    if outside:
        log.info(
            "defaults trial: %s keep their configured values (outside the search space)", ", ".join(outside)
        )
    log.info("the next trial runs the defaults (evaluated in full, never pruned): %s", params)
    return True


def enqueue_given(study: optuna.Study, queue: list[dict[str, Any]]) -> int:
    """Queue the user's trials (``--enqueue``) behind the defaults trial; returns how many.

    Points the study already holds (tried, running or queued, e.g. by the run this one resumes)
    are skipped, so rerunning the same command does not repeat them. Called where the defaults
    trial is queued: once per invocation, before any worker starts.
    """
    from optuna.trial import TrialState

    from recstudio.tune.calibrated import ATTR_ENQUEUED

    def waiting() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    before = waiting()
    for params in queue:
        study.enqueue_trial(params, user_attrs={ATTR_ENQUEUED: True}, skip_if_exists=True)
    added = waiting() - before
    if added < len(queue):
        skipped = len(queue) - added
        log.info("--enqueue: %d of %d points are already in the study; not queued again", skipped, len(queue))
    if added:
        log.info("--enqueue: %d trial(s) queued to run next: %s", added, queue)
    return added


def check_space_compatible(study: optuna.Study, space: SearchSpace) -> None:
    """Refuse a resumed search space that Optuna would reject in every trial.

    Ranges of floats and ints may change between invocations; the choices of a categorical
    may not (Optuna raises "CategoricalDistribution does not support dynamic value space" in
    each trial). Saying so up front beats a study whose every new trial fails.
    """
    from optuna.distributions import check_distribution_compatibility

    from recstudio.tune.space import distributions

    new = distributions(space)
    seen: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            seen.setdefault(name, dist)
    for name, old in seen.items():
        if name not in new:
            continue
        try:
            check_distribution_compatibility(old, new[name])
        except ValueError as exc:
            raise ConfigError(
                f"study '{study.study_name}' already sampled '{name}' from {old}; the search space now gives "
                f"{new[name]} ({exc}). Keep the old choices or start a new study with --study-name"
            ) from None


def load(settings: TuneSettings, storage: Any, worker: int = 0) -> optuna.Study:
    """The existing study, with the sampler and pruner seeded for ``worker`` of this invocation."""
    sampler, pruner = sampler_and_pruner(settings, worker)
    return optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner)


def _diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    from recstudio.config import flatten

    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _version() -> str:
    from recstudio import __version__

    return __version__
