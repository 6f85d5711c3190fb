"""The defaults trial (issue 12): trial 0 of a new study runs the model's defaults, in full and
never pruned; ``--no-defaults-trial`` opts out; the end summary compares the best trial with it
(CLI text, ``--json`` and the MLflow parent run); two workers on SQLite run it exactly once; the
wall-clock budget stops adding trials that cannot finish in time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from recstudio.cli import cli
from recstudio.errors import ConfigError
from recstudio.experiment import resolve_config
from recstudio.model.general.bpr import BPR
from recstudio.model.registry import get_model_class
from recstudio.testing import planted_data, write_planted_spec
from recstudio.tune.runner import run_study
from recstudio.tune.settings import TuneSettings, build_settings
from recstudio.tune.space import normalize
from recstudio.tune.workers import Budget

FAST = {"train.epochs": 3, "train.early_stop_patience": 0, "train.learning_rate": 0.05}


@pytest.fixture(scope="module")
def data():
    return planted_data(num_users=120, num_items=60, min_len=10, max_len=16)


def settings_for(tmp: Path, name: str, data, trials: int, **kwargs) -> TuneSettings:
    cfg = resolve_config(model="BPR", dataset="planted", overrides=FAST)
    values = dict(
        model="BPR",
        dataset="planted",
        base_config=cfg.to_dict(),
        space=normalize({"embed_dim": [16, 64]}, get_model_class("BPR")),  # 64: BPR's default
        metric="ndcg@10",
        study_name=name,
        storage=f"sqlite:///{tmp / 'optuna.db'}",
        trials=trials,
        seed=0,
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        experiment=f"defaults-{name}",
        data=data,
        quiet=True,
    )
    values.update(kwargs)
    return TuneSettings(**values)


@pytest.fixture
def defaults_scores_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """BPR whose default embed_dim (64) ranks every target last: the worst trial of any study."""
    score = BPR.score_batch

    def score_batch(self, batch):
        if self.config.embed_dim == 64:
            return -batch["target_mask"].float()
        return score(self, batch)

    monkeypatch.setattr(BPR, "score_batch", score_batch)


def test_defaults_trial_is_trial_zero_and_the_summary_compares(workdir: Path, data) -> None:
    settings = settings_for(workdir, "first", data, trials=3, pruner="calibrated")
    summary = run_study(settings)
    study = optuna.load_study(study_name="first", storage=settings.storage)
    first = study.trials[0]
    assert first.user_attrs["defaults"] is True
    assert first.params == {"model.embed_dim": 64}
    assert first.state.name == "COMPLETE"
    assert first.user_attrs["result"]["epochs"] == 3  # in full
    assert [t.user_attrs.get("defaults", False) for t in study.trials] == [True, False, False]

    assert summary["defaults"]["number"] == 0
    assert summary["defaults"]["value"] == pytest.approx(first.value)
    vs = summary["vs_defaults"]
    best = summary["best"]
    assert vs["defaults_trial"] == 0 and vs["best_trial"] == best["number"]
    assert vs["valid"]["best"] == pytest.approx(best["value"])
    assert vs["valid"]["defaults"] == pytest.approx(first.value)
    assert vs["valid"]["abs"] == pytest.approx(best["value"] - first.value)
    assert vs["valid"]["gain"] >= 0  # the defaults are a trial: the best is never below them
    assert vs["valid"]["rel"] == pytest.approx((best["value"] - first.value) / first.value)
    test_default = first.user_attrs["result"]["test"]["ndcg@10"]
    assert vs["test"]["defaults"] == pytest.approx(test_default)
    assert vs["test"]["best"] == pytest.approx(best["test"]["ndcg@10"])

    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(summary["parent_run_id"]).data
    assert parent.metrics["defaults_valid"] == pytest.approx(first.value)
    assert parent.metrics["vs_defaults_valid_abs"] == pytest.approx(vs["valid"]["abs"])
    assert parent.metrics["defaults_test"] == pytest.approx(test_default)
    assert "vs_defaults_test_rel" in parent.metrics
    assert parent.tags["vs_defaults.defaults_trial"] == "0"
    child = client.get_run(first.user_attrs["mlflow_run_id"]).data
    assert child.tags["recstudio.tune.defaults"] == "true"


def test_defaults_trial_is_never_pruned(workdir: Path, data, defaults_scores_zero: None) -> None:
    """Trials run first without it, then a resume adds it: it is the worst trial at every epoch,
    and a pruner that prunes everything below the median still lets it finish."""
    aggressive = {"pruner": "median", "pruner_options": {"n_startup_trials": 1, "n_warmup_steps": 0}}
    run_study(settings_for(workdir, "never", data, trials=2, defaults_trial=False, **aggressive))
    summary = run_study(settings_for(workdir, "never", data, trials=2, **aggressive))
    study = optuna.load_study(study_name="never", storage=f"sqlite:///{workdir / 'optuna.db'}")
    defaults = [t for t in study.trials if t.user_attrs.get("defaults")]
    assert [t.number for t in defaults] == [2]  # the first trial of the invocation that added it
    assert defaults[0].state.name == "COMPLETE" and defaults[0].value == 0.0
    assert sorted(defaults[0].intermediate_values) == [0, 1, 2]  # reported every epoch, ran all 3
    assert summary["vs_defaults"]["valid"]["gain"] > 0
    assert summary["vs_defaults"]["valid"]["rel"] is None  # defaults 0: no relative difference


def test_no_defaults_trial_opts_out(workdir: Path, data) -> None:
    summary = run_study(settings_for(workdir, "optout", data, trials=2, defaults_trial=False))
    study = optuna.load_study(study_name="optout", storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert not any(t.user_attrs.get("defaults") for t in study.trials)
    assert summary["defaults"] is None and summary["vs_defaults"] is None


def test_a_default_outside_a_user_space_keeps_its_value(workdir: Path, data) -> None:
    settings = settings_for(
        workdir,
        "outside",
        data,
        trials=1,
        space=normalize({"embed_dim": [8, 16], "train.learning_rate": [0.05, 0.01]}, get_model_class("BPR")),
    )
    run_study(settings)
    trial = optuna.load_study(study_name="outside", storage=settings.storage).trials[0]
    assert trial.user_attrs["defaults"] is True
    assert trial.params == {"train.learning_rate": 0.05}  # embed_dim 64 is not a choice: not sampled
    assert trial.user_attrs["config"]["model"]["embed_dim"] == 64


def test_baseline_is_a_deprecated_alias(spec: Path) -> None:
    common = dict(
        model="BPR", dataset=str(spec), data_dir=None, config_files=[], set_items=(), config_flags={}
    )
    with pytest.warns(DeprecationWarning, match="--no-defaults-trial"):
        assert build_settings(**common, section={"baseline": False}).defaults_trial is False
    assert build_settings(**common).defaults_trial is True
    assert build_settings(**common, defaults_trial=False).defaults_trial is False
    assert build_settings(**common, baseline=True).defaults_trial is True
    with pytest.raises(ConfigError, match="tune.defaults_trial must be true or false, got 'yes'"):
        build_settings(**common, section={"defaults_trial": "yes"})


def test_wall_clock_budget_stops_when_a_trial_cannot_fit() -> None:
    budget = Budget(limit=None, deadline=time.time() + 10)
    assert budget.claim(expected=None)
    assert budget.claim(expected=5.0)
    assert not budget.claim(expected=30.0)
    assert not Budget(limit=None, deadline=time.time() - 1).claim()


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def spec(workdir: Path, data) -> Path:
    (workdir / "space.yaml").write_text("embed_dim: [16, 64]\n")
    return write_planted_spec(workdir, data)


CLI_FAST = [
    "--epochs",
    "3",
    "--early-stop-patience",
    "0",
    "--learning-rate",
    "0.05",
    "--search-space",
    "space.yaml",
]


def test_cli_summary_and_json_report_the_comparison(spec: Path, workdir: Path) -> None:
    args = [
        "tune",
        "-m",
        "BPR",
        "-d",
        "tiny.yaml",
        "--trials",
        "2",
        "--tracking-uri",
        f"sqlite:///{workdir}/m.db",
    ]
    result = CliRunner().invoke(cli, [*args, *CLI_FAST, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["defaults"]["number"] == 0
    assert set(summary["vs_defaults"]) >= {"valid", "test", "defaults_trial", "best_trial"}

    result = CliRunner().invoke(cli, [*args, *CLI_FAST, "--study-name", "text"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "vs the defaults (trial 0)" in result.stdout
    assert "validation: ndcg@10" in result.stdout and "test (not used to choose): ndcg@10" in result.stdout


def test_two_workers_on_sqlite_run_the_defaults_trial_once(spec: Path, workdir: Path) -> None:
    args = ["tune", "-m", "BPR", "-d", "tiny.yaml", "--trials", "4", "--workers", "2"]
    args += ["--tracking-uri", f"sqlite:///{workdir}/m.db", *CLI_FAST, "-q"]
    out = subprocess.run(
        [sys.executable, "-m", "recstudio", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="BPR-tiny", storage="sqlite:///optuna.db")
    assert len(study.trials) == 4
    assert [t.number for t in study.trials if t.user_attrs.get("defaults")] == [0]
    assert study.trials[0].state.name == "COMPLETE" and study.trials[0].params == {"model.embed_dim": 64}
    assert "vs the defaults (trial 0)" in out.stdout
