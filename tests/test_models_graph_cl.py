"""Graph contrastive models (SGL, SimGCL, XSimGCL, NCL) and their shared parts: SGL's dropout
views against a dense computation, SimGCL's noise, the InfoNCE by hand, NCL's k-means."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recstudio.config import TrainConfig
from recstudio.errors import ConfigError
from recstudio.model.cluster import kmeans, nearest_centroid
from recstudio.model.general.ncl import NCL
from recstudio.model.general.sgl import SGL
from recstudio.model.general.simgcl import SimGCL
from recstudio.model.general.xsimgcl import XSimGCL
from recstudio.model.graph import bipartite_edges, dropout_adjacency, layer_outputs, perturb
from recstudio.model.loss import contrastive_loss, view_contrast
from recstudio.testing import planted_data
from tests.test_models_graph_seq import dense_normalized


@pytest.fixture(scope="module")
def small():
    return planted_data(num_users=40, num_items=30, min_len=6, max_len=14)


def kept_edges(adj, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) of the user->item entries of an adjacency."""
    dense = adj.to_dense()
    u, i = (dense[:num_users, num_users:] != 0).nonzero(as_tuple=True)
    return u, i


# --------------------------------------------------------------------------- SGL's views


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_edge_dropout_keeps_the_share_and_renormalises(small, ratio):
    nu, ni = small.num_users, small.num_items
    row, _ = bipartite_edges(small.train.user, small.train.item, nu, ni)
    edges = row.numel() // 2
    adj = dropout_adjacency(
        small.train.user, small.train.item, nu, ni, ratio, generator=torch.Generator().manual_seed(1)
    )
    u, i = kept_edges(adj, nu)
    assert u.numel() == int(edges * (1 - ratio)) and adj.nnz == 2 * u.numel() and adj.symmetric
    train = set(zip(small.train.user.tolist(), small.train.item.tolist()))
    assert set(zip(u.tolist(), i.tolist())) <= train  # a subgraph of the training graph
    torch.testing.assert_close(adj.to_dense().double(), dense_normalized(u, i, nu, ni), rtol=1e-5, atol=1e-7)
    other = dropout_adjacency(
        small.train.user, small.train.item, nu, ni, ratio, generator=torch.Generator().manual_seed(2)
    )
    assert not torch.equal(other.to_dense(), adj.to_dense())  # a new draw is a new view


def test_node_dropout_removes_every_edge_of_the_dropped_nodes(small):
    nu, ni = small.num_users, small.num_items
    adj = dropout_adjacency(small.train.user, small.train.item, nu, ni, 0.25, mode="node")
    u, i = kept_edges(adj, nu)
    all_u, all_i = small.train.user, small.train.item
    # every training edge whose two ends both survive is kept (nodes, not edges, are dropped)
    alive_u = torch.zeros(nu, dtype=torch.bool)
    alive_i = torch.zeros(ni, dtype=torch.bool)
    kept = set(zip(u.tolist(), i.tolist()))
    alive_u[u], alive_i[i] = True, True
    expected = {(a, b) for a, b in zip(all_u.tolist(), all_i.tolist()) if alive_u[a] and alive_i[b]}
    assert kept == expected and 0 < len(kept) < len(set(zip(all_u.tolist(), all_i.tolist())))
    torch.testing.assert_close(adj.to_dense().double(), dense_normalized(u, i, nu, ni), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="mode"):
        dropout_adjacency(all_u, all_i, nu, ni, 0.1, mode="walk")


def test_sgl_views_are_redrawn_each_epoch_and_walk_draws_one_per_layer(small):
    torch.manual_seed(0)
    model = SGL(SGL.Config(embed_dim=8, num_layers=2, augmentation="walk"), small, TrainConfig())
    assert len(model.views) == 4  # 2 views x 2 layers
    before = [v.to_dense().clone() for v in model.views]
    model.on_train_epoch_start()
    assert all(not torch.equal(a, b.to_dense()) for a, b in zip(before, model.views))
    # a view's tables are the mean of the layers over its own per-layer graphs
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach().double()
    a1, a2 = (g.to_dense().double() for g in model.views[:2])
    want = (x + a1 @ x + a2 @ (a1 @ x)) / 3
    users, items = model.view_tables(0)
    torch.testing.assert_close(torch.cat([users, items]).double(), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="model.augmentation"):
        SGL.Config(augmentation="mask").validate()


def test_sgl_loss_is_lightgcn_plus_weighted_view_contrast(small):
    torch.manual_seed(0)
    model = SGL(SGL.Config(embed_dim=8, ssl_weight=0.3, ssl_temp=0.5), small, TrainConfig())
    batch = {
        "user": torch.tensor([1, 2, 2, 3]),
        "item": torch.tensor([4, 5, 6, 5]),
        "neg_item": torch.tensor([[7], [8], [9], [10]]),
    }
    torch.manual_seed(1)
    loss = model.training_loss(batch)
    base = super(SGL, model).training_loss(batch)
    ssl = view_contrast(model.view_tables(0), model.view_tables(1), batch["user"], batch["item"], 0.5)
    torch.testing.assert_close(loss, base + 0.3 * ssl)


# --------------------------------------------------------------------------- noise and contrast


def test_simgcl_noise_has_norm_eps_and_the_sign_of_x():
    torch.manual_seed(0)
    x = torch.randn(50, 16)
    out = perturb(x, 0.1)
    delta = out - x
    torch.testing.assert_close(delta.norm(dim=1), torch.full((50,), 0.1))
    assert (delta * torch.sign(x) >= 0).all()  # the noise never points against x
    assert ((out.sign() == x.sign()) | (x == 0)).all()  # no coordinate flips sign
    assert not torch.allclose(perturb(x, 0.1), out)  # fresh noise per call
    # the shift is a constant for autograd (sign' = 0): the gradient reaches x unchanged
    leaf = x.clone().requires_grad_()
    upstream = torch.randn(50, 16)
    perturb(leaf, 0.1).backward(upstream)
    assert torch.equal(leaf.grad, upstream)


def test_noisy_layers_perturb_each_propagated_layer(small):
    torch.manual_seed(0)
    model = SimGCL(SimGCL.Config(embed_dim=8, num_layers=2), small, TrainConfig())
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    torch.manual_seed(3)
    noisy = layer_outputs(model.adjacency, x, 2, noise_eps=0.2)
    torch.manual_seed(3)
    h1 = perturb(model.adjacency(x), 0.2)
    h2 = perturb(model.adjacency(h1), 0.2)
    for got, want in zip(noisy, [x, h1, h2]):
        torch.testing.assert_close(got, want)
    # the final embedding leaves layer 0 out (mean of layers 1..K), without noise at evaluation
    a = model.adjacency.to_dense()
    users, items = model.propagate()
    torch.testing.assert_close(torch.cat([users, items]), (a @ x + a @ (a @ x)) / 2, rtol=1e-4, atol=1e-6)


def test_contrastive_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = 0.5

    def cos(x, y):
        return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))

    want = 0.0
    for i in range(3):
        logits = [cos(a[i].tolist(), b[j].tolist()) / t for j in range(3)]
        want += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    torch.testing.assert_close(contrastive_loss(a, b, t), torch.tensor(want / 3))
    # with a target: the positive of anchor i is candidate target[i]
    target = torch.tensor([2, 0, 0])
    want = 0.0
    for i in range(3):
        logits = [cos(a[i].tolist(), b[j].tolist()) / t for j in range(3)]
        want += -logits[int(target[i])] + math.log(sum(math.exp(v) for v in logits))
    torch.testing.assert_close(contrastive_loss(a, b, t, target), torch.tensor(want / 3))
    with pytest.raises(ConfigError, match="temperature"):
        contrastive_loss(a, b, 0.0)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("with_target", [False, True])
def test_contrastive_loss_blocked_path_matches_the_plain_formula(similarity, with_target):
    """float32 anchors take the row-blocked full softmax (no [B, N] logits); its value and both
    gradients equal the plain cross-entropy formula computed in float64."""
    torch.manual_seed(0)
    a, c = torch.randn(300, 16), torch.randn(700 if with_target else 300, 16)
    target = torch.randint(0, c.shape[0], (300,)) if with_target else None
    a32, c32 = a.clone().requires_grad_(), c.clone().requires_grad_()
    got = contrastive_loss(a32, c32, 0.2, target, similarity=similarity)
    got.backward()
    a64, c64 = a.double().requires_grad_(), c.double().requires_grad_()
    x, y = (F.normalize(a64, dim=-1), F.normalize(c64, dim=-1)) if similarity == "cosine" else (a64, c64)
    want = F.cross_entropy(x @ y.T / 0.2, target if with_target else torch.arange(300))
    want.backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a32.grad.double(), a64.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(c32.grad.double(), c64.grad, rtol=1e-4, atol=1e-7)


def test_view_contrast_counts_each_node_once():
    torch.manual_seed(0)
    u1, u2, i1, i2 = (torch.randn(6, 4) for _ in range(4))
    users, items = torch.tensor([1, 3, 1, 5]), torch.tensor([2, 2, 4, 0])
    got = view_contrast((u1, i1), (u2, i2), users, items, 0.2)
    uu, ii = torch.tensor([1, 3, 5]), torch.tensor([0, 2, 4])
    want = contrastive_loss(u1[uu], u2[uu], 0.2) + contrastive_loss(i1[ii], i2[ii], 0.2)
    torch.testing.assert_close(got, want)


def test_xsimgcl_contrasts_the_final_with_layer_l_in_one_propagation(small, monkeypatch):
    torch.manual_seed(0)
    model = XSimGCL(XSimGCL.Config(embed_dim=8, num_layers=2, layer_cl=1, ssl_temp=0.2), small, TrainConfig())
    calls = []
    original = SimGCL.layers

    def counting(self, noise_eps=0.0):
        calls.append(noise_eps)
        return original(self, noise_eps)

    monkeypatch.setattr(SimGCL, "layers", counting)
    batch = {
        "user": torch.tensor([1, 2, 3]),
        "item": torch.tensor([4, 5, 6]),
        "neg_item": torch.tensor([[7], [8], [9]]),
    }
    torch.manual_seed(5)
    loss = model.training_loss(batch)
    assert calls == [0.2]  # one noisy propagation per step
    torch.manual_seed(5)
    layers = original(model, 0.2)
    final = model.final(layers)
    cross = (layers[1][: model.num_users], layers[1][model.num_users :])
    want = model.propagated_ranking_loss(batch, *final) + 0.1 * view_contrast(
        final, cross, batch["user"], batch["item"], 0.2
    )
    torch.testing.assert_close(loss, want)
    with pytest.raises(ConfigError, match="model.layer_cl"):
        XSimGCL.Config(num_layers=2, layer_cl=3).validate()


# --------------------------------------------------------------------------- NCL


def test_kmeans_assigns_each_point_to_its_nearest_centroid():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    x = torch.cat([c + 0.3 * torch.randn(20, 2) for c in centres])
    centroids, assignment = kmeans(x, 3, generator=torch.Generator().manual_seed(0))
    dist = torch.cdist(x, centroids)
    assert torch.equal(assignment, dist.argmin(1))
    assert torch.equal(nearest_centroid(x, centroids), assignment)
    # each centroid is the mean of its members, and the three blobs are recovered
    for k in range(3):
        torch.testing.assert_close(centroids[k], x[assignment == k].mean(0))
    assert len({tuple(assignment[i * 20 : (i + 1) * 20].unique().tolist()) for i in range(3)}) == 3
    assert all(assignment[i * 20 : (i + 1) * 20].unique().numel() == 1 for i in range(3))
    c, a = kmeans(x[:2], 10)  # k clamped to the number of points
    assert c.shape == (2, 2) and sorted(a.tolist()) == [0, 1]


def test_kmeans_stops_at_a_fixed_point_with_the_result_of_every_round(monkeypatch):
    import recstudio.model.cluster as cluster

    torch.manual_seed(1)
    x = torch.randn(300, 4)
    passes = []
    nearest = cluster.nearest_centroid
    monkeypatch.setattr(cluster, "nearest_centroid", lambda p, c: (passes.append(1), nearest(p, c))[1])
    c_short, a_short = kmeans(x, 6, iters=200, generator=torch.Generator().manual_seed(0))
    rounds = len(passes)
    assert rounds < 200  # converged early
    # without the early exit: the same start run for exactly the rounds it took, and further
    for iters in (rounds, rounds + 5):
        c_full, a_full = _lloyd_without_exit(x, 6, iters, torch.Generator().manual_seed(0))
        assert torch.equal(a_full, a_short)
        torch.testing.assert_close(c_full, c_short, rtol=0, atol=0)


def _lloyd_without_exit(x, k, iters, generator):
    centroids = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    for _ in range(iters):
        a = nearest_centroid(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, a, x)
        counts = torch.bincount(a, minlength=k).to(x.dtype)
        centroids = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1.0)[:, None], centroids)
    return centroids, nearest_centroid(x, centroids)


def test_ncl_prototypes_and_loss_by_hand(small):
    torch.manual_seed(0)
    cfg = NCL.Config(
        embed_dim=8, num_layers=3, num_clusters=5, warm_up_epochs=0, ssl_reg=1e-3, proto_reg=2e-3
    )
    model = NCL(cfg, small, TrainConfig())
    model.e_step()
    for side, table in (("user", model.user_emb.weight), ("item", model.item_emb.weight)):
        centroids, cluster = model.prototypes[side]
        assert centroids.shape == (5, 8)
        torch.testing.assert_close(centroids.norm(dim=1), torch.ones(5))
        assert cluster.shape == (table.shape[0],) and cluster[0] == 0
    batch = {
        "user": torch.tensor([1, 2, 2]),
        "item": torch.tensor([4, 5, 6]),
        "neg_item": torch.tensor([[7], [8], [9]]),
    }
    loss = model.training_loss(batch)
    x = torch.cat([model.user_emb.weight, model.item_emb.weight])
    a = model.adjacency
    layers = [x, a(x), a(a(x)), a(a(a(x)))]
    final = sum(layers) / 4
    nu = model.num_users
    want = model.propagated_ranking_loss(batch, final[:nu], final[nu:])
    for side, ids, sl, weight in (
        ("user", batch["user"], slice(0, nu), 1.0),
        ("item", batch["item"], slice(nu, None), 1.0),
    ):
        e0, e2 = layers[0][sl], layers[2][sl]
        # structural: layer 2 of each id against layer 0 of all ids (padding excluded), summed
        logits = (
            torch.nn.functional.normalize(e2[ids], dim=1)
            @ torch.nn.functional.normalize(e0[1:], dim=1).T
            / 0.1
        )
        structural = (torch.logsumexp(logits, 1) - logits[torch.arange(3), ids - 1]).sum()
        centroids, cluster = model.prototypes[side]
        logits = torch.nn.functional.normalize(e0[ids], dim=1) @ centroids.T / 0.1
        proto = (torch.logsumexp(logits, 1) - logits[torch.arange(3), cluster[ids]]).sum()
        want = want + 1e-3 * weight * structural + 2e-3 * proto
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)


def test_ncl_prototype_term_waits_for_the_warm_up(small, monkeypatch):
    torch.manual_seed(0)
    model = NCL(NCL.Config(embed_dim=8, num_clusters=4, warm_up_epochs=2), small, TrainConfig())
    epoch = {"value": 0}
    monkeypatch.setattr(NCL, "current_epoch", property(lambda self: epoch["value"]))
    model.on_train_epoch_start()
    assert not model.prototypes and not model.proto_active()
    epoch["value"] = 2
    model.on_train_epoch_start()
    assert model.proto_active() and set(model.prototypes) == {"user", "item"}


def test_ncl_starts_from_xavier_and_lightgcn_init_std_none_means_xavier():
    """NCL's default init is RecBole's Xavier uniform (bound sqrt(6 / (rows + d))), not
    LightGCN's N(0, 0.1^2); ``init_std=None`` selects it for every LightGCN-based model."""
    data = planted_data(num_users=400, num_items=300, min_len=6, max_len=14)
    torch.manual_seed(0)
    ncl = NCL(NCL.Config(embed_dim=16), data, TrainConfig())
    sgl = SGL(SGL.Config(embed_dim=16), data, TrainConfig())
    xavier_sgl = SGL(SGL.Config(embed_dim=16, init_std=None), data, TrainConfig())
    for model, xavier in ((ncl, True), (sgl, False), (xavier_sgl, True)):
        for table in (model.user_emb.weight, model.item_emb.weight):
            rows = table[1:].detach()
            assert torch.equal(table[0], torch.zeros(16))  # padding row
            bound = math.sqrt(6.0 / (table.shape[0] + 16))
            if xavier:
                assert rows.abs().max() <= bound
                assert rows.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.05)
            else:
                assert rows.std().item() == pytest.approx(0.1, rel=0.05)
    with pytest.raises(ConfigError, match="init_std"):
        NCL.Config(init_std=0.0).validate()
