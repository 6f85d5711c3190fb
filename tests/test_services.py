"""Checks against real services: PostgreSQL (Optuna RDB storage) and an MLflow tracking server.

Skipped unless ``RECSTUDIO_TEST_PG_URL`` and ``RECSTUDIO_TEST_MLFLOW_URL`` are set, which
``.ci/services.sh start STATEFILE`` provides (``source STATEFILE``). The fault tests also need
``RECSTUDIO_SERVICES_STATEFILE`` (written there too) to restart the services.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

PG_URL = os.environ.get("RECSTUDIO_TEST_PG_URL")
MLFLOW_URL = (os.environ.get("RECSTUDIO_TEST_MLFLOW_URL") or "").rstrip("/")
STATEFILE = os.environ.get("RECSTUDIO_SERVICES_STATEFILE")
SERVICES_SH = Path(__file__).resolve().parents[1] / ".ci" / "services.sh"

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        not (PG_URL and MLFLOW_URL),
        reason="RECSTUDIO_TEST_PG_URL / RECSTUDIO_TEST_MLFLOW_URL not set (run .ci/services.sh start FILE)",
    ),
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def rest(method: str, endpoint: str, **kwargs):
    import requests

    resp = requests.request(method, f"{MLFLOW_URL}{endpoint}", timeout=30, **kwargs)
    assert resp.status_code == 200, f"{method} {endpoint}: {resp.status_code} {resp.text[:300]}"
    return resp


def objective(trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", 0, 5)
    return (x - 2) ** 2 + y


# ---------------------------------------------------------------------------------- PostgreSQL


def test_optuna_rdb_storage_round_trip():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = unique("svc-study")
    storage = optuna.storages.RDBStorage(PG_URL)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    # two threads share the storage, as two workers of one study would
    study.optimize(objective, n_trials=12, n_jobs=2)

    # a second, independent storage object sees the same study: it lives in the database
    reloaded = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(PG_URL))
    trials = reloaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 12
    assert reloaded.best_value == pytest.approx(study.best_value)
    assert set(reloaded.best_params) == {"x", "y"}
    assert name in optuna.get_all_study_names(storage=PG_URL)
    optuna.delete_study(study_name=name, storage=PG_URL)


def test_optuna_create_study_load_if_exists_is_shared():
    """Two workers starting the same study: the second joins instead of failing."""
    import optuna

    name = unique("svc-shared")
    a = optuna.create_study(study_name=name, storage=PG_URL, load_if_exists=True)
    b = optuna.create_study(study_name=name, storage=PG_URL, load_if_exists=True)
    assert a._study_id == b._study_id
    a.optimize(objective, n_trials=2)
    b.optimize(objective, n_trials=2)
    assert len(optuna.load_study(study_name=name, storage=PG_URL).trials) == 4
    optuna.delete_study(study_name=name, storage=PG_URL)


def passwordless(url: str) -> tuple[str, str]:
    """(URL without its password, the password): how docker-compose.yml hands them to services."""
    from sqlalchemy.engine import URL, make_url

    u = make_url(url)
    bare = URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query)
    return bare.render_as_string(hide_password=False), u.password or ""


def test_password_from_pgpassword_env(monkeypatch: pytest.MonkeyPatch):
    """The compose services get a URL without password plus PGPASSWORD; libpq combines them."""
    import optuna

    url, password = passwordless(PG_URL)
    assert password and password not in url
    monkeypatch.setenv("PGPASSWORD", password)
    name = unique("svc-pgpassword")
    optuna.create_study(study_name=name, storage=url)
    assert name in optuna.get_all_study_names(storage=url)
    optuna.delete_study(study_name=name, storage=url)
    monkeypatch.setenv("PGPASSWORD", "wrong-" + password)
    with pytest.raises(Exception, match="password authentication failed"):
        optuna.storages.RDBStorage(url)


def test_worker_healthcheck_script():
    """docker/healthcheck.py (the worker image's HEALTHCHECK) against the real services."""
    import sys

    url, password = passwordless(PG_URL)
    script = Path(__file__).resolve().parents[1] / "docker" / "healthcheck.py"
    env = {**os.environ, "MLFLOW_TRACKING_URI": MLFLOW_URL, "RECSTUDIO_OPTUNA_STORAGE": url}
    ok = subprocess.run(
        [sys.executable, str(script)],
        env={**env, "PGPASSWORD": password},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [sys.executable, str(script)],
        env={**env, "PGPASSWORD": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "optuna storage unreachable" in bad.stderr
    down = subprocess.run(
        [sys.executable, str(script)],
        env={**env, "PGPASSWORD": password, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and "mlflow" in down.stderr


# ---------------------------------------------------------------------------------- MLflow server


def test_mlflow_health_and_host_check():
    import requests

    assert rest("GET", "/health").text.strip() == "OK"
    # security middleware: a foreign Host header (DNS rebinding) is refused on the API
    resp = requests.get(
        f"{MLFLOW_URL}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        headers={"Host": "evil.example.com"},
        timeout=30,
    )
    assert resp.status_code in (400, 403), resp.status_code


def test_mlflow_run_metric_and_artifact_round_trip(tmp_path: Path):
    """Log through RecStudio's Tracker; read back through the REST API and the artifact proxy."""
    from recstudio.track.tracker import Tracker

    experiment = unique("svc-exp")
    tracker = Tracker(tracking_uri=MLFLOW_URL, experiment=experiment, run_name="svc-run")
    tracker.log_params({"model": "BPR", "embed_dim": 64})
    for epoch, value in enumerate([0.10, 0.20, 0.25]):
        tracker.log_metrics({"valid/ndcg@10": value}, step=epoch)
    report = tmp_path / "report.txt"
    report.write_text("hello from the services test\n")
    tracker.log_artifact(report)
    tracker.log_dict({"best_epoch": 2}, "result.json")
    tracker.end()

    # artifacts go through the server's proxy, not to a path on this machine
    assert tracker.artifact_uri.startswith("mlflow-artifacts:/"), tracker.artifact_uri

    run = rest("GET", "/api/2.0/mlflow/runs/get", params={"run_id": tracker.run_id}).json()["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == "svc-run"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params == {"model": "BPR", "embed_dim": "64"}
    history = rest(
        "GET",
        "/api/2.0/mlflow/metrics/get-history",
        params={"run_id": tracker.run_id, "metric_key": "valid/ndcg_at_10"},
    ).json()["metrics"]
    assert sorted((m["step"], m["value"]) for m in history) == [(0, 0.10), (1, 0.20), (2, 0.25)]

    # experiment is findable by name (what the UI and `recstudio` use)
    exp = rest(
        "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment}
    ).json()
    assert exp["experiment"]["experiment_id"] == tracker.experiment_id

    # artifact proxy: list, then download the bytes
    relative = f"{tracker.experiment_id}/{tracker.run_id}/artifacts"
    base = f"/api/2.0/mlflow-artifacts/artifacts/{relative}"
    listing = rest("GET", "/api/2.0/mlflow-artifacts/artifacts", params={"path": relative})
    names = {f["path"] for f in listing.json().get("files", [])}
    assert {"report.txt", "result.json"} <= names, names
    assert rest("GET", f"{base}/report.txt").text == "hello from the services test\n"
    assert rest("GET", f"{base}/result.json").json() == {"best_epoch": 2}

    # and the ordinary client download path works too
    from mlflow import MlflowClient

    local = MlflowClient(tracking_uri=MLFLOW_URL).download_artifacts(
        tracker.run_id, "report.txt", str(tmp_path)
    )
    assert Path(local).read_text() == "hello from the services test\n"


def test_nested_trial_runs_are_children():
    """Trials as nested runs: the parent/child link survives the server round trip."""
    from recstudio.track.tracker import Tracker

    experiment = unique("svc-nested")
    parent = Tracker(tracking_uri=MLFLOW_URL, experiment=experiment, run_name="study")
    children = [
        Tracker(
            tracking_uri=MLFLOW_URL, experiment=experiment, run_name=f"trial-{i}", parent_run_id=parent.run_id
        )
        for i in range(2)
    ]
    for i, child in enumerate(children):
        child.log_metrics({"valid/ndcg@10": 0.1 * (i + 1)})
        child.end()
    parent.end()
    found = rest(
        "POST",
        "/api/2.0/mlflow/runs/search",
        json={
            "experiment_ids": [parent.experiment_id],
            "filter": f"tags.mlflow.parentRunId = '{parent.run_id}'",
        },
    ).json()["runs"]
    assert sorted(r["info"]["run_name"] for r in found) == ["trial-0", "trial-1"]


# ---------------------------------------------------------------------------------- faults


def services(command: str, *extra: str) -> None:
    if not STATEFILE:
        pytest.skip("RECSTUDIO_SERVICES_STATEFILE not set (state file written by .ci/services.sh)")
    subprocess.run(["bash", str(SERVICES_SH), command, STATEFILE, *extra], check=True, timeout=300)


def test_survives_postgres_restart():
    """Optuna and the MLflow server both reconnect after the database restarts."""
    import optuna
    from mlflow import MlflowClient

    name = unique("svc-pg-restart")
    # pool_pre_ping: without it the first call after a database restart fails on a dead pooled
    # connection (StorageInternalError); `recstudio tune` should build its RDBStorage the same way
    storage = optuna.storages.RDBStorage(PG_URL, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(study_name=name, storage=storage)
    try:
        study.optimize(objective, n_trials=2)
        client = MlflowClient(tracking_uri=MLFLOW_URL)
        exp_id = client.create_experiment(unique("svc-pg-restart"))
        run_id = client.create_run(exp_id).info.run_id
        client.log_metric(run_id, "m", 1.0, step=0)

        services("restart-postgres", "1")

        study.optimize(objective, n_trials=2)  # same storage object: pooled connections were cut
        assert len(optuna.load_study(study_name=name, storage=PG_URL).trials) == 4
        client.log_metric(run_id, "m", 2.0, step=1)  # server's pool (pre-ping) reconnects
        client.set_terminated(run_id)
        assert [m.value for m in client.get_metric_history(run_id, "m")] == [1.0, 2.0]
    finally:
        services("start-postgres")  # whatever happened, leave the database up for the next tests
        optuna.delete_study(study_name=name, storage=PG_URL)


@pytest.mark.slow
def test_client_survives_mlflow_server_restart():
    """A run opened before the tracking server restarts can be finished after it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=MLFLOW_URL)
    exp_id = client.create_experiment(unique("svc-mlflow-restart"))
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "m", 1.0, step=0)
    t0 = time.monotonic()
    services("restart-mlflow")
    assert time.monotonic() - t0 < 300
    client.log_metric(run_id, "m", 2.0, step=1)
    client.set_terminated(run_id)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run_id, "m")] == [1.0, 2.0]


# ---------------------------------------------------------------------------------- the UI


@pytest.mark.slow
@pytest.mark.skipif(
    not any(__import__("shutil").which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
    reason="no headless chromium (apt-get install chromium)",
)
def test_mlflow_ui_shows_runs(tmp_path: Path):
    """The MLflow UI, rendered by headless Chromium, lists the runs of an experiment."""
    import sys

    from recstudio.track.tracker import Tracker

    experiment = unique("svc-ui")
    names = [unique("bpr-run"), unique("ncf-run")]
    experiment_id = None
    for name in names:
        tracker = Tracker(tracking_uri=MLFLOW_URL, experiment=experiment, run_name=name)
        tracker.log_metrics({"valid/ndcg@10": 0.3})
        tracker.end()
        experiment_id = tracker.experiment_id
    shot = tmp_path / "mlflow-ui.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_mlflow_ui.py"
    result = subprocess.run(
        [sys.executable, str(script), MLFLOW_URL, str(experiment_id), *names, "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert shot.stat().st_size > 10_000
