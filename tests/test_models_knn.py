"""Formula checks of ItemKNN, SLIM and ENMF against direct computations on tiny cases, and the
one-line error a closed-form model gives for a sampler option. Whether they learn planted data
is the contract suite's job (``tests/test_models_contract.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstudio.errors import ConfigError
from recstudio.experiment import resolve_config
from recstudio.model.general.enmf import ENMF
from recstudio.model.general.itemknn import ItemKNN, topk_cosine
from recstudio.model.general.slim import SLIM, elastic_net_weights
from recstudio.model.itemitem import item_gram
from recstudio.model.loss import whole_data_square_loss
from tests.test_models_general import dense_train, eval_batch, tiny_data


def test_item_gram_counts_duplicates_once_and_ignores_chunking() -> None:
    users = torch.tensor([1, 1, 1, 2, 2, 3])
    items = torch.tensor([1, 2, 1, 2, 3, 3])  # (1, 1) twice
    x = np.zeros((4, 4))
    x[users.numpy(), items.numpy()] = 1.0
    for chunk in (1, 4, 1 << 20):
        gram = item_gram(users, items, 4, chunk_entries=chunk)
        np.testing.assert_allclose(gram.numpy(), x.T @ x)


# --------------------------------------------------------------------------- ItemKNN


def test_itemknn_equals_numpy_topk_shrunk_cosine() -> None:
    data = tiny_data(seed=3, num_users=12, num_items=10, per_user=5)
    k, shrink = 3, 2.0
    model = ItemKNN(ItemKNN.Config(k=k, shrink=shrink), data)
    model.fit_closed_form(data)
    x = dense_train(data)
    norms = np.sqrt((x * x).sum(0))
    sims = (x.T @ x) / (norms[:, None] * norms[None, :] + shrink)
    np.fill_diagonal(sims, 0.0)
    w = model.item_weights.numpy()
    for b in range(1, data.num_items):
        kept = np.nonzero(w[:, b])[0]
        assert len(kept) <= k and b not in kept
        # the kept values are the k largest similarities of column b (ties may swap ids)
        np.testing.assert_allclose(np.sort(w[kept, b]), np.sort(sims[:, b])[-len(kept) :], rtol=1e-6)
        np.testing.assert_allclose(w[kept, b], sims[kept, b], rtol=1e-6)
    batch = eval_batch(data)
    np.testing.assert_allclose(model.score_batch(batch).numpy(), batch["history_mask"].double().numpy() @ w)


def test_topk_cosine_blocks_do_not_change_the_result() -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(30, 17, generator=g) < 0.3).float()
    gram = x.T @ x
    full = topk_cosine(gram, 4, 1.0, block_entries=1 << 20)
    for block in (17, 40, 100):  # 1, 2 and 5 target items per block
        torch.testing.assert_close(topk_cosine(gram, 4, 1.0, block_entries=block), full)
    assert (full.diagonal() == 0).all()
    assert ((full > 0).sum(0) <= 4).all()


# --------------------------------------------------------------------------- SLIM


def _elastic_net_kkt(x: np.ndarray, w: np.ndarray, l1: float, l2: float) -> float:
    """Largest violation of the optimality conditions of the non-negative, zero-diagonal
    ElasticNet per column: gradient g of the smooth part; w > 0 needs g + l1 = 0, w = 0 needs
    g + l1 >= 0 (the diagonal is fixed at 0, so it has no condition)."""
    n = x.shape[0]
    grad = x.T @ (x @ w - x) / n + l2 * w + l1
    off = ~np.eye(w.shape[0], dtype=bool)
    active = (w > 0) & off
    inactive = (w == 0) & off
    return max(np.abs(grad[active]).max(initial=0.0), (-grad[inactive]).clip(min=0).max(initial=0.0))


def test_slim_solver_meets_the_kkt_conditions() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((40, 12)) < 0.35).astype(np.float64)
    l1, l2 = 0.01, 0.05
    w = elastic_net_weights(torch.from_numpy(x.T @ x), 40, l1, l2, max_iter=5000, tol=1e-12).numpy()
    assert (w >= 0).all() and (np.diag(w) == 0).all()
    assert 0 < (w > 0).mean() < 0.9  # the L1 term zeroes some weights, not all
    assert _elastic_net_kkt(x, w, l1, l2) < 1e-8


def test_slim_solver_equals_brute_force_on_a_tiny_problem() -> None:
    """3 items: each column has 2 free weights; try every support and keep the best feasible
    stationary point (the problem is strictly convex, so that is the optimum)."""
    rng = np.random.default_rng(1)
    x = (rng.random((15, 3)) < 0.5).astype(np.float64)
    n, l1, l2 = 15, 0.02, 0.1
    g = x.T @ x
    expected = np.zeros((3, 3))
    for j in range(3):
        others = [i for i in range(3) if i != j]

        def objective(w: np.ndarray, j: int = j) -> float:
            r = x[:, j] - x @ w
            return r @ r / (2 * n) + l1 * np.abs(w).sum() + 0.5 * l2 * w @ w

        best, best_w = np.inf, np.zeros(3)
        for support in ([], [others[0]], [others[1]], others):
            w = np.zeros(3)
            if support:
                a = g[np.ix_(support, support)] / n + l2 * np.eye(len(support))
                w[support] = np.linalg.solve(a, g[support, j] / n - l1)
            if (w >= 0).all() and objective(w) < best:
                best, best_w = objective(w), w
        expected[:, j] = best_w
    w = elastic_net_weights(torch.from_numpy(g), n, l1, l2, max_iter=5000, tol=1e-13).numpy()
    np.testing.assert_allclose(w, expected, atol=1e-9)


def test_slim_model_uses_sklearn_alpha_convention() -> None:
    data = tiny_data(seed=2, num_users=15, num_items=8, per_user=4)
    model = SLIM(SLIM.Config(alpha=0.1, l1_ratio=0.2, max_iter=5000, tol=1e-12), data)
    model.fit_closed_form(data)
    x = dense_train(data)[1:]  # the users' rows (row 0 is padding)
    w = model.item_weights.double().numpy()
    assert _elastic_net_kkt(x, w, 0.1 * 0.2, 0.1 * 0.8) < 1e-5  # float32 weights


# --------------------------------------------------------------------------- ENMF


def test_whole_data_square_loss_equals_naive_weighted_loss() -> None:
    g = torch.Generator().manual_seed(0)
    b, n_items, d, c = 4, 7, 5, 0.3
    query = torch.randn(b, d, generator=g, dtype=torch.float64)
    items = torch.randn(n_items, d, generator=g, dtype=torch.float64)
    y = (torch.rand(b, n_items, generator=g) < 0.4).double()
    y[:, 0] = 0.0  # padding is never observed
    rows, pos = y.nonzero(as_tuple=True)
    efficient = whole_data_square_loss(query, items, rows, pos, c)
    scores = query @ items.T
    weight = torch.where(y > 0, 1.0, c).double()
    naive = (weight * (y - scores) ** 2)[:, 1:].sum()  # every item but padding
    torch.testing.assert_close(efficient + y.sum(), naive)


def test_enmf_loss_is_the_whole_data_loss_of_its_scores() -> None:
    data = tiny_data(seed=4)
    model = ENMF(ENMF.Config(embed_dim=6, dropout=0.0, negative_weight=0.2), data).double()
    users = torch.arange(1, data.num_users)
    history = torch.zeros(users.numel(), data.num_items, dtype=torch.float64)
    history[data.train.user - 1, data.train.item] = 1.0
    loss = model.training_loss({"user": users, "history": history})
    scores = model.score_batch({"user": users})
    weight = torch.where(history > 0, 1.0, 0.2).double()
    naive = (weight * (history - scores) ** 2)[:, 1:].sum() - history.sum()
    torch.testing.assert_close(loss, naive)
    assert (model.item_emb.weight[0] == 0).all()


def test_enmf_trains_with_adagrad_by_default() -> None:
    cfg = resolve_config(model="ENMF", dataset="x")
    assert cfg.train.learner == "adagrad"
    data = tiny_data(seed=5)
    model = ENMF(cfg.model, data, cfg.train)
    (opt,) = [model.configure_optimizers()]
    assert isinstance(opt, torch.optim.Adagrad)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["ItemKNN", "SLIM", "EASE", "ENMF"])
@pytest.mark.parametrize("option", ["model.sampler", "model.num_negatives"])
def test_sampler_options_fail_in_one_line_naming_model_and_option(name: str, option: str) -> None:
    value = "popularity" if option.endswith("sampler") else 5
    with pytest.raises(ConfigError) as info:
        resolve_config(model=name, dataset="ml-100k", overrides={option: value})
    message = str(info.value)
    assert "\n" not in message
    assert f"'{option}'" in message and f"model {name} has no such option" in message


def test_bare_sampler_key_names_the_model() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'sampler': neither model ItemKNN"):
        resolve_config(model="ItemKNN", dataset="ml-100k", overrides={"sampler": "popularity"})
