"""Studies: storage, create/resume, samplers and pruners, the MLflow parent run, workers.

One study lives in one Optuna RDB storage (SQLite ``./optuna.db`` by default, PostgreSQL or any
SQLAlchemy URL via ``--storage`` / ``$RECSTUDIO_OPTUNA_STORAGE``). ``run_study`` runs the trials
of one invocation:

1. create the study (and the storage schema) once, in this process, before any worker starts:
   Optuna's schema creation is not safe against workers racing on a fresh SQLite file;
2. prepare the dataset once (the parquet cache), so trials only read it;
3. open (or reopen, on resume) the study's MLflow parent run, remembered in the study's user attrs;
4. run exactly ``trials`` new trials, in this process or in ``workers`` spawned processes that
   claim trial slots from one shared counter (no overshoot, faster workers take more trials);
5. record the best trial and the study plots on the parent run.

Several invocations on one storage cooperate (Optuna's RDB storage is the synchronisation);
each runs its own ``trials``. Heartbeats mark the trials of a hard-killed process FAIL, and a
stale trial is retried once (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from recstudio.errors import ConfigError, RecStudioError
from recstudio.tune.space import SearchSpace, describe, grid, grid_size

log = logging.getLogger("recstudio.tune")

STORAGE_ENV = "RECSTUDIO_OPTUNA_STORAGE"
DEFAULT_STORAGE_FILE = "optuna.db"
SAMPLERS = ("tpe", "random", "cmaes", "qmc", "grid")
PRUNERS = ("median", "hyperband", "successive-halving", "none")
DEFAULT_TRIALS = 20
SQLITE_TIMEOUT_S = 60

ATTR_PARENT_RUN = "mlflow_parent_run_id"
ATTR_TRACKING_URI = "mlflow_tracking_uri"


@dataclass
class TuneSettings:
    """Everything a worker needs to run trials of one study (picklable: workers are spawned)."""

    model: str
    dataset: str
    base_config: dict[str, Any]
    """The fixed part, fully resolved (``ResolvedConfig.to_dict()``, ``train.monitor = metric``)."""
    space: SearchSpace
    metric: str
    study_name: str
    storage: str
    trials: int | None = DEFAULT_TRIALS
    """New trials this invocation runs (resumed studies keep their old trials on top)."""
    timeout: float | None = None
    """Seconds after which no new trial starts (running ones finish)."""
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    """Sampler seed (``--seed``); worker i and a resumed study derive their own from it."""
    seed_offset: int = 0
    workers: int = 1
    baseline: bool = False
    """A new study's first trial uses the fixed config's values of the searched keys."""
    heartbeat_interval: int = 60
    grace_period: int | None = None
    max_retry: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)
    """Keys fixed on the command line (``--set``/flags), for the record."""
    # run options
    data_dir: str | None = None
    cache_dir: str | None = None
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str = "recstudio"
    accelerator: str = "auto"
    devices: int | str = "auto"
    quiet: bool = False
    verbose: bool = False
    data: Any = None
    """An in-memory PreparedData used instead of the dataset spec (tests, notebooks)."""


# --------------------------------------------------------------------------- storage


def default_storage() -> str:
    """``$RECSTUDIO_OPTUNA_STORAGE``, else SQLite ``./optuna.db`` (absolute, so workers agree)."""
    env = os.environ.get(STORAGE_ENV)
    if env:
        return env
    return f"sqlite:///{Path(DEFAULT_STORAGE_FILE).resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password, for logs, tags and the CLI's output."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def make_storage(
    url: str,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int = 1,
    stale_callback: Any = None,
    create_tables: bool = True,
) -> optuna.storages.RDBStorage:
    """An ``RDBStorage`` with heartbeats, stale-trial retry and a SQLite busy timeout.

    SQLite serialises writers; without a connect timeout a second worker gets "database is
    locked" at once. Workers pass ``create_tables=False``: the parent created the schema.
    """
    from optuna.exceptions import ExperimentalWarning

    engine_kwargs: dict[str, Any]
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        if url.startswith("sqlite:///") and ":memory:" not in url:
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    else:
        engine_kwargs = {"pool_pre_ping": True}
    callback = stale_callback
    if callback is None and heartbeat_interval:
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval or None,
                grace_period=grace_period if heartbeat_interval else None,
                heartbeat_stale_trial_callback=callback if heartbeat_interval else None,
                skip_table_creation=not create_tables,
            )
        except ImportError as exc:
            raise ConfigError(f"storage '{redact(url)}' needs a database driver: {exc}") from None
        except Exception as exc:
            if isinstance(exc, RecStudioError):
                raise
            raise ConfigError(f"cannot open Optuna storage '{redact(url)}': {exc}") from None


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


# --------------------------------------------------------------------------- samplers, pruners


def make_sampler(
    name: str, space: SearchSpace, seed: int | None = None, options: dict[str, Any] | None = None
) -> optuna.samplers.BaseSampler:
    """A sampler by name; ``options`` go to its constructor (e.g. ``n_startup_trials`` for TPE)."""
    options = dict(options or {})
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **options)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if name == "cmaes":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise ConfigError("sampler 'cmaes' needs the cmaes package: pip install cmaes") from None
            return optuna.samplers.CmaEsSampler(seed=seed, **options)
        if name == "qmc":
            options.setdefault("scramble", True)
            # every worker must use the same seed: QMC indexes one sequence by trial number
            return optuna.samplers.QMCSampler(seed=0 if seed is None else seed, **options)
        if name == "grid":
            return optuna.samplers.GridSampler(grid(space), seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(f"sampler '{name}': bad option: {exc}") from None
    raise ConfigError(f"unknown sampler '{name}'; expected one of {', '.join(SAMPLERS)}")


def make_pruner(
    name: str, options: dict[str, Any] | None = None, max_epochs: int | None = None
) -> optuna.pruners.BasePruner:
    """A pruner by name. Steps are epochs: Hyperband's budget is ``train.epochs`` by default."""
    options = dict(options or {})
    try:
        if name == "median":
            options.setdefault("n_startup_trials", 5)
            options.setdefault("n_warmup_steps", 2)
            return optuna.pruners.MedianPruner(**options)
        if name == "hyperband":
            options.setdefault("min_resource", 1)
            options.setdefault("max_resource", max_epochs or "auto")
            options.setdefault("reduction_factor", 3)
            return optuna.pruners.HyperbandPruner(**options)
        if name == "successive-halving":
            options.setdefault("min_resource", 1)
            options.setdefault("reduction_factor", 3)
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if name == "none":
            return optuna.pruners.NopPruner()
    except TypeError as exc:
        raise ConfigError(f"pruner '{name}': bad option: {exc}") from None
    raise ConfigError(f"unknown pruner '{name}'; expected one of {', '.join(PRUNERS)}")


# --------------------------------------------------------------------------- study


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
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(
            f"study '{settings.study_name}' minimizes; RecStudio's ranking metrics are maximized"
        )
    check_space_compatible(study, settings.space)
    attrs = study.user_attrs
    if not existing and settings.baseline:
        from recstudio.tune.space import baseline_params

        params = baseline_params(settings.space, settings.base_config)
        if params:
            study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)
            log.info("trial 0 is the baseline: %s", params)
    if not existing or "model" not in attrs:
        for key, value in {
            "model": settings.model,
            "dataset": settings.dataset,
            "metric": settings.metric,
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
        )
        if attrs.get(key) != value
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


def _diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    from recstudio.config import flatten

    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _version() -> str:
    from recstudio import __version__

    return __version__


# --------------------------------------------------------------------------- MLflow parent run


class ParentRun:
    """The study's MLflow parent run: study facts, best trial so far, plots.

    Its id is stored in the study's user attrs, so a resumed study (or another invocation on
    the same storage) keeps logging under the same parent.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_id: str) -> None:
        from recstudio.track.tracker import mlflow_client

        self.client = mlflow_client(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id = run_id

    @classmethod
    def open(cls, study: optuna.Study, settings: TuneSettings) -> ParentRun:
        from recstudio.track.tracker import Tracker

        uri = settings.tracking_uri or ""
        attrs = study.user_attrs
        run_id = attrs.get(ATTR_PARENT_RUN) if attrs.get(ATTR_TRACKING_URI) == uri else None
        if run_id:
            parent = cls(uri, settings.experiment, run_id)
            try:
                parent.client.get_run(run_id)
                parent.client.update_run(run_id, status="RUNNING")
                parent.set_tags(parent.study_tags(settings))
                return parent
            except Exception:
                log.warning(
                    "MLflow parent run %s of study '%s' is gone; opening a new one", run_id, study.study_name
                )
        tags = {
            "recstudio.tune.role": "study",
            "model": settings.model,
            "dataset": settings.dataset,
        }
        tracker = Tracker(
            uri, experiment=settings.experiment, run_name=f"study-{study.study_name}", tags=tags
        )
        parent = cls(uri, settings.experiment, tracker.run_id)
        parent.set_tags({**parent.study_tags(settings), "optuna.study_id": str(study._study_id)})
        winner = parent.settle_parent(tracker.experiment_id, study)
        if winner != tracker.run_id:
            parent.run_id = winner
            study.set_user_attr(ATTR_PARENT_RUN, winner)
            study.set_user_attr(ATTR_TRACKING_URI, uri)
            return parent
        try:
            params = {f"space.{k}": v for k, v in describe(settings.space).items()}
            params.update({"study": study.study_name, "metric": settings.metric, "direction": "maximize"})
            tracker.log_params(params)
            tracker.log_text(_yaml(settings.space), "search_space.yaml")
            tracker.log_text(_yaml(settings.base_config), "base_config.yaml")
        except Exception:
            log.exception("could not log the study's parameters on its MLflow parent run")
        study.set_user_attr(ATTR_PARENT_RUN, tracker.run_id)
        study.set_user_attr(ATTR_TRACKING_URI, uri)
        return parent

    def settle_parent(self, experiment_id: str, study: optuna.Study) -> str:
        """The one parent run of ``study`` when several invocations opened one at once.

        Two ``recstudio tune`` commands starting the same new study at the same moment both
        find no parent id in the study and both open a run. Each then lists the study's
        parent runs (same study name, storage and study id); all agree that the oldest (start
        time, then run id) is the parent, and every other one deletes its own run.
        """
        wanted = {
            "recstudio.tune.role": "study",
            "optuna.study": study.study_name,
            "optuna.storage": self.client.get_run(self.run_id).data.tags.get("optuna.storage", ""),
            "optuna.study_id": str(study._study_id),
        }
        runs = self.client.search_runs(
            [experiment_id], filter_string="tags.`recstudio.tune.role` = 'study'", max_results=1000
        )
        mine = [r for r in runs if all(r.data.tags.get(k) == v for k, v in wanted.items())]
        if not mine:
            return self.run_id
        oldest = min(mine, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        if oldest != self.run_id:
            log.info(
                "study '%s' already has MLflow parent run %s; dropping %s",
                study.study_name,
                oldest,
                self.run_id,
            )
            self.client.delete_run(self.run_id)
        return oldest

    @staticmethod
    def study_tags(settings: TuneSettings) -> dict[str, str]:
        return {
            "optuna.study": settings.study_name,
            "optuna.storage": redact(settings.storage),
            "optuna.sampler": settings.sampler,
            "optuna.pruner": settings.pruner,
            "metric": settings.metric,
        }

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(v)
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def record_best(self, study: optuna.Study) -> optuna.trial.FrozenTrial | None:
        try:
            best = study.best_trial
        except ValueError:  # no completed trial yet
            return None
        tags = {
            "best.value": repr(best.value),
            "best.trial": best.number,
            "best.run_id": best.user_attrs.get("mlflow_run_id", ""),
            "best.params": json.dumps(best.user_attrs.get("overrides", best.params), default=str),
        }
        for key, value in (best.user_attrs.get("overrides") or best.params).items():
            tags[f"best.param.{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
        self.set_tags(tags)
        return best

    def record_counts(self, study: optuna.Study, step: int) -> dict[str, int]:
        counts = state_counts(study.get_trials(deepcopy=False))
        self.log_metrics({f"trials_{k.lower()}": float(v) for k, v in counts.items()}, step=step)
        return counts

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class TrialRecorder:
    """Optuna callback (runs after each trial, in the worker): the parent run follows the study."""

    def __init__(self, parent: ParentRun | None) -> None:
        self.parent = parent

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.parent is None:
            return
        try:
            if trial.state == TrialState.COMPLETE and trial.value is not None:
                metrics = {"trial_value": trial.value}
                best = study.best_trial
                if best.number == trial.number:
                    self.parent.record_best(study)
                metrics["best_value"] = best.value
                self.parent.log_metrics(metrics, step=trial.number)
        except Exception:
            log.exception("could not update the MLflow parent run after trial %d", trial.number)


def state_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name for t in trials)
    return {state: counts.get(state, 0) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


# --------------------------------------------------------------------------- trial budget


class Budget:
    """Trial slots of one invocation, shared by its workers: ``claim`` before each trial.

    A shared counter (not N/K per worker) keeps the total exact even when one worker's trials
    are pruned early or a worker dies; the deadline implements ``--timeout``.
    """

    def __init__(
        self, limit: int | None, deadline: float | None, counter: Any = None, lock: Any = None
    ) -> None:
        self.limit = limit
        self.deadline = deadline
        self.counter = counter
        self.lock = lock
        self._local = 0

    def claim(self) -> bool:
        if self.deadline is not None and time.time() >= self.deadline:
            return False
        if self.limit is None:
            return True
        if self.counter is None:
            if self._local >= self.limit:
                return False
            self._local += 1
            return True
        with self.lock:
            if self.counter.value >= self.limit:
                return False
            self.counter.value += 1
            return True

    def close(self) -> None:
        """No further claims (interrupt)."""
        self.deadline = 0.0
        if self.counter is not None and self.limit is not None:
            with self.lock:
                self.counter.value = self.limit


def optimize(
    settings: TuneSettings,
    study: optuna.Study,
    budget: Budget,
    parent_run_id: str | None,
    invocation: str,
    worker: int = 0,
) -> None:
    """Run trials on ``study`` while ``budget`` grants them (one worker's loop)."""
    from recstudio.tune.objective import Objective

    objective = Objective(settings, parent_run_id=parent_run_id, invocation=invocation, worker=worker)
    parent = (
        ParentRun(settings.tracking_uri or "", settings.experiment, parent_run_id) if parent_run_id else None
    )
    callbacks = [TrialRecorder(parent)]
    sampler = study.sampler
    while True:
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
            log.info("grid sampler: every grid point has been tried")
            break
        if not budget.claim():
            break
        # no gc_after_trial: a full collection of a heap holding torch, MLflow and SQLAlchemy
        # costs seconds per trial; the trial's tensors are freed by reference counting
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)


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


def sampler_and_pruner(settings: TuneSettings, worker: int = 0) -> tuple[Any, Any]:
    """Each worker, and each resumed invocation, seeds its sampler differently (else they would
    replay the same proposals), except QMC, whose workers must share one sequence."""
    seed = settings.seed
    if seed is not None and settings.sampler != "qmc":
        seed = seed + settings.seed_offset + 10007 * worker
    max_epochs = (settings.base_config.get("train") or {}).get("epochs")
    return (
        make_sampler(settings.sampler, settings.space, seed, settings.sampler_options),
        make_pruner(settings.pruner, settings.pruner_options, max_epochs),
    )


def load(settings: TuneSettings, storage: Any, worker: int = 0) -> optuna.Study:
    sampler, pruner = sampler_and_pruner(settings, worker)
    return optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner)


# --------------------------------------------------------------------------- workers


def _worker_main(
    settings: TuneSettings,
    worker: int,
    parent_run_id: str | None,
    invocation: str,
    limit: int | None,
    deadline: float | None,
    counter: Any,
    lock: Any,
    interrupted: Any,
) -> None:
    """Entry point of a spawned worker process."""
    from recstudio.cli import setup_logging

    setup_logging(quiet=settings.quiet, verbose=settings.verbose)
    _quiet_optuna(settings)

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted[worker] = 1
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        storage = storage_for(settings, create_tables=False)
        study = load(settings, storage, worker)
        optimize(settings, study, Budget(limit, deadline, counter, lock), parent_run_id, invocation, worker)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _run_workers(
    settings: TuneSettings, parent_run_id: str | None, invocation: str, deadline: float | None
) -> tuple[bool, list[str]]:
    """Spawn ``settings.workers`` processes; returns (interrupted by Ctrl-C, names of workers that
    exited with an error)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0, lock=False)
    lock = ctx.Lock()
    interrupted = ctx.Array("b", settings.workers, lock=False)
    gpus = _visible_gpus()
    procs = []
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        for worker in range(settings.workers):
            if gpus:  # read by CUDA when torch initialises it in the worker: set before spawning
                os.environ["CUDA_VISIBLE_DEVICES"] = gpus[worker % len(gpus)]
            proc = ctx.Process(
                target=_worker_main,
                args=(
                    settings,
                    worker,
                    parent_run_id,
                    invocation,
                    settings.trials,
                    deadline,
                    counter,
                    lock,
                    interrupted,
                ),
                name=f"recstudio-tune-worker-{worker}",
            )
            proc.start()
            procs.append(proc)
    finally:
        if gpus:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        log.warning("interrupted: stopping %d workers (their running trials are marked FAIL)", len(procs))
        with lock:
            counter.value = settings.trials if settings.trials is not None else 1 << 30
        time.sleep(1.0)
        for worker, proc in enumerate(procs):  # a terminal Ctrl-C reaches every worker already
            if proc.is_alive() and not interrupted[worker] and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
        for proc in procs:
            proc.join(timeout=120)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        return True, []
    failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode not in (0, 130)]
    if failed:
        log.error("worker processes exited with an error: %s", ", ".join(failed))
    return any(p.exitcode == 130 for p in procs), failed


def _visible_gpus() -> list[str]:
    """GPU ids for round-robin worker placement (empty on CPU-only machines)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:
        return []
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids[:count] if ids else []
    return [str(i) for i in range(count)]


def _quiet_optuna(settings: TuneSettings) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING if settings.quiet else optuna.logging.INFO)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# --------------------------------------------------------------------------- the study run


def prepare_data_once(settings: TuneSettings) -> None:
    """Build (or find) the parquet cache entry of the fixed data config before any trial.

    Trials then only read the cache; workers never race to preprocess. A study also needs a
    validation split: it is the objective.
    """
    if settings.data is not None:
        data = settings.data
    else:
        from recstudio.config import DataConfig, build_section
        from recstudio.data import prepare

        data_cfg = build_section(DataConfig, settings.base_config.get("data") or {}, "data")
        data = prepare(settings.dataset, data_cfg, data_dir=settings.data_dir, cache_dir=settings.cache_dir)
    if len(data.valid) == 0:
        raise ConfigError(
            f"dataset '{settings.dataset}' has no validation split under this config; tuning needs one "
            "(e.g. data.split_ratio with three parts, or data.split: loo)"
        )


def run_study(settings: TuneSettings) -> dict[str, Any]:
    """Run one invocation of a study; returns a summary (the ``--json`` output of ``tune``)."""
    from recstudio.track.tracker import resolve_tracking_uri

    if settings.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {settings.workers}")
    if settings.trials is not None and settings.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {settings.trials}")
    if settings.trials is None and settings.timeout is None:
        settings.trials = DEFAULT_TRIALS
    if not settings.space:
        raise ConfigError(
            f"model {settings.model} has an empty search space here; give --search-space FILE "
            "(or do not fix every tuned key with --set)"
        )
    if settings.data is not None and any(k.startswith("data.") for k in settings.space):
        raise ConfigError("data.* keys cannot be tuned on in-memory data (there is no preprocessing to redo)")
    if settings.sampler == "grid" and settings.trials is not None:
        size = grid_size(settings.space)
        if settings.trials > size:
            log.info(
                "grid has %d points; stopping after them rather than after %d trials", size, settings.trials
            )
    if settings.tracking:
        settings.tracking_uri = resolve_tracking_uri(settings.tracking_uri)
    _quiet_optuna(settings)
    t_start = time.perf_counter()
    invocation = uuid.uuid4().hex[:12]

    # 1. storage schema and study, once, here
    storage = storage_for(settings, create_tables=True)
    study, resumed = create_or_load(settings, storage)
    n_before = len(study.get_trials(deepcopy=False))
    settings.seed_offset = n_before
    log.info(
        "study '%s' in %s: %s (%d trials so far)",
        settings.study_name,
        redact(settings.storage),
        "resumed" if resumed else "created",
        n_before,
    )
    # 2. data, once
    t0 = time.perf_counter()
    prepare_data_once(settings)
    prepare_seconds = time.perf_counter() - t0
    # 3. parent run
    parent = ParentRun.open(study, settings) if settings.tracking else None
    parent_run_id = parent.run_id if parent else None
    if parent is not None:
        log.info("MLflow parent run %s (experiment '%s')", parent_run_id, settings.experiment)

    # 4. trials
    deadline = time.time() + settings.timeout if settings.timeout else None
    interrupted = False
    failed_workers: list[str] = []
    status = "FINISHED"
    summary: dict[str, Any] = {}
    try:
        if settings.workers == 1:
            study = load(settings, storage, worker=0)  # the sampler seeded for this invocation
            optimize(settings, study, Budget(settings.trials, deadline), parent_run_id, invocation)
        else:
            interrupted, failed_workers = _run_workers(settings, parent_run_id, invocation, deadline)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if interrupted:
            status = "KILLED"
        try:
            summary = _finish(study, parent, invocation, status, t_start, prepare_seconds)
            summary["invocation"]["failed_workers"] = failed_workers
        except Exception:
            log.exception("could not summarise study '%s'", settings.study_name)
    if interrupted:
        log.warning(
            "interrupted: finished trials are kept; run the same command to resume study '%s'",
            settings.study_name,
        )
        raise KeyboardInterrupt
    return summary


def _finish(
    study: optuna.Study,
    parent: ParentRun | None,
    invocation: str,
    status: str,
    t_start: float,
    prepare_seconds: float,
) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    mine = [t for t in trials if t.user_attrs.get("invocation") == invocation]
    summary = summarize(study, trials)
    summary["invocation"] = {
        "id": invocation,
        "trials": state_counts(mine),
        "trial_numbers": [t.number for t in mine],
        "seconds": time.perf_counter() - t_start,
        "prepare_seconds": prepare_seconds,
        "status": status,
    }
    if parent is not None:
        summary["parent_run_id"] = parent.run_id
        try:
            parent.record_best(study)
            parent.record_counts(study, step=max((t.number for t in trials), default=0))
            from recstudio.tune.plots import log_study_plots

            summary["plots"] = log_study_plots(study, parent)
        except Exception:
            log.exception("could not record the study summary on the MLflow parent run")
        finally:
            try:
                parent.end(status)
            except Exception:
                log.exception("could not close the MLflow parent run")
    return summary


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
