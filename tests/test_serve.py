"""Serving (issue 16): every run logs a servable MLflow model; `mlflow models serve`,
`recstudio recommend` and the evaluation's ranking give the same top-k in raw ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recstudio.serve.server import ModelServer
from tests.test_cli_run import cli, write_toy_dataset


def _tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"


def _evaluation_top_k(workdir: Path, run_id: str, k: int) -> dict[str, list]:
    """Raw top-k ids per test user from the evaluation's own batches and ``recommend``, with the
    test targets counted as seen (the served model knows every split)."""
    from mlflow import MlflowClient

    from recstudio.eval.ranking import build_eval_split
    from recstudio.experiment import resolve_config
    from recstudio.pipeline import RunOptions, build_model, prepare_for

    client = MlflowClient(tracking_uri=_tracking_uri(workdir))
    config = client.download_artifacts(run_id, "config.yaml", str(workdir))
    (ckpt,) = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    ckpt = client.download_artifacts(run_id, ckpt, str(workdir))
    cfg = resolve_config(config_files=[config])
    data = prepare_for(cfg, RunOptions(tracking=False))
    model = build_model(cfg, data)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    model.eval()
    model.prepare_evaluation()
    split = build_eval_split(data, "test", max_seq_len=model.data_needs.eval_sequence)
    out: dict[str, list] = {}
    for batch in split.blocks(64):
        batch["history_mask"] = batch["history_mask"] | batch["target_mask"]
        _, ids = model.recommend(batch, k)
        for user, row in zip(batch["user"].tolist(), ids.tolist(), strict=True):
            out[str(data.user_vocab[user])] = [data.item_vocab[i] for i in row]
    return out


def test_served_model_answers_like_recommend_and_the_evaluation(workdir: Path) -> None:
    spec = write_toy_dataset(workdir)
    args = ["run", "-m", "BPR", "-d", str(spec), "--epochs", "3", "--set", "model.embed_dim=16", "--json"]
    out = cli(*args, cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = json.loads(out.stdout)["run_id"]
    uri = f"runs:/{run_id}/model"
    assert json.loads(out.stdout)["model_uri"] == uri
    expected = _evaluation_top_k(workdir, run_id, k=5)
    users = sorted(expected)[:3]

    answer = cli(
        "recommend",
        "--model",
        uri,
        *[a for u in users for a in ("--user", u)],
        "-k",
        "5",
        "--json",
        cwd=workdir,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    from_cli = {str(p["user"]): p["items"] for p in json.loads(answer.stdout)["predictions"]}
    assert from_cli == {u: expected[u] for u in users}

    with ModelServer(uri, _tracking_uri(workdir)) as server:
        status, body = server.post({"dataframe_records": [{"user": u} for u in users], "params": {"k": 5}})
        assert status == 200, body
        assert {str(p["user"]): p["items"] for p in body["predictions"]} == from_cli
        status, body = server.post({"dataframe_records": [{"user": "no-such-user"}]})
        assert status == 400 and "unknown user id" in body["message"] and "no-such-user" in body["message"]
        status, body = server.post({"dataframe_records": [{"user": users[0]}], "params": {"k": 2}})
        assert status == 200 and body["predictions"][0]["items"] == expected[users[0]][:2]  # still up

    bad = cli("recommend", "--model", uri, "--user", "no-such-user", cwd=workdir)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no-such-user" in bad.stderr


def test_best_register_and_recommend_from_the_registry(workdir: Path) -> None:
    spec = write_toy_dataset(workdir)
    tuned = cli(
        "tune", "-m", "BPR", "-d", str(spec), "--trials", "1", "--study-name", "toy-bpr",
        "--set", "train.epochs=2", "--set", "model.embed_dim=8", cwd=workdir,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    best = cli("best", "toy-bpr", "--register", "toy-recommender", "--json", cwd=workdir)
    assert best.returncode == 0, best.stderr[-3000:]
    info = json.loads(best.stdout)
    assert info["registered"] == {"name": "toy-recommender", "version": 1, "uri": "models:/toy-recommender/1"}
    expected = _evaluation_top_k(workdir, info["run_id"], k=3)
    user = sorted(expected)[0]
    answer = cli(
        "recommend", "--model", "models:/toy-recommender/latest", "--user", user, "-k", "3", cwd=workdir
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert answer.stdout.strip() == f"user {user}: {' '.join(str(i) for i in expected[user])}"


def test_register_without_a_completed_trial_is_one_line_exit_2(workdir: Path) -> None:
    import optuna

    optuna.create_study(study_name="empty", storage=f"sqlite:///{workdir / 'optuna.db'}")
    out = cli("best", "empty", "--register", "nothing", cwd=workdir)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: study 'empty' has no completed trial yet"


def test_sequential_model_serves_recent_items(workdir: Path) -> None:
    """A sequential model answers for an anonymous sequence of raw item ids; given the user's
    whole history as the sequence, the answer equals the user's."""
    from recstudio.experiment import resolve_config
    from recstudio.pipeline import RunOptions, run
    from recstudio.serve.registry import load_served
    from recstudio.testing import planted_data

    data = planted_data(num_users=60, num_items=40, max_len=16, seed=5)
    cfg = resolve_config(model="SASRec", dataset=data.name, overrides={"train.epochs": 2})
    result = run(cfg, RunOptions(quiet=True, progress="none"), data=data)
    served = load_served(f"runs:/{result['run_id']}/model", _tracking_uri(workdir))
    assert served.index is not None  # item tower with the inner product: retrieval via faiss
    user = 7
    history = [
        data.item_vocab[i]
        for i in served.history_items[served.history_indptr[user] : served.history_indptr[user + 1]]
    ]
    (by_user,) = served.recommend(users=[data.user_vocab[user]], k=5)
    (by_items,) = served.recommend(items=[history], k=5)
    assert by_items["items"] == by_user["items"] and len(by_user["items"]) == 5
    assert not set(by_user["items"]) & set(history)
    with pytest.raises(Exception, match="unknown item id"):
        served.recommend(items=[["no-such-item"]])

    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(_tracking_uri(workdir))
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result['run_id']}/model")  # what the server runs
    (answer,) = pyfunc.predict(pd.DataFrame({"items": [history]}), params={"k": 5})
    assert answer["items"] == by_items["items"] and answer["user"] is None


def test_no_log_model_and_a_non_sequential_model_without_users(workdir: Path) -> None:
    spec = write_toy_dataset(workdir)
    out = cli("run", "-m", "BPR", "-d", str(spec), "--epochs", "1", "--no-log-model", "--json", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = json.loads(out.stdout)["run_id"]
    missing = cli("recommend", "--model", f"runs:/{run_id}/model", "--user", "1", cwd=workdir)
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot load model runs:/")


def test_tune_without_models_has_nothing_to_register(workdir: Path) -> None:
    spec = write_toy_dataset(workdir)
    tuned = cli(
        "tune", "-m", "BPR", "-d", str(spec), "--trials", "1", "--study-name", "bare", "--no-log-model",
        "--set", "train.epochs=1", cwd=workdir,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    out = cli("best", "bare", "--register", "nothing", cwd=workdir)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "has no 'model' artifact to register" in out.stderr
