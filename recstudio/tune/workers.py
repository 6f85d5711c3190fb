"""Running trials: the invocation's trial budget, one worker's trial loop, and worker processes.

``--trials N`` means exactly N new trials per invocation however many processes share them, so
trial slots come from one counter (``Budget``) that every worker claims from before each trial.
``--workers K`` spawns K processes on the study's storage; on CUDA machines each one sees a
single GPU, chosen round-robin before torch loads in it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import warnings
from typing import Any

import optuna

from recstudio.tune.parent import ParentRun, TrialRecorder
from recstudio.tune.settings import TuneSettings
from recstudio.tune.study import load, storage_for

log = logging.getLogger("recstudio.tune")


class Budget:
    """Trial slots of one invocation, shared by its workers: ``claim`` before each trial.

    A shared counter (not N/K per worker) keeps the total exact even when one worker's trials
    are pruned early or a worker dies; the deadline implements ``--timeout``: no trial starts
    after it, nor when the time left cannot hold a trial of ``expected`` seconds (the median
    duration of the study's completed trials), which would only run past the user's budget.
    """

    def __init__(
        self, limit: int | None, deadline: float | None, counter: Any = None, lock: Any = None
    ) -> None:
        self.limit = limit
        self.deadline = deadline
        self.counter = counter
        self.lock = lock
        self._local = 0

    def claim(self, expected: float | None = None) -> bool:
        """Take one trial slot; False when the budget is spent (count, deadline, or time left
        shorter than ``expected`` seconds)."""
        if self.deadline is not None:
            left = self.deadline - time.time()
            if left <= 0:
                return False
            if expected is not None and left < expected:
                log.info(
                    "%.0f s left of --timeout cannot hold another trial (median completed trial: %.0f s); "
                    "stopping",
                    left,
                    expected,
                )
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
    if worker > 0:
        wait_for_queued_defaults(study)
    while True:
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
            log.info("grid sampler: every grid point has been tried")
            break
        expected = expected_trial_seconds(study) if budget.deadline is not None else None
        if not budget.claim(expected):
            break
        # no gc_after_trial: a full collection of a heap holding torch, MLflow and SQLAlchemy
        # costs seconds per trial; the trial's tensors are freed by reference counting
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)


def wait_for_queued_defaults(study: optuna.Study, timeout: float = 120.0, poll: float = 0.2) -> None:
    """Block until no defaults trial is waiting in the queue (worker 0 has taken it).

    On SQLite, two workers that ask at the same moment can both pop the same WAITING trial
    (there is no row lock), and the defaults trial then runs twice and the second ``tell``
    fails. Workers other than 0 therefore start only once worker 0 has popped it; after
    ``timeout`` seconds (worker 0 died, say) they go on and one of them runs it.
    """
    from optuna.trial import TrialState

    from recstudio.tune.calibrated import is_defaults_trial

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not any(is_defaults_trial(t) for t in waiting):
            return
        time.sleep(poll)
    log.warning("the defaults trial is still queued after %.0f s; this worker starts anyway", timeout)


def expected_trial_seconds(study: optuna.Study) -> float | None:
    """The median duration of the study's completed trials (None before the first one).

    Completed, not pruned, trials: a new trial may run to the end, and the defaults trial (the
    first one) is such a trial, so the estimate exists as soon as it has finished.
    """
    import statistics

    from optuna.trial import TrialState

    durations = [
        t.duration.total_seconds()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.duration is not None
    ]
    return statistics.median(durations) if durations else None


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
    quiet_optuna(settings)

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


def run_workers(
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


def quiet_optuna(settings: TuneSettings) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING if settings.quiet else optuna.logging.INFO)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
