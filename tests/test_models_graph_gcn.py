"""NGCF, UltraGCN, LightGCL and DGCF: their formulas against dense or naive computations on tiny
graphs, and the graph helpers they share (edge dropout, per-intent normalisation, low-rank view,
item-item neighbours)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recstudio.model.general.dgcf import (
    DGCF,
    intent_graph,
    intent_independence,
    intent_routing,
    intent_weights,
)
from recstudio.model.general.lightgcl import LightGCL
from recstudio.model.general.ngcf import NGCF
from recstudio.model.general.ultragcn import UltraGCN
from recstudio.model.graph import (
    LowRankBipartite,
    SparseMatrix,
    bipartite_edges,
    item_item_topk,
    normalized_adjacency,
    normalized_biadjacency,
    split_nodes,
)
from recstudio.model.loss import constraint_bce_loss, distance_correlation
from recstudio.testing import planted_data


def small_data():
    return planted_data(num_users=40, num_items=24, num_clusters=2, min_len=4, max_len=8)


def dense_interactions(data) -> torch.Tensor:  # noqa: ANN001
    train = data.positives("train")
    r = torch.zeros(data.num_users, data.num_items, dtype=torch.float64)
    r[train.user, train.item] = 1.0
    return r


# --------------------------------------------------------------------------- shared helpers


def test_sparse_matrix_with_replaced_values_matches_dense_and_its_gradient():
    adj = normalized_adjacency(torch.tensor([1, 1, 2, 3]), torch.tensor([1, 2, 2, 1]), 4, 3)
    torch.manual_seed(0)
    value = adj.dropout(0.5)
    kept = value != 0
    assert 0 < kept.sum() < value.numel()
    torch.testing.assert_close(value[kept], adj.value[kept] * 2)  # survivors scaled by 1/(1-p)
    dense = torch.sparse_csr_tensor(adj.crow, adj.col, value, adj.shape).to_dense()
    assert not torch.allclose(dense, dense.T)  # the dropped matrix is no longer symmetric
    x = torch.randn(7, 3, requires_grad=True)
    w = torch.randn(7, 3)
    (g,) = torch.autograd.grad((adj(x, value) * w).sum(), x)
    torch.testing.assert_close(adj(x.detach(), value), dense @ x.detach())
    torch.testing.assert_close(g, dense.T @ w)


def test_low_rank_view_error_falls_with_rank():
    data = small_data()
    train = data.positives("train")
    u, i, v = normalized_biadjacency(train.user, train.item, data.num_users, data.num_items)
    r = torch.zeros(data.num_users, data.num_items)
    r[u, i] = v
    torch.manual_seed(0)
    errors = []
    for rank in (1, 2, 4, 8, 16):
        view = LowRankBipartite(train.user, train.item, data.num_users, data.num_items, rank)
        errors.append(float(torch.linalg.matrix_norm(r - view.block())))
    best = torch.linalg.svdvals(r)
    for rank, error in zip((1, 2, 4, 8, 16), errors):  # near the Eckart-Young optimum
        assert error <= 1.05 * float(best[rank:].square().sum().sqrt()) + 1e-4
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # the view applies [[0, R~], [R~^T, 0]] to stacked user and item rows
    view = LowRankBipartite(train.user, train.item, data.num_users, data.num_items, 4)
    x = torch.randn(data.num_users + data.num_items, 3)
    full = torch.zeros(data.num_users + data.num_items, data.num_users + data.num_items)
    full[: data.num_users, data.num_users :] = view.block()
    full[data.num_users :, : data.num_users] = view.block().T
    torch.testing.assert_close(view(x), full @ x, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- NGCF


def test_ngcf_propagation_equals_dense_layers():
    data = small_data()
    model = NGCF(NGCF.Config(hidden_sizes=[8, 6]), data).double().eval()
    r = dense_interactions(data)
    n = data.num_users + data.num_items
    a = torch.zeros(n, n, dtype=torch.float64)
    a[: data.num_users, data.num_users :] = r
    a[data.num_users :, : data.num_users] = r.T
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.clamp_min(1).rsqrt(), torch.zeros_like(deg))
    lap = d[:, None] * a * d[None, :]
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    layers = [x]
    for layer in model.layers:
        w1, b1, w2, b2 = layer.w1.weight, layer.w1.bias, layer.w2.weight, layer.w2.bias
        h = ((lap + torch.eye(n, dtype=torch.float64)) @ x) @ w1.T + b1 + ((lap @ x) * x) @ w2.T + b2
        x = F.normalize(F.leaky_relu(h, 0.2), dim=1)
        layers.append(x)
    want = torch.cat(layers, 1).detach()
    with torch.no_grad():
        users, items = model.propagate()
    assert users.shape == (data.num_users, 64 + 8 + 6)
    # the graph's entries are float32 buffers: agreement to float32 precision
    torch.testing.assert_close(torch.cat([users, items]), want, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- UltraGCN


def test_ultragcn_betas_and_item_neighbours_equal_a_naive_computation():
    data = small_data()
    k = 5
    model = UltraGCN(UltraGCN.Config(ii_neighbors=k), data)
    r = dense_interactions(data)
    d_u, d_i = r.sum(1), r.sum(0)
    for u in range(1, data.num_users):
        if d_u[u] > 0:
            assert math.isclose(float(model.beta_user[u]), math.sqrt(d_u[u] + 1) / d_u[u], rel_tol=1e-5)
    for i in range(data.num_items):
        assert math.isclose(float(model.beta_item[i]), 1 / math.sqrt(d_i[i] + 1), rel_tol=1e-5)
    g = r.T @ r  # co-occurrences, diagonal kept
    deg = g.sum(1)
    for i in range(1, data.num_items):
        if deg[i] == 0:
            continue
        row = [
            (float(g[i, j] * math.sqrt(deg[i] + 1) / deg[i] / math.sqrt(deg[j] + 1)), j)
            for j in range(data.num_items)
        ]
        want = sorted((w for w, _ in row), reverse=True)[:k]
        torch.testing.assert_close(model.ii_weights[i].double(), torch.tensor(want, dtype=torch.float64))
        got = {j: w for w, j in row}
        for j, w in zip(model.ii_neighbours[i].tolist(), model.ii_weights[i].tolist()):
            assert math.isclose(got[j], w, rel_tol=1e-5, abs_tol=1e-9)  # ids carry their weights


def test_item_item_topk_blocks_agree_with_one_block():
    data = small_data()
    train = data.positives("train")
    whole = item_item_topk(train.user, train.item, data.num_users, data.num_items, 4)
    blocked = item_item_topk(train.user, train.item, data.num_users, data.num_items, 4, block_elements=3 * 24)
    torch.testing.assert_close(blocked[1], whole[1])


def test_ultragcn_loss_equals_the_formula():
    pos = torch.tensor([0.5, -1.0])
    neg = torch.tensor([[0.2, -0.3, 1.0], [0.0, 2.0, -2.0]])
    wp = torch.tensor([0.3, 1.2])
    wn = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.5, 0.25]])
    want = 0.0
    for n in range(2):
        want += -float(wp[n]) * math.log(1 / (1 + math.exp(-float(pos[n]))))
        neg_mean = (
            sum(-float(wn[n, k]) * math.log(1 / (1 + math.exp(float(neg[n, k])))) for k in range(3)) / 3
        )
        want += 7.0 * neg_mean
    assert math.isclose(float(constraint_bce_loss(pos, neg, wp, wn, 7.0)), want, rel_tol=1e-6)


def test_ultragcn_matmul_and_gather_scores_agree():
    data = small_data()
    model = UltraGCN(UltraGCN.Config(num_negatives=2), data)
    query = torch.randn(5, 64)
    neg = torch.randint(1, data.num_items, (5, 2))
    ii = torch.randint(0, data.num_items, (5, 3))
    small = model.candidate_scores(query, neg, ii)  # 24 items <= 32 x 2: one matmul
    model.num_items = 10**6  # pretend a large catalogue: rows are gathered
    large = model.candidate_scores(query, neg, ii)
    torch.testing.assert_close(small[0], large[0])
    torch.testing.assert_close(small[1], large[1])


# --------------------------------------------------------------------------- LightGCL


def test_lightgcl_svd_view_is_the_layerwise_definition():
    data = small_data()
    model = LightGCL(LightGCL.Config(num_layers=3), data).double().eval()
    adj = model.adjacency.to_dense().double()
    nu = data.num_users
    svd = torch.zeros_like(adj)
    svd[:nu, nu:] = model.svd_view.block().double()
    svd[nu:, :nu] = model.svd_view.block().double().T
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    layers, g = [x], [x]
    for _ in range(3):
        g.append(svd @ layers[-1])  # G^(l) = A_svd E^(l-1)
        layers.append(adj @ layers[-1])
    with torch.no_grad():
        total, inner = model.main_view()
        svd_view = x + model.svd_view.double()(inner)
    torch.testing.assert_close(total, sum(layers))
    torch.testing.assert_close(svd_view, sum(g))


def test_lightgcl_contrastive_loss_is_softmax_over_all_nodes():
    data = small_data()
    model = LightGCL(LightGCL.Config(cl_temperature=0.5), data)
    main, svd = torch.randn(data.num_users, 4), torch.randn(data.num_users, 4)
    nodes = torch.tensor([1, 3, 7])
    want = 0.0
    for n in nodes.tolist():
        logits = (svd[n] @ main[1:].T) / 0.5  # padding row 0 left out
        want += float(torch.logsumexp(logits, 0) - logits[n - 1])
    assert math.isclose(float(model.svd_contrast(main, svd, nodes)), want / 3, rel_tol=1e-5)


# --------------------------------------------------------------------------- DGCF


def test_edge_dot_in_blocks_equals_the_whole_gather(monkeypatch):
    import recstudio.model.graph as graph

    torch.manual_seed(0)
    a, b = torch.randn(50, 4, 8), torch.randn(50, 4, 8)
    row, col = torch.randint(0, 50, (1000,)), torch.randint(0, 50, (1000,))
    want = (a[row] * b[col]).sum(-1)
    monkeypatch.setattr(graph, "EDGE_CPU_BLOCK_ELEMENTS", 7 * 32)  # 7 edges a block, 143 blocks
    got = graph.edge_dot(a, b, row, col)
    assert got.shape == (1000, 4) and torch.equal(got, want)


def tiny_edges():
    user, item = torch.tensor([1, 1, 2, 2, 3]), torch.tensor([1, 2, 2, 3, 1])
    row, col = bipartite_edges(user, item, 4, 4)
    order = torch.argsort(row * 8 + col)
    return row[order], col[order], 8


def test_dgcf_intent_weights_are_normalised_per_node_and_intent():
    row, col, n = tiny_edges()
    torch.manual_seed(0)
    logits = torch.randn(row.shape[0], 3)
    weight = intent_weights(logits, row, col, n)
    s = torch.softmax(logits, 1)
    torch.testing.assert_close(s.sum(1), torch.ones(row.shape[0]))  # each edge's intents share 1
    for k in range(3):
        dense_s = torch.zeros(n, n)
        dense_s[row, col] = s[:, k]
        deg = dense_s.sum(1)
        d = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
        dense_w = torch.zeros(n, n)
        dense_w[row, col] = weight[:, k]
        torch.testing.assert_close(dense_w, d[:, None] * dense_s * d[None, :])
        # normalised: sum_j w_ij sqrt(D_i D_j) / D_i = 1 for every node with edges
        back = (dense_w * deg.sqrt()[:, None] * deg.sqrt()[None, :]).sum(1)
        torch.testing.assert_close(back[deg > 0] / deg[deg > 0], torch.ones(int((deg > 0).sum())))


def test_dgcf_routing_equals_a_dense_computation():
    row, col, n = tiny_edges()
    k, dk, iterations = 2, 3, 2
    torch.manual_seed(1)
    x = torch.randn(k, n, dk, dtype=torch.float64)
    graph = intent_graph(row, col, n, k)
    logits = torch.ones(row.shape[0], k, dtype=torch.float64)
    out, new_logits = intent_routing(x, graph, row, col, logits, iterations)
    ref_logits = torch.ones(row.shape[0], k, dtype=torch.float64)
    for _ in range(iterations):
        s = torch.softmax(ref_logits, 1)
        ref_out = []
        for f in range(k):
            a = torch.zeros(n, n, dtype=torch.float64)
            a[row, col] = s[:, f]
            deg = a.sum(1)
            d = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
            ref_out.append((d[:, None] * a * d[None, :]) @ x[f])
        ref = torch.stack(ref_out)
        agree = torch.stack(
            [
                (F.normalize(ref[f][row], dim=1) * torch.tanh(F.normalize(x[f][col], dim=1))).sum(1)
                for f in range(k)
            ],
            1,
        )
        ref_logits = ref_logits + agree
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(new_logits, ref_logits)


def test_distance_correlation_equals_the_textbook_formula():
    torch.manual_seed(2)
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)

    def centred(z):
        d = torch.cdist(z, z)
        return d - d.mean(0) - d.mean(1, keepdim=True) + d.mean()

    def dcov(a, b):
        return (a * b).mean().sqrt()

    a, b = centred(x), centred(y)
    want = dcov(a, b) / (dcov(a, a) * dcov(b, b)).sqrt()
    torch.testing.assert_close(distance_correlation(x, y, eps=0.0), want, atol=1e-6, rtol=1e-6)
    assert float(distance_correlation(x, 2 * x + 1)) > 0.999  # a linear function: dCor = 1
    chunks = torch.randn(9, 4, 2, dtype=torch.float64)
    pairs = sum(distance_correlation(chunks[:, i], chunks[:, i + 1]) for i in range(3))
    torch.testing.assert_close(intent_independence(chunks), pairs / 10)


def test_dgcf_rejects_an_embedding_its_intents_do_not_divide():
    import pytest

    from recstudio.errors import ConfigError

    with pytest.raises(ConfigError, match="num_factors"):
        DGCF.Config(embed_dim=30, num_factors=4).validate()


def test_graph_models_propagate_once_per_evaluation_pass():
    data = small_data()
    for cls in (NGCF, LightGCL, DGCF):
        model = cls(cls.Config(), data).eval()
        calls = []
        real = model.propagate
        model.propagate = lambda real=real, calls=calls: calls.append(1) or real()  # type: ignore[method-assign]
        with torch.no_grad():
            model.prepare_evaluation()
            model.score_batch({"user": torch.tensor([1, 2, 3])})
            model.score_batch({"user": torch.tensor([4, 5])})
        assert len(calls) == 1, cls.__name__
        model.eval_cache = {}


def test_sparse_matrix_keeps_working_for_non_symmetric_shapes_with_values():
    m = SparseMatrix(torch.tensor([0, 1, 1, 2]), torch.tensor([3, 0, 3, 1]), torch.ones(4), (3, 4))
    value = torch.tensor([1.0, 2.0, 3.0, 4.0])
    dense = torch.sparse_csr_tensor(m.crow, m.col, value, m.shape).to_dense()
    x = torch.randn(4, 2, requires_grad=True)
    w = torch.randn(3, 2)
    (g,) = torch.autograd.grad((m(x, value) * w).sum(), x)
    torch.testing.assert_close(g, dense.T @ w)


def test_split_nodes_gives_the_same_rows_and_gradients_as_slicing() -> None:
    table = torch.randn(7, 3, requires_grad=True)
    users, items = split_nodes(table, 3)
    torch.testing.assert_close(users, table[:3])
    torch.testing.assert_close(items, table[3:])
    w_u, w_i = torch.randn(3, 3), torch.randn(4, 3)
    (users * w_u).sum().add((items * w_i).sum()).backward()
    torch.testing.assert_close(table.grad, torch.cat([w_u, w_i]))


def test_ngcf_layer_is_the_papers_two_transforms():
    from recstudio.model.general.ngcf import NGCFLayer

    torch.manual_seed(0)
    adj = normalized_adjacency(torch.tensor([1, 1, 2, 3, 3]), torch.tensor([1, 2, 2, 0, 1]), 4, 3)
    layer = NGCFLayer(8, 5).double()
    torch.nn.init.normal_(layer.w1.bias)
    torch.nn.init.normal_(layer.w2.bias)
    lap = adj.to_dense().double()
    x = torch.randn(7, 8, dtype=torch.float64)
    side = lap @ x
    expected = F.normalize(F.leaky_relu(layer.w1(side + x) + layer.w2(side * x), 0.2), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(layer(adj, x), expected)


def test_ngcf_layer_gradients_equal_autograd_of_the_formula():
    """The fused layer (hand-written backward) against autograd through the plain formula:
    values and every gradient, with node dropout (replaced entries) and a dropout mask."""
    from recstudio.model.general.ngcf import NGCFLayer

    torch.manual_seed(0)
    adj = normalized_adjacency(torch.tensor([1, 1, 2, 3, 3]), torch.tensor([1, 2, 2, 0, 1]), 4, 3)
    value = adj.dropout(0.3)
    lap = torch.sparse_csr_tensor(adj.crow, adj.col, value, adj.shape).to_dense().double()
    layer = NGCFLayer(8, 5).double()
    torch.nn.init.normal_(layer.w1.bias)
    torch.nn.init.normal_(layer.w2.bias)
    mask = (torch.rand(7, 5) > 0.3).double() / 0.7
    mask[2] = 0.0  # a row dropped whole: normalised from zero, below the norm's floor
    x = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 5, dtype=torch.float64)
    params = [x, layer.w1.weight, layer.w1.bias, layer.w2.weight, layer.w2.bias]

    got = layer(adj, x, value, mask)
    got_grads = torch.autograd.grad((got * weight).sum(), params)
    side = lap @ x
    h = layer.w1(side + x) + layer.w2(side * x)
    want = F.normalize(F.leaky_relu(h, 0.2) * mask, dim=1)
    want_grads = torch.autograd.grad((want * weight).sum(), params)
    torch.testing.assert_close(got, want)
    for name, g, w in zip(("x", "w1", "b1", "w2", "b2"), got_grads, want_grads):
        torch.testing.assert_close(g, w, msg=name)


def test_ngcf_training_tables_and_gradients_equal_the_concatenated_layers():
    """``propagate`` in training (fused layers, the two node tables written directly) against
    the layers concatenated by ``torch.cat`` and split, through autograd."""
    data = small_data()
    model = NGCF(NGCF.Config(hidden_sizes=[8, 6], message_dropout=0.0), data).double().train()
    lap = model.adjacency.to_dense().double()  # its float32 entries, as the products use them
    params = list(model.parameters())

    users, items = model.propagate()
    w_u, w_i = torch.randn_like(users), torch.randn_like(items)
    got = torch.autograd.grad((users * w_u).sum() + (items * w_i).sum(), params)

    x = torch.cat([model.user_emb.weight, model.item_emb.weight])
    layers = [x]
    for layer in model.layers:
        side = lap @ x
        x = F.normalize(F.leaky_relu(layer.w1(side + x) + layer.w2(side * x), 0.2), dim=1)
        layers.append(x)
    want_users, want_items = split_nodes(torch.cat(layers, 1), data.num_users)
    want = torch.autograd.grad((want_users * w_u).sum() + (want_items * w_i).sum(), params)
    torch.testing.assert_close(users, want_users)
    torch.testing.assert_close(items, want_items)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
