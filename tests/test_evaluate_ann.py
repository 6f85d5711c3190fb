"""``recstudio evaluate --ann``: ANN retrieval metrics of a trained item-tower model beside exact ones."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("faiss")

from tests.test_cli_run import write_toy_dataset  # noqa: E402

TOPK = ("recall", "precision", "map", "ndcg", "mrr", "hit")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A BPR checkpoint trained in this process on the toy dataset, with its spec and cache."""
    from recstudio.experiment import resolve_from_cli
    from recstudio.pipeline import RunOptions, run

    folder = tmp_path_factory.mktemp("ann")
    spec = str(write_toy_dataset(folder))
    cache = str(folder / "cache")
    cfg = resolve_from_cli("BPR", spec, None, (), ("model.embed_dim=16", "train.epochs=3"), {})
    result = run(cfg, RunOptions(cache_dir=cache, tracking=False, quiet=True, progress="none"))
    return {"checkpoint": result["checkpoint"], "spec": spec, "cache": cache, "folder": str(folder)}


def evaluate_args(trained: dict[str, str], model: str = "BPR", *sets: str) -> list[str]:
    overrides = [arg for item in ("model.embed_dim=16", *sets) for arg in ("--set", item)]
    if model != "BPR":
        overrides = []  # tower-free models fail on the model, before the (BPR) file is read
    return ["evaluate", "--checkpoint", trained["checkpoint"], "-m", model, "-d", trained["spec"],
            "--cache-dir", trained["cache"], *overrides]  # fmt: skip


def test_flat_index_reproduces_exact_evaluation(trained: dict[str, str]) -> None:
    """End to end through the real CLI process: --json holds exact and ANN metrics side by side."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "recstudio", *evaluate_args(trained), "--ann", "flat", "--json"]
    out = subprocess.run(cmd, cwd=trained["folder"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    ann = result["ann"]
    assert ann["index"]["kind"] == "flat" and ann["index"]["metric"] == "ip"  # BPR: inner product
    assert set(ann["left_out"]) == {"auc"}
    for split in ("valid", "test"):
        exact, approx = result[split], ann[split]
        assert approx["ann_recall@20"] == 1.0
        assert approx["ann_qps"] > 0 and approx["exact_qps"] > 0
        topk_keys = {key for key in exact if key.partition("@")[0] in TOPK}
        assert len(topk_keys) == 18 and "auc" in exact and "auc" not in approx
        assert {key: approx[key] for key in topk_keys} == pytest.approx(
            {key: exact[key] for key in topk_keys}, abs=1e-9
        )


def in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI entry point in this process (imports already warm): exit code, stdout, stderr."""
    from recstudio.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ivf_and_hnsw_report_recall_against_exact(trained: dict[str, str], capsys) -> None:
    args = [*evaluate_args(trained), "--split", "test"]
    code, out, err = in_process([*args, "--ann", "hnsw", "--ann-ef", "8", "--ann-m", "4"], capsys)
    assert code == 0, err
    assert "ANN retrieval: hnsw ip index on CPU, hnsw_m=4 ef_search=8" in out
    assert "auc left out" in out and "ann_recall" in out and "ann_qps=" in out

    code, out, err = in_process(
        [*args, "--ann", "ivf", "--ann-nlist", "4", "--ann-nprobe", "1", "--json"], capsys
    )
    assert code == 0, err
    ann = json.loads(out)["ann"]
    assert ann["index"] == {**ann["index"], "kind": "ivf", "nlist": 4, "nprobe": 1}
    assert set(ann) == {"index", "left_out", "test"}
    assert 0.0 < ann["test"]["ann_recall@20"] <= 1.0
    assert all(math.isfinite(v) for v in ann["test"].values())


@pytest.mark.parametrize(
    "model, sets, message",
    [
        ("EASE", [], "--ann needs item vectors, and EASE is a tower-free model"),
        ("ItemKNN", [], "--ann needs item vectors, and ItemKNN is a tower-free model"),
        ("BPR", ["model.scorer=mlp"], "BPR uses the 'mlp' scorer"),
    ],
)
def test_models_an_index_cannot_serve_fail_in_one_line(
    trained: dict[str, str], model: str, sets: list[str], message: str, capsys
) -> None:
    """Checked from the config, before any data is prepared or the checkpoint is read."""
    code, _, err = in_process([*evaluate_args(trained, model, *sets), "--ann", "flat"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_a_built_model_is_checked_too(trained: dict[str, str]) -> None:
    """``evaluate_ann`` on a model object (the Python API) rejects the mlp scorer as well."""
    from recstudio.errors import ConfigError
    from recstudio.eval.ann import AnnSettings, evaluate_ann
    from recstudio.experiment import resolve_from_cli
    from recstudio.pipeline import RunOptions, build_model, prepare_for

    cfg = resolve_from_cli("BPR", trained["spec"], None, (), ("model.scorer=mlp",), {})
    data = prepare_for(cfg, RunOptions(cache_dir=trained["cache"], tracking=False))
    with pytest.raises(ConfigError, match="uses the 'mlp' scorer"):
        evaluate_ann(build_model(cfg, data), data, cfg.eval, ("test",), AnnSettings("flat"))


def test_unknown_index_kind_exits_2(trained: dict[str, str], capsys) -> None:
    code, _, err = in_process([*evaluate_args(trained), "--ann", "lsh"], capsys)
    assert code == 2 and "'lsh' is not one of 'flat', 'ivf', 'hnsw'" in err


def test_update_ranked_matches_update_from_scores() -> None:
    """The shared entry point: top-k ids ranked elsewhere give the metrics of the score matrix."""
    import torch

    from recstudio.eval.metrics import prepare_scores
    from recstudio.eval.ranking import RankingEvaluator

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 50, generator=gen)
    history = torch.rand(64, 50, generator=gen) < 0.5
    history[:, 0] = True
    history[:3, :] = True  # three users with nothing to rank: empty lists, all misses
    target = (torch.rand(64, 50, generator=gen) < 0.1) & ~history
    target[:5, 7] = True  # some targets hidden in the history
    batch = {"history_mask": history, "target_mask": target}
    metrics, cutoffs = ["recall", "precision", "map", "ndcg", "mrr", "hit"], [1, 5, 30]
    from_scores, from_ids = RankingEvaluator(metrics, cutoffs), RankingEvaluator(metrics, cutoffs)
    from_scores.update(scores, batch)
    values, ids = torch.topk(prepare_scores(scores, history), 30, dim=1)
    from_ids.update_ranked(ids, values > -math.inf, batch)
    assert from_ids.compute() == pytest.approx(from_scores.compute(), abs=1e-12)
    with pytest.raises(ValueError, match="AUC"):
        RankingEvaluator(["auc"], [5]).update_ranked(ids, values > -math.inf, batch)
