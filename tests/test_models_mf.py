"""Formula checks of the matrix-factorisation models of issue 14: SimpleX (CCL), CML, LogisticMF,
PMF, DSSM and IRGAN. Whether they learn planted data is the contract suite's job."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recstudio.config import EvalConfig, TrainConfig
from recstudio.errors import ModelError
from recstudio.model.loss import build_loss
from recstudio.model.registry import get_model_class
from recstudio.testing import planted_data


def build(name: str, data=None, **config):  # noqa: ANN001, ANN201
    cls = get_model_class(name)
    data = data or planted_data()
    return cls(cls.Config(**config), data, TrainConfig(), EvalConfig()), data


# --------------------------------------------------------------------------- SimpleX / CCL


def test_ccl_equals_the_hand_formula():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(5, generator=g) * 2 - 1
    neg = torch.rand(5, 7, generator=g) * 2 - 1
    loss = build_loss("ccl", margin=0.3, negative_weight=4.0)(pos, neg)
    expected = np.mean(
        [
            max(0.0, 1 - float(pos[n])) + 4.0 / 7 * sum(max(0.0, float(neg[n, k]) - 0.3) for k in range(7))
            for n in range(5)
        ]
    )
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_simplex_user_vector_fuses_user_and_history_mean():
    model, data = build("SimpleX", dropout=0.0, history_len=3)
    model.eval()
    users = torch.tensor([1, 5])
    out = model.user_vectors(users)
    train = data.positives("train")
    for row, u in enumerate(users.tolist()):
        items = train.item[train.user == u][-3:]  # the last three by time
        mean = model.item_emb.weight[items].mean(0)
        expected = 0.5 * model.user_emb.weight[u] + 0.5 * model.history_map(mean)
        torch.testing.assert_close(out[row], expected)
    # the score is the cosine of the fused user vector and the item embedding
    scores = model.score_batch({"user": users})
    torch.testing.assert_close(
        scores, F.normalize(out, dim=1) @ F.normalize(model.item_emb.weight, dim=1).T, atol=1e-5, rtol=1e-5
    )


# --------------------------------------------------------------------------- CML


def test_cml_embeddings_stay_in_the_unit_ball_while_training():
    from recstudio.model.general.cml import covariance_penalty

    model, data = build("CML", cov_weight=0.1)
    with torch.no_grad():  # start far outside the ball: the clip must bring every row back
        model.user_emb.weight.mul_(10.0)
        model.item_emb.weight.mul_(10.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)  # big steps push rows outside
    train = data.train
    for step in range(5):
        batch = {
            "user": train.user[step * 64 : (step + 1) * 64],
            "item": train.item[step * 64 : (step + 1) * 64],
        }
        loss = model.training_loss(batch)
        # every score of the step came from clipped embeddings
        assert float(model.user_emb.weight.detach().norm(dim=1).max()) <= 1.0 + 1e-5
        assert float(model.item_emb.weight.detach().norm(dim=1).max()) <= 1.0 + 1e-5
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model.prepare_evaluation()
    assert float(model.eval_cache["items"].norm(dim=1).max()) <= 1.0 + 1e-5
    # scores are negative squared distances
    users = torch.tensor([1, 2])
    scores = model.score_batch({"user": users})
    u, v = model.user_emb.weight[users], model.item_emb.weight
    torch.testing.assert_close(scores, -torch.cdist(u, v).square(), atol=1e-5, rtol=1e-4)
    # the covariance penalty against numpy
    x = torch.randn(12, 4, dtype=torch.float64)
    c = np.cov(x.numpy(), rowvar=False, bias=True)
    expected = (np.linalg.norm(c) - np.square(np.diag(c)).sum()) / 12
    assert float(covariance_penalty(x)) == pytest.approx(expected)


# --------------------------------------------------------------------------- LogisticMF


def test_logisticmf_scores_and_loss_follow_the_paper():
    model, data = build("LogisticMF", positive_weight=3.0, reg_weight=0.01, num_negatives=2)
    with torch.no_grad():
        model.user_bias.normal_()
        model.item_bias.normal_()
    users, pos, neg = (
        torch.tensor([1, 2, 3]),
        torch.tensor([4, 5, 6]),
        torch.tensor([[7, 8], [9, 10], [11, 12]]),
    )
    x, y = model.user_emb.weight, model.item_emb.weight
    bu, bi = model.user_bias[:, 0], model.item_bias[:, 0]

    def s(u, i):  # noqa: ANN001, ANN202
        return x[u] @ y[i] + bu[u] + bi[i]

    scores = model.score_batch({"user": users})
    torch.testing.assert_close(scores[0, 4], s(1, 4))
    loss = model.training_loss({"user": users, "item": pos, "neg_item": neg})
    expected = 0.0
    for n in range(3):
        u = int(users[n])
        term = -3.0 * F.logsigmoid(s(u, int(pos[n])))
        term = term - sum(F.logsigmoid(-s(u, int(k))) for k in neg[n]) / 2
        expected = expected + term / 3
    reg = (x[users] ** 2).sum() + (y[pos] ** 2).sum() + (y[neg] ** 2).sum()
    torch.testing.assert_close(loss, expected + 0.01 * reg / 3)


# --------------------------------------------------------------------------- PMF


def test_pmf_loss_is_squared_error_plus_l2():
    model, data = build("PMF", data=planted_data(ratings=True), reg_weight=0.05)
    train = data.train
    users, items, ratings = train.user[:10], train.item[:10], train.rating[:10]
    assert len(set(ratings.tolist())) > 1  # raw stars, not binarised
    u, v = model.user_emb.weight, model.item_emb.weight
    mu = float(train.rating.mean())
    pred = (u[users] * v[items]).sum(1) + mu
    expected = ((pred - ratings) ** 2).mean() + 0.05 * ((u[users] ** 2).sum() + (v[items] ** 2).sum()) / 10
    loss = model.training_loss({"user": users, "item": items, "rating": ratings})
    torch.testing.assert_close(loss, expected)
    # score_pairs is the predicted rating; full ranking ranks by it
    torch.testing.assert_close(model.score_pairs({"user": users, "item": items}), pred)
    torch.testing.assert_close(model.score_batch({"user": users})[torch.arange(10), items], pred)


def test_rmse_and_mae_equal_numpy():
    from recstudio.eval.pointwise import PointwiseEvaluator

    g = torch.Generator().manual_seed(3)
    pred, target = torch.rand(50, generator=g) * 5, torch.randint(1, 6, (50,), generator=g).float()
    ev = PointwiseEvaluator(["rmse", "mae"], target="rating")
    for part in (slice(0, 20), slice(20, 50)):
        ev.update(pred[part], {"user": torch.zeros(pred[part].numel()), "rating": target[part]})
    out = ev.compute()
    p, t = pred.double().numpy(), target.double().numpy()
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((p - t) ** 2)))
    assert out["mae"] == pytest.approx(np.mean(np.abs(p - t)))


def test_pmf_reports_rmse_and_mae_and_ranks():
    from recstudio.testing import fit_and_evaluate

    data = planted_data(ratings=True)
    result = fit_and_evaluate("PMF", data, epochs=3, learning_rate=1e-2, batch_size=256)
    for split in ("valid", "test"):
        assert {"rmse", "mae", "ndcg@10", "recall@10"} <= set(result[split]), result[split]
    assert result["test"]["mae"] <= result["test"]["rmse"]


def test_pmf_without_ratings_fails_in_one_line():
    with pytest.raises(ModelError, match=r"PMF needs rating values.*binarize") as info:
        build("PMF", data=planted_data())
    assert "\n" not in str(info.value)


def test_rating_contract_turns_binarize_off():
    from recstudio.experiment import resolve_config

    assert resolve_config(model="PMF", dataset="ml-100k").data.binarize is False
    assert resolve_config(model="BPR", dataset="ml-100k").data.binarize is True


# --------------------------------------------------------------------------- DSSM


def test_dssm_towers_read_the_features():
    model, data = build("DSSM")
    model.eval()
    users = torch.tensor([1, 2, 3])
    before = model.score_batch({"user": users})
    # another item's genre group changes that item's scores only
    model.fields.item.codes[7, 1] = model.fields.item.codes[80, 1]
    assert model.fields.item.names[1] == "item.group"
    after = model.score_batch({"user": users})
    changed = (after - before).abs() > 1e-7
    assert changed[:, 7].all() and not changed[:, torch.arange(data.num_items) != 7].any()
    # a user's segment changes that user's scores
    model.fields.user.codes[2, 1] = model.fields.user.codes[3, 1]
    third = model.score_batch({"user": users})
    assert ((third - after).abs()[1] > 1e-7).all() and torch.equal(third[[0, 2]], after[[0, 2]])
    # the tower input is the concatenation of the id and feature embeddings
    table = model.fields.table[:, :-1]
    codes = model.fields.user.codes[torch.tensor([5])]
    expected = model.user_tower(table[codes].flatten(-2))
    torch.testing.assert_close(model.user_vectors(torch.tensor([5])), expected)


def test_dssm_without_features_fails_in_one_line():
    from recstudio.data.dataset import FeatureTable

    data = planted_data()
    data.user_features, data.item_features = FeatureTable(), FeatureTable()
    with pytest.raises(ModelError, match=r"DSSM needs user or item side features") as info:
        build("DSSM", data=data)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- IRGAN


def test_irgan_generator_samples_from_its_softmax():
    torch.manual_seed(0)
    model, data = build("IRGAN", init_std=0.3, temperature=0.5)
    users = torch.tensor([3, 4])
    probs = model.generator_probs(users)
    g, b = model.gen_user.weight, model.gen_item.weight
    logits = (g[users] @ b.T + model.gen_bias[:, 0]) / 0.5
    logits[:, 0] = -torch.inf
    torch.testing.assert_close(probs, torch.softmax(logits, dim=1))
    assert float(probs.detach()[:, 0].max()) == 0.0
    draws = model.generate(users.repeat_interleave(20000), 1).view(2, 20000)
    for row in range(2):
        freq = torch.bincount(draws[row], minlength=data.num_items).float() / 20000
        assert float((freq - probs[row].detach()).abs().max()) < 0.01
    # the generator ranks (the paper's choice): scores are its logits up to the temperature
    scores = model.score_batch({"user": users})
    torch.testing.assert_close(scores[:, 1:] / 0.5, logits[:, 1:].detach())


def test_irgan_players_step_their_own_optimizers():
    model, data = build("IRGAN")
    groups = model.optimizer_groups()
    assert set(groups) == {"main", "generator"}
    batch = {"user": data.train.user[:32], "item": data.train.item[:32]}
    model.training_loss(batch).backward()
    assert model.gen_user.weight.grad is None and model.dis_user.weight.grad is not None
    model.zero_grad()
    model.generator_loss(batch).backward()
    assert model.dis_user.weight.grad is None or not model.dis_user.weight.grad.any()
    assert model.gen_user.weight.grad is not None
