"""``recstudio run --repeat N``: N seeds of one configuration, each a child MLflow run, and a
parent run with the mean and standard deviation of every test metric."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import recstudio.pipeline
from recstudio.cli import cli
from recstudio.experiment import resolve_config
from recstudio.pipeline import RunOptions
from recstudio.repeat import run_repeated, summarize
from recstudio.testing import planted_data, write_planted_spec

FAST = ["--epochs", "2", "--early-stop-patience", "0", "--learning-rate", "0.05", "-s", "model.embed_dim=8"]


def _invoke(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_repeat_trains_each_seed_and_logs_their_mean(workdir: Path) -> None:
    spec = write_planted_spec(workdir, planted_data(num_users=80, num_items=40, min_len=8, max_len=12))
    args = ["run", "-m", "BPR", "-d", str(spec), *FAST, "--json", "--no-log-model"]
    repeated = _invoke([*args, "--repeat", "3", "--seed", "7"])
    assert repeated["seeds"] == [7, 8, 9] and len(repeated["runs"]) == 3
    ndcg = [r["test"]["ndcg@10"] for r in repeated["runs"]]
    assert len(set(ndcg)) > 1  # the seeds differ
    assert repeated["mean"]["test/ndcg@10"] == pytest.approx(statistics.fmean(ndcg))
    assert repeated["std"]["test/ndcg@10"] == pytest.approx(statistics.stdev(ndcg))

    # each child is the run that seed gives alone
    alone = _invoke([*args, "--seed", "8"])
    assert alone["test"] == repeated["runs"][1]["test"]

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    parent = client.get_run(repeated["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["recstudio.repeat"] == "3"
    assert parent.data.params["train.seeds"] == "7,8,9" and "train.seed" not in parent.data.params
    assert parent.data.metrics["test_ndcg_at_10"] == pytest.approx(statistics.fmean(ndcg))
    assert parent.data.metrics["test_ndcg_at_10_std"] == pytest.approx(statistics.stdev(ndcg))
    for seed, result in zip(repeated["seeds"], repeated["runs"], strict=True):
        child = client.get_run(result["run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["train.seed"] == str(seed)


def test_a_failed_seed_fails_the_parent_and_keeps_the_runs_before_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = recstudio.pipeline.run
    calls: list[int] = []

    def failing_second(cfg, options, data=None, trial=None):  # noqa: ANN001, ANN202
        calls.append(cfg.train.seed)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real_run(cfg, options, data=data, trial=trial)

    monkeypatch.setattr(recstudio.pipeline, "run", failing_second)
    spec = write_planted_spec(workdir, planted_data(num_users=80, num_items=40, min_len=8, max_len=12))
    cfg = resolve_config(model="BPR", dataset=str(spec), overrides={"epochs": 1, "early_stop_patience": 0})
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    options = RunOptions(tracking_uri=uri, quiet=True, progress="none", log_model=False)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_repeated(cfg, options, 3)
    assert calls == [2022, 2023]  # the third seed never started
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("recstudio").experiment_id])
    parent = [r for r in runs if "recstudio.repeat" in r.data.tags]
    assert [r.info.status for r in parent] == ["FAILED"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert [r.info.status for r in children] == ["FINISHED"]


def test_summary_is_the_mean_and_sample_deviation() -> None:
    runs = [
        {"test": {"ndcg@10": 0.2}, "valid": {"ndcg@10": 0.3}, "best_epoch": 4, "epochs": 9},
        {"test": {"ndcg@10": 0.4}, "valid": {"ndcg@10": 0.5}, "best_epoch": 6, "epochs": 11},
    ]
    mean, std = summarize(runs, "ndcg@10")
    assert mean == pytest.approx({"test/ndcg@10": 0.3, "valid/ndcg@10": 0.4, "best_epoch": 5, "epochs": 10})
    assert std["test/ndcg@10"] == pytest.approx(statistics.stdev([0.2, 0.4]))
    _, single = summarize(runs[:1], "ndcg@10")
    assert single["test/ndcg@10"] == 0.0
