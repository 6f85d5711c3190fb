"""``recstudio tune | studies | best`` on a tiny dataset spec: the exported best config reproduces
the trial with ``recstudio run --config``, the dataset is prepared once, data.* parameters get
their own cache entries, and bad input is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import recstudio.data
from recstudio.cli import cli, main
from recstudio.testing import planted_data, write_planted_spec


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


@pytest.fixture
def spec(workdir: Path) -> Path:
    """A planted dataset written as a TSV file with its spec."""
    return write_planted_spec(workdir, planted_data(num_users=120, num_items=60, min_len=10, max_len=16))


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every preprocessing run (a cache miss) of the data layer."""
    calls: list[str] = []
    build = recstudio.data._build

    def counting(spec, cfg, *args, **kwargs):
        calls.append(f"min_user_inter={cfg.min_user_inter}")
        return build(spec, cfg, *args, **kwargs)

    monkeypatch.setattr(recstudio.data, "_build", counting)
    return calls


def invoke(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


FAST = ["--epochs", "2", "--early-stop-patience", "0", "--learning-rate", "0.05", "-q"]


def test_tune_best_export_reproduces_with_run(
    spec: Path, workdir: Path, tracking_uri: str, builds: list[str]
) -> None:
    (workdir / "space.yaml").write_text(
        "embed_dim: [8, 16]\nreg_weight: {type: float, low: 1e-6, high: 1e-3, log: true}\n"
    )
    common = ["--storage", f"sqlite:///{workdir / 'studies.db'}"]
    summary = invoke(
        [
            "tune",
            "-m",
            "BPR",
            "-d",
            "tiny.yaml",
            "--trials",
            "2",
            "--search-space",
            "space.yaml",
            "--pruner",
            "none",
            "--no-defaults-trial",  # the space excludes BPR's defaults; test_tune_defaults.py covers it
        ]
        + ["--seed", "3", "--tracking-uri", tracking_uri, "--experiment", "cli", "--json", *FAST, *common]
    )
    assert summary["study"] == "BPR-tiny"
    assert summary["invocation"]["trials"]["COMPLETE"] == 2
    assert builds == ["min_user_inter=0"]  # prepared once, before the trials; trials read the cache

    studies = invoke(["studies", "--json", *common])
    assert [(s["study"], s["model"], s["trials"]["COMPLETE"]) for s in studies] == [("BPR-tiny", "BPR", 2)]

    best = invoke(["best", "BPR-tiny", "--export", "best.yaml", "--json", *common])
    assert best["value"] == pytest.approx(summary["best"]["value"])
    assert best["run_id"] == summary["best"]["run_id"]
    assert set(best["params"]) == {"model.embed_dim", "model.reg_weight"}
    exported = (workdir / "best.yaml").read_text()
    assert exported.startswith("# Best trial")

    rerun = invoke(["run", "--config", "best.yaml", "--json", "-q", "--tracking-uri", tracking_uri])
    assert rerun["valid"]["ndcg@10"] == pytest.approx(best["value"], rel=1e-5)
    assert builds == ["min_user_inter=0"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    trial_config = client.download_artifacts(best["run_id"], "config.yaml", str(workdir / "a"))
    run_config = client.download_artifacts(rerun["run_id"], "config.yaml", str(workdir / "b"))
    assert Path(trial_config).read_text() == Path(run_config).read_text()

    # a second invocation resumes the study and counts its own trials
    again = invoke(
        [
            "tune",
            "-m",
            "BPR",
            "-d",
            "tiny.yaml",
            "--trials",
            "1",
            "--search-space",
            "space.yaml",
            "--pruner",
            "none",
            "--no-defaults-trial",
        ]
        + ["--tracking-uri", tracking_uri, "--experiment", "cli", "--json", *FAST, *common]
    )
    assert again["invocation"]["trial_numbers"] == [2]
    assert again["parent_run_id"] == summary["parent_run_id"]
    assert sum(again["trials"].values()) == 3


def test_two_workers_on_a_fresh_sqlite_storage_lose_no_trials_and_read_the_cache(
    spec: Path, workdir: Path, tracking_uri: str
) -> None:
    import os
    import subprocess
    import sys

    import optuna
    from mlflow import MlflowClient

    assert not (workdir / "optuna.db").exists()
    args = ["tune", "-m", "BPR", "-d", "tiny.yaml", "--trials", "5", "--workers", "2", "--pruner", "none"]
    args += ["--tracking-uri", tracking_uri, "--experiment", "cli-workers", *FAST[:-1]]  # logs on: not -q
    out = subprocess.run(
        [sys.executable, "-m", "recstudio", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "5 new trials (5 complete" in out.stdout
    study = optuna.load_study(study_name="BPR-tiny", storage="sqlite:///optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5  # exactly --trials, none lost
    # prepared once by the parent; each trial, in either worker, read the parquet cache
    assert out.stderr.count("tiny: prepared in") == 1
    assert out.stderr.count("tiny: cache hit") == 5
    assert len({t.user_attrs["result"]["cache_key"] for t in study.trials}) == 1
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("cli-workers")
    children = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{study.user_attrs['mlflow_parent_run_id']}'",
    )
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2, 3, 4]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["recstudio.tune.worker"] for r in children} <= {"0", "1"}


def test_data_parameters_get_their_own_cache_entries(
    spec: Path, workdir: Path, tracking_uri: str, builds: list[str]
) -> None:
    (workdir / "space.yaml").write_text("data.min_user_inter: [0, 13]\n")
    summary = invoke(
        ["tune", "-m", "BPR", "-d", "tiny.yaml", "--trials", "3", "--search-space", "space.yaml"]
        + [
            "--sampler",
            "grid",
            "--pruner",
            "none",
            "--tracking-uri",
            tracking_uri,
            "--experiment",
            "cli-data",
        ]
        + ["--json", "--storage", f"sqlite:///{workdir / 'data.db'}", *FAST]
    )
    # the defaults trial (min_user_inter 0), then the grid's two points: the study stops there
    # rather than repeating one (Optuna's grid sampler does not count an enqueued trial)
    assert summary["invocation"]["trials"]["COMPLETE"] == 3
    assert sorted(builds) == ["min_user_inter=0", "min_user_inter=13"]
    entries = recstudio.data.list_cache()
    assert len(entries) == 2

    import optuna

    study = optuna.load_study(study_name="BPR-tiny", storage=f"sqlite:///{workdir / 'data.db'}")
    keys = {t.params["data.min_user_inter"]: t.user_attrs["result"]["cache_key"] for t in study.trials}
    assert keys[0] != keys[13]


def test_tune_section_of_an_experiment_file_and_pinned_keys(spec: Path, workdir: Path) -> None:
    from recstudio.tune.settings import build_settings, split_tune_sections

    (workdir / "exp.yaml").write_text(
        "model: {name: BPR}\n"
        "dataset: tiny.yaml\n"
        "train: {epochs: 4}\n"
        "tune:\n"
        "  trials: 7\n"
        "  sampler: random\n"
        "  pruner: {name: hyperband, reduction_factor: 2}\n"
        "  metric: recall@20\n"
        "  search_space:\n"
        "    embed_dim: [8, 16]\n"
        "    train.learning_rate: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
    )
    files, section = split_tune_sections(("exp.yaml",), workdir)
    settings = build_settings(
        model=None,
        dataset=None,
        data_dir=None,
        config_files=files,
        set_items=("embed_dim=32",),
        config_flags={},
        section=section,
        trials=None,
        workers=None,
    )
    assert settings.model == "BPR" and settings.study_name == "BPR-tiny"
    assert Path(settings.dataset).is_absolute()
    assert list(settings.space) == ["train.learning_rate"]  # --set fixes embed_dim
    assert settings.base_config["model"]["embed_dim"] == 32
    assert settings.base_config["train"]["epochs"] == 4
    assert settings.base_config["train"]["monitor"] == "recall@20"
    assert settings.metric == "recall@20"
    assert settings.trials == 7 and settings.sampler == "random"
    assert settings.pruner == "hyperband" and settings.pruner_options == {"reduction_factor": 2}
    assert settings.seed is None  # the sampler is seeded only by an explicit --seed

    with pytest.raises(Exception, match="unknown key 'tune.trails'"):
        (workdir / "typo.yaml").write_text("tune: {trails: 3}\n")
        split_tune_sections(("typo.yaml",), workdir)


@pytest.mark.parametrize(
    ("args", "files", "message"),
    [
        (
            ["tune", "-m", "BPR", "-d", "tiny.yaml", "--search-space", "bad.yaml"],
            {"bad.yaml": "reg_weight: {type: float, low: 1.0, high: 0.1}\n"},
            "search space 'model.reg_weight': `low <= high` must hold, but got low=1.0, high=0.1",
        ),
        (
            ["tune", "-m", "BPR", "-d", "tiny.yaml", "--search-space", "nni.json"],
            {"nni.json": '{"embed_dim": {"_type": "normal", "_value": [32, 8]}}'},
            "NNI search space 'embed_dim': _type 'normal' has no Optuna equivalent",
        ),
        (
            ["tune", "-m", "BPR", "-d", "tiny.yaml", "--search-space", "typo.yaml"],
            {"typo.yaml": "embed_dimm: [8, 16]\n"},
            "unknown config key 'embed_dimm' for this model (did you mean 'embed_dim'?)",
        ),
        (["studies", "--storage", "sqlite:///missing.db"], {}, "no Optuna storage at"),
        (
            ["tune", "-m", "BPR", "-d", "tiny.yaml", "--metric", "ndcg@10", "--monitor", "recall@10"],
            {},
            "--metric ndcg@10 and --monitor recall@10 disagree",
        ),
    ],
)
def test_bad_input_is_one_clear_error(
    spec: Path, workdir: Path, capsys: pytest.CaptureFixture, args: list[str], files: dict, message: str
) -> None:
    for name, text in files.items():
        (workdir / name).write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_best_of_an_unknown_study(spec: Path, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    import optuna

    optuna.create_study(storage="sqlite:///optuna.db", study_name="BPR-tiny", direction="maximize")
    with pytest.raises(SystemExit) as exit_info:
        main(["best", "BPR-tin"])
    assert exit_info.value.code == 2
    assert "no study named 'BPR-tin' in this storage (did you mean 'BPR-tiny'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["best", "BPR-tiny"])
    assert "has no completed trial yet" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")))
def test_ready_study_configs_are_valid(path: Path, tmp_path: Path) -> None:
    from recstudio.tune.settings import build_settings, split_tune_sections

    files, section = split_tune_sections((str(path),), tmp_path)
    if not section:
        pytest.skip("not a study config (no tune: section)")
    settings = build_settings(
        model=None,
        dataset=None,
        data_dir=None,
        config_files=files,
        set_items=(),
        config_flags={},
        section=section,
    )
    assert settings.space and settings.trials
    from recstudio.tune.strategies import make_pruner, make_sampler

    make_sampler(settings.sampler, settings.space, 0, settings.sampler_options)
    make_pruner(settings.pruner, settings.pruner_options, settings.base_config["train"]["epochs"])


@pytest.mark.parametrize(
    "sampler, pruner, expected",
    [
        (None, None, "calibrated"),
        ("tpe", None, "calibrated"),
        ("random", None, "calibrated"),
        ("tpe", "median", "median"),
    ],
)
def test_default_pruner_is_calibrated_for_every_sampler(
    spec: Path, workdir: Path, sampler: str | None, pruner: str | None, expected: str
) -> None:
    from recstudio.tune.settings import build_settings

    settings = build_settings(
        model="BPR",
        dataset="tiny.yaml",
        data_dir=None,
        config_files=[],
        set_items=(),
        config_flags={},
        sampler=sampler,
        pruner=pruner,
    )
    assert settings.pruner == expected
