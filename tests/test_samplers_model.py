"""Samplers that learn with the model (PRIS clusters, MIDX) and dynamic negative sampling (DNS):
sampling laws against the exact log q, exclusion, refresh, config errors, and end-to-end runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from recstudio.errors import ConfigError
from recstudio.model.sampler import SAMPLERS, build_sampler
from recstudio.testing import fit_and_evaluate, planted_data

MODEL_BASED = ["cluster_uni", "cluster_pop", "midx_uni", "midx_pop"]
NUM_ITEMS = 51  # 50 real items + padding


def _sampler(name: str, clusters: int = 4, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 60, (NUM_ITEMS,), generator=g).float()
    counts[0] = 0
    sampler = build_sampler(name, NUM_ITEMS, counts, clusters=clusters)
    vectors = torch.randn(NUM_ITEMS, dim, generator=g)
    sampler.refresh(vectors)
    return sampler, vectors


@pytest.mark.parametrize("name", MODEL_BASED)
def test_draws_follow_exact_log_prob(name: str) -> None:
    torch.manual_seed(0)
    sampler, _ = _sampler(name)
    query = torch.randn(2, 8) * 1.5
    n = 100_000  # per query: 200k draws in all
    rows = query.repeat_interleave(n, dim=0)
    neg, log_q_neg, log_q_pos = sampler.sample(2 * n, 1, pos_items=torch.full((2 * n,), 3), query=rows)
    assert int(neg.min()) >= 1 and int(neg.max()) < NUM_ITEMS  # never padding
    every = torch.arange(NUM_ITEMS)[None, :].expand(2, -1)
    exact = sampler.log_prob(every, query=query).double().exp()
    assert exact[:, 0].eq(0).all()
    assert torch.allclose(exact.sum(1), torch.ones(2, dtype=torch.float64), atol=1e-5)
    for r in range(2):
        freq = torch.bincount(neg[r * n : (r + 1) * n].flatten(), minlength=NUM_ITEMS).double() / n
        assert 0.5 * (freq - exact[r]).abs().sum() < 0.02  # total variation
    # the reported log q is that of the drawn item (and of the positive) under its own query
    assert torch.allclose(log_q_neg[:, 0].double().exp(), exact[(torch.arange(2 * n) >= n).long(), neg[:, 0]])
    assert torch.allclose(log_q_pos.double().exp(), exact[(torch.arange(2 * n) >= n).long(), 3])
    # the proposal depends on the query (that is the point)
    assert (exact[0] - exact[1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["cluster_uni", "midx_uni"])
def test_uni_is_exp_of_cell_score_and_empty_cells_have_no_mass(name: str) -> None:
    sampler, vectors = _sampler(name, clusters=8)
    query = torch.randn(3, 8)
    cells = sampler.item_cell[1:]
    log_q = sampler.log_prob(torch.arange(1, NUM_ITEMS)[None, :].expand(3, -1), query=query)
    # within one cell the uniform variant gives every item the same probability
    for c in cells.unique():
        same = log_q[:, cells == c]
        assert torch.allclose(same, same[:, :1].expand_as(same), atol=1e-6)
    if name == "midx_uni":  # 64 cells for 50 items: some are empty, and never drawn
        empty = torch.bincount(cells, minlength=sampler.num_cells) == 0
        assert bool(empty.any())
        draws = sampler.sample_ids(3, 20_000, query=query)
        assert not empty[sampler.item_cell[draws]].any()


@pytest.mark.parametrize("name", MODEL_BASED)
def test_excluded_positives_never_drawn_and_log_q_is_conditional(name: str) -> None:
    torch.manual_seed(1)
    sampler, vectors = _sampler(name)
    query = torch.randn(2, 8) * 2
    # user 1 owns the 10 items the query likes most, user 2 owns three items
    full = sampler.log_prob(torch.arange(NUM_ITEMS)[None, :], query=query[:1])[0]
    owned1 = torch.topk(full, 10).indices
    owned2 = torch.tensor([5, 6, 7])
    sampler.exclude(
        torch.cat([torch.ones(10, dtype=torch.long), torch.full((3,), 2)]), torch.cat([owned1, owned2]), 3
    )
    n = 60_000
    users = torch.tensor([1, 2]).repeat_interleave(n)
    rows = query.repeat_interleave(n, dim=0)
    neg, log_q_neg, _ = sampler.sample(2 * n, 1, pos_items=torch.ones_like(users), query=rows, users=users)
    for r, owned in ((0, owned1), (1, owned2)):
        drawn = neg[r * n : (r + 1) * n, 0]
        assert not torch.isin(drawn, owned).any()
        exact = sampler.log_prob(torch.arange(NUM_ITEMS)[None, :], query=query[r : r + 1])[0].double().exp()
        exact[owned] = 0
        exact /= exact.sum()
        freq = torch.bincount(drawn, minlength=NUM_ITEMS).double() / n
        assert 0.5 * (freq - exact).abs().sum() < 0.02
        got = log_q_neg[r * n : (r + 1) * n, 0].double().exp()
        assert torch.allclose(got, exact[drawn], rtol=1e-4)  # conditional, exact
    # refreshed vectors re-index the users' positives by their new cells
    sampler.refresh(torch.randn(NUM_ITEMS, 8))
    neg, log_q_neg, _ = sampler.sample(2 * n, 1, query=rows, users=users)
    exact = sampler.log_prob(torch.arange(NUM_ITEMS)[None, :], query=query[:1])[0].double().exp()
    exact[owned1] = 0
    assert torch.allclose(log_q_neg[:n, 0].double().exp(), (exact / exact.sum())[neg[:n, 0]], rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_BASED)
def test_refresh_changes_the_proposal(name: str) -> None:
    counts = torch.ones(NUM_ITEMS)
    sampler = build_sampler(name, NUM_ITEMS, counts, clusters=4)
    query = torch.randn(1, 8)
    every = torch.arange(1, NUM_ITEMS)[None, :]
    before = sampler.log_prob(every, query=query)  # not refreshed yet: one cell, q = w / sum w
    assert torch.allclose(before, torch.full_like(before, -math.log(NUM_ITEMS - 1)), atol=1e-5)
    sampler.refresh(torch.randn(NUM_ITEMS, 8))
    first = sampler.log_prob(every, query=query)
    sampler.refresh(torch.randn(NUM_ITEMS, 8))
    second = sampler.log_prob(every, query=query)
    assert sampler.refreshes == 2
    assert (first - before).abs().max() > 1e-3 and (second - first).abs().max() > 1e-3


def test_model_refreshes_on_schedule_and_sampler_follows_vectors() -> None:
    from recstudio.model.general.bpr import BPR

    data = planted_data(num_users=40, num_items=30, seed=2)
    model = BPR(BPR.Config(sampler="midx_uni", sampler_refresh_epochs=2, sampler_clusters=3), data)
    epochs = []

    class FakeTrainer:  # current_epoch comes from the trainer
        current_epoch = 0

    model._trainer = FakeTrainer()  # type: ignore[assignment]
    for epoch in range(5):
        FakeTrainer.current_epoch = epoch
        if model.refresh_sampler():
            epochs.append(epoch)
    model._trainer = None  # type: ignore[assignment]
    assert epochs == [0, 2, 4] and model.sampler.refreshes == 3
    query = torch.randn(1, model.config.embed_dim)
    before = model.sampler.log_prob(torch.arange(1, 30)[None, :], query=query)
    with torch.no_grad():
        model.item_emb.weight.mul_(-1.0)  # the proposal must follow the new vectors
    model.refresh_sampler(force=True)
    after = model.sampler.log_prob(torch.arange(1, 30)[None, :], query=query)
    assert (before - after).abs().max() > 1e-3


def test_dns_picks_higher_scoring_negatives() -> None:
    from recstudio.model.general.bpr import BPR

    torch.manual_seed(0)
    data = planted_data(num_users=40, num_items=60, seed=3)
    users = data.train.user[:500]
    pos = data.train.item[:500]
    mean_scores = {}
    for m in (1, 5):
        model = BPR(BPR.Config(hard_negative_candidates=m, num_negatives=2), data)
        torch.manual_seed(1)
        with torch.no_grad():
            model.user_emb.weight.normal_()
            model.item_emb.weight.normal_()
        query = model.user_emb.weight[users].detach()
        neg = model.candidate_ids(query, pos, users=users)[:, 1:]
        scores = (query[:, None, :] * model.item_emb.weight.detach()[neg]).sum(-1)
        mean_scores[m] = float(scores.mean())
        positives = set(zip(data.train.user.tolist(), data.train.item.tolist()))
        assert not any((u, i) in positives for u, i in zip(users.tolist(), neg[:, 0].tolist()))
    assert mean_scores[5] > mean_scores[1] + 1.0  # best of 5 standard normals: +1.16 sd on average


def test_config_errors() -> None:
    from recstudio.model.general.bpr import BPR
    from recstudio.model.general.ncf import NCF

    data = planted_data(num_users=20, num_items=15, seed=4)
    with pytest.raises(ConfigError, match=r"^NCF is tower-free: sampler 'midx_uni' needs item vectors"):
        NCF(NCF.Config(sampler="midx_uni"), data)
    with pytest.raises(ConfigError, match="NCF is tower-free.*hard_negative_candidates"):
        NCF(NCF.Config(hard_negative_candidates=3), data)
    for loss in ("sampled_softmax", "softmax", "infonce", "pris"):
        with pytest.raises(ConfigError, match="model.hard_negative_candidates"):
            BPR.Config(loss=loss, hard_negative_candidates=4).validate()
    BPR.Config(loss="hinge", hard_negative_candidates=4).validate()
    keys = ("sampler_clusters", "sampler_refresh_epochs", "sampler_refresh_steps", "hard_negative_candidates")
    for key in keys:
        with pytest.raises(ConfigError, match=f"model.{key}"):
            BPR.Config(**{key: 0}).validate()
    with pytest.raises(ConfigError, match="cluster_uni, cluster_pop, midx_uni, midx_pop"):
        BPR.Config(sampler="kmeans").validate()
    with pytest.raises(ConfigError, match="needs item popularity"):
        build_sampler("midx_pop", 10, None)
    assert all(SAMPLERS[name].uses_query for name in MODEL_BASED)


def test_config_time_errors_name_model_and_key() -> None:
    """The checks run when the config is built, before any data is loaded."""
    from recstudio.config import resolve
    from recstudio.model.general.bpr import BPR
    from recstudio.model.general.ncf import NCF

    with pytest.raises(ConfigError, match="NCF is tower-free: sampler 'cluster_pop'"):
        resolve(NCF, dataset="x", overrides={"model.sampler": "cluster_pop"})
    with pytest.raises(ConfigError, match="model.sampler_clusters"):
        resolve(BPR, dataset="x", overrides={"model.sampler_clusters": 0})
    with pytest.raises(ConfigError, match="model.hard_negative_candidates"):
        dns = {"model.loss": "sampled_softmax", "model.hard_negative_candidates": 5}
        resolve(BPR, dataset="x", overrides=dns)
    cfg = resolve(BPR, dataset="x", overrides={"model.sampler": "midx_pop", "model.sampler_clusters": 8})
    assert cfg.model.sampler == "midx_pop"


@pytest.mark.parametrize(
    "name, sampler",
    [("BPR", sampler) for sampler in MODEL_BASED] + [("SASRec", "cluster_pop"), ("SASRec", "midx_uni")],
)
def test_end_to_end_training(name: str, sampler: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from recstudio.model.sampler import ModelBasedSampler

    refreshed = []
    refresh = ModelBasedSampler.refresh
    monkeypatch.setattr(
        ModelBasedSampler, "refresh", lambda self, vectors: (refreshed.append(1), refresh(self, vectors))
    )
    data = planted_data(num_users=60, num_items=40, seed=5)
    overrides = {"model.loss": "sampled_softmax", "model.num_negatives": 8, "model.sampler_clusters": 4}
    result = fit_and_evaluate(name, data, epochs=2, batch_size=128, **overrides, **{"model.sampler": sampler})
    assert result["epochs"] == 2
    assert math.isfinite(result["test"]["ndcg@10"])
    assert len(refreshed) == 2  # at the start of each epoch


def test_refresh_every_n_steps_inside_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    from recstudio.model.sampler import ModelBasedSampler

    refreshed = []
    refresh = ModelBasedSampler.refresh
    monkeypatch.setattr(
        ModelBasedSampler, "refresh", lambda self, vectors: (refreshed.append(1), refresh(self, vectors))
    )
    data = planted_data(num_users=60, num_items=40, seed=5)
    steps = -(-data.train.user.numel() // 128)  # optimiser steps per epoch
    overrides = {
        "model.loss": "sampled_softmax",
        "model.sampler": "midx_uni",
        "model.sampler_clusters": 4,
        "model.sampler_refresh_steps": 2,
    }
    result = fit_and_evaluate("BPR", data, epochs=2, batch_size=128, **overrides)
    assert result["epochs"] == 2 and steps >= 4
    # each epoch start, then every 2 steps after it within the epoch: 1 + (steps - 1) // 2
    assert len(refreshed) == 2 * (1 + (steps - 1) // 2)


def test_end_to_end_dns_fused_bpr_and_generic_hinge() -> None:
    data = planted_data(num_users=60, num_items=40, seed=6)
    for overrides in (
        {"model.hard_negative_candidates": 4},  # BPR's fused native path
        {"model.hard_negative_candidates": 4, "model.loss": "hinge", "model.sampler": "cluster_uni"},
    ):
        result = fit_and_evaluate("BPR", data, epochs=2, batch_size=128, **overrides)
        assert result["epochs"] == 2 and math.isfinite(result["test"]["ndcg@10"])


def test_tune_searches_sampler_as_categorical(workdir: Path) -> None:
    from recstudio.cli import cli
    from tests.test_cli_run import write_toy_dataset

    spec = write_toy_dataset(workdir)
    (workdir / "space.yaml").write_text("sampler: [uniform, midx_uni, cluster_pop]\n")
    args = [
        "tune", "-m", "BPR", "-d", str(spec), "--trials", "3", "--search-space", "space.yaml",
        "--sampler", "grid", "--pruner", "none", "--no-defaults-trial", "--json", "-q",
        "--epochs", "1", "--early-stop-patience", "0",
        "--storage", f"sqlite:///{workdir / 'studies.db'}",
        "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["invocation"]["trials"]["COMPLETE"] == 3
    assert summary["best"]["params"]["model.sampler"] in ("uniform", "midx_uni", "cluster_pop")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", MODEL_BASED)
def test_model_based_samplers_run_on_cuda(name: str) -> None:
    dev = torch.device("cuda")
    sampler, vectors = _sampler(name)
    sampler = sampler.to(dev)
    sampler.exclude(torch.tensor([1, 1]), torch.tensor([2, 3]), num_users=2)
    sampler.refresh(vectors.to(dev))
    query = torch.randn(1, 8, device=dev).expand(100_000, 8).contiguous()
    users = torch.ones(100_000, dtype=torch.long, device=dev)
    neg, log_q_neg, log_q_pos = sampler.sample(100_000, 2, pos_items=users, query=query, users=users)
    assert neg.device.type == log_q_neg.device.type == log_q_pos.device.type == "cuda"
    assert int(neg.min()) >= 1 and not torch.isin(neg, torch.tensor([2, 3], device=dev)).any()
    exact = sampler.log_prob(torch.arange(NUM_ITEMS, device=dev)[None, :], query=query[:1])[0].double().exp()
    exact[[2, 3]] = 0
    freq = torch.bincount(neg.flatten(), minlength=NUM_ITEMS).double() / neg.numel()
    assert 0.5 * (freq - exact / exact.sum()).abs().sum().item() < 0.02
