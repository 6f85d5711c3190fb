"""``run_study``: one invocation of a study, from checks to summary.

The order is the point of this module:

1. create the study (and the storage schema) once, in this process, before any worker starts:
   Optuna's schema creation is not safe against workers racing on a fresh SQLite file;
2. prepare the dataset once (the parquet cache), so trials only read it;
3. open (or reopen, on resume) the study's MLflow parent run, remembered in the study's user attrs;
4. run exactly ``trials`` new trials, in this process or in ``workers`` spawned processes that
   claim trial slots from one shared counter (no overshoot, faster workers take more trials);
5. record the best trial and the study plots on the parent run, and close it.

Several invocations on one storage cooperate (Optuna's RDB storage is the synchronisation);
each runs its own ``trials``. Heartbeats mark the trials of a hard-killed process FAIL, and a
stale trial is retried once (``study.StaleTrialCallback``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import optuna

from recstudio.errors import ConfigError
from recstudio.tune.parent import ParentRun
from recstudio.tune.results import state_counts, summarize
from recstudio.tune.settings import DEFAULT_TRIALS, TuneSettings
from recstudio.tune.space import grid_size
from recstudio.tune.storage import redact
from recstudio.tune.study import create_or_load, load, storage_for
from recstudio.tune.workers import Budget, optimize, quiet_optuna, run_workers

log = logging.getLogger("recstudio.tune")


def prepare_data_once(settings: TuneSettings) -> Any:
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
    return data


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
    quiet_optuna(settings)
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
    data = prepare_data_once(settings)
    prepare_seconds = time.perf_counter() - t0
    # 3. parent run
    parent = ParentRun.open(study, settings) if settings.tracking else None
    parent_run_id = parent.run_id if parent else None
    if parent is not None:
        log.info("MLflow parent run %s (experiment '%s')", parent_run_id, settings.experiment)
        parent.save_view(settings)
        from recstudio.pipeline import log_dataset_input

        log_dataset_input(parent, data)

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
            interrupted, failed_workers = run_workers(settings, parent_run_id, invocation, deadline)
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
        if parent.view is not None:
            summary["mlflow_view"] = parent.view
        try:
            parent.record_best(study)
            step = max((t.number for t in trials), default=0)
            parent.record_counts(study, step=step)
            parent.record_comparison(summary, step=step)
            parent.record_pareto(study)
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
