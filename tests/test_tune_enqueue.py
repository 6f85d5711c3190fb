"""``recstudio tune --enqueue``: points run first (after the defaults trial), from a flat mapping,
a list, or a full config such as ``recstudio best --export``'s; a resumed study does not repeat
them; bad entries fail with one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from recstudio.cli import cli, main
from recstudio.errors import ConfigError
from recstudio.model.registry import get_model_class
from recstudio.testing import planted_data, write_planted_spec
from recstudio.tune.space import enqueue_params, normalize

SPACE = {
    "embed_dim": [16, 32, 64],
    "train.learning_rate": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
}


@pytest.fixture(scope="module")
def data():
    return planted_data(num_users=120, num_items=60, min_len=10, max_len=16)


@pytest.fixture
def spec(workdir: Path, data) -> Path:
    (workdir / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return write_planted_spec(workdir, data)


def tune_args(workdir: Path, *extra: str, trials: int = 3) -> list[str]:
    args = ["tune", "-m", "BPR", "-d", "tiny.yaml", "--trials", str(trials), "--epochs", "2"]
    args += ["--early-stop-patience", "0", "--search-space", "space.yaml", "-q", "--no-log-model"]
    return [*args, "--tracking-uri", f"sqlite:///{workdir}/m.db", *extra]


def tune(workdir: Path, *extra: str, trials: int = 3) -> object:
    return CliRunner().invoke(cli, tune_args(workdir, *extra, trials=trials))


def failure(workdir: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    """The one error line of a refused invocation (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(tune_args(workdir, *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def study(name: str = "BPR-tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage="sqlite:///optuna.db")


def test_enqueued_points_run_after_the_defaults_trial_and_are_not_repeated(spec: Path, workdir: Path) -> None:
    (workdir / "points.json").write_text(
        '[{"embed_dim": 16, "learning_rate": 0.02}, {"model.embed_dim": 32}]'
    )
    # no pruner: the sampled learning rate of the third trial may be pruned by chance
    result = tune(workdir, "--enqueue", "points.json", "--pruner", "none")
    assert result.exit_code == 0, result.output
    trials = study().trials
    assert trials[0].user_attrs["defaults"] is True
    assert trials[1].params == {"model.embed_dim": 16, "train.learning_rate": 0.02}
    assert trials[1].user_attrs["enqueued"] is True
    assert trials[2].params["model.embed_dim"] == 32  # the learning rate left out: sampled
    assert 1e-3 <= trials[2].params["train.learning_rate"] <= 0.1
    assert trials[2].user_attrs["enqueued"] is True
    assert all(t.state.name == "COMPLETE" for t in trials)
    run = MlflowClient(f"sqlite:///{workdir}/m.db").get_run(trials[1].user_attrs["mlflow_run_id"])
    assert run.data.tags["recstudio.tune.enqueued"] == "true"
    assert run.data.params["model.embed_dim"] == "16"

    # resuming with the same command does not queue the same points again
    result = tune(workdir, "--enqueue", "points.json", "--pruner", "none", trials=1)
    assert result.exit_code == 0, result.output
    trials = study().trials
    assert len(trials) == 4
    assert not trials[3].user_attrs.get("enqueued")


def test_an_exported_best_config_seeds_another_study(spec: Path, workdir: Path) -> None:
    """A full config (``recstudio best --export``) gives its searched keys; the rest is ignored."""
    result = tune(workdir, "--study-name", "first", "--set", "embed_dim=32", trials=1)
    assert result.exit_code == 0, result.output
    exported = CliRunner().invoke(cli, ["best", "first", "--export", "best.yaml"])
    assert exported.exit_code == 0, exported.output
    best = yaml.safe_load((workdir / "best.yaml").read_text())
    assert best["model"]["embed_dim"] == 32

    result = tune(workdir, "--study-name", "second", "--enqueue", "best.yaml", trials=2)
    assert result.exit_code == 0, result.output
    second = study("second").trials[1]
    assert second.user_attrs["enqueued"] is True
    assert second.params == {
        "model.embed_dim": 32,
        "train.learning_rate": pytest.approx(best["train"]["learning_rate"]),
    }


def test_tune_section_enqueues_too(spec: Path, workdir: Path) -> None:
    (workdir / "exp.yaml").write_text(
        "model: {name: BPR}\ndataset: tiny.yaml\ntune: {enqueue: {embed_dim: 16, learning_rate: 0.05}}\n"
    )
    args = ["tune", "-c", "exp.yaml", "--trials", "2", "--epochs", "1", "--search-space", "space.yaml"]
    result = CliRunner().invoke(cli, [*args, "-q", "--no-log-model", "--tracking-uri", f"sqlite:///{workdir}/m.db"])
    assert result.exit_code == 0, result.output
    assert study().trials[1].params == {"model.embed_dim": 16, "train.learning_rate": 0.05}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"num_negatives": 3}', "'num_negatives' is not searched in this study"),
        ('{"embed_dim": 48}', "model.embed_dim = 48 is outside the search space (choice [16, 32, 64])"),
        ('{"learning_rate": 0.5}', "train.learning_rate = 0.5 is outside the search space"),
        ('{"embd_dim": 16}', "unknown config key 'embd_dim'"),
        ("[1, 2]", "must hold a mapping of config key -> value"),
        ('{"model": {"name": "BPR"}}', "the config sets none of the searched keys"),
    ],
)
def test_bad_entries_fail_with_one_line(
    spec: Path, workdir: Path, capsys: pytest.CaptureFixture, content: str, message: str
) -> None:
    (workdir / "bad.json").write_text(content)
    err = failure(workdir, capsys, "--enqueue", "bad.json")
    assert message in err and "'bad.json'" in err
    assert not Path("optuna.db").exists() or not optuna.get_all_study_names("sqlite:///optuna.db")


def test_a_missing_file_and_a_fixed_key_are_named(
    spec: Path, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    err = failure(workdir, capsys, "--enqueue", "nowhere.yaml")
    assert "--enqueue file 'nowhere.yaml' does not exist" in err
    (workdir / "fixed.yaml").write_text("embed_dim: 16\n")
    err = failure(workdir, capsys, "--enqueue", "fixed.yaml", "--set", "embed_dim=32")
    assert "'embed_dim' is not searched in this study" in err


def test_encoded_choices_match_whatever_the_key_order() -> None:
    space = normalize({"hidden_sizes": [[64], [64, 64]]}, get_model_class("NGCF"))
    params = enqueue_params({"hidden_sizes": [64, 64]}, space, get_model_class("NGCF"), "test")
    assert params == {"model.hidden_sizes": "[64, 64]"}
    with pytest.raises(ConfigError, match=r"test: model.hidden_sizes = \[32\] is outside"):
        enqueue_params({"hidden_sizes": [32]}, space, get_model_class("NGCF"), "test")
