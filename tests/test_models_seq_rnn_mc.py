"""FPMC, TransRec, NARM, STAMP and NPE: shapes, causality, padding, each model's mechanism, config
validation and a loss that decreases on a tiny batch."""

from __future__ import annotations

import pytest
import torch

from recstudio.config import TrainConfig
from recstudio.errors import ConfigError
from recstudio.model.seq.causal_ops import (
    causal_additive_attention,
    causal_mean,
    causal_pair_mask,
    causal_sum,
)
from recstudio.model.seq.fpmc import FPMC, FPMCConfig
from recstudio.model.seq.narm import NARM, NARMConfig
from recstudio.model.seq.npe import NPE, NPEConfig
from recstudio.model.seq.stamp import STAMP, STAMPConfig
from recstudio.model.seq.transrec import TransRec, TransRecConfig
from recstudio.testing import planted_data

SMALL = {
    FPMC: {"embed_dim": 8},
    TransRec: {"embed_dim": 8},
    NARM: {"embed_dim": 8, "hidden_size": 12},
    STAMP: {"embed_dim": 8, "init_std": 0.3},  # the paper's 0.002 gives ~1e-14 outputs
    NPE: {"embed_dim": 8},
}
MODELS = [
    (FPMC, FPMCConfig),
    (TransRec, TransRecConfig),
    (NARM, NARMConfig),
    (STAMP, STAMPConfig),
    (NPE, NPEConfig),
]
IDS = [cls.__name__ for cls, _ in MODELS]
ROWS = [[3, 5, 7, 9, 11, 2, 4], [1, 2, 3], [8, 6, 4, 2, 1, 30, 29, 28, 27, 26, 25, 24], [17, 18]]


@pytest.fixture(scope="module")
def data():
    return planted_data(num_users=40, num_items=30, min_len=6, max_len=14)


def build(cls, cfg_cls, data, **kw):
    torch.manual_seed(0)
    cfg = cfg_cls(**{"max_seq_len": 12, **SMALL[cls], **kw})
    return cls(cfg, data, TrainConfig(batch_size=8))


def left_pad(rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, -len(r) :] = torch.tensor(r)
    return out


def seq_batch(rows: list[list[int]], length: int, users: list[int] | None = None) -> dict[str, torch.Tensor]:
    seq = left_pad(rows, length)
    user = torch.tensor(users) if users else torch.arange(1, len(rows) + 1)
    return {"seq": seq, "seq_len": (seq != 0).sum(1), "user": user}


def seq2seq_batch(rows: list[list[int]], length: int) -> dict[str, torch.Tensor]:
    seq = left_pad([r[:-1] for r in rows], length)
    target = left_pad([r[1:] for r in rows], length)
    users = torch.arange(1, len(rows) + 1)
    return {"seq": seq, "target": target, "seq_len": (seq != 0).sum(1), "user": users}


def encode(model, seq: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position queries of any of the five models."""
    if isinstance(model, (FPMC, TransRec, NPE)):
        users = torch.arange(1, seq.shape[0] + 1) if users is None else users
        return model.encode(seq, users)
    return model.encode(seq)


# --------------------------------------------------------------------------- shared ops


def test_causal_ops_by_hand():
    seq = left_pad([[4, 5, 6], [7]], 4)
    mask = causal_pair_mask(seq)
    assert mask[0, 3].tolist() == [0, 1, 1, 1] and mask[0, 1].tolist() == [0, 1, 0, 0]
    assert mask[1, 3].tolist() == [0, 0, 0, 1] and mask[1, 2].sum() == 0
    torch.testing.assert_close(causal_pair_mask(seq, num_queries=2), mask[:, 2:])  # the last queries
    x = torch.arange(8, dtype=torch.float).view(1, 4, 2).expand(2, -1, -1) + 1
    torch.testing.assert_close(causal_sum(x, seq)[0, 3], x[0, 1:].sum(0))
    torch.testing.assert_close(causal_mean(x, seq)[0, 2], x[0, 1:3].mean(0))
    torch.testing.assert_close(causal_mean(x, seq)[1, 3], x[1, 3])
    assert causal_mean(x, seq)[1, 0].abs().sum() == 0  # before the first item: 0, not NaN
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    v = torch.nn.Linear(3, 1, bias=False)
    w = causal_additive_attention(q, k, v, seq)
    expect = (torch.sigmoid(q[0, 3] + k[0, 2]) * v.weight[0]).sum()
    torch.testing.assert_close(w[0, 3, 2], expect)
    assert w[0, 2, 3] == 0 and w[0, 3, 0] == 0  # a later key, a padding key


def reference_additive_attention(q, k, v, seq):
    """The formula ``causal_additive_attention`` computes block by block: the whole pairwise
    [B, Q, L, H] tensor, masked."""
    pairs = torch.sigmoid(q[:, :, None, :] + k[:, None, :, :])
    return (pairs @ v.weight.T).squeeze(-1) * causal_pair_mask(seq, q.shape[1])


@pytest.mark.parametrize("budget", [1, 37, 1 << 19])
@pytest.mark.parametrize("case", ["training", "last_queries", "holes", "empty_rows"])
def test_blocked_additive_attention_equals_the_formula(case, budget, monkeypatch):
    """Same weights and gradients (float64) as the whole-tensor formula, for blocks of one row
    (budget 1), a few rows, all rows; left padding, padding holes, all-padding rows, Q < L."""
    from recstudio.model.seq import causal_ops

    monkeypatch.setattr(causal_ops, "CPU_BLOCK_ELEMENTS", budget)
    torch.manual_seed(1)
    batch, length, width = 9, 13, 5
    lengths = torch.randint(0, length + 1, (batch,))
    lengths[0] = length
    seq = left_pad([list(range(1, n + 1)) for n in lengths.tolist()], length)
    if case == "holes":
        seq[torch.rand(batch, length) < 0.3] = 0
    if case == "empty_rows":
        seq[1::2] = 0
    queries = 4 if case == "last_queries" else length
    q = torch.randn(batch, queries, width, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, length, width, dtype=torch.float64, requires_grad=True)
    v = torch.nn.Linear(width, 1, bias=False).double()
    grad = torch.randn(batch, queries, length, dtype=torch.float64)
    fast = causal_additive_attention(q, k, v, seq)
    fast_grads = torch.autograd.grad(fast, (q, k, v.weight), grad)
    ref = reference_additive_attention(q, k, v, seq)
    ref_grads = torch.autograd.grad(ref, (q, k, v.weight), grad)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(fast_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_blocked_additive_attention_gradcheck():
    torch.manual_seed(0)
    seq = left_pad([[4, 5, 6], [7, 8, 9, 1, 2, 3], [], [1]], 6)
    q = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, w: causal_additive_attention(q, k, _Linear(w), seq), (q, k, weight)
    )


class _Linear:
    """Stand-in for the ``nn.Linear`` v whose weight is a plain tensor (for gradcheck)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight


# --------------------------------------------------------------------------- all five


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=IDS)
def test_shapes_and_registration(cls, cfg_cls, data):
    from recstudio.model.registry import get_model_class

    assert get_model_class(cls.__name__.lower()) is cls
    assert cls.family == "sequential" and cls.description
    assert cls.default_overrides["data"]["split"] == "loo"
    model = build(cls, cfg_cls, data).eval()
    batch = seq_batch(ROWS, 12)
    items = model.item_vectors()
    q = model.query_vectors(batch)
    assert items.shape[0] == data.num_items and q.shape == (len(ROWS), items.shape[1])
    scores = model.score_batch(batch)
    assert scores.shape == (len(ROWS), data.num_items) and torch.isfinite(scores).all()
    assert torch.isfinite(model.query_vectors(seq_batch([[]], 12))).all()  # empty history


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=IDS)
def test_no_look_ahead(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data).eval()
    seq = left_pad(ROWS, 12)
    changed = seq.clone()
    changed[:, -3] = torch.where(changed[:, -3] > 0, (changed[:, -3] % 29) + 1, 0)  # a different item
    with torch.no_grad():
        a, b = encode(model, seq), encode(model, changed)
    torch.testing.assert_close(a[:, :-3], b[:, :-3])  # earlier positions never see position -3
    assert not torch.allclose(a[0, -3], b[0, -3])  # position -3 itself does


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=IDS)
def test_padding_does_not_change_real_outputs(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data).eval()
    with torch.no_grad():
        padded = encode(model, left_pad(ROWS, 12))
        for i, row in enumerate(ROWS):
            alone = encode(model, left_pad([row], len(row)), torch.tensor([i + 1]))[0]
            torch.testing.assert_close(padded[i, -len(row) :], alone, atol=1e-5, rtol=1e-4)
        q = model.query_vectors(seq_batch(ROWS[1:2] + ROWS[3:], 12))
        q_short = model.query_vectors(seq_batch(ROWS[1:2] + ROWS[3:], 3))
        torch.testing.assert_close(q, q_short, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=IDS)
def test_query_is_the_last_position(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data).eval()
    batch = seq_batch(ROWS, 12)
    with torch.no_grad():
        torch.testing.assert_close(model.query_vectors(batch), encode(model, batch["seq"])[:, -1])


@pytest.mark.parametrize("loss", ["softmax", "bpr", "bce", "sampled_softmax"])
@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=IDS)
def test_each_loss_runs(cls, cfg_cls, loss, data):
    model = build(cls, cfg_cls, data, loss=loss, num_negatives=4).train()
    value = model.training_loss(seq2seq_batch(ROWS, 12))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=IDS)
def test_batch_without_targets_gives_zero_loss(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data).train()
    value = model.training_loss(seq2seq_batch([[5]], 12))
    assert float(value.detach()) == 0.0
    value.backward()


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=IDS)
def test_loss_decreases_on_a_tiny_batch(cls, cfg_cls, data):
    kw = {"dropout": 0.0} if cls in (NPE, STAMP) else {}
    if cls is NARM:
        kw = {"embed_dropout": 0.0, "context_dropout": 0.0}
    model = build(cls, cfg_cls, data, **kw).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    batch = seq2seq_batch(ROWS, 12)
    torch.manual_seed(0)
    first = float(model.training_loss(batch).detach())
    for _ in range(60):
        opt.zero_grad()
        model.training_loss(batch).backward()
        opt.step()
    torch.manual_seed(0)
    last = float(model.training_loss(batch).detach())
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize(
    "cfg_cls,key,value",
    [
        (FPMCConfig, "embed_dim", 0),
        (FPMCConfig, "init_std", 0.0),
        (TransRecConfig, "max_seq_len", 0),
        (TransRecConfig, "scorer", "euclidean"),
        (NARMConfig, "hidden_size", 0),
        (NARMConfig, "context_dropout", 1.0),
        (STAMPConfig, "dropout", -0.1),
        (STAMPConfig, "init_std", -1.0),
        (STAMPConfig, "window_context", 50),  # not below max_seq_len (50)
        (NPEConfig, "dropout", 1.0),
        (NPEConfig, "embed_dim", 0),
    ],
)
def test_config_validation_names_the_key(cfg_cls, key, value):
    cfg = cfg_cls(**{key: value})
    with pytest.raises(ConfigError, match=f"model.{key}"):
        cfg.validate()


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=IDS)
def test_defaults_validate(cls, cfg_cls):
    cfg_cls().validate()


# --------------------------------------------------------------------------- each mechanism


def test_fpmc_score_is_the_papers_two_terms(data):
    model = build(FPMC, FPMCConfig, data).eval()
    batch = seq_batch(ROWS, 12, users=[3, 7, 11, 2])
    with torch.no_grad():
        scores = model.score_batch(batch)
        for b, row in enumerate(ROWS):
            u, last = batch["user"][b], row[-1]
            for i in (1, 9, 30):
                item_iu, item_il = model.item_factors.weight[i].chunk(2)
                mf = model.user_ui.weight[u] @ item_iu
                fmc = item_il @ model.last_li.weight[last]
                torch.testing.assert_close(scores[b, i], mf + fmc)
        # only the last item and the user matter: an older history changes nothing
        other = seq_batch([[9, 9, 9, r[-1]] for r in ROWS], 12, users=[3, 7, 11, 2])
        torch.testing.assert_close(model.score_batch(other), scores)


def test_transrec_score_is_bias_minus_translation_distance(data):
    model = build(TransRec, TransRecConfig, data).eval()
    with torch.no_grad():
        model.item_point.mul_(5.0)  # some points leave the unit ball: the projection must act
        model.item_bias.normal_()
        model.user_translation.weight.normal_(std=0.1)
        model.translation.normal_(std=0.1)
        batch = seq_batch(ROWS, 12, users=[3, 7, 11, 2])
        scores = model.score_batch(batch)
        gamma = model.item_point / model.item_point.norm(dim=1, keepdim=True).clamp_min(1.0)
        assert (gamma.norm(dim=1) <= 1.0 + 1e-6).all() and (model.item_point.norm(dim=1) > 1.0).any()
        for b, row in enumerate(ROWS):
            q = gamma[row[-1]] + model.translation + model.user_translation.weight[batch["user"][b]]
            expect = model.item_bias - ((q[None, :] - gamma) ** 2).sum(1)
            torch.testing.assert_close(scores[b], expect, atol=1e-4, rtol=1e-4)
    # the nearest translated point (bias equal) ranks first
    with torch.no_grad():
        model.item_bias.zero_()
        model.user_translation.weight.zero_()
        model.translation.copy_(gamma[5] - gamma[4])
        top = model.score_batch(seq_batch([[4]], 12))[0, 1:].argmax() + 1
    assert int(top) == 5


def test_transrec_without_unit_ball_uses_raw_points(data):
    model = build(TransRec, TransRecConfig, data, unit_ball=False).eval()
    with torch.no_grad():
        model.item_point.mul_(5.0)
        torch.testing.assert_close(model.points(), model.item_point)


def test_narm_local_attention_by_hand(data):
    model = build(NARM, NARMConfig, data, embed_dropout=0.0, context_dropout=0.0).eval()
    seq = left_pad(ROWS, 12)
    with torch.no_grad():
        x = model.item_emb(seq)
        from recstudio.model.layers import left_padded_rnn

        hidden = left_padded_rnn(model.gru, x, (seq != 0).sum(1))
        alpha = model.attention(hidden, seq)
        b, t = 0, 11  # the last position of row 0 (7 real items at 5..11)
        for j in range(12):
            if j < 5:
                assert alpha[b, t, j] == 0  # padding
            else:
                expect = model.v(torch.sigmoid(model.a_1(hidden[b, t]) + model.a_2(hidden[b, j])))[0]
                torch.testing.assert_close(alpha[b, t, j], expect)
        assert (alpha[b, 8, 9:] == 0).all()  # later positions are masked
        local = (alpha[b, t, :, None] * hidden[b]).sum(0)
        expect_q = model.b(torch.cat([hidden[b, t], local]))
        torch.testing.assert_close(model.encode(seq)[b, t], expect_q, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("add_mean", [False, True])
def test_stamp_attention_and_trilinear_score_by_hand(data, add_mean):
    model = build(STAMP, STAMPConfig, data, add_mean_memory=add_mean).eval()
    row = ROWS[0]
    with torch.no_grad():
        batch = seq_batch([row], 12)
        x = model.item_emb.weight[torch.tensor(row)]  # [n, d]
        m_s, m_t = x.mean(0), x[-1]
        alpha = model.w_0(torch.sigmoid(model.w_1(x) + model.w_2(m_t) + model.w_3(m_s) + model.b_a))[:, 0]
        m_a = (alpha[:, None] * x).sum(0) + (m_s if add_mean else 0.0)
        h_s, h_t = torch.tanh(model.mlp_s(m_a)), torch.tanh(model.mlp_t(m_t))
        expect = (h_s * h_t * model.item_emb.weight).sum(1)  # trilinear <h_s, h_t, x_i>
        torch.testing.assert_close(model.score_batch(batch)[0], expect, atol=1e-5, rtol=1e-4)
        seq = batch["seq"]
        weights = model.attention(model.item_emb(seq), causal_mean(model.item_emb(seq), seq), seq)
        assert (weights[0, :, :5] == 0).all() and (weights[0].triu(1) == 0).all()


def test_stamp_window_context_trains_every_target_in_windows(data):
    """window_context K: windows of max_seq_len positions, K of context, every target once."""
    from recstudio.config import resolve
    from recstudio.pipeline import training_batches

    overrides = {"model.max_seq_len": 6, "model.window_context": 2, "batch_size": 8}
    overrides.update({f"model.{key}": value for key, value in SMALL[STAMP].items()})
    cfg = resolve(STAMP, "planted", overrides=overrides)
    model = STAMP(cfg.model, data, cfg.train, cfg.eval)
    assert model.data_needs.main.options == {"max_len": None, "chunk_len": 4, "context_len": 2}
    batches = training_batches(model, data, cfg)
    targets = 0
    for group in batches:
        for batch in group if isinstance(group, list) else [group]:
            assert batch["seq"].shape[1] == 6 and not batch["target"][:, :2].any()
            targets += int((batch["target"] > 0).sum())
            loss = model.training_loss(batch)
            assert torch.isfinite(loss)
    per_user = torch.bincount(data.train.user, minlength=data.num_users)
    assert targets == int((per_user - 1).clamp(min=0).sum())  # every target, once


def test_npe_query_is_user_plus_summed_context(data):
    model = build(NPE, NPEConfig, data, dropout=0.0).eval()
    relu = torch.nn.functional.relu
    with torch.no_grad():
        batch = seq_batch(ROWS, 12, users=[3, 7, 11, 2])
        q = model.query_vectors(batch)
        for b, row in enumerate(ROWS):
            context = model.context_emb.weight[torch.tensor(row)].sum(0)
            expect = relu(model.user_emb.weight[batch["user"][b]]) + relu(context)
            torch.testing.assert_close(q[b], expect)
        torch.testing.assert_close(model.item_vectors(), relu(model.item_emb.weight))
        # the context is a set: the order of the history does not matter
        shuffled = seq_batch([list(reversed(r)) for r in ROWS], 12, users=[3, 7, 11, 2])
        torch.testing.assert_close(model.query_vectors(shuffled), q, atol=1e-5, rtol=1e-5)
