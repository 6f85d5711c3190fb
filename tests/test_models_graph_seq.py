"""Graph helpers (recstudio.model.graph), LightGCN and GRU4Rec: formulas by hand, padding,
one propagation per evaluation pass, CPU/CUDA parity."""

from __future__ import annotations

import math

import pytest
import torch

from recstudio.config import TrainConfig
from recstudio.eval.ranking import build_eval_split
from recstudio.model.general.lightgcn import LightGCN
from recstudio.model.graph import (
    SparseMatrix,
    bipartite_edges,
    csr_product,
    mean_of_layers,
    normalized_adjacency,
    row_norm,
)
from recstudio.model.layers import left_padded_rnn
from recstudio.model.seq.gru4rec import GRU4Rec, GRU4RecConfig
from recstudio.testing import planted_data

# --------------------------------------------------------------------------- graph helpers

# users 1, 2 and items 1, 2 (id 0 is padding on both sides): u1-i1, u1-i2, u2-i2, and u1-i2 again
USERS = torch.tensor([1, 1, 2, 1])
ITEMS = torch.tensor([1, 2, 2, 2])


def hand_adjacency() -> torch.Tensor:
    """D^-1/2 A D^-1/2 written out: nodes 0..2 are users 0..2, nodes 3..5 items 0..2.
    Degrees: u1 2, u2 1, i1 1, i2 2 (the repeated interaction is one edge); padding isolated."""
    a = torch.zeros(6, 6)
    for u, i, value in (
        (1, 4, 1 / math.sqrt(2 * 1)),
        (1, 5, 1 / math.sqrt(2 * 2)),
        (2, 5, 1 / math.sqrt(1 * 2)),
    ):
        a[u, i] = a[i, u] = value
    return a


def test_bipartite_edges_are_undirected_and_deduplicated():
    row, col = bipartite_edges(USERS, ITEMS, 3, 3)
    pairs = set(zip(row.tolist(), col.tolist()))
    assert len(pairs) == row.numel() == 6
    assert pairs == {(1, 4), (4, 1), (1, 5), (5, 1), (2, 5), (5, 2)}


def test_normalized_adjacency_by_hand():
    adj = normalized_adjacency(USERS, ITEMS, 3, 3)
    assert adj.shape == (6, 6) and adj.nnz == 6 and adj.symmetric
    torch.testing.assert_close(adj.to_dense(), hand_adjacency())
    # padding users/items (and an item nobody used) have empty rows: no division by zero
    assert torch.isfinite(adj.to_dense()).all()


def test_propagation_is_the_mean_of_powers_with_gradients():
    adj = normalized_adjacency(USERS, ITEMS, 3, 3)
    a = hand_adjacency().double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    for k in (0, 1, 3):
        got = mean_of_layers(adj, x, k)
        want = sum(torch.linalg.matrix_power(a, p) @ x_ref for p in range(k + 1)) / (k + 1)
        torch.testing.assert_close(got, want)
        weight = torch.randn(6, 4, dtype=torch.float64)
        (g,) = torch.autograd.grad((got * weight).sum(), x)
        (g_ref,) = torch.autograd.grad((want * weight).sum(), x_ref)
        torch.testing.assert_close(g, g_ref)


def test_sparse_matrix_non_symmetric_backward_uses_the_transpose():
    row, col = torch.tensor([0, 1, 1, 2]), torch.tensor([3, 0, 3, 1])
    value = row_norm(row, col, 3)  # rows 0 and 2: one entry each; row 1: two, 1/2 each
    torch.testing.assert_close(value, torch.tensor([1.0, 0.5, 0.5, 1.0]))
    m = SparseMatrix(row, col, value, (3, 4))
    dense = torch.zeros(3, 4)
    dense[row, col] = value
    torch.testing.assert_close(m.to_dense(), dense)
    torch.testing.assert_close(csr_product(m.transposed_parts(), torch.eye(3)), dense.T)
    x = torch.randn(4, 2, requires_grad=True)
    weight = torch.randn(3, 2)
    (g,) = torch.autograd.grad((m(x) * weight).sum(), x)
    torch.testing.assert_close(g, dense.T @ weight)
    with pytest.raises(ValueError, match="cannot multiply"):
        m(torch.randn(3, 2))
    with pytest.raises(ValueError, match="square"):
        SparseMatrix(row, col, value, (3, 4), symmetric=True)


def test_sparse_matrix_is_a_non_persistent_buffer():
    adj = normalized_adjacency(USERS, ITEMS, 3, 3)
    holder = torch.nn.Module()
    holder.adj = adj
    assert holder.state_dict() == {}  # rebuilt from the data, never checkpointed
    assert all(not b.is_sparse for b in holder.buffers())  # dense parts only (DDP broadcasts buffers)


# --------------------------------------------------------------------------- LightGCN


@pytest.fixture(scope="module")
def small():
    return planted_data(num_users=40, num_items=30, min_len=6, max_len=14)


def dense_normalized(user: torch.Tensor, item: torch.Tensor, num_users: int, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 from a dense adjacency (the textbook formula, for comparison)."""
    n = num_users + num_items
    a = torch.zeros(n, n, dtype=torch.float64)
    a[user, num_users + item] = 1.0
    a[num_users + item, user] = 1.0
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return d[:, None] * a * d[None, :]


def lightgcn(data, **kw) -> LightGCN:
    torch.manual_seed(0)
    return LightGCN(LightGCN.Config(**{"embed_dim": 8, **kw}), data, TrainConfig(batch_size=64))


def test_lightgcn_propagation_matches_dense_formula(small):
    model = lightgcn(small, num_layers=3)
    a = dense_normalized(small.train.user, small.train.item, small.num_users, small.num_items)
    torch.testing.assert_close(model.adjacency.to_dense().double(), a, rtol=1e-5, atol=1e-7)
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach().double()
    want = sum(torch.linalg.matrix_power(a, k) @ e0 for k in range(4)) / 4
    users, items = model.propagate()
    assert users.shape == (small.num_users, 8) and items.shape == (small.num_items, 8)
    torch.testing.assert_close(torch.cat([users, items]).double(), want, rtol=1e-4, atol=1e-6)
    # padding rows stay zero: isolated nodes with zero embeddings
    assert users[0].abs().max() == 0 and items[0].abs().max() == 0


def test_lightgcn_graph_uses_the_positive_rows_of_labelled_data():
    data = planted_data(num_users=40, num_items=30, min_len=6, max_len=14, labels=True)
    model = lightgcn(data)
    pos = data.positives("train")
    assert len(pos) < len(data.train)  # the label-0 rows exist and are left out
    want = dense_normalized(pos.user, pos.item, data.num_users, data.num_items)
    torch.testing.assert_close(model.adjacency.to_dense().double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_lightgcn_loss_by_hand(small, native, monkeypatch):
    """BPR on the propagated vectors plus reg_weight * squared layer-0 rows / batch, and the
    gradient reaches the layer-0 tables through the propagation."""
    if not native:
        monkeypatch.setattr(LightGCN, "fused_loss_kind", lambda self, query: None)
    model = lightgcn(small, reg_weight=0.1)
    batch = {
        "user": torch.tensor([1, 2, 3, 1]),
        "item": torch.tensor([4, 5, 6, 7]),
        "neg_item": torch.tensor([[8], [9], [10], [11]]),
    }
    loss = model.training_loss(batch)
    u_all, i_all = model.propagate()
    u, p, n = u_all[batch["user"]], i_all[batch["item"]], i_all[batch["neg_item"][:, 0]]
    bpr = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    e_u, e_i = model.user_emb.weight, model.item_emb.weight
    reg = (
        (e_u[batch["user"]] ** 2).sum()
        + (e_i[batch["item"]] ** 2).sum()
        + (e_i[batch["neg_item"]] ** 2).sum()
    )
    want = bpr + 0.1 * reg / 4
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad(loss, [e_u, e_i])
    g_want = torch.autograd.grad(want, [e_u, e_i])
    for got, exp in zip(g_got, g_want):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-6)
    assert g_got[1][12:].abs().sum() > 0  # items the batch never named move through the graph


def test_lightgcn_one_propagation_per_evaluation_pass(small, monkeypatch):
    """Training propagates once per step; each validation/test pass once, whatever its blocks."""
    from recstudio.pipeline import run_prepared

    calls = {"train": 0, "eval": 0}
    original = LightGCN.propagate

    def counting(self):
        calls["train" if torch.is_grad_enabled() else "eval"] += 1
        return original(self)

    monkeypatch.setattr(LightGCN, "propagate", counting)
    blocks = len(build_eval_split(small, "valid").blocks(8))
    assert blocks > 2
    run_prepared(
        "LightGCN", small, {"epochs": 2, "early_stop_patience": 0, "batch_size": 64, "eval.batch_size": 8}
    )
    steps = 2 * math.ceil(len(small.train) / 64)
    assert calls == {"train": steps, "eval": 3}  # 2 validation passes + 1 test pass


def test_lightgcn_recommends_outside_an_evaluation_pass(small):
    model = lightgcn(small).eval()
    batch = next(iter(build_eval_split(small, "test").blocks(16)))
    assert model.eval_cache == {}
    with torch.no_grad():
        direct = model.score_batch(batch)
        model.prepare_evaluation()
        cached = model.score_batch(batch)
    torch.testing.assert_close(direct, cached)


# --------------------------------------------------------------------------- GRU4Rec


def left_pad(rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, -len(r) :] = torch.tensor(r)
    return out


ROWS = [[3, 5, 7, 9, 11, 2, 4], [1, 2, 3], [8, 6, 4, 2, 1, 30, 29, 28, 27, 26, 25, 24], [17, 18]]


def gru4rec(data, **kw) -> GRU4Rec:
    torch.manual_seed(0)
    cfg = GRU4RecConfig(**{"max_seq_len": 12, "embed_dim": 16, "hidden_size": 24, **kw})
    return GRU4Rec(cfg, data, TrainConfig(batch_size=8))


@pytest.mark.parametrize("cell", [torch.nn.GRU, torch.nn.LSTM])
def test_left_padded_rnn_equals_each_row_alone(cell):
    torch.manual_seed(0)
    rnn = cell(5, 7, num_layers=2, batch_first=True)
    lengths = torch.tensor([3, 6, 1, 0, 6])
    x = torch.randn(5, 6, 5) * (torch.arange(6)[None, :] >= 6 - lengths[:, None])[..., None]
    out = left_padded_rnn(rnn, x, lengths)
    assert out.shape == (5, 6, 7)
    for b, n in enumerate(lengths.tolist()):
        if n:
            alone = rnn(x[b : b + 1, 6 - n :])[0][0]
            torch.testing.assert_close(out[b, 6 - n :], alone)
        assert out[b, : 6 - n].abs().max() == 0 if n < 6 else True  # padding positions are zero
    naive = rnn(x)[0]  # straight through the padding: the state at the first real item moved
    assert not torch.allclose(naive[0, -3:], out[0, -3:], atol=1e-4)


def test_gru4rec_padding_does_not_change_outputs_or_the_query(small):
    model = gru4rec(small, num_layers=2).eval()
    with torch.no_grad():
        padded = model.encode(left_pad(ROWS, 12))
        for i, row in enumerate(ROWS):
            alone = model.encode(left_pad([row], len(row)))[0]
            torch.testing.assert_close(padded[i, -len(row) :], alone, atol=1e-5, rtol=1e-4)
        rows = [ROWS[1], ROWS[3]]
        wide = {"seq": left_pad(rows, 40), "user": torch.tensor([1, 2])}
        narrow = {"seq": left_pad(rows, 3), "user": torch.tensor([1, 2])}
        torch.testing.assert_close(
            model.query_vectors(wide), model.query_vectors(narrow), atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(model.query_vectors(narrow), padded[[1, 3], -1], atol=1e-5, rtol=1e-4)
        empty = model.query_vectors({"seq": left_pad([[]], 12), "user": torch.tensor([1])})
        assert torch.isfinite(empty).all()


def test_gru4rec_is_causal(small):
    model = gru4rec(small).eval()
    seq = left_pad(ROWS, 12)
    changed = seq.clone()
    changed[:, -3] = torch.where(changed[:, -3] > 0, changed[:, -3] % 29 + 1, 0)
    with torch.no_grad():
        a, b = model.encode(seq), model.encode(changed)
    torch.testing.assert_close(a[:, :-3], b[:, :-3])
    assert not torch.allclose(a[0, -3:], b[0, -3:])


def test_gru4rec_softmax_loss_by_hand(small):
    """Cross-entropy over all items at every position with a target, one pass per batch."""
    model = gru4rec(small, dropout=0.0)
    seq = left_pad([r[:-1] for r in ROWS], 12)
    target = left_pad([r[1:] for r in ROWS], 12)
    batch = {"seq": seq, "target": target, "seq_len": (seq != 0).sum(1), "user": torch.arange(1, 5)}
    loss = model.training_loss(batch)
    hidden = model.encode(seq)
    valid = target != 0
    logits = hidden[valid] @ model.item_emb.weight.T
    logits[:, 0] = -torch.inf
    want = torch.nn.functional.cross_entropy(logits, target[valid])
    torch.testing.assert_close(loss, want)
    assert int(valid.sum()) == sum(len(r) - 1 for r in ROWS)
    model_bpr = gru4rec(small, loss="bpr", num_negatives=2)
    assert torch.isfinite(model_bpr.training_loss(batch))


def test_gru4rec_shapes_and_registration(small):
    from recstudio.model.registry import get_model_class

    assert get_model_class("gru4rec") is GRU4Rec and GRU4Rec.family == "sequential"
    assert GRU4Rec.default_overrides["data"]["split"] == "loo"
    model = gru4rec(small).eval()
    contract = GRU4Rec.data_contract(model.config)
    assert contract.main.view == "seq2seq" and contract.eval_sequence == 12
    batch = {"seq": left_pad(ROWS, 12), "user": torch.arange(1, 5)}
    with torch.no_grad():
        scores = model.score_batch(batch)
    assert scores.shape == (4, small.num_items) and torch.isfinite(scores).all()
    assert model.item_vectors() is model.item_emb.weight  # output layer shared with the input


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lightgcn_cuda_matches_cpu(small):
    cpu = lightgcn(small).eval()
    gpu = lightgcn(small)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    assert gpu.adjacency.crow.device.type == "cuda"
    batch = next(iter(build_eval_split(small, "test").blocks(64)))
    with torch.no_grad():
        cpu.prepare_evaluation()
        gpu.prepare_evaluation()
        want = cpu.score_batch(batch)
        got = gpu.score_batch({k: v.cuda() for k, v in batch.items()})
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
    cpu.eval_cache, gpu.eval_cache = {}, {}
    train = {
        "user": torch.tensor([1, 2, 3]),
        "item": torch.tensor([4, 5, 6]),
        "neg_item": torch.tensor([[7], [8], [9]]),
    }
    loss_cpu = cpu.training_loss(train)
    loss_gpu = gpu.training_loss({k: v.cuda() for k, v in train.items()})
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-4, atol=1e-5)
    (g_cpu,) = torch.autograd.grad(loss_cpu, cpu.item_emb.weight)
    (g_gpu,) = torch.autograd.grad(loss_gpu, gpu.item_emb.weight)
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-3, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gru4rec_cuda_matches_cpu(small):
    cpu = gru4rec(small, num_layers=2).eval()
    gpu = gru4rec(small, num_layers=2)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    batch = {"seq": left_pad(ROWS, 12), "user": torch.arange(1, 5)}
    seq = left_pad([r[:-1] for r in ROWS], 12)
    train = {"seq": seq, "target": left_pad([r[1:] for r in ROWS], 12), "user": torch.arange(1, 5)}
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():  # fp32 GRU
        want = cpu.score_batch(batch)
        got = gpu.score_batch({k: v.cuda() for k, v in batch.items()})
        loss_cpu = cpu.training_loss(train)
        loss_gpu = gpu.training_loss({k: v.cuda() for k, v in train.items()})
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-4, atol=1e-5)
