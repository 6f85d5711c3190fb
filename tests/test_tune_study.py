"""Studies end to end on planted data: Optuna states and MLflow statuses agree, interrupted
studies resume under the same parent run, killed trials are retried, trial slots are exact.
(Parallel worker processes: ``test_tune_cli.py``.)"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from recstudio.experiment import resolve_config
from recstudio.model.general.bpr import BPR
from recstudio.model.registry import get_model_class
from recstudio.testing import planted_data
from recstudio.tune.runner import run_study
from recstudio.tune.settings import TuneSettings
from recstudio.tune.space import normalize
from recstudio.tune.workers import Budget

# embed_dim values that steer the patched BPR below (every other value trains normally)
BAD, NAN, RAISE, INTERRUPT = 5, 7, 9, 3


def small_data():
    return planted_data(num_users=120, num_items=60, min_len=10, max_len=16)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module (creating one costs seconds); each study logs to its own
    experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def settings_for(
    tmp: Path, name: str, trials: int, dims: tuple[int, ...] = (16, 8), **kwargs
) -> TuneSettings:
    cfg = resolve_config(
        model="BPR",
        dataset="planted",
        overrides={"train.epochs": 2, "train.early_stop_patience": 0, "train.learning_rate": 0.05},
    )
    space = normalize({"embed_dim": list(dims)}, get_model_class("BPR"))
    defaults = dict(
        model="BPR",
        dataset="planted",
        base_config=cfg.to_dict(),
        space=space,
        metric="ndcg@10",
        study_name=name,
        storage=f"sqlite:///{tmp / 'optuna.db'}",
        trials=trials,
        seed=0,
        pruner="median",
        pruner_options={"n_startup_trials": 2, "n_warmup_steps": 0},
        tracking_uri=f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
        experiment=f"tune-{name}",
        data=small_data(),
        quiet=True,
        defaults_trial=False,  # these tests steer trials by enqueueing them (test_tune_defaults.py)
    )
    defaults.update(kwargs)
    return TuneSettings(**defaults)


def enqueue(settings: TuneSettings, dims: list[int]) -> None:
    study = optuna.create_study(
        storage=settings.storage, study_name=settings.study_name, direction="maximize"
    )
    for dim in dims:
        study.enqueue_trial({"model.embed_dim": dim})


@pytest.fixture
def patched_bpr(monkeypatch: pytest.MonkeyPatch) -> None:
    """BPR that misbehaves on purpose for some embed_dim values."""
    train_loss, score = BPR.training_loss, BPR.score_batch

    def training_loss(self, batch):
        dim = self.config.embed_dim
        if dim == RAISE:
            raise RuntimeError("injected failure")
        if dim == INTERRUPT:
            raise KeyboardInterrupt
        loss = train_loss(self, batch)
        return loss * float("nan") if dim == NAN else loss

    def score_batch(self, batch):
        if self.config.embed_dim == BAD:  # targets ranked last: every metric is 0
            return -batch["target_mask"].float()
        return score(self, batch)

    monkeypatch.setattr(BPR, "training_loss", training_loss)
    monkeypatch.setattr(BPR, "score_batch", score_batch)


def child_runs(settings: TuneSettings, parent_run_id: str) -> dict[int, object]:
    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name(settings.experiment)
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    return {int(r.data.tags["optuna.trial"]): r for r in runs}


def test_states_agree_between_optuna_and_mlflow(workdir: Path, patched_bpr: None, tracking_uri: str) -> None:
    settings = settings_for(
        workdir, "states", trials=5, dims=(16, 8, BAD, NAN, RAISE), tracking_uri=tracking_uri
    )
    enqueue(settings, [16, 16, BAD, NAN, RAISE])
    summary = run_study(settings)

    study = optuna.load_study(study_name="states", storage=settings.storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "FAIL"]
    assert summary["invocation"]["trials"]["COMPLETE"] == 2
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    assert summary["parent_run_id"] == parent_id
    runs = child_runs(settings, parent_id)
    assert sorted(runs) == [0, 1, 2, 3, 4]  # exactly one child run per trial
    client = MlflowClient(settings.tracking_uri)

    for number in (0, 1):
        trial, run = study.trials[number], runs[number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.state"] == "COMPLETE"
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert "test_ndcg_at_10" in run.data.metrics  # test metrics logged, never the objective
        # few, well-named metrics: curves, test values, the objective at the best epoch (issue 13)
        assert run.data.metrics["best_valid_ndcg_at_10"] == pytest.approx(trial.value)
        assert not [
            k for k in run.data.metrics if k.startswith("best_valid") and k != "best_valid_ndcg_at_10"
        ]
        assert not {"train_seconds", "valid_seconds"} & set(run.data.metrics)
        assert run.data.params["model.embed_dim"] == "16"
        # the objective is the validation metric at the best epoch: the best reported epoch
        result = trial.user_attrs["result"]
        assert trial.value == pytest.approx(result["valid"]["ndcg@10"])
        assert trial.value == pytest.approx(max(trial.intermediate_values.values()))
        assert trial.intermediate_values[result["best_epoch"]] == pytest.approx(trial.value)
        assert trial.user_attrs["overrides"] == {"model.embed_dim": 16}
        assert trial.user_attrs["config"]["model"]["embed_dim"] == 16
        assert trial.user_attrs["config"]["train"]["learning_rate"] == 0.05

    pruned = runs[2]
    assert pruned.info.status == "KILLED"
    assert pruned.data.tags["optuna.state"] == "PRUNED" and pruned.data.tags["pruned"] == "true"
    assert "error" not in pruned.data.tags
    assert study.trials[2].intermediate_values == {0: 0.0}

    nan_run, raise_run = runs[3], runs[4]
    assert nan_run.info.status == "FAILED" and raise_run.info.status == "FAILED"
    assert "NonFiniteLossError" in nan_run.data.tags["error"]
    assert "RuntimeError: injected failure" in raise_run.data.tags["error"]
    assert study.trials[4].user_attrs["error"] == "RuntimeError: injected failure"
    artifacts = [a.path for a in client.list_artifacts(raise_run.info.run_id)]
    assert "traceback.txt" in artifacts
    # nothing resumes a trial: no trial keeps the resumable last.ckpt
    assert all(not client.list_artifacts(r.info.run_id, "resume") for r in runs.values())
    trace = client.download_artifacts(raise_run.info.run_id, "traceback.txt", str(workdir))
    assert "injected failure" in Path(trace).read_text()

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    best = study.best_trial
    assert parent.data.tags["best.trial"] == str(best.number)
    assert parent.data.tags["best.run_id"] == best.user_attrs["mlflow_run_id"]
    assert float(parent.data.tags["best.value"]) == pytest.approx(best.value)
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    # the parent row carries the best trial's values in the trials' own columns, and a link
    best_result = best.user_attrs["result"]
    assert parent.data.metrics["test_ndcg_at_10"] == pytest.approx(best_result["test"]["ndcg@10"])
    assert parent.data.metrics["best_valid_ndcg_at_10"] == pytest.approx(best.value)
    assert parent.data.metrics["best_epoch"] == best_result["best_epoch"]
    link = f"(#/experiments/{parent.info.experiment_id}/runs/{best.user_attrs['mlflow_run_id']})"
    assert f"[trial {best.number}]{link}" in parent.data.tags["mlflow.note.content"]
    # the study's row shows the data its trials share (same name and digest as the trials')
    (parent_input,) = parent.inputs.dataset_inputs
    (trial_input,) = client.get_run(best.user_attrs["mlflow_run_id"]).inputs.dataset_inputs
    assert (parent_input.dataset.name, parent_input.dataset.digest) == (
        trial_input.dataset.name,
        trial_input.dataset.digest,
    )
    assert [(t.key, t.value) for t in parent_input.tags] == [("mlflow.data.context", "tuning")]
    plots = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert "plots/optimization_history.html" in plots
    # the study's saved UI view: its trials only, sorted by the objective, with the key columns
    experiment = client.get_experiment(parent.info.experiment_id)
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.study-{settings.study_name}"])
    shown = client.search_runs([experiment.experiment_id], view["searchFilter"], max_results=100)
    assert sorted(r.info.run_id for r in shown) == sorted(r.info.run_id for r in runs.values())
    assert view["orderByKey"] == "metrics.`best_valid_ndcg_at_10`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:2] == ["metrics.`best_valid_ndcg_at_10`", "metrics.`test_ndcg_at_10`"]
    assert "params.`model.embed_dim`" in view["selectedColumns"]
    (chart,) = view["compareRunCharts"]
    assert chart["type"] == "PARALLEL" and chart["selectedParams"] == ["model.embed_dim"]


def test_interrupted_study_resumes_under_the_same_parent(
    workdir: Path, patched_bpr: None, monkeypatch: pytest.MonkeyPatch, tracking_uri: str
) -> None:
    settings = settings_for(workdir, "resume", trials=3, dims=(16, 8, INTERRUPT), tracking_uri=tracking_uri)
    enqueue(settings, [16, INTERRUPT])
    with pytest.raises(KeyboardInterrupt):
        run_study(settings)
    # Lightning ignores SIGINT after a Ctrl-C; the study must give the handler back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    study = optuna.load_study(study_name="resume", storage=settings.storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]  # nothing left RUNNING
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    client = MlflowClient(settings.tracking_uri)
    assert client.get_run(parent_id).info.status == "KILLED"
    interrupted = child_runs(settings, parent_id)[1]
    assert interrupted.info.status == "FAILED" and interrupted.data.tags["error"] == "interrupted"

    monkeypatch.undo()  # no more injected interrupts
    # --trials counts new trials
    again = settings_for(workdir, "resume", trials=2, dims=(16, 8, INTERRUPT), tracking_uri=tracking_uri)
    summary = run_study(again)
    study = optuna.load_study(study_name="resume", storage=settings.storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert summary["invocation"]["trial_numbers"] == [2, 3]
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert sorted(child_runs(settings, parent_id)) == [0, 1, 2, 3]


def test_resume_refuses_changed_categorical_choices(workdir: Path) -> None:
    from optuna.distributions import CategoricalDistribution

    from recstudio.errors import ConfigError
    from recstudio.tune.storage import make_storage
    from recstudio.tune.study import create_or_load

    settings = settings_for(workdir, "changed", trials=1, dims=(16, 8))
    storage = make_storage(settings.storage, heartbeat_interval=None)
    study, resumed = create_or_load(settings, storage)
    assert not resumed
    study.add_trial(
        optuna.trial.create_trial(
            params={"model.embed_dim": 16},
            distributions={"model.embed_dim": CategoricalDistribution([16, 8])},
            value=0.5,
        )
    )
    with pytest.raises(ConfigError, match="already sampled 'model.embed_dim'"):
        create_or_load(settings_for(workdir, "changed", trials=1, dims=(16, 32)), storage)
    _, resumed = create_or_load(settings_for(workdir, "changed", trials=1, dims=(16, 8)), storage)
    assert resumed
    with pytest.raises(ConfigError, match="was created with model 'BPR'"):
        other = settings_for(workdir, "changed", trials=1)
        other.model = "NCF"
        create_or_load(other, storage)


def test_a_minimised_metric_makes_a_minimising_study(workdir: Path) -> None:
    """The direction comes from the metric (``higher_is_better``): logloss studies minimise, and
    their best trial is the lowest value (ties: the earlier trial)."""
    from recstudio.errors import ConfigError
    from recstudio.tune.results import best_completed, summarize
    from recstudio.tune.storage import make_storage
    from recstudio.tune.study import create_or_load

    settings = settings_for(workdir, "loss", trials=1, metric="logloss")
    storage = make_storage(settings.storage, heartbeat_interval=None)
    study, _ = create_or_load(settings, storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for value in (0.5, 0.3, 0.3, 0.7):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    assert best_completed(study).number == 1
    assert summarize(study)["direction"] == "minimize"
    assert summarize(study)["best"]["value"] == 0.3
    with pytest.raises(ConfigError, match="minimizes its objective, but ndcg@10 is maximized"):
        create_or_load(settings_for(workdir, "loss", trials=1), storage)


def test_budget_is_exact_across_claimers() -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    counter, lock = ctx.Value("i", 0, lock=False), ctx.Lock()
    budgets = [Budget(7, None, counter, lock) for _ in range(3)]
    granted = 0
    for _ in range(5):
        granted += sum(b.claim() for b in budgets)
    assert granted == 7
    assert not Budget(3, time.time() - 1).claim()  # past the --timeout deadline
    local = Budget(2, None)
    assert [local.claim() for _ in range(3)] == [True, True, False]


KILLED_WORKER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_tune_study import settings_for
    from pathlib import Path
    from recstudio.model.general.bpr import BPR
    from recstudio.tune.runner import run_study

    original = BPR.training_loss
    def slow(self, batch):
        time.sleep(60)  # never finishes before the test kills it
        return original(self, batch)
    BPR.training_loss = slow
    settings = settings_for(
        Path({tmp!r}), "killed", trials=1, heartbeat_interval=1, grace_period=2, tracking_uri={uri!r}
    )
    run_study(settings)
    """
)


@pytest.mark.slow
def test_hard_killed_trial_is_failed_and_retried(workdir: Path, tracking_uri: str) -> None:
    script = KILLED_WORKER.format(tests=str(Path(__file__).parent), tmp=str(workdir), uri=tracking_uri)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=workdir, env={**os.environ})
    storage_url = f"sqlite:///{workdir / 'optuna.db'}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert proc.poll() is None, "the worker ended before it could be killed"
            try:
                study = optuna.load_study(study_name="killed", storage=storage_url)
                if study.trials and study.trials[0].state.name == "RUNNING":
                    break
            except KeyError:
                pass
            time.sleep(1)
        time.sleep(2)  # let it train and heartbeat
    finally:
        proc.kill()
        proc.wait()
    study = optuna.load_study(study_name="killed", storage=storage_url)
    assert study.trials[0].state.name == "RUNNING"  # what a hard kill leaves behind
    time.sleep(3)  # past the grace period

    settings = settings_for(
        workdir, "killed", trials=1, heartbeat_interval=1, grace_period=2, tracking_uri=tracking_uri
    )
    run_study(settings)
    study = optuna.load_study(study_name="killed", storage=storage_url)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    retry = study.trials[1]
    assert retry.system_attrs["failed_trial"] == 0  # the retry of the killed trial
    assert retry.params == study.trials[0].params
    runs = child_runs(settings, study.user_attrs["mlflow_parent_run_id"])
    assert runs[0].info.status == "FAILED" and "heartbeat lost" in runs[0].data.tags["error"]
    assert runs[1].info.status == "FINISHED"
    assert math.isfinite(retry.value)


def test_two_invocations_opening_one_new_study_keep_one_parent(workdir: Path, tracking_uri: str) -> None:
    """Both saw no parent id in the new study and both opened a run: the older one stays."""
    from recstudio.tune.parent import ParentRun

    settings = settings_for(workdir, "race", trials=1, dims=(16,), tracking_uri=tracking_uri)
    study = optuna.create_study(study_name="race", storage=settings.storage, direction="maximize")
    first = ParentRun.open(study, settings)
    study.set_user_attr("mlflow_parent_run_id", "")  # as read by the second invocation
    second = ParentRun.open(study, settings)
    assert second.run_id == first.run_id
    assert study.user_attrs["mlflow_parent_run_id"] == first.run_id
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_run(first.run_id).info.experiment_id
    parents = client.search_runs(
        [experiment], filter_string="tags.`optuna.study` = 'race' and tags.`recstudio.tune.role` = 'study'"
    )
    assert [r.info.run_id for r in parents] == [first.run_id]


def test_defaults_trial_is_enqueued_first_and_once(workdir: Path) -> None:
    from recstudio.tune.storage import make_storage
    from recstudio.tune.study import create_or_load

    settings = settings_for(workdir, "baseline", trials=1, dims=(16, 64), defaults_trial=True)
    storage = make_storage(settings.storage, heartbeat_interval=None)
    study, resumed = create_or_load(settings, storage)
    assert not resumed
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"model.embed_dim": 64}]  # BPR default
    assert waiting[0].user_attrs["defaults"] is True
    study, resumed = create_or_load(settings, storage)  # resuming enqueues nothing more
    assert resumed and len(study.trials) == 1
