"""Resumable runs (``recstudio run --resume``): a run continued from its ``last.ckpt`` trains as
the uninterrupted run would have, and a resume that would change the experiment is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recstudio.errors import ConfigError
from recstudio.experiment import build_overrides, resolve_config
from recstudio.pipeline import RunOptions, run
from recstudio.resume import ResumePoint
from recstudio.testing import planted_data
from tests.test_cli_run import write_toy_dataset


def _cfg(model: str, epochs: int, sets: tuple[str, ...] = (), patience: int = 10):
    overrides = build_overrides(sets, {})
    overrides.update({"epochs": epochs, "early_stop_patience": patience, "max_minutes": 30})
    return resolve_config(model=model, dataset="planted", overrides=overrides)


def _options(folder: Path, resume: ResumePoint | None = None) -> RunOptions:
    return RunOptions(tracking=False, quiet=True, progress="none", checkpoint_dir=str(folder), resume=resume)


def _state(folder: Path) -> dict:
    return torch.load(folder / "last.ckpt", weights_only=True)


def _history(state: dict) -> list[dict]:
    (key,) = [k for k in state["callbacks"] if "EpochRecorder" in k]
    rows = state["callbacks"][key]["history"]
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


@pytest.mark.parametrize(
    ("model", "sets"),
    [
        # a model-based sampler rebuilt every epoch from the weights, drawing from the global RNG
        ("BPR", ("model.sampler=midx_uni", "model.loss=sampled_softmax", "model.num_negatives=4")),
        ("MultiVAE", ()),  # dropout and the reparameterisation noise; KL annealing's step buffer
        ("SASRec", ("model.num_layers=1", "model.hidden_size=16")),  # the sequence view's epochs
    ],
)
def test_a_resumed_run_trains_as_the_uninterrupted_one(tmp_path: Path, model: str, sets: tuple) -> None:
    data = planted_data(seed=1)
    whole, first, rest = tmp_path / "whole", tmp_path / "first", tmp_path / "rest"
    uninterrupted = run(_cfg(model, 4, sets), _options(whole), data=data)
    stopped = run(_cfg(model, 2, sets), _options(first), data=data)
    assert stopped["epochs"] == 2 and Path(stopped["resume_checkpoint"]).is_file()

    point = ResumePoint(first / "last.ckpt")
    continued = run(_cfg(model, 4, sets), _options(rest, point), data=data)

    assert continued["epochs"] == uninterrupted["epochs"] == 4
    assert continued["best_epoch"] == uninterrupted["best_epoch"]
    assert continued["test"] == uninterrupted["test"]
    a, b = _state(whole), _state(rest)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    # every epoch's loss and validation metrics, the two resumed epochs included
    assert _history(a) == _history(b)
    assert [row["epoch"] for row in _history(b)] == [0, 1, 2, 3]


def test_an_interrupted_run_resumes_from_its_last_saved_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pytorch_lightning as pl

    import recstudio.resume

    monkeypatch.setattr(recstudio.resume, "SAVE_INTERVAL_SECONDS", 0.0)  # save every epoch

    class CtrlC(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 2:  # before epoch 2 is saved: the last saved is epoch 1
                raise KeyboardInterrupt

    data = planted_data(seed=1)
    uninterrupted = run(_cfg("BPR", 4), _options(tmp_path / "whole"), data=data)
    options = _options(tmp_path / "cut")
    options.callbacks = [CtrlC()]
    with pytest.raises(KeyboardInterrupt):
        run(_cfg("BPR", 4), options, data=data)
    last = tmp_path / "cut" / "last.ckpt"
    assert f"recstudio run --resume {last}" in caplog.text
    point = ResumePoint(last)
    assert point.epoch == 1
    continued = run(_cfg("BPR", 4), _options(tmp_path / "rest", point), data=data)
    assert continued["test"] == uninterrupted["test"]
    assert _history(_state(tmp_path / "rest")) == _history(_state(tmp_path / "whole"))


def test_a_larger_patience_continues_a_run_that_early_stopping_ended(tmp_path: Path) -> None:
    data = planted_data(seed=1)
    sets = ("model.embed_dim=8",)
    # a learning rate this high peaks within a few epochs on planted data and then falls back
    cfg = _cfg("BPR", 60, (*sets, "train.learning_rate=0.3"), patience=1)
    stopped = run(cfg, _options(tmp_path / "a"), data=data)
    assert stopped["stopped"] == "early_stopping" and stopped["epochs"] < 60
    point = ResumePoint(tmp_path / "a" / "last.ckpt")
    assert point.epoch == stopped["epochs"] - 1
    more = stopped["epochs"] + 3
    cfg = _cfg("BPR", more, (*sets, "train.learning_rate=0.3"), patience=50)
    continued = run(cfg, _options(tmp_path / "b", point), data=data)
    assert continued["epochs"] == more and continued["stopped"] == "epochs"
    # the best epoch so far is kept: the continued run's best is at least as good
    assert continued["valid"]["ndcg@10"] >= stopped["valid"]["ndcg@10"]


def test_resuming_on_changed_data_is_refused(tmp_path: Path) -> None:
    data = planted_data(seed=1)
    run(_cfg("BPR", 1), _options(tmp_path / "a"), data=data)
    point = ResumePoint(tmp_path / "a" / "last.ckpt")
    with pytest.raises(ConfigError, match="data changed since the checkpoint"):
        run(_cfg("BPR", 2), _options(tmp_path / "b", point), data=planted_data(seed=2))


def test_a_weights_only_checkpoint_is_not_a_resume_point(tmp_path: Path) -> None:
    data = planted_data(seed=1)
    result = run(_cfg("BPR", 1), _options(tmp_path), data=data)
    with pytest.raises(ConfigError, match="not a resumable checkpoint"):
        ResumePoint(Path(result["checkpoint"]))


def _cli_json(args: list[str]) -> dict:
    from click.testing import CliRunner

    from recstudio.cli import cli

    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _cli_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    from recstudio.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_resume_by_run_id_through_the_cli(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    spec = write_toy_dataset(workdir)
    args = ["run", "-m", "BPR", "-d", str(spec), "--set", "model.embed_dim=16", "--json", "--no-log-model"]
    run_id = _cli_json([*args, "--epochs", "2"])["run_id"]

    result = _cli_json(["run", "--resume", run_id, "--epochs", "3", "--json", "--no-log-model"])
    assert result["run_id"] != run_id and result["epochs"] == 3 and result["model"] == "BPR"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    resumed = client.get_run(result["run_id"])
    assert resumed.data.tags["recstudio.resumed_from"] == run_id
    # the new run's curves hold the earlier epochs too
    steps = [m.step for m in client.get_metric_history(result["run_id"], "train_loss")]
    assert sorted(steps) == [0, 1, 2]
    assert [a.path for a in client.list_artifacts(result["run_id"], "resume")] == ["resume/last.ckpt"]

    changed = _cli_error(["run", "--resume", run_id, "--set", "model.embed_dim=32"], capsys)
    assert changed.startswith("error: --resume continues the same experiment")
    assert "'model.embed_dim' was 16 in the checkpoint, not 32" in changed
    unknown = _cli_error(["run", "--resume", "no-such-run"], capsys)
    assert "neither a checkpoint file nor an MLflow run id" in unknown
    done = _cli_error(["run", "--resume", run_id], capsys)
    assert "has run 2 epochs and train.epochs is 2" in done
    several = _cli_error(["run", "--resume", run_id, "--devices", "2"], capsys)
    assert "one device" in several
