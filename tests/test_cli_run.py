"""``recstudio run`` end to end through the real CLI process, and its error contract."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recstudio.testing import planted_data

SPEC = """\
name: toy
interactions:
  file: toy.tsv
  format: tsv
  columns: [user, item, rating, ts]
  roles: {user: user, item: item, rating: rating, timestamp: ts}
"""


def write_toy_dataset(folder: Path) -> Path:
    """A planted dataset written as a raw TSV plus a spec, as a user would bring it."""
    data = planted_data(num_users=80, num_items=40, seed=3)
    rows = []
    for part in (data.train, data.valid, data.test):
        for u, i, t in zip(part.user.tolist(), part.item.tolist(), part.time.tolist()):
            rows.append(f"{u}\t{i}\t{1 + (u + i) % 5}\t{int(t) + 1000}")
    (folder / "toy.tsv").write_text("\n".join(rows) + "\n")
    spec = folder / "toy.yaml"
    spec.write_text(SPEC)
    return spec


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recstudio", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_json_and_mlflow_record(workdir: Path):
    spec = write_toy_dataset(workdir)
    out = cli(
        "run",
        "-m",
        "BPR",
        "-d",
        str(spec),
        "--epochs",
        "4",
        "--set",
        "model.embed_dim=16",
        "--json",
        cwd=workdir,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)  # stdout holds exactly one JSON object
    assert {"run_id", "checkpoint", "valid", "test"} <= set(result)
    assert set(result["test"]) >= {
        "ndcg@10",
        "recall@10",
        "precision@10",
        "map@10",
        "mrr@10",
        "hit@10",
        "auc",
    }
    assert Path(result["checkpoint"]).is_file()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.embed_dim"] == "16"
    assert run.data.params["train.epochs"] == "4"
    # exclude_positives is None (the sampler decides); what it resolved to is logged beside it
    assert run.data.params["model.exclude_positives"] == "None"
    assert run.data.params["model.exclude_positives.resolved"] == "True"
    assert run.data.tags["model"] == "BPR"
    assert run.data.tags["cache_key"] == result["cache_key"]
    assert abs(run.data.metrics["test_ndcg_at_10"] - result["test"]["ndcg@10"]) < 1e-9
    history = client.get_metric_history(result["run_id"], "valid/ndcg_at_10")
    assert [m.step for m in history] == list(range(result["epochs"]))
    assert len(client.get_metric_history(result["run_id"], "train_loss")) == result["epochs"]
    # per-epoch curves, every test metric, and one best-epoch value: the monitor (issue 13)
    assert {k for k in run.data.metrics if not k.startswith(("valid/", "test_"))} == {
        "train_loss",
        "epoch_seconds",
        "best_epoch",
        "best_valid_ndcg_at_10",
        "model_size",
    }
    # BPR's state: a user and an item table of width 16 (padding rows included)
    assert run.data.metrics["model_size"] == result["model_size"] > 0
    assert result["model_size"] % 16 == 0
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"config.yaml", "metrics.json", "checkpoints", "resume"} <= artifacts  # resume/last.ckpt
    # the prepared data is the run's MLflow dataset input (the runs table's Dataset column)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "toy" and inp.dataset.digest == result["cache_key"][:16]
    assert [(t.key, t.value) for t in inp.tags] == [("mlflow.data.context", "training")]
    source = json.loads(inp.dataset.source)
    raw_file = source["files"]["toy.tsv"]
    assert raw_file["path"] == str(workdir / "toy.tsv") and len(raw_file["sha256"]) == 64
    assert json.loads(inp.dataset.profile)["train"] == result["data"]["train"]

    # the logged config reproduces the run
    config_path = client.download_artifacts(result["run_id"], "config.yaml", str(workdir))
    again = cli("run", "--config", config_path, "--json", "--no-tracking", cwd=workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["test"] == pytest.approx(result["test"], abs=1e-6)

    # `recstudio evaluate` scores the run's best checkpoint with its own config
    scored = cli("evaluate", "--run-id", result["run_id"], "--split", "test", "--json", cwd=workdir)
    assert scored.returncode == 0, scored.stderr[-3000:]
    evaluated = json.loads(scored.stdout)
    assert set(evaluated) == {"model", "dataset", "run_id", "test"}
    assert evaluated["test"] == pytest.approx(result["test"], abs=1e-6)


def test_evaluate_needs_one_source(workdir: Path) -> None:
    out = cli("evaluate", cwd=workdir)
    assert out.returncode == 2
    assert "exactly one of --run-id and --checkpoint" in out.stderr
    missing = cli("evaluate", "--run-id", "0123456789abcdef", "--json", cwd=workdir)
    assert missing.returncode == 2
    assert "0123456789abcdef" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "-m", "NoSuchModel", "-d", "ml-100k"], "unknown model 'NoSuchModel'"),
        (["run", "-m", "BPR", "-d", "no-such-dataset"], "no-such-dataset"),
        (["run", "-m", "BPR", "-d", "SPEC", "--set", "train.epohcs=3"], "unknown config key 'train.epohcs'"),
        (
            ["run", "-m", "BPR", "-d", "SPEC", "--set", "train.epochs=abc"],
            "'train.epochs' expects an integer",
        ),
        (["run", "-m", "BPR", "-d", "SPEC", "--min-rating", "9"], "removed every interaction"),
        (
            ["run", "-m", "BPR", "-d", "SPEC", "--set", "model.embed_dim=-5"],
            "config key 'model.embed_dim' must be >= 1, got -5",
        ),
        (
            ["run", "-m", "SASRec", "-d", "SPEC", "--set", "model.dropout=1.5"],
            "config key 'model.dropout' must be in [0, 1), got 1.5",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(workdir: Path, args, expected, capsys, monkeypatch):
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    spec = write_toy_dataset(workdir)
    args = [str(spec) if a == "SPEC" else a for a in args]
    code, err = main_in_process(args, capsys)
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], err[-2000:]
    assert not (workdir / "mlruns").exists()  # bad input records no MLflow run


def test_malformed_data_line_names_file_and_line(workdir: Path, capsys):
    spec = write_toy_dataset(workdir)
    lines = (workdir / "toy.tsv").read_text().splitlines()
    lines[6] = "12\t5\tfive\t1000"  # a rating must be a number
    (workdir / "toy.tsv").write_text("\n".join(lines) + "\n")
    code, err = main_in_process(["run", "-m", "BPR", "-d", str(spec)], capsys)
    assert code == 2
    assert "toy.tsv" in err and "line 7" in err, err[-2000:]
    assert "Traceback" not in err


def main_in_process(args: list[str], capsys) -> tuple[int, str]:
    """Run the CLI entry point in this process (fast: imports are already warm)."""
    from recstudio.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def test_help_is_fast_and_lists_flags(workdir: Path):
    t0 = time.perf_counter()
    out = cli("--help", cwd=workdir)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0 and "run" in out.stdout and "tune" in out.stdout
    assert elapsed < 3.0  # the interpreter start dominates; heavy imports happen inside commands
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "recstudio", "--help"],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines() if "|" in line}
    assert "click" in imported
    for heavy in ("torch", "pytorch_lightning", "mlflow", "optuna"):
        assert heavy not in imported, heavy
    run_help = cli("run", "--help", cwd=workdir)
    for flag in (
        "--epochs",
        "--learning-rate",
        "--batch-size",
        "--embed-dim",
        "--json",
        "--quiet",
        "--accelerator",
    ):
        assert flag in run_help.stdout


def test_models_command_lists_families(workdir: Path, capsys):
    from recstudio.cli import main

    main(["models"])
    out = capsys.readouterr().out
    for name in ("BPR", "NCF", "MultiVAE", "SASRec", "BERT4Rec", "WRMF", "EASE", "FM"):
        assert name in out
    assert "sequential:" in out and "feature-based:" in out


def test_models_command_shows_one_models_contract_defaults_and_space(workdir: Path, capsys):
    from recstudio.cli import main

    main(["models", "SASRec", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] == [
        {"name": "main", "view": "seq2seq", "optimizer": "main", "options": {"max_len": 50}}
    ]
    assert info["config"]["max_seq_len"] == 50 and info["config"]["loss"] == "softmax"
    assert "train.learning_rate" in info["search_space"]
    main(["models", "bpr"])
    out = capsys.readouterr().out
    assert "trains on: triplet" in out and "search space" in out and "reg_weight" in out
    assert "embed_dim = 64  (>= 1)" in out  # the allowed range beside the default


def test_python_api_matches_cli_result(workdir: Path):
    import recstudio

    spec = write_toy_dataset(workdir)
    result = recstudio.run(model="BPR", dataset=str(spec), train__epochs=2, model__embed_dim=8, quiet=True)
    assert result["run_id"] and result["epochs"] == 2
    assert "ndcg@10" in result["test"]
    assert result["stopped"] == "epochs"


def test_max_minutes_stops_after_a_whole_epoch_and_tests_the_best(workdir: Path):
    import recstudio

    spec = write_toy_dataset(workdir)
    result = recstudio.run(
        model="BPR",
        dataset=str(spec),
        train__epochs=10_000,
        train__max_minutes=1e-4,
        train__early_stop_patience=0,
        model__embed_dim=8,
        quiet=True,
    )
    assert result["stopped"] == "max_minutes"
    assert 1 <= result["epochs"] < 10_000 and result["best_epoch"] < result["epochs"]
    assert "ndcg@10" in result["test"] and "ndcg@10" in result["valid"]


def test_min_epochs_holds_early_stopping_back_but_not_the_time_cap(workdir: Path):
    """A model that cannot improve (learning rate 1e-30) stops after ``patience`` checks, or at
    ``train.min_epochs`` when that is later; ``max_minutes`` still ends it before the minimum."""
    import recstudio

    spec = write_toy_dataset(workdir)
    flat = dict(model="BPR", dataset=str(spec), train__epochs=50, train__learning_rate=1e-30,
                train__early_stop_patience=1, model__embed_dim=8, quiet=True)  # fmt: skip
    plain = recstudio.run(**flat)
    assert plain["stopped"] == "early_stopping" and plain["epochs"] == 2
    held = recstudio.run(**flat, train__min_epochs=6)
    assert held["stopped"] == "early_stopping" and held["epochs"] == 6
    capped = recstudio.run(**flat, train__min_epochs=40, train__max_minutes=1e-4)
    assert capped["stopped"] == "max_minutes" and capped["epochs"] == 1
    from recstudio.errors import ConfigError

    with pytest.raises(ConfigError, match="train.min_epochs"):
        recstudio.run(**flat, train__min_epochs=-1)


@pytest.mark.parametrize(
    "args, code", [(["--version"], 0), (["run", "-m", "NoSuchModel", "-d", "ml-100k"], 2)]
)
def test_console_exit_runs_exit_handlers_and_keeps_the_code(tmp_path: Path, args: list[str], code: int):
    """The console entry skips the interpreter teardown but not atexit handlers or the code."""
    script = (
        "import atexit, sys\n"
        "from recstudio import cli\n"
        "atexit.register(lambda: print('exit handler ran', flush=True))\n"
        f"sys.argv = ['recstudio', *{args!r}]\n"
        "cli.console_main()\n"
        "print('not reached')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == code, out.stderr
    assert "exit handler ran" in out.stdout and "not reached" not in out.stdout
    if code:
        assert "unknown model 'NoSuchModel'" in out.stderr
    else:
        assert "version" in out.stdout


def test_summary_shows_every_cutoff_asked_for(workdir: Path, capsys) -> None:
    """``--set 'eval.cutoffs=[10,20]'``: the summary table has a column per cutoff (issue 13)."""
    from recstudio.cli import main
    from recstudio.commands.run import summary_lines

    spec = write_toy_dataset(workdir)
    main(["run", "-m", "BPR", "-d", str(spec), "--epochs", "2", "--no-tracking", "-q",
          "--set", "eval.cutoffs=[10,20]"])  # fmt: skip
    out = capsys.readouterr().out
    assert "@10" in out and "@20" in out and "ndcg" in out and "auc=" in out

    lines = summary_lines({"ndcg@10": 0.25, "ndcg@20": 0.3, "recall@20": 0.5, "auc": 0.9})
    assert lines[0].split() == ["@10", "@20"]
    assert lines[1].split() == ["ndcg", "0.2500", "0.3000"]
    assert lines[2].split() == ["recall", "-", "0.5000"]
    assert lines[3] == "auc=0.9000"


def test_cache_dir_option_and_help_that_says_what_works(workdir: Path, capsys) -> None:
    """run/tune/evaluate take --cache-dir (the cache error names it); the help texts give the
    tracking default the code uses and the storage URL form the README uses (issue 13)."""
    from click.testing import CliRunner

    from recstudio.cli import cli as group
    from recstudio.cli import main

    spec = write_toy_dataset(workdir)
    cache = workdir / "my-cache"
    main(
        [
            "run",
            "-m",
            "BPR",
            "-d",
            str(spec),
            "--epochs",
            "1",
            "--no-tracking",
            "-q",
            "--cache-dir",
            str(cache),
        ]
    )
    assert any(cache.rglob("manifest.json")) or any(cache.rglob("*.parquet"))
    for command in ("run", "tune", "evaluate"):
        text = CliRunner().invoke(group, [command, "--help"]).output
        assert "--cache-dir" in text, command
        assert "sqlite:///./mlruns/mlflow.db" in text and "or ./mlruns)" not in text, command
    tune_help = CliRunner().invoke(group, ["tune", "--help"]).output
    assert "postgresql+psycopg://" in tune_help and "postgresql://" not in tune_help


def test_a_tracked_run_leaves_no_temporary_checkpoint_folder(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its checkpoints are MLflow artifacts; an untracked run keeps its folder (the result
    points there)."""
    import tempfile

    from recstudio.experiment import resolve_config
    from recstudio.pipeline import RunOptions, run

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = resolve_config(model="BPR", dataset="planted", overrides={"epochs": 2})
    data = planted_data(num_users=40, num_items=20, seed=1)
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    tracked = run(cfg, RunOptions(tracking_uri=uri, quiet=True, progress="none", log_model=False), data=data)
    assert Path(tracked["checkpoint"]).is_file() and Path(tracked["resume_checkpoint"]).is_file()
    assert not list(scratch.glob("recstudio-ckpt-*"))
    untracked = run(cfg, RunOptions(tracking=False, quiet=True, progress="none"), data=data)
    (folder,) = scratch.glob("recstudio-ckpt-*")
    assert Path(untracked["checkpoint"]).parent == folder
