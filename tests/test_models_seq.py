"""SASRec, BERT4Rec and the shared transformer layers: masks, padding, Cloze masking, losses, fit."""

from __future__ import annotations

import pytest
import torch

from recstudio.config import TrainConfig
from recstudio.errors import ConfigError
from recstudio.model.layers import SequenceEmbedding, attention_mask, trim_left_padding
from recstudio.model.seq.bert4rec import BERT4Rec, BERT4RecConfig
from recstudio.model.seq.sasrec import SASRec, SASRecConfig
from recstudio.testing import planted_data

MODELS = [(SASRec, SASRecConfig), (BERT4Rec, BERT4RecConfig)]


@pytest.fixture(scope="module")
def data():
    return planted_data(num_users=40, num_items=30, min_len=6, max_len=14)


def build(cls, cfg_cls, data, **kw):
    torch.manual_seed(0)
    cfg = cfg_cls(**{"max_seq_len": 12, "hidden_size": 16, "num_heads": 2, "num_layers": 2, **kw})
    return cls(cfg, data, TrainConfig(batch_size=8))


def left_pad(rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, -len(r) :] = torch.tensor(r)
    return out


def seq_batch(rows: list[list[int]], length: int) -> dict[str, torch.Tensor]:
    seq = left_pad(rows, length)
    return {"seq": seq, "seq_len": (seq != 0).sum(1), "user": torch.arange(1, len(rows) + 1)}


def seq2seq_batch(rows: list[list[int]], length: int) -> dict[str, torch.Tensor]:
    seq = left_pad([r[:-1] for r in rows], length)
    target = left_pad([r[1:] for r in rows], length)
    return {
        "seq": seq,
        "target": target,
        "seq_len": (seq != 0).sum(1),
        "user": torch.arange(1, len(rows) + 1),
    }


ROWS = [[3, 5, 7, 9, 11, 2, 4], [1, 2, 3], [8, 6, 4, 2, 1, 30, 29, 28, 27, 26, 25, 24], [17, 18]]


# --------------------------------------------------------------------------- layers


def test_attention_mask_causal_and_padding():
    seq = left_pad([[4, 5, 6], [7]], 4)
    m = attention_mask(seq, causal=True)
    assert m.shape == (2, 1, 4, 4) and m.dtype == torch.bool
    # row 0: position 0 is padding; real queries 1..3 see real keys up to themselves
    assert m[0, 0, 3].tolist() == [False, True, True, True]
    assert m[0, 0, 1].tolist() == [False, True, False, False]
    assert m[0, 0, 0].tolist() == [True, False, False, False]  # padding query: itself only (no NaN)
    b = attention_mask(seq, causal=False)
    assert b[0, 0, 1].tolist() == [False, True, True, True]
    assert b[1, 0, 3].tolist() == [False, False, False, True]


def test_trim_left_padding_drops_only_all_padding_columns():
    seq = left_pad([[1, 2], [3, 4, 5]], 6)
    other = torch.arange(12).view(2, 6)
    s, o = trim_left_padding(seq, other)
    assert s.tolist() == [[0, 1, 2], [3, 4, 5]] and o.tolist() == [[3, 4, 5], [9, 10, 11]]
    full = left_pad([[1, 2]], 2)
    assert trim_left_padding(full)[0] is full


def test_positions_are_right_aligned():
    emb = SequenceEmbedding(10, 8, 4, dropout=0.0).eval()
    a = emb(left_pad([[1, 2, 3]], 3))
    b = emb(left_pad([[1, 2, 3]], 8))
    torch.testing.assert_close(a, b[:, -3:])


# --------------------------------------------------------------------------- both models


@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_shapes_and_registration(cls, cfg_cls, data):
    from recstudio.model.registry import get_model_class

    assert get_model_class(cls.__name__.lower()) is cls
    assert cls.family == "sequential"
    assert cls.default_overrides["data"]["split"] == "loo"
    model = build(cls, cfg_cls, data).eval()
    batch = seq_batch(ROWS, 12)
    assert model.item_vectors().shape == (data.num_items, 16)
    assert model.query_vectors(batch).shape == (len(ROWS), 16)
    scores = model.score_batch(batch)
    assert scores.shape == (len(ROWS), data.num_items) and torch.isfinite(scores).all()
    # an empty history still gives a finite query (padding attends to itself only)
    empty = seq_batch([[]], 12)
    assert torch.isfinite(model.query_vectors(empty)).all()


@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_padding_does_not_change_real_outputs(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data).eval()
    with torch.no_grad():
        short = model.encode(left_pad(ROWS, 12))
        for i, row in enumerate(ROWS):
            alone = model.encode(left_pad([row], len(row)))[0]  # no padding at all
            torch.testing.assert_close(short[i, -len(row) :], alone, atol=1e-5, rtol=1e-4)
        # query_vectors trims all-padding columns: same result as the untrimmed batch
        q = model.query_vectors(seq_batch(ROWS[1:2] + ROWS[3:], 12))
        q_full = model.query_vectors(seq_batch(ROWS[1:2] + ROWS[3:], 3))
        torch.testing.assert_close(q, q_full, atol=1e-5, rtol=1e-4)


def test_sasrec_causal_mask_prevents_looking_ahead(data):
    model = build(SASRec, SASRecConfig, data).eval()
    seq = left_pad(ROWS, 12)
    changed = seq.clone()
    changed[:, -3] = torch.where(changed[:, -3] > 0, (changed[:, -3] % 29) + 1, 0)  # a different item
    with torch.no_grad():
        a, b = model.encode(seq), model.encode(changed)
    torch.testing.assert_close(a[:, :-3], b[:, :-3])  # earlier positions never see position -3
    assert not torch.allclose(a[0, -3:], b[0, -3:])  # position -3 and later do


def test_bert4rec_is_bidirectional(data):
    model = build(BERT4Rec, BERT4RecConfig, data).eval()
    seq = left_pad(ROWS, 12)
    changed = seq.clone()
    changed[0, -1] = changed[0, -1] % 29 + 1
    with torch.no_grad():
        a, b = model.encode(seq), model.encode(changed)
    assert not torch.allclose(a[0, -7], b[0, -7])  # the first item sees the last one


def test_bert4rec_masking_rate(data):
    model = build(BERT4Rec, BERT4RecConfig, data, mask_ratio=0.2, last_mask_prob=0.0)
    torch.manual_seed(1)
    lengths = torch.randint(1, 51, (2000,))
    seq = left_pad([list(range(1, n + 1)) for n in lengths.tolist()], 50)
    masked = model.cloze_mask(seq)
    real = seq != 0
    assert not (masked & ~real).any()  # padding is never masked
    assert masked.any(1).all()  # every sequence has at least one masked position
    rate = masked.sum() / real.sum()
    assert 0.19 < float(rate) < 0.22, rate  # 0.2 plus the forced position of short sequences
    model.config.last_mask_prob = 1.0
    only_last = model.cloze_mask(seq)
    assert only_last[:, -1].all() and not only_last[:, :-1].any()


def test_bert4rec_eval_appends_mask_token(data):
    model = build(BERT4Rec, BERT4RecConfig, data).eval()
    full = list(range(1, 13))  # 12 items = max_seq_len: the oldest is dropped
    with torch.no_grad():
        q = model.query_vectors(seq_batch([full, [4, 5]], 12))
        expect_full = model.head(model.encode(torch.tensor([full[1:] + [model.mask_id]]))[:, -1])
        expect_short = model.head(model.encode(torch.tensor([[4, 5, model.mask_id]]))[:, -1])
    torch.testing.assert_close(q[0:1], expect_full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(q[1:2], expect_short, atol=1e-5, rtol=1e-4)
    assert model.embedding.item.num_embeddings == data.num_items + 1


def _train_batch(cls):
    return seq2seq_batch(ROWS, 12) if cls is SASRec else seq_batch(ROWS, 12)


@pytest.mark.parametrize("loss", ["softmax", "sampled_softmax", "bce"])
@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_each_loss_runs(cls, cfg_cls, loss, data):
    model = build(cls, cfg_cls, data, loss=loss, num_negatives=4).train()
    value = model.training_loss(_train_batch(cls))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert model.embedding.item.weight.grad is not None


@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_batch_without_targets_gives_zero_loss_not_nan(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data).train()
    batch = seq2seq_batch([[5]], 12) if cls is SASRec else seq_batch([[]], 12)
    value = model.training_loss(batch)
    assert float(value.detach()) == 0.0
    value.backward()


@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_loss_decreases_on_a_tiny_batch(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data, dropout=0.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = _train_batch(cls)
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        loss = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("cfg_cls", [SASRecConfig, BERT4RecConfig])
def test_config_validation(cfg_cls):
    from recstudio.config import build_section

    with pytest.raises(ConfigError, match="divisible"):
        build_section(cfg_cls, {"hidden_size": 30, "num_heads": 4}, "model")
    with pytest.raises(ConfigError, match="dropout"):
        build_section(cfg_cls, {"dropout": 1.5}, "model")
    with pytest.raises(ConfigError, match="model.loss"):
        build_section(cfg_cls, {"loss": "hinge-squared"}, "model")
    build_section(cfg_cls, {"loss": "hinge", "margin": 0.5}, "model")  # any shared loss works


def test_sasrec_window_context_selects_windowed_training():
    """SASRec (and the models built on it) train every target in windows with window_context."""
    from recstudio.config import build_section

    with pytest.raises(ConfigError, match="model.window_context"):
        build_section(SASRecConfig, {"max_seq_len": 20, "window_context": 20}, "model")
    whole = SASRec.data_contract(build_section(SASRecConfig, {"max_seq_len": 20}, "model"))
    assert dict(whole.main.options) == {"max_len": 20}
    config = build_section(SASRecConfig, {"max_seq_len": 20, "window_context": 5}, "model")
    windows = SASRec.data_contract(config)
    assert dict(windows.main.options) == {"max_len": None, "chunk_len": 15, "context_len": 5}


@pytest.mark.parametrize("cls", [SASRec, BERT4Rec])
def test_search_space_is_valid(cls):
    from recstudio.tune.space import normalize

    space = normalize(cls.search_space, cls)  # raises ConfigError on unknown keys or bad types
    assert "train.learning_rate" in space and "model.hidden_size" in space


def test_fast_dropout_rate_and_scale():
    from recstudio.model.layers import dropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.2, training=True)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.2) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.01  # inverted dropout keeps the expectation
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0, training=True) is x
    g = torch.ones(10, requires_grad=True)
    out = dropout(g, 0.5, training=True)
    out.sum().backward()
    assert torch.equal(g.grad == 0, out.detach() == 0)  # gradient flows through kept elements only


# --------------------------------------------------------------------------- planted data


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("SASRec", {"epochs": 10}),
        # Cloze training gets fewer targets per sequence and needs more optimiser steps than
        # SASRec (Petrov & Macdonald, RecSys 2022): smaller batches give them on 240 users.
        ("BERT4Rec", {"epochs": 10, "batch_size": 32, "learning_rate": 3e-3}),
    ],
)
def test_learns_planted_sequences_and_beats_popularity(name, overrides):
    from recstudio.testing import fit_and_evaluate, popularity_metrics

    planted = planted_data()
    pop = popularity_metrics(planted)["ndcg@10"]
    result = fit_and_evaluate(name, planted, **overrides)
    ndcg = result["test"]["ndcg@10"]
    assert ndcg > max(0.15, 3 * pop), (ndcg, pop)


def test_gsasrec_is_sasrec_with_calibrated_gbce(data):
    from recstudio.model.loss import GBCELoss
    from recstudio.model.seq.gsasrec import GSASRec, GSASRecConfig

    model = build(GSASRec, GSASRecConfig, data, num_negatives=8)
    assert isinstance(model, SASRec) and isinstance(model.loss_fn, GBCELoss)
    a = 8 / (data.num_items - 2)
    assert model.loss_fn.beta == pytest.approx(a * (0.75 * (1 - 1 / a) + 1 / a))
    loss = model.training_loss(seq2seq_batch(ROWS, 12))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.embedding.item.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_separate_output_embedding_scores_against_its_own_table(loss, data):
    from recstudio.model.seq.cl4srec import CL4SRec, CL4SRecConfig

    tied = build(SASRec, SASRecConfig, data, loss=loss, num_negatives=4)
    assert tied.item_vectors() is tied.embedding.item.weight
    model = build(SASRec, SASRecConfig, data, loss=loss, num_negatives=4, separate_output_embedding=True)
    out = model.item_vectors()
    assert out is model.output_item.weight and out.shape == (data.num_items, 16)
    loss_value = model.training_loss(seq2seq_batch(ROWS, 12))
    loss_value.backward()
    assert model.output_item.weight.grad.abs().sum() > 0  # scores use the output table
    assert model.embedding.item.weight.grad.abs().sum() > 0  # and the input table still learns
    scores = model.eval().score_batch(seq_batch(ROWS, 12))
    assert scores.shape == (len(ROWS), data.num_items)
    # CL4SRec's input table has an extra [mask] row; its outputs are the num_items rows only
    cl = build(CL4SRec, CL4SRecConfig, data, separate_output_embedding=True)
    assert cl.item_vectors() is not None and cl.item_vectors().shape == (data.num_items, 16)
    assert cl.embedding.item.weight.shape[0] == data.num_items + 1
