"""The study's MLflow parent run, and the callback that keeps it up to date as trials finish.

Optuna and MLflow each hold half of a study (trials and their values; runs, metrics and
artifacts). This module is the MLflow half above the trials: one parent run per study, found
again on resume through the study's user attrs, carrying the search space, the best trial so
far and the trial counts. (Trial runs themselves are ``objective.ChildRuns``.)
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from recstudio.tune.objectives import primary_value
from recstudio.tune.results import best_completed, state_counts
from recstudio.tune.settings import TuneSettings
from recstudio.tune.space import describe
from recstudio.tune.storage import redact
from recstudio.tune.study import ATTR_PARENT_RUN, ATTR_TRACKING_URI, metric_direction

log = logging.getLogger("recstudio.tune")


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
        self.view: dict[str, str | None] | None = None
        """The saved UI view (``save_view``): share key, experiment id, and its URL when the
        tracking URI is a server (a local store's UI comes from ``recstudio ui``)."""

    def log_dataset(self, **kwargs: Any) -> None:
        """The study's data as the parent run's dataset input (context ``tuning``), so the
        study's row in the runs table shows the data its trials share."""
        from recstudio.track.tracker import log_dataset_to_run

        log_dataset_to_run(self.client, self.run_id, **{**kwargs, "context": "tuning"})

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
            params.update(
                {
                    "study": study.study_name,
                    "metric": settings.metric,
                    "direction": metric_direction(settings.metric),
                }
            )
            if settings.costs:
                params["costs"] = ",".join(settings.costs)
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

    def save_view(self, settings: TuneSettings) -> dict[str, str | None] | None:
        """Store the study's MLflow UI view on its experiment (``recstudio.track.views``): its
        trials sorted by the objective, with the objective, key test metrics and the searched
        parameters as columns and a parallel-coordinates chart (also kept as ``self.view``)."""
        from recstudio.eval.metrics import higher_is_better
        from recstudio.track.tracker import best_valid_key, test_metric_key
        from recstudio.track.views import save_view, study_view, view_key, view_link

        try:
            experiment_id = self.client.get_run(self.run_id).info.experiment_id
            tests = [test_metric_key(m) for m in key_test_metrics(settings)]
            state = study_view(
                settings.study_name,
                objective=best_valid_key(settings.metric),
                higher_is_better=higher_is_better(settings.metric),
                params=list(settings.space),
                test_metrics=tests,
            )
            key = view_key(settings.study_name)
            save_view(self.client, experiment_id, key, state)
            server = self.tracking_uri.startswith(("http://", "https://"))
            self.view = {
                "key": key,
                "experiment_id": experiment_id,
                "url": view_link(self.tracking_uri, experiment_id, key) if server else None,
            }
            return self.view
        except Exception:  # a convenience: the runs are all there without it
            log.exception("could not save the study's MLflow UI view")
            return None

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
        best = best_completed(study)
        if best is None:  # no completed trial yet
            return None
        tags = {
            "best.value": repr(primary_value(best)),
            "best.trial": best.number,
            "best.run_id": best.user_attrs.get("mlflow_run_id", ""),
            "best.params": json.dumps(best.user_attrs.get("overrides", best.params), default=str),
        }
        for key, value in (best.user_attrs.get("overrides") or best.params).items():
            tags[f"best.param.{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
        parent = self.client.get_run(self.run_id)
        run_id = best.user_attrs.get("mlflow_run_id")
        if run_id:
            tags["mlflow.note.content"] = best_note(best, run_id, parent.info.experiment_id)
        self.set_tags(tags)
        self.log_metrics(best_trial_metrics(best, parent.data.tags.get("metric")), step=best.number)
        return best

    def record_pareto(self, study: optuna.Study) -> list[int]:
        """A multi-objective study's Pareto front on the parent run: ``pareto_front.json`` (each
        front trial's objectives, parameters, test metrics and run id, best metric first), the
        tag ``pareto_front`` (the trial numbers) and ``pareto_front=true`` on those trials' runs,
        so that the UI's runs table filters the front with ``tags.pareto_front = 'true'``.
        Returns the front's trial numbers."""
        from recstudio.tune.objectives import is_multi_objective, objective_names, pareto_front

        if not is_multi_objective(study):
            return []
        names = objective_names(study)
        front = pareto_front(study)
        rows = [
            {
                "trial": t.number,
                "objectives": dict(zip(names, t.values)),
                "params": t.user_attrs.get("overrides", t.params),
                "test": (t.user_attrs.get("result") or {}).get("test"),
                "run_id": t.user_attrs.get("mlflow_run_id"),
            }
            for t in front
        ]
        self.client.log_text(self.run_id, json.dumps(rows, indent=2, default=str), "pareto_front.json")
        numbers = [t.number for t in front]
        self.set_tags(
            {
                "pareto_front": ", ".join(map(str, numbers)),
                "pareto_front.objectives": " vs ".join(names),
            }
        )
        for t in study.get_trials(deepcopy=False):
            run_id = t.user_attrs.get("mlflow_run_id")
            if run_id and t.state == TrialState.COMPLETE:
                self.client.set_tag(run_id, "pareto_front", str(t.number in numbers).lower())
        return numbers

    def record_comparison(self, summary: dict[str, Any], step: int) -> None:
        """Best vs defaults (``summary["vs_defaults"]``) as parent-run metrics and tags."""
        vs = summary.get("vs_defaults")
        if not vs:
            return
        metrics: dict[str, float] = {}
        tags: dict[str, Any] = {
            "vs_defaults.defaults_trial": vs["defaults_trial"],
            "vs_defaults.best_trial": vs["best_trial"],
            "vs_defaults.best_is_defaults": str(vs["best_is_defaults"]).lower(),
        }
        for split in ("valid", "test"):
            part = vs.get(split)
            if not part:
                continue
            metrics[f"defaults_{split}"] = part["defaults"]
            metrics[f"best_{split}"] = part["best"]
            metrics[f"vs_defaults_{split}_abs"] = part["abs"]
            if part["rel"] is not None:
                metrics[f"vs_defaults_{split}_rel"] = part["rel"]
                tags[f"vs_defaults.{split}"] = (
                    f"{part['best']:.6g} vs {part['defaults']:.6g} ({100 * part['rel']:+.2f}%)"
                )
        self.log_metrics(metrics, step=step)
        self.set_tags(tags)

    def record_counts(self, study: optuna.Study, step: int) -> dict[str, int]:
        counts = state_counts(study.get_trials(deepcopy=False))
        self.log_metrics({f"trials_{k.lower()}": float(v) for k, v in counts.items()}, step=step)
        return counts

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def key_test_metrics(settings: TuneSettings) -> list[str]:
    """The test metrics a study's view shows: the objective's, then up to two of
    ``KEY_TEST_METRICS`` that the trials compute (by the base config's ``eval`` section)."""
    from recstudio.track.views import KEY_TEST_METRICS

    eval_cfg = settings.base_config.get("eval") or {}
    names = set(eval_cfg.get("metrics") or [])
    cutoffs = {int(c) for c in eval_cfg.get("cutoffs") or []}
    out = [settings.metric]
    for key in KEY_TEST_METRICS:
        name, _, cutoff = key.partition("@")
        if key not in out and name in names and (not cutoff or int(cutoff) in cutoffs):
            out.append(key)
    return out[:3]


def best_note(best: optuna.trial.FrozenTrial, run_id: str, experiment_id: str) -> str:
    """The parent run's description (MLflow's note, shown on its page): a link to the best
    trial's run, its objective and parameters."""
    params = best.user_attrs.get("overrides") or best.params
    shown = ", ".join(f"`{k}={v}`" for k, v in params.items())
    return (
        f"Best trial so far: [trial {best.number}](#/experiments/{experiment_id}/runs/{run_id}) "
        f"with objective {primary_value(best):.6g}; {shown}"
    )


def best_trial_metrics(best: optuna.trial.FrozenTrial, metric: str | None) -> dict[str, float]:
    """The best trial's single values under the names its own run uses (``test_<m>``,
    ``best_valid_<monitor>``, ``best_epoch``), so the parent's row in the runs table shows them
    in the same columns as the trials (step = the trial number)."""
    from recstudio.track.tracker import best_valid_key, test_metric_key

    result = best.user_attrs.get("result") or {}
    metrics = {test_metric_key(k): v for k, v in (result.get("test") or {}).items()}
    if primary_value(best) is not None:
        metrics[best_valid_key(metric or "objective")] = primary_value(best)
    if result.get("best_epoch") is not None:
        metrics["best_epoch"] = float(result["best_epoch"])
    return metrics


class TrialRecorder:
    """Optuna callback (runs after each trial, in the worker): the parent run follows the study."""

    def __init__(self, parent: ParentRun | None) -> None:
        self.parent = parent

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.parent is None:
            return
        try:
            value = primary_value(trial)
            if trial.state == TrialState.COMPLETE and value is not None:
                metrics = {"trial_value": value}
                best = best_completed(study)
                if best.number == trial.number:
                    self.parent.record_best(study)
                metrics["best_value"] = primary_value(best)
                self.parent.log_metrics(metrics, step=trial.number)
        except Exception:
            log.exception("could not update the MLflow parent run after trial %d", trial.number)


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
