"""A study on the real services: PostgreSQL storage, MLflow tracking server, two worker processes.

Skipped unless ``RECSTUDIO_TEST_PG_URL`` and ``RECSTUDIO_TEST_MLFLOW_URL`` are set
(``.ci/services.sh start FILE`` and ``source FILE``).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from recstudio.cli import cli
from recstudio.experiment import resolve_config
from recstudio.model.registry import get_model_class
from recstudio.testing import planted_data
from recstudio.tune.runner import run_study
from recstudio.tune.settings import TuneSettings
from recstudio.tune.space import normalize

PG_URL = os.environ.get("RECSTUDIO_TEST_PG_URL")
MLFLOW_URL = (os.environ.get("RECSTUDIO_TEST_MLFLOW_URL") or "").rstrip("/")

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        not (PG_URL and MLFLOW_URL),
        reason="RECSTUDIO_TEST_PG_URL / RECSTUDIO_TEST_MLFLOW_URL not set (run .ci/services.sh start FILE)",
    ),
]


def test_two_workers_on_postgres_and_an_mlflow_server(workdir: Path) -> None:
    name = f"tune-{uuid.uuid4().hex[:10]}"
    cfg = resolve_config(
        model="BPR",
        dataset="planted",
        overrides={"train.epochs": 2, "train.early_stop_patience": 0, "train.learning_rate": 0.05},
    )
    settings = TuneSettings(
        model="BPR",
        dataset="planted",
        base_config=cfg.to_dict(),
        space=normalize(
            {"embed_dim": [8, 16], "reg_weight": {"type": "float", "low": 1e-6, "high": 1e-3}},
            get_model_class("BPR"),
        ),
        metric="ndcg@10",
        study_name=name,
        storage=PG_URL,
        trials=3,
        workers=2,
        pruner="none",
        tracking_uri=MLFLOW_URL,
        experiment=name,
        data=planted_data(num_users=120, num_items=60, min_len=10, max_len=16),
        quiet=True,
    )
    summary = run_study(settings)
    study = optuna.load_study(study_name=name, storage=PG_URL)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert summary["invocation"]["trials"]["COMPLETE"] == 3

    client = MlflowClient(MLFLOW_URL)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    password = PG_URL.split("@")[0].rsplit(":", 1)[-1]
    assert password not in parent.data.tags["optuna.storage"]  # never a password in a tag
    assert parent.data.tags["best.run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    exp = client.get_experiment_by_name(name)
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1, 2]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert any(a.path == "plots" for a in client.list_artifacts(parent.info.run_id))

    out = CliRunner().invoke(cli, ["studies", "--storage", PG_URL, "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["study"]: r for r in json.loads(out.stdout)}
    assert rows[name]["trials"]["COMPLETE"] == 3

    # the best trial's model goes into the Model Registry of the PostgreSQL-backed server
    registered = f"reg-{name}"
    args = ["best", name, "--storage", PG_URL, "--tracking-uri", MLFLOW_URL, "--register", registered]
    out = CliRunner().invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["registered"]["version"] == 1
    from recstudio.serve.registry import load_served

    served = load_served(f"models:/{registered}/latest", MLFLOW_URL)
    user = served.data.user_vocab[1]
    (answer,) = served.recommend(users=[user], k=5)
    assert answer["user"] == user and len(answer["items"]) == 5
    optuna.delete_study(study_name=name, storage=PG_URL)
