"""Multi-objective studies (issue 12, optional part): ``--cost`` adds costs minimised beside the
validation metric; the study's Pareto front is in the summary, the CLI text and the MLflow parent
run; trials are never pruned; the best trial is the front's best on the metric."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from recstudio.cli import cli, main
from recstudio.errors import ConfigError
from recstudio.experiment import resolve_config
from recstudio.model.registry import get_model_class
from recstudio.testing import planted_data, write_planted_spec
from recstudio.tune.objectives import check_costs, cost_values, primary_value
from recstudio.tune.runner import run_study
from recstudio.tune.settings import TuneSettings, build_settings
from recstudio.tune.space import normalize

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
        space=normalize({"embed_dim": [8, 16, 64]}, get_model_class("BPR")),
        metric="ndcg@10",
        study_name=name,
        storage=f"sqlite:///{tmp / 'optuna.db'}",
        trials=trials,
        seed=0,
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        experiment=f"mo-{name}",
        data=data,
        quiet=True,
        costs=("model_size",),
        pruner="none",
    )
    values.update(kwargs)
    return TuneSettings(**values)


def dominated(a: list[float], b: list[float]) -> bool:
    """``a`` is dominated by ``b`` (metric maximised, cost minimised)."""
    return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])


def test_pareto_front_in_summary_and_parent_run(workdir: Path, data) -> None:
    settings = settings_for(workdir, "size", data, trials=4)
    summary = run_study(settings)
    study = optuna.load_study(study_name="size", storage=settings.storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and study.trials[0].user_attrs["defaults"] is True
    for t in complete:
        assert not t.intermediate_values  # nothing reported: never pruned
        dim = t.user_attrs["config"]["model"]["embed_dim"]
        # BPR's state: user and item tables, (rows incl. padding) x dim
        assert t.values[1] == (data.num_users + data.num_items) * dim
        assert t.user_attrs["costs"] == {"model_size": t.values[1]}

    front = summary["pareto_front"]
    assert summary["objectives"] == ["ndcg@10", "model_size"]
    numbers = {t["number"] for t in front}
    for t in complete:  # the front is exactly the non-dominated trials
        beaten = any(dominated(t.values, o.values) for o in complete)
        assert (t.number in numbers) == (not beaten)
    best = summary["best"]
    assert best["value"] == max(primary_value(t) for t in complete)
    assert best["number"] in numbers
    assert summary["vs_defaults"]["valid"]["gain"] >= 0

    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["pareto_front"] == ", ".join(str(t["number"]) for t in front)
    assert parent.data.params["costs"] == "model_size"
    rows = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "pareto_front.json", str(workdir))).read_text()
    )
    assert [r["trial"] for r in rows] == [t["number"] for t in front]
    assert set(rows[0]["objectives"]) == {"ndcg@10", "model_size"}
    for t in complete:
        tag = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["pareto_front"]
        assert tag == str(t.number in numbers).lower()
    plots = {Path(p).name for p in summary.get("plots", [])}
    assert "pareto_front.html" in plots and "intermediate_values.html" not in plots


def test_resuming_with_other_costs_is_refused(workdir: Path, data) -> None:
    run_study(settings_for(workdir, "resume", data, trials=1, tracking=False))
    with pytest.raises(ConfigError, match="objective"):
        run_study(settings_for(workdir, "resume", data, trials=1, tracking=False, costs=()))
    with pytest.raises(ConfigError, match="costs"):
        run_study(settings_for(workdir, "resume", data, trials=1, tracking=False, costs=("fit_seconds",)))


def test_cost_values_and_names() -> None:
    result = {"timings": {"fit_seconds": 2.5, "closed_form_seconds": 0.5}, "model_size": 1234}
    assert cost_values(result, ("fit_seconds", "model_size")) == [3.0, 1234.0]
    assert check_costs(["model_size", "model_size"]) == ("model_size",)
    with pytest.raises(ConfigError, match="unknown cost 'flops'"):
        check_costs(["flops"])


def test_settings_refuse_a_pruner_and_pick_none(tmp_path: Path) -> None:
    common = dict(
        model="BPR", dataset="ml-100k", data_dir=None, config_files=[], set_items=(), config_flags={}
    )
    settings = build_settings(**common, costs=("fit_seconds",))
    assert settings.pruner == "none" and settings.costs == ("fit_seconds",)
    with pytest.raises(ConfigError, match="pruner 'hyperband' cannot run a multi-objective study"):
        build_settings(**common, costs=("fit_seconds",), pruner="hyperband")
    settings = build_settings(**common, section={"costs": "model_size"})
    assert settings.costs == ("model_size",)
    with pytest.raises(ConfigError, match="tune.costs"):
        build_settings(**common, section={"costs": 3})


def test_cli_prints_the_front(workdir: Path, data, capsys: pytest.CaptureFixture[str]) -> None:
    write_planted_spec(workdir, data)
    (workdir / "space.yaml").write_text("embed_dim: [8, 64]\n")
    args = ["tune", "-m", "BPR", "-d", "tiny.yaml", "--trials", "2", "--cost", "model_size"]
    args += ["--epochs", "2", "--early-stop-patience", "0", "--search-space", "space.yaml"]
    args += ["--tracking-uri", f"sqlite:///{workdir}/m.db"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Pareto front (ndcg@10 vs model_size" in result.stdout
    assert re.search(r"trial \d+: ndcg@10 [\d.]+, model_size \d+", result.stdout), result.stdout
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--pruner", "median", "--study-name", "x"])
    assert exit_info.value.code == 2
    assert "error: pruner 'median' cannot run a multi-objective study" in capsys.readouterr().err
