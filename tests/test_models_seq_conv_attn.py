"""Caser, HGN, CORE, LightSANs, FEARec and their blocks (recstudio.model.seq_blocks): windows,
gates, weights, low-rank attention, frequency bands, causality, padding, losses."""

from __future__ import annotations

import pytest
import torch

from recstudio.config import TrainConfig
from recstudio.errors import ConfigError
from recstudio.model.seq.caser import Caser, CaserConfig
from recstudio.model.seq.core import CORE, COREConfig
from recstudio.model.seq.fearec import FEARec, FEARecConfig
from recstudio.model.seq.hgn import HGN, HGNConfig
from recstudio.model.seq.lightsans import LightSANs, LightSANsConfig
from recstudio.model.seq_blocks import (
    HybridAttention,
    SameTargetPrefixes,
    frequency_band,
    item_windows,
    prefix_interests,
    prefix_softmax,
    sample_prefixes,
)
from recstudio.testing import planted_data

SMALL = {
    Caser: dict(max_seq_len=12, window=3, embed_dim=8, num_horizontal=4, num_vertical=2),
    HGN: dict(max_seq_len=12, window=3, embed_dim=8),
    CORE: dict(max_seq_len=12, hidden_size=16, inner_size=32, num_heads=2, num_layers=2),
    LightSANs: dict(
        max_seq_len=12, hidden_size=16, inner_size=32, num_heads=2, num_layers=2, num_interests=3
    ),
    FEARec: dict(max_seq_len=12, hidden_size=16, inner_size=32, num_heads=2, num_layers=2, prefix_window=12),
}
CONFIGS = {
    Caser: CaserConfig,
    HGN: HGNConfig,
    CORE: COREConfig,
    LightSANs: LightSANsConfig,
    FEARec: FEARecConfig,
}
MODELS = list(SMALL)
ROWS = [[3, 5, 7, 9, 11, 2, 4], [1, 2, 3], [8, 6, 4, 2, 1, 30, 29, 28, 27, 26, 25, 24], [17, 18]]


@pytest.fixture(scope="module")
def data():
    return planted_data(num_users=40, num_items=30, min_len=6, max_len=14)


def build(cls, data, **kw):
    torch.manual_seed(0)
    return cls(CONFIGS[cls](**{**SMALL[cls], **kw}), data, TrainConfig(batch_size=8))


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


def position_queries(model, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """Caser/HGN queries [B, L, D] of the window ending at every position."""
    windows = item_windows(seq, model.window)
    flat_users = users[:, None].expand(-1, seq.shape[1]).reshape(-1)
    return model.window_queries(windows.reshape(-1, model.window), flat_users).view(*seq.shape, -1)


# --------------------------------------------------------------------------- all five models


@pytest.mark.parametrize("cls", MODELS)
def test_shapes_registration_and_empty_history(cls, data):
    from recstudio.model.registry import get_model_class

    assert get_model_class(cls.__name__.lower()) is cls
    assert cls.family == "sequential" and cls.description
    assert cls.default_overrides["data"]["split"] == "loo"
    model = build(cls, data).eval()
    batch = seq_batch(ROWS, 12)
    with torch.no_grad():
        items, query = model.item_vectors(), model.query_vectors(batch)
        scores = model.score_batch(batch)
        empty = model.query_vectors(seq_batch([[]], 12))
    assert items.shape[0] == data.num_items and query.shape == (len(ROWS), items.shape[1])
    assert scores.shape == (len(ROWS), data.num_items) and torch.isfinite(scores).all()
    assert torch.isfinite(empty).all()


@pytest.mark.parametrize("cls", [Caser, HGN, CORE, LightSANs])
def test_padding_does_not_change_real_outputs(cls, data):
    model = build(cls, data).eval()
    with torch.no_grad():
        for row in ROWS:
            a = model.query_vectors(seq_batch([row], 12))
            b = model.query_vectors(seq_batch([row], len(row)))
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        if cls in (CORE, LightSANs):
            padded = model.encode(left_pad(ROWS, 12))
            for i, row in enumerate(ROWS):
                alone = model.encode(left_pad([row], len(row)))[0]
                torch.testing.assert_close(padded[i, -len(row) :], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", [Caser, HGN, CORE, LightSANs])
def test_no_look_ahead_in_whole_sequence_training(cls, data):
    """The output at a position never depends on later items (whole-sequence training is causal)."""
    model = build(cls, data).eval()
    seq = left_pad(ROWS, 12)
    changed = seq.clone()
    changed[:, -3] = torch.where(changed[:, -3] > 0, changed[:, -3] % 29 + 1, 0)
    users = torch.arange(1, len(ROWS) + 1)
    with torch.no_grad():
        if cls in (Caser, HGN):
            a, b = position_queries(model, seq, users), position_queries(model, changed, users)
        else:
            a, b = model.encode(seq), model.encode(changed)
    torch.testing.assert_close(a[:, :-3], b[:, :-3])
    assert not torch.allclose(a[0, -3:], b[0, -3:])


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_each_loss_runs_and_reaches_parameters(cls, loss, data):
    model = build(cls, data, loss=loss, num_negatives=3).train()
    value = model.training_loss(seq2seq_batch(ROWS, 12))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) >= len(grads) // 2


@pytest.mark.parametrize("cls", MODELS)
def test_batch_without_targets_gives_zero_loss(cls, data):
    model = build(cls, data).train()
    value = model.training_loss(seq2seq_batch([[5]], 12))
    assert float(value.detach()) == 0.0
    value.backward()


@pytest.mark.parametrize("cls", MODELS)
def test_loss_decreases_on_a_tiny_batch(cls, data):
    kw = {"dropout": 0.0} if cls is not HGN else {}
    if cls is CORE:
        kw.update(sess_dropout=0.0, item_dropout=0.0)
    model = build(cls, data, **kw).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = seq2seq_batch(ROWS, 12)
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        loss = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("cls", MODELS)
def test_search_space_is_valid(cls):
    from recstudio.tune.space import normalize

    space = normalize(cls.search_space, cls)
    assert "train.learning_rate" in space


@pytest.mark.parametrize(
    "cls,bad,match",
    [
        (Caser, {"window": 0}, "model.window"),
        (Caser, {"dropout": 1.0}, "model.dropout"),
        (HGN, {"embed_dim": 0}, "model.embed_dim"),
        (CORE, {"encoder": "gru"}, "model.encoder"),
        (CORE, {"item_dropout": 1.5}, "model.item_dropout"),
        (CORE, {"hidden_size": 30, "num_heads": 4}, "divisible"),
        (LightSANs, {"num_interests": 0}, "model.num_interests"),
        (LightSANs, {"hidden_size": 30, "num_heads": 4}, "divisible"),
        (FEARec, {"global_ratio": 0.0}, "model.global_ratio"),
        (FEARec, {"spatial_ratio": 1.5}, "model.spatial_ratio"),
        (FEARec, {"contrastive_temperature": 0.0}, "model.contrastive_temperature"),
        (FEARec, {"loss": "nope"}, "model.loss"),
    ],
)
def test_config_validation(cls, bad, match):
    from recstudio.config import build_section

    with pytest.raises(ConfigError, match=match):
        build_section(CONFIGS[cls], bad, "model")
    build_section(CONFIGS[cls], {}, "model")


# --------------------------------------------------------------------------- Caser, HGN


def test_item_windows_are_the_last_items_of_each_position():
    seq = torch.tensor([[0, 1, 2, 3]])
    assert item_windows(seq, 2).tolist() == [[[0, 0], [0, 1], [1, 2], [2, 3]]]
    assert item_windows(seq, 1).squeeze(-1).tolist() == seq.tolist()


def test_caser_reads_only_the_last_window_and_its_convolutions(data):
    model = build(Caser, data).eval()
    batch = seq_batch(ROWS, 12)
    older = batch["seq"].clone()
    older[:, :-3] = torch.where(older[:, :-3] > 0, older[:, :-3] % 29 + 1, 0)  # outside the window
    with torch.no_grad():
        q = model.query_vectors(batch)
        torch.testing.assert_close(q, model.query_vectors({**batch, "seq": older}))
        # the convolutions by hand for the first row's window [9, 2, 4]... = last 3 items
        window = batch["seq"][:1, -3:]
        e = model.item_emb(window)[0]  # [L, d]
        vertical = (
            torch.einsum("vl,ld->vd", model.vertical.weight[:, 0, :, 0], e) + model.vertical.bias[:, None]
        )
        horizontal = []
        for h, conv in enumerate(model.horizontal, start=1):
            rows = torch.stack([(conv.weight[:, 0] * e[s : s + h]).sum((1, 2)) for s in range(3 - h + 1)])
            horizontal.append(torch.relu(rows + conv.bias).amax(0))
        z = torch.relu(model.fc(torch.cat([vertical.flatten(), *horizontal])))
        torch.testing.assert_close(q[0, : z.shape[0]], z, atol=1e-5, rtol=1e-4)
        assert float(q[0, -1]) == 1.0  # the bias slot
        torch.testing.assert_close(q[0, z.shape[0] : -1], model.user_emb.weight[1])


def test_hgn_gates_are_in_unit_interval_and_padding_is_ignored(data):
    model = build(HGN, data).eval()
    windows = torch.tensor([[0, 4, 5], [6, 7, 8]])
    with torch.no_grad():
        _, feature, instance, _ = model.gates(windows, torch.tensor([1, 2]))
        q_short = model.window_queries(torch.tensor([[0, 4, 5]]), torch.tensor([1]))
        model.item_emb.weight[0] += 5.0  # padding embedding changes: still no effect (masked)
        q_again = model.window_queries(torch.tensor([[0, 4, 5]]), torch.tensor([1]))
    assert feature.shape == (2, 3, 8) and instance.shape == (2, 3)
    assert ((feature > 0) & (feature < 1)).all()
    assert instance[0, 0] == 0 and ((instance[0, 1:] > 0) & (instance[0, 1:] < 1)).all()
    assert ((instance[1] > 0) & (instance[1] < 1)).all()
    # the item-item term sums the raw embeddings: only the instance average ignores padding
    diff = q_again - q_short
    torch.testing.assert_close(diff[0, :-1], torch.full((8,), 5.0))


# --------------------------------------------------------------------------- CORE


@pytest.mark.parametrize("encoder", ["trm", "ave"])
def test_core_weights_sum_to_one_over_the_visible_items(encoder, data):
    model = build(CORE, data, encoder=encoder).eval()
    seq = left_pad(ROWS, 12)
    with torch.no_grad():
        alpha = model.weights(seq)
        out = model.encode(seq)
    real = seq != 0
    sums = alpha.sum(-1)
    torch.testing.assert_close(sums[real], torch.ones(int(real.sum())))
    future = torch.ones(12, 12, dtype=torch.bool).triu(1)
    assert (alpha[:, future] == 0).all()
    assert (alpha * (~real)[:, None, :])[real].abs().max() == 0  # real positions ignore padding
    # the session is a convex combination of its item embeddings (consistent space)
    torch.testing.assert_close(out, alpha @ model.embedding.item(seq))
    if encoder == "ave":  # CORE-ave: the running mean
        n = real.cumsum(1).clamp_min(1)
        seen = real[:, None, :] & ~future
        torch.testing.assert_close(alpha[real], (seen / n[..., None])[real])


def test_core_trains_with_cosine_temperature_and_item_dropout(data):
    from recstudio.model.scorer import CosineScorer

    model = build(CORE, data)
    assert isinstance(model.scorer, CosineScorer) and model.config.temperature == 0.07
    q = model.eval().query_vectors(seq_batch(ROWS, 12))
    scores = model.score_batch(seq_batch(ROWS, 12))
    assert scores.abs().max() <= 1.0 + 1e-5 and q.shape == (4, 16)


# --------------------------------------------------------------------------- LightSANs


def test_lightsans_attends_over_k_interests(data):
    model = build(LightSANs, data).eval()
    seq = left_pad(ROWS, 12)
    with torch.no_grad():
        model.encode(seq)
    weights = model.layers[0].attention.last_interest_weights
    assert weights.shape == (4, 2, 12, 3)  # [B, heads, L, k]
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 2, 12))
    logits = torch.randn(2, 5, 3)
    keep = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, -1, -1)
    agg = prefix_softmax(logits, keep)  # [B, t, i, k]
    torch.testing.assert_close(agg.sum(2), torch.ones(2, 5, 3))
    torch.testing.assert_close(agg[:, -1], logits.softmax(1))  # the last prefix sees everything
    assert (agg[:, 0, 1:] == 0).all()
    # the running-sum aggregation equals the prefix softmax applied to the values, padding excluded
    values = torch.randn(2, 5, 4)
    real = torch.tensor([[False, True, True, True, True], [True] * 5])
    keep = keep & real[:, None, :]
    expected = torch.einsum("btij,bid->btjd", prefix_softmax(logits, keep), values)
    got = prefix_interests(logits * 30, values, real)  # large logits: still exact
    torch.testing.assert_close(prefix_interests(logits, values, real)[real], expected[real])
    torch.testing.assert_close(
        got[real], torch.einsum("btij,bid->btjd", prefix_softmax(logits * 30, keep), values)[real]
    )
    assert (got[0, 0] == 0).all()  # before the first real item: zeros, not NaN


# --------------------------------------------------------------------------- FEARec


def test_fearec_frequency_bands_ramp_from_high_to_low():
    assert [frequency_band(i, 2, 50, 0.6) for i in range(2)] == [(10, 26), (0, 16)]
    assert [frequency_band(i, 2, 50, 0.3) for i in range(2)] == [(13, 26), (0, 13)]  # disjoint halves
    assert frequency_band(0, 1, 50, 1.0) == (0, 26)


def test_fearec_frequency_filter_keeps_only_its_band():
    torch.manual_seed(0)
    attn = HybridAttention(8, 2, 0.0, band=(2, 5), topk_factor=1.0, spatial_ratio=0.0)
    q, k = torch.randn(3, 2, 12, 4), torch.randn(3, 2, 12, 4)
    corr = attn.correlation(q, k)
    spectrum = torch.fft.rfft(corr, dim=2).abs()
    assert spectrum[:, :, [0, 1, 5, 6]].max() < 1e-5 and spectrum[:, :, 2:5].min() > 0
    full = HybridAttention(8, 2, 0.0, band=(0, 7), topk_factor=1.0, spatial_ratio=0.0)
    # circular cross-correlation: lag t pairs q at s + t with k at s
    lags = torch.stack([(q.roll(-t, 2) * k).sum(2) for t in range(12)], 2)
    torch.testing.assert_close(full.correlation(q, k), lags, atol=1e-4, rtol=1e-4)


def test_fearec_trains_from_the_last_position_of_prefixes(data):
    seq = left_pad([[3, 5, 7, 9], [1, 2]], 6)
    target = left_pad([[5, 7, 9, 11], [2, 3]], 6)
    prefix, tgt, row = sample_prefixes(seq, target, per_row=20, generator=torch.Generator().manual_seed(0))
    assert prefix.shape == (40, 6) and tgt.shape == (40,)
    assert set(tgt[row == 0].tolist()) == {5, 7, 9, 11} and set(tgt[row == 1].tolist()) == {2, 3}
    for p, t, r in zip(prefix.tolist(), tgt.tolist(), row.tolist()):
        items = [i for i in p if i]
        full = [i for i in seq[r].tolist() if i]
        assert p[-1] != 0 and full[: len(items)] == items  # a true prefix, right-aligned
        assert t == (full + [target[r, -1].item()])[len(items)]  # its next item
    # inputs of any width are left-padded to max_seq_len (the bands are defined for it)
    model = build(FEARec, data).eval()
    with torch.no_grad():
        assert model.encode(prefix[:4]).shape == (4, 12, 16)
        torch.testing.assert_close(model.encode(prefix[:4]), model.encode(prefix[:4, -4:]))


def test_same_target_prefixes_precede_the_target_in_training():
    user = torch.tensor([1, 1, 1, 2, 2, 2, 3])
    item = torch.tensor([4, 5, 6, 7, 5, 8, 5])
    sampler = SameTargetPrefixes(user, item, num_users=4, num_items=10, max_len=3)
    torch.manual_seed(0)
    out = sampler.sample(torch.tensor([5] * 50 + [6, 4]))
    seen = {tuple(r) for r in out[:50].tolist()}
    assert seen == {(0, 0, 4), (0, 0, 7)}  # user 3's 5 is a first item: no prefix, never drawn
    assert out[50].tolist() == [0, 4, 5] and out[51].tolist() == [0, 0, 0]  # 4 never follows


def test_fearec_regulariser_uses_both_terms(data):
    model = build(FEARec, data).train()
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    both = model.regulariser(a, a.clone())
    assert float(model.regulariser(a, b)) > float(both)
    model.config.contrastive_weight, model.config.frequency_weight = 0.0, 0.0
    assert float(model.regulariser(a, b)) == 0.0
