"""The objective: one Optuna trial = one ``pipeline.run`` = one nested MLflow child run.

The pipeline already records a run completely (params, config.yaml, per-epoch metrics, test
metrics, checkpoint) and closes it FINISHED, KILLED (``TrialPruned``) or FAILED. What only the
study knows is added here, so that Optuna and MLflow always agree:

- COMPLETE: ``optuna.state=COMPLETE`` and the objective value on the child run;
- PRUNED: ``optuna.state=PRUNED``, ``pruned=true`` and the epoch it was stopped at (the run is KILLED);
- FAIL: ``optuna.state=FAIL``, the error as a tag and the traceback as ``traceback.txt``; a run
  that failed before the pipeline opened one (a search-space value the config rejects) still
  gets a FAILED child run, so every trial has exactly one.

The objective value is the validation metric at the trial's best epoch (``result["valid"]``),
never a test metric; a multi-objective study (``--cost``) adds the trial's costs after it
(``recstudio.tune.objectives``). The trial's overrides, its full resolved config and its MLflow run id are
trial user attrs, which is what ``recstudio best --export`` reads.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import tempfile
import time
import traceback
from typing import TYPE_CHECKING, Any

import optuna

from recstudio.errors import TrainingError
from recstudio.tune.calibrated import ATTR_DEFAULTS, ATTR_ENQUEUED
from recstudio.tune.space import suggest

if TYPE_CHECKING:
    from recstudio.config import ResolvedConfig
    from recstudio.tune.settings import TuneSettings

log = logging.getLogger("recstudio.tune")

TAG_STUDY = "optuna.study"
TAG_TRIAL = "optuna.trial"
TAG_STATE = "optuna.state"
TAG_INVOCATION = "recstudio.tune.invocation"
TAG_DEFAULTS = "recstudio.tune.defaults"
"""Child-run tag of the defaults trial."""
TAG_ENQUEUED = "recstudio.tune.enqueued"
"""Child-run tag of a trial queued by ``--enqueue``."""


class TrialValueError(TrainingError):
    """The trial finished but its validation metric is missing or not finite."""


def trial_config(settings: TuneSettings, overrides: dict[str, Any]) -> ResolvedConfig:
    """The resolved config of one trial: the study's fixed config with the trial's values on top.

    The fixed part was resolved once from defaults, dataset defaults, ``--config`` files and
    ``--set``/flags; re-resolving it with the sampled values validates the combination and
    keeps one code path for every config a trial can run.
    """
    from recstudio.experiment import resolve_config

    base = settings.base_config
    layer: dict[str, Any] = {}
    for section in ("model", "data", "train", "eval"):
        for name, value in (base.get(section) or {}).items():
            if section == "model" and name == "name":
                continue
            layer[f"{section}.{name}"] = value
    layer.update(overrides)
    return resolve_config(model=settings.model, dataset=settings.dataset, overrides=layer)


class ChildRuns:
    """MLflow bookkeeping of trial runs that the pipeline cannot know about.

    Uses ``MlflowClient`` with explicit run ids (no fluent active-run state), like the tracker.
    A child run is found by its parent run id and trial number tags, which lets any process
    (e.g. the one that fails a stale trial of a killed worker) reach it.
    """

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str | None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self._client: Any = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from recstudio.track.tracker import mlflow_client

            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def experiment_id(self) -> str | None:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = exp.experiment_id if exp is not None else None
        return self._experiment_id

    def find(self, trial_number: int) -> str | None:
        """The run id of the child run of ``trial_number`` (the newest, if a retry made several)."""
        exp = self.experiment_id()
        if exp is None or self.parent_run_id is None:
            return None
        runs = self.client.search_runs(
            [exp],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                f"AND tags.`{TAG_TRIAL}` = '{trial_number}'"
            ),
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def complete(self, run_id: str, value: float) -> None:
        self.set_tags(run_id, {TAG_STATE: "COMPLETE", "optuna.value": repr(value)})

    def pruned(self, run_id: str, message: str, epoch: int | None) -> None:
        tags = {TAG_STATE: "PRUNED", "pruned": "true", "pruned.reason": message}
        if epoch is not None:
            tags["pruned.epoch"] = epoch
        self.set_tags(run_id, tags)
        try:  # the pipeline records any exception as `error`; a pruned trial did not fail
            self.client.delete_tag(run_id, "error")
        except Exception:  # the tag may not exist
            pass

    def failed(self, run_id: str, error: str, trace: str, terminate: bool = False) -> None:
        self.set_tags(run_id, {TAG_STATE: "FAIL", "error": error})
        self.client.log_text(run_id, trace, "traceback.txt")
        if terminate:
            self.client.set_terminated(run_id, status="FAILED")

    def new_failed_run(
        self, run_name: str, tags: dict[str, str], params: dict[str, Any], error: str, trace: str
    ) -> str:
        """A FAILED child run for a trial that failed before the pipeline opened one."""
        from recstudio.track.tracker import Tracker

        tracker = Tracker(
            self.tracking_uri,
            experiment=self.experiment,
            run_name=run_name,
            parent_run_id=self.parent_run_id,
            tags=tags,
        )
        tracker.log_params(params)
        self.failed(tracker.run_id, error, trace)
        tracker.end("FAILED")
        return tracker.run_id


class Objective:
    """Callable objective for ``study.optimize``; one instance per worker process."""

    def __init__(
        self,
        settings: TuneSettings,
        parent_run_id: str | None = None,
        invocation: str = "",
        worker: int = 0,
    ) -> None:
        self.settings = settings
        self.parent_run_id = parent_run_id
        self.invocation = invocation
        self.worker = worker
        self.runs = (
            ChildRuns(settings.tracking_uri or "", settings.experiment, parent_run_id)
            if settings.tracking
            else None
        )

    # ------------------------------------------------------------------ the trial
    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        t0 = time.perf_counter()
        s = self.settings
        defaults = bool(trial.user_attrs.get(ATTR_DEFAULTS))
        space = s.space
        if defaults:  # only the enqueued keys: a default outside a user's space keeps its value
            from recstudio.tune.space import defaults_params

            inside = defaults_params(s.space, s.base_config)
            space = {k: v for k, v in s.space.items() if k in inside}
        overrides = suggest(trial, space)
        # each user attr is one storage transaction: few of them, grouped (overrides, config,
        # invocation before the run so a failed trial keeps them; run id and result after)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("invocation", self.invocation)
        tags = {
            TAG_STUDY: trial.study.study_name,
            TAG_TRIAL: str(trial.number),
            TAG_INVOCATION: self.invocation,
            "recstudio.tune.worker": str(self.worker),
        }
        if defaults:
            tags[TAG_DEFAULTS] = "true"
        if trial.user_attrs.get(ATTR_ENQUEUED):
            tags[TAG_ENQUEUED] = "true"
        try:
            cfg = trial_config(s, overrides)
        except Exception as exc:  # a sampled combination the config rejects: this trial fails alone
            self._fail_without_run(trial, exc, tags, overrides)
            raise
        trial.set_user_attr("config", cfg.to_dict())
        t_resolved = time.perf_counter()

        from recstudio.pipeline import RunOptions, run
        from recstudio.tune.pruning import PruningCallback

        # a multi-objective trial cannot report intermediate values (Optuna prunes one objective)
        pruning = (
            PruningCallback(trial, metric_name=s.metric, prune=not defaults, min_epochs=cfg.train.min_epochs)
            if not s.costs
            else None
        )
        # per-trial checkpoint folder: the pipeline copies the best checkpoint into the MLflow
        # run; the local copy of every trial would otherwise accumulate in /tmp
        ckpt_dir = tempfile.mkdtemp(prefix=f"recstudio-trial{trial.number}-") if s.tracking else None
        options = RunOptions(
            data_dir=s.data_dir,
            cache_dir=s.cache_dir,
            tracking=s.tracking,
            log_model=s.log_model,
            tracking_uri=s.tracking_uri,
            experiment=s.experiment,
            run_name=f"trial-{trial.number}",
            parent_run_id=self.parent_run_id,
            extra_tags=tags,
            accelerator=s.accelerator,
            devices=s.devices,
            save_resume_state=False,  # nothing resumes a trial
            quiet=True,
            verbose=s.verbose,
            progress="lines" if s.progress == "auto" else s.progress,
            progress_prefix=f"trial {trial.number}: ",
            checkpoint_dir=ckpt_dir,
            callbacks=[pruning] if pruning is not None else [],
        )
        try:
            result = run(cfg, options, data=s.data, trial=trial)
        except optuna.TrialPruned as exc:
            epoch = max(pruning.reported) if pruning is not None and pruning.reported else None
            message = str(exc)
            trial.set_user_attr("pruned_epoch", epoch)
            self._on_child(trial, exc, lambda rid: self.runs.pruned(rid, message, epoch))
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on; make it a
            # KeyboardInterrupt again, which Optuna records as FAIL and re-raises
            _restore_sigint()
            trial.set_user_attr("error", "interrupted")
            trace = traceback.format_exc()
            self._on_child(trial, exc, lambda rid: self.runs.failed(rid, "interrupted", trace))
            raise KeyboardInterrupt from exc
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", error[:2000])
            trace = traceback.format_exc()
            self._on_child(trial, exc, lambda rid: self.runs.failed(rid, error, trace))
            raise
        finally:
            if ckpt_dir:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            _free_accelerator_memory()
        t_run = time.perf_counter()

        value = (result.get("valid") or {}).get(s.metric)
        run_id = result.get("run_id")
        trial.set_user_attr("mlflow_run_id", run_id)
        if value is None or not math.isfinite(float(value)):
            error = (
                f"validation metric '{s.metric}' is {value!r} (no finite value at any validation epoch)"
                if value is not None or result.get("valid")
                else f"validation metric '{s.metric}' is missing from the result (no validation split?)"
            )
            trial.set_user_attr("error", error)
            if self.runs is not None and run_id:
                self.runs.failed(run_id, f"TrialValueError: {error}", error, terminate=True)
            raise TrialValueError(error)
        value = float(value)
        if self.runs is not None and run_id:
            self.runs.complete(run_id, value)
        timings = dict(result.get("timings") or {})
        timings.update(
            {
                "setup_seconds": t_resolved - t0,
                "pipeline_seconds": t_run - t_resolved,
                "record_seconds": time.perf_counter() - t_run,
            }
        )
        trial.set_user_attr(
            "result",
            {
                "best_epoch": result.get("best_epoch"),
                "epochs": result.get("epochs"),
                "valid": result.get("valid"),
                "test": result.get("test"),
                "cache_key": result.get("cache_key"),
                "model_size": result.get("model_size"),
                "timings": timings,
            },
        )
        if s.costs:
            from recstudio.tune.objectives import cost_values

            costs = cost_values(result, s.costs)
            trial.set_user_attr("costs", dict(zip(s.costs, costs)))
            return [value, *costs]
        return value

    # ------------------------------------------------------------------ failures
    def _on_child(self, trial: optuna.Trial, exc: BaseException, action: Any) -> None:
        """Apply ``action(run_id)`` to the trial's child run; never mask the trial's own error."""
        if self.runs is None:
            return
        try:
            run_id = getattr(exc, "run_id", None) or self.runs.find(trial.number)
            if run_id is None:
                log.warning("trial %d: no MLflow child run found to record its state", trial.number)
                return
            trial.set_user_attr("mlflow_run_id", run_id)
            action(run_id)
        except Exception:
            log.exception("trial %d: could not record its state on the MLflow child run", trial.number)

    def _fail_without_run(
        self, trial: optuna.Trial, exc: BaseException, tags: dict[str, str], overrides: dict[str, Any]
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("error", error[:2000])
        if self.runs is None:
            return
        try:
            run_id = self.runs.new_failed_run(
                f"trial-{trial.number}",
                {**tags, "model": self.settings.model, "dataset": self.settings.dataset},
                overrides,
                error,
                traceback.format_exc(),
            )
            trial.set_user_attr("mlflow_run_id", run_id)
        except Exception:
            log.exception("trial %d: could not open an MLflow run to record its failure", trial.number)


def _restore_sigint() -> None:
    try:
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        pass


def _free_accelerator_memory() -> None:
    """Release cached CUDA blocks between trials (an OOM trial must not starve the next one)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
