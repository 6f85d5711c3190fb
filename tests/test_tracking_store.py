"""The local SQLite MLflow store: new stores are copies of a migrated, empty template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recstudio.track.tracker import mlflow_client, seed_sqlite_store


def test_new_store_is_a_copy_of_the_template_and_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.store.db.utils as db_utils

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = mlflow_client(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    templates = list((tmp_path / "cache" / "recstudio").glob("mlflow-*-empty-store.db"))
    assert len(templates) == 1
    assert [e.name for e in first.search_experiments()] == ["Default"]

    def no_migrations(engine: object) -> None:
        raise AssertionError("a seeded store must not run MLflow's migrations")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migrations)
    second = mlflow_client(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    (default,) = second.search_experiments()
    # the template's own default experiment is gone; MLflow made this one for this store
    assert default.experiment_id == "0" and "cache" not in default.artifact_location
    exp = second.create_experiment("exp", artifact_location=(tmp_path / "b" / "artifacts").as_uri())
    run = second.create_run(exp)
    second.log_metric(run.info.run_id, "ndcg", 0.25, step=3)
    second.set_terminated(run.info.run_id)
    got = second.get_run(run.info.run_id)
    assert got.data.metrics == {"ndcg": 0.25} and got.info.status == "FINISHED"
    assert [e.name for e in first.search_experiments()] == ["Default"]  # separate stores


def test_seeding_never_replaces_an_existing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"someone else's store")
    assert seed_sqlite_store(db) is False
    assert db.read_bytes() == b"someone else's store"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mlflow-seed-")]


def test_unusable_cache_falls_back_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the template cannot be written here
    client = mlflow_client(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]


def _unusable_stores(tmp_path: Path) -> list[str]:
    """Local stores that can never work: a file that is not a database, and (when this user
    cannot write there, as even root cannot in sysfs) a folder without write permission."""
    bad = tmp_path / "garbage.db"
    bad.write_text("not a database")
    stores = [f"sqlite:///{bad}"]
    import os
    import tempfile

    try:
        os.close(tempfile.mkstemp(dir="/sys")[0])
    except OSError:
        stores.append("sqlite:////sys/mlflow.db")
    return stores


@pytest.mark.parametrize("command", ["run", "tune"])
def test_an_unusable_local_store_fails_at_once_in_one_line(
    workdir: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    """MLflow retries a SQL store for ~100 s; a local one that cannot work fails in seconds."""
    import time

    from recstudio.cli import main
    from tests.test_cli_run import write_toy_dataset

    spec = write_toy_dataset(workdir)
    for uri in _unusable_stores(workdir):
        extra = ["--trials", "1"] if command == "tune" else []
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as exc:
            main([command, "-m", "BPR", "-d", str(spec), "--epochs", "1", "-q",
                  "--tracking-uri", uri, *extra])  # fmt: skip
        elapsed = time.perf_counter() - t0
        err = capsys.readouterr().err
        assert exc.value.code == 2, err[-2000:]
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and uri in errors[0] and "--tracking-uri" in errors[0], err[-2000:]
        assert "Traceback" not in err and "retried" not in err
        assert elapsed < 15, elapsed


def test_experiments_open_as_model_training_in_the_mlflow_ui(tmp_path: Path) -> None:
    """MLflow 3's UI reads ``mlflow.experimentKind``; without it an experiment with no traces
    opens on the GenAI overview instead of the runs table (issue 13)."""
    from recstudio.track.tracker import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, experiment="kinds")
    tracker.end()
    client = mlflow_client(uri)
    assert client.get_experiment_by_name("kinds").tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment made elsewhere without a kind gets one; a kind set by the user is kept
    bare = client.create_experiment("bare")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    Tracker(uri, experiment="bare").end()
    Tracker(uri, experiment="chosen").end()
    assert client.get_experiment(bare).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_ui_links_open_recstudio_experiments_on_the_runs_table(tmp_path: Path) -> None:
    from recstudio.commands.ui import experiment_links
    from recstudio.track.tracker import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, experiment="mine").end()
    mlflow_client(uri).create_experiment("genai-app", tags={"mlflow.experimentKind": "genai_development"})
    links = dict(experiment_links(uri, "http://127.0.0.1:5000"))
    exp_id = mlflow_client(uri).get_experiment_by_name("mine").experiment_id
    assert links["mine"] == f"http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning"
    # every experiment has the general view: newest runs first with the key columns
    assert links["  runs"] == (
        f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?viewStateShareKey=runs&workflowType=machine_learning"
    )
    assert not [label for label in links if "genai" in label]
    view = json.loads(mlflow_client(uri).get_experiment(exp_id).tags["mlflow.sharedViewState.runs"])
    assert view["selectedColumns"][:3] == ["tags.`model`", "tags.`dataset`", "metrics.`test_ndcg_at_10`"]


def test_ui_links_include_each_study_view(tmp_path: Path) -> None:
    from recstudio.commands.ui import experiment_links
    from recstudio.track.tracker import Tracker
    from recstudio.track.views import save_view, study_view

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, experiment="mine")
    tracker.end()
    state = study_view("s1", "best_valid_ndcg_at_10", True, ["model.embed_dim"])
    save_view(mlflow_client(uri), tracker.experiment_id, "study-s1", state)
    links = experiment_links(uri, "http://h:5000")
    base = f"http://h:5000/#/experiments/{tracker.experiment_id}"
    assert [label for label, _ in links] == ["mine", "  runs", "  study-s1", "  study-s1 charts"]
    links = links[1:]
    assert links[1][1] == f"{base}/runs?viewStateShareKey=study-s1&workflowType=machine_learning"
    assert links[2][1] == links[1][1] + "&compareRunsMode=CHART"
