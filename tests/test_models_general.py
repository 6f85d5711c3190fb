"""Model-specific checks of BPR, NCF, MultiVAE, WRMF, EASE and FM: shapes, the formulas of their
papers against direct (naive) computations, and the mechanics each one relies on. Whether they
learn on planted data is the contract suite's job (``recstudio.testing``)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from recstudio.config import SECTIONS, EvalConfig, TrainConfig, build_section
from recstudio.data.dataset import FeatureTable, Interactions, PreparedData
from recstudio.errors import ConfigError
from recstudio.model.ae.multivae import MultiVAE
from recstudio.model.fm.fm import FM
from recstudio.model.general.bpr import BPR
from recstudio.model.general.ease import EASE
from recstudio.model.general.ncf import NCF
from recstudio.model.general.wrmf import WRMF

MODELS = [BPR, NCF, MultiVAE, WRMF, EASE, FM]


def tiny_data(seed: int = 0, num_users: int = 7, num_items: int = 9, per_user: int = 4) -> PreparedData:
    """Users 1..num_users each with ``per_user`` distinct train items (ids from 1), one test item,
    and user/item side features (including an unknown code 0 and non-binary multi-hot weights)."""
    g = torch.Generator().manual_seed(seed)
    users, items, test_u, test_i = [], [], [], []
    for u in range(1, num_users + 1):
        perm = torch.randperm(num_items, generator=g)[: per_user + 1] + 1
        users += [u] * per_user
        items += perm[:per_user].tolist()
        test_u.append(u)
        test_i.append(int(perm[per_user]))

    def inter(u: list[int], i: list[int]) -> Interactions:
        n = len(u)
        return Interactions(
            torch.tensor(u), torch.tensor(i), torch.ones(n), torch.arange(n, dtype=torch.float64)
        )

    nu, ni = num_users + 1, num_items + 1
    segment = torch.tensor([0] + [u % 3 for u in range(1, nu)])  # user 3 and 6 have unknown code 0
    group = torch.tensor([0] + [1 + i % 2 for i in range(1, ni)])
    tags = torch.rand(ni, 3, generator=g).round(decimals=1)
    tags[0] = 0.0
    tags[1] = 0.0  # an item without tags
    return PreparedData(
        name="tiny",
        num_users=nu,
        num_items=ni,
        train=inter(users, items),
        valid=inter([], []),
        test=inter(test_u, test_i),
        user_vocab=list(range(nu)),
        item_vocab=list(range(ni)),
        user_features=FeatureTable(categorical={"segment": segment}, cardinality={"segment": 3}),
        item_features=FeatureTable(
            categorical={"group": group}, cardinality={"group": 3}, multi_hot={"tags": tags}
        ),
    )


def eval_batch(data: PreparedData) -> dict[str, torch.Tensor]:
    users = torch.arange(1, data.num_users)
    mask = torch.zeros(users.numel(), data.num_items, dtype=torch.bool)
    mask[data.train.user - 1, data.train.item] = True
    mask[:, 0] = True
    return {"user": users, "history_mask": mask}


def triplet_batch(data: PreparedData) -> dict[str, torch.Tensor]:
    return {"user": data.train.user, "item": data.train.item, "rating": data.train.rating}


def dense_train(data: PreparedData) -> np.ndarray:
    x = np.zeros((data.num_users, data.num_items))
    x[data.train.user.numpy(), data.train.item.numpy()] = 1.0
    return x


# --------------------------------------------------------------------------- declarations


def _view(cls: type) -> str:
    """The view of the model's main training input under its default config."""
    return cls.data_contract(cls.Config()).main.view


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_declarations(cls: type) -> None:
    from recstudio.model.registry import FAMILIES, get_model_class

    assert get_model_class(cls.__name__.lower()) is cls
    assert cls.family in FAMILIES
    assert _view(cls) in ("triplet", "user", "als")
    assert cls.description and "\n" not in cls.description
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    build_section(cls.Config, {}, "model")  # defaults pass validation
    for section, values in cls.default_overrides.items():
        build_section(SECTIONS[section], values, section)
    for key, dist in cls.search_space.items():
        section, _, name = key.rpartition(".")
        if section:
            assert name in {f.name for f in dataclasses.fields(SECTIONS[section])}, key
        else:
            assert name in fields, key
        assert dist["type"] in ("float", "int", "categorical"), key
        if dist["type"] == "categorical":
            assert dist["choices"], key
        else:
            assert dist["low"] < dist["high"], key


def test_families_and_views() -> None:
    assert {c.__name__: (c.family, _view(c)) for c in MODELS} == {
        "BPR": ("general", "triplet"),
        "NCF": ("general", "triplet"),
        "MultiVAE": ("general", "user"),
        "WRMF": ("general", "als"),
        "EASE": ("general", "user"),
        "FM": ("feature", "triplet"),
    }


# --------------------------------------------------------------------------- BPR


def test_bpr_scores_are_inner_products_and_padding_is_zero() -> None:
    data = tiny_data()
    model = BPR(BPR.Config(embed_dim=8), data)
    assert torch.all(model.user_emb.weight[0] == 0) and torch.all(model.item_emb.weight[0] == 0)
    batch = eval_batch(data)
    scores = model.score_batch(batch)
    assert scores.shape == (data.num_users - 1, data.num_items)
    expected = model.user_emb.weight[batch["user"]] @ model.item_emb.weight.T
    torch.testing.assert_close(scores, expected)


def test_bpr_loss_matches_formula_with_static_negatives() -> None:
    data = tiny_data()
    model = BPR(BPR.Config(embed_dim=8, reg_weight=0.1), data)
    batch = triplet_batch(data)
    batch["neg_item"] = (batch["item"] % (data.num_items - 1) + 1)[:, None]
    u = model.user_emb.weight[batch["user"]]
    p = model.item_emb.weight[batch["item"]]
    n = model.item_emb.weight[batch["neg_item"][:, 0]]
    diff = (u * p).sum(1) - (u * n).sum(1)
    reg = (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / u.shape[0]
    expected = -torch.nn.functional.logsigmoid(diff).mean() + 0.1 * reg
    loss = model.training_loss(batch)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.user_emb.weight.grad is not None
    # reg_negatives=false: the penalty covers the user and the positive only (the generic path)
    model.config.reg_negatives = False
    with torch.no_grad():
        without = model.training_loss(batch)
    torch.testing.assert_close(without, expected - 0.1 * n.pow(2).sum().detach() / u.shape[0])


# --------------------------------------------------------------------------- NCF


@pytest.mark.parametrize("variant", ["gmf", "mlp", "neumf"])
def test_ncf_full_ranking_equals_pairwise_and_is_chunked(variant: str) -> None:
    data = tiny_data()
    model = NCF(NCF.Config(variant=variant, embed_dim=8, mlp_layers=[16, 8], dropout=0.3), data).eval()
    assert hasattr(model, "gmf_user") == (variant != "mlp")
    assert hasattr(model, "mlp_user") == (variant != "gmf")
    batch = eval_batch(data)
    with torch.no_grad():
        scores = model.score_batch(batch)
        users, items = batch["user"][:, None], torch.arange(data.num_items)[None, :]
        pairwise = model.pair_scores(users, items)
        budget = {"cpu": 5 * model.pair_width, "cuda": 5 * model.pair_width}
        with pytest.MonkeyPatch.context() as mp:  # 5 pair activations per chunk: many chunks
            mp.setattr("recstudio.model.base.SCORE_CHUNK_ELEMENTS", budget)
            chunked = model.score_batch(batch)
    assert scores.shape == (data.num_users - 1, data.num_items)
    torch.testing.assert_close(scores, pairwise)
    torch.testing.assert_close(chunked, pairwise)


@pytest.mark.parametrize("variant", ["gmf", "mlp", "neumf"])
@pytest.mark.parametrize("candidates", [1, 40])  # 7 < 10 items: per candidate; 280: per catalogue item
def test_ncf_training_scores_equal_pairwise(variant: str, candidates: int) -> None:
    data = tiny_data()
    model = NCF(NCF.Config(variant=variant, embed_dim=8, mlp_layers=[16, 8]), data).eval()
    users = torch.arange(1, data.num_users)
    items = torch.randint(1, data.num_items, (users.shape[0], candidates))
    with torch.no_grad():
        torch.testing.assert_close(
            model.candidate_scores({"user": users}, items), model.pair_scores(users[:, None], items)
        )


def test_ncf_mlp_first_layer_split_equals_concat_linear() -> None:
    data = tiny_data()
    model = NCF(NCF.Config(variant="mlp", embed_dim=4, mlp_layers=[6]), data).eval()
    u, i = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    cat = torch.cat([model.mlp_user(u), model.mlp_item(i)], dim=1)
    weight = torch.cat([model.mlp_first_user.weight, model.mlp_first_item.weight], dim=1)
    hidden = torch.relu(cat @ weight.T + model.mlp_first_user.bias)
    expected = model.predict(hidden).squeeze(-1)
    torch.testing.assert_close(model.pair_scores(u, i), expected)


@pytest.mark.parametrize("variant", ["gmf", "mlp", "neumf"])
def test_ncf_training_loss_uses_sampled_negatives(variant: str) -> None:
    data = tiny_data()
    model = NCF(NCF.Config(variant=variant, embed_dim=8, mlp_layers=[16, 8]), data)
    assert model.num_negatives == 4
    loss = model.training_loss(triplet_batch(data))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.predict.weight.grad is not None and model.predict.weight.grad.abs().sum() > 0


def test_ncf_rejects_empty_mlp() -> None:
    with pytest.raises(ConfigError):
        NCF(NCF.Config(variant="mlp", mlp_layers=[]), tiny_data())
    NCF(NCF.Config(variant="gmf", mlp_layers=[]), tiny_data())  # gmf has no MLP tower


# --------------------------------------------------------------------------- MultiVAE


def _user_batch(data: PreparedData) -> dict[str, torch.Tensor]:
    history = torch.from_numpy(dense_train(data)[1:]).float()
    return {"user": torch.arange(1, data.num_users), "history": history}


def test_multivae_kl_annealing_is_linear_then_capped() -> None:
    data = tiny_data()
    model = MultiVAE(
        MultiVAE.Config(hidden_dims=[16], latent_dim=4, anneal_cap=0.2, total_anneal_steps=10), data
    )
    batch = _user_batch(data)
    weights = []
    for _ in range(5):
        model.training_loss(batch)
        weights.append(model.last_kl_weight)
    assert weights == pytest.approx([0.0, 0.1, 0.2, 0.2, 0.2])
    assert int(model.anneal_step) == 5
    model.eval()
    model.training_loss(batch)
    assert int(model.anneal_step) == 5  # evaluation does not advance the schedule
    assert "anneal_step" in model.state_dict()  # resumes with the checkpoint
    no_anneal = MultiVAE(MultiVAE.Config(total_anneal_steps=0, anneal_cap=0.3), data)
    assert no_anneal.kl_weight() == pytest.approx(0.3)


def test_multivae_loss_is_multinomial_nll_plus_beta_kl() -> None:
    data = tiny_data()
    model = MultiVAE(MultiVAE.Config(hidden_dims=[16], latent_dim=4, total_anneal_steps=4), data)
    model.anneal_step.fill_(2)  # beta = min(0.2, 2 / 4) = 0.2
    model.eval()  # mean latent, no dropout: the loss is deterministic
    batch = _user_batch(data)
    x = batch["history"]
    mu, logvar = model.encoder(torch.nn.functional.normalize(x, dim=1)).chunk(2, dim=1)
    nll = -(torch.log_softmax(model.decoder(mu), 1) * x).sum(1).mean()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
    torch.testing.assert_close(model.training_loss(batch), nll + 0.2 * kl)


def test_multivae_scores_are_deterministic_and_ignore_padding_column() -> None:
    data = tiny_data()
    model = MultiVAE(MultiVAE.Config(hidden_dims=[16], latent_dim=4), data)
    model.train()  # even in train mode, scoring uses the mean and no dropout
    batch = eval_batch(data)
    a = model.score_batch(batch)
    b = model.score_batch(batch)
    batch2 = dict(batch, history_mask=batch["history_mask"].clone())
    batch2["history_mask"][:, 0] = False
    assert a.shape == (data.num_users - 1, data.num_items)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, model.score_batch(batch2))
    assert batch["history_mask"][:, 0].all()  # the caller's batch is not modified


# --------------------------------------------------------------------------- WRMF


def _wrmf_numpy_user_solution(model: WRMF, data: PreparedData) -> np.ndarray:
    """x_u = (Y^T C_u Y + lambda I)^-1 Y^T C_u p_u for every user, from the dense matrices."""
    p = dense_train(data)
    c = 1.0 + model.config.alpha * p
    y = model.item_factors.detach().double().numpy()
    d = y.shape[1]
    out = np.zeros((data.num_users, d))
    for u in range(1, data.num_users):
        a = y.T @ (c[u][:, None] * y) + model.config.reg_weight * np.eye(d)
        out[u] = np.linalg.solve(a, y.T @ (c[u] * p[u]))
    return out


def test_wrmf_block_solve_equals_dense_per_user_solution() -> None:
    data = tiny_data()
    model = WRMF(WRMF.Config(embed_dim=5, alpha=10.0, reg_weight=0.5, init_std=0.3), data)
    expected = _wrmf_numpy_user_solution(model, data)
    model.chunk_elements = 30  # forces several index_add chunks per block
    ids = torch.arange(1, data.num_users)
    model.solve_block(0, ids[:3])
    model.solve_block(0, ids[3:])
    np.testing.assert_allclose(model.user_factors.double().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_wrmf_als_steps_decrease_weighted_objective() -> None:
    data = tiny_data()
    model = WRMF(WRMF.Config(embed_dim=4, alpha=10.0, reg_weight=0.1, init_std=0.5), data)
    assert model.configure_optimizers() is None and not model.automatic_optimization
    users, items = torch.arange(1, data.num_users), torch.arange(1, data.num_items)
    objective = [float(model.weighted_loss())]
    for _ in range(3):
        for side, ids in ((0, users[:4]), (0, users[4:]), (1, items)):
            assert model.training_step({"side": torch.tensor(side), "ids": ids}, 0) is None
            objective.append(float(model.weighted_loss()))
    assert all(b <= a + 1e-4 for a, b in zip(objective, objective[1:])), objective
    assert objective[-1] < 0.5 * objective[0]
    assert torch.all(model.user_factors[0] == 0) and torch.all(model.item_factors[0] == 0)


def test_wrmf_weighted_loss_matches_dense_formula() -> None:
    data = tiny_data()
    model = WRMF(WRMF.Config(embed_dim=3, alpha=5.0, reg_weight=0.7, init_std=0.4), data)
    p = dense_train(data)
    c = 1.0 + 5.0 * p
    x, y = model.user_factors.double().numpy(), model.item_factors.double().numpy()
    expected = (c * (p - x @ y.T) ** 2).sum() + 0.7 * ((x**2).sum() + (y**2).sum())
    assert float(model.weighted_loss()) == pytest.approx(expected, rel=1e-5)
    scores = model.score_batch(eval_batch(data))
    np.testing.assert_allclose(scores.numpy(), (x @ y.T)[1:], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- EASE


def test_ease_equals_numpy_closed_form() -> None:
    data = tiny_data()
    model = EASE(EASE.Config(reg_weight=3.0), data)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.configure_optimizers() is None
    model.gram_chunk_entries = 20  # several user chunks
    model.fit_closed_form(data)
    x = dense_train(data)
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(data.num_items))
    b = np.eye(data.num_items) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.item_weights.double().numpy(), b, atol=1e-6)
    batch = eval_batch(data)
    scores = model.score_batch(batch)
    np.testing.assert_allclose(scores.numpy(), batch["history_mask"].double().numpy() @ b, atol=1e-5)
    assert model.training_step(triplet_batch(data), 0) is None
    assert "item_weights" in model.state_dict()


# --------------------------------------------------------------------------- FM


def _naive_fm(model: FM, data: PreparedData, u: int, i: int) -> float:
    """Rendle's FM written out: bias + sum of linear terms + sum over all pairs of active features."""
    feats: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (v_a, w_a, x_a)
    for side, table, row in (
        (model.user_side, data.user_features, u),
        (model.item_side, data.item_features, i),
    ):
        feats.append((side.vec["id"].weight[row], side.lin["id"].weight[row, 0], 1.0))
        for name, codes in table.categorical.items():
            code = int(codes[row])
            if code:
                feats.append((side.vec[f"c_{name}"].weight[code], side.lin[f"c_{name}"].weight[code, 0], 1.0))
        for name, bag in table.multi_hot.items():
            for j, value in enumerate(bag[row].tolist()):
                if value:
                    feats.append((side.vec[f"m_{name}"].weight[j], side.lin[f"m_{name}"].weight[j, 0], value))
    total = float(model.bias) + sum(float(w) * x for _, w, x in feats)
    for (va, _, xa), (vb, _, xb) in itertools.combinations(feats, 2):
        total += float(va @ vb) * xa * xb
    return total


def test_fm_full_ranking_equals_naive_pairwise_fm() -> None:
    torch.manual_seed(0)
    data = tiny_data()
    model = FM(FM.Config(embed_dim=4, init_std=0.3), data)
    with torch.no_grad():  # non-zero linear weights and bias; padding rows stay zero
        for side in (model.user_side, model.item_side):
            for key, table in side.lin.items():
                table.weight.normal_()
                if not key.startswith("m_"):
                    table.weight[0] = 0.0
        model.bias.fill_(0.7)
    batch = eval_batch(data)
    with torch.no_grad():
        scores = model.score_batch(batch)
        naive = torch.tensor(
            [
                [_naive_fm(model, data, u, i) for i in range(1, data.num_items)]
                for u in range(1, data.num_users)
            ]
        )
    assert scores.shape == (data.num_users - 1, data.num_items)
    torch.testing.assert_close(scores[:, 1:].double(), naive.double(), rtol=1e-4, atol=1e-4)


def test_fm_without_features_is_mf_with_biases() -> None:
    data = tiny_data()
    model = FM(FM.Config(embed_dim=4, use_features=False), data)
    assert set(model.user_side.vec) == {"id"} and set(model.item_side.vec) == {"id"}
    bare = dataclasses.replace(data, user_features=FeatureTable(), item_features=FeatureTable())
    model = FM(FM.Config(embed_dim=4), bare)
    with torch.no_grad():
        model.user_side.lin["id"].weight.normal_()
        model.item_side.lin["id"].weight.normal_()
    batch = eval_batch(bare)
    pu, qi = model.user_side.vec["id"].weight, model.item_side.vec["id"].weight
    bu, bi = model.user_side.lin["id"].weight[:, 0], model.item_side.lin["id"].weight[:, 0]
    users = batch["user"]
    expected = model.bias + bu[users, None] + bi[None, :] + pu[users] @ qi.T
    torch.testing.assert_close(model.score_batch(batch), expected)


def test_fm_training_loss_backpropagates_to_feature_fields() -> None:
    data = tiny_data()
    model = FM(FM.Config(embed_dim=4, reg_weight=1e-3), data)
    loss = model.training_loss(triplet_batch(data))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.item_side.vec["m_tags"].weight.grad.abs().sum() > 0
    assert model.user_side.vec["c_segment"].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- constructor contract


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_constructor_contract_and_recommend_excludes_history(cls: type) -> None:
    data = tiny_data()
    model = cls(cls.Config(), data, TrainConfig(), EvalConfig())
    model.fit_closed_form(data)
    model.eval()
    batch = eval_batch(data)
    with torch.no_grad():
        scores, items = model.recommend(batch, k=3)
    assert items.shape == (data.num_users - 1, 3)
    assert not batch["history_mask"].gather(1, items).any()


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_cuda_matches_cpu(cls: type) -> None:
    """Same weights on CPU and CUDA give the same fit and scores; training runs on the device."""
    data = tiny_data()
    torch.manual_seed(0)
    cpu = cls(cls.Config(), data).eval()
    gpu = cls(cls.Config(), data)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    cpu.fit_closed_form(data)
    gpu.fit_closed_form(data)
    if cls is WRMF:
        ids = torch.arange(1, data.num_users)
        cpu.solve_block(0, ids)
        gpu.solve_block(0, ids.cuda())
    batch = eval_batch(data)
    with torch.no_grad():
        expected = cpu.score_batch(batch)
        got = gpu.score_batch({k: v.cuda() for k, v in batch.items()})
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-3, atol=1e-4)
    gpu.train()
    if _view(cls) == "als":
        out = gpu.training_step({"side": torch.tensor(1), "ids": torch.arange(1, data.num_items).cuda()}, 0)
        assert out is None
    elif cls is not EASE:
        train = triplet_batch(data) if _view(cls) == "triplet" else _user_batch(data)
        loss = gpu.training_loss({k: v.cuda() for k, v in train.items()})
        assert loss.device.type == "cuda" and torch.isfinite(loss)
        loss.backward()
