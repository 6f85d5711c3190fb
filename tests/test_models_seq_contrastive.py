"""Contrastive sequential models (CL4SRec, DuoRec, ICLRec, CoSeRec) and their batched augmentations."""

from __future__ import annotations

import pytest
import torch

from recstudio.config import TrainConfig
from recstudio.errors import ConfigError
from recstudio.model import augment
from recstudio.model.loss import contrastive_loss
from recstudio.model.seq.cl4srec import CL4SRec, CL4SRecConfig, pair_contrast
from recstudio.model.seq.coserec import CoSeRec, CoSeRecConfig
from recstudio.model.seq.duorec import DuoRec, DuoRecConfig
from recstudio.model.seq.iclrec import ICLRec, ICLRecConfig
from recstudio.testing import planted_data

MODELS = [(CL4SRec, CL4SRecConfig), (DuoRec, DuoRecConfig), (ICLRec, ICLRecConfig), (CoSeRec, CoSeRecConfig)]


def left_pad(rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, -len(r) :] = torch.tensor(r)
    return out


def real(row: torch.Tensor) -> list[int]:
    return [int(v) for v in row if v != 0]


def is_left_padded(seq: torch.Tensor) -> bool:
    """Every row is zeros then non-zeros (no hole)."""
    nonzero = (seq != 0).long()
    return bool((nonzero[:, 1:] >= nonzero[:, :-1]).all())


ROWS = [
    list(range(1, 21)),
    [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    [3, 4],
    [9],
    [],
    list(range(30, 54)),
]
L = 24


@pytest.fixture
def seq() -> torch.Tensor:
    return left_pad(ROWS, L)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --------------------------------------------------------------------------- augmentations


def test_crop_is_a_contiguous_subsequence_of_the_right_length(seq, gen):
    for _ in range(20):
        out = augment.crop(seq, 0.6, gen)
        assert out.shape == seq.shape and is_left_padded(out)
        for row, src in zip(out, ROWS):
            got, n = real(row), len(src)
            assert len(got) == (max(1, int(0.6 * n)) if n else 0)
            if n:
                start = src.index(got[0])
                assert src[start : start + len(got)] == got


def test_crop_offsets_cover_the_whole_sequence(gen):
    seq = left_pad([list(range(1, 11))], 12)
    firsts = {real(augment.crop(seq, 0.5, gen)[0])[0] for _ in range(200)}
    assert firsts == set(range(1, 7))  # every start 1..6 of a 5-item window


def test_mask_uses_the_mask_id_at_the_right_share(seq, gen):
    out = augment.mask(seq, 0.3, mask_id=99, generator=gen)
    assert out.shape == seq.shape and is_left_padded(out)
    for row, orig, src in zip(out, seq, ROWS):
        masked = row == 99
        assert int(masked.sum()) == int(0.3 * len(src))
        assert ((row == orig) | masked).all()  # everything else untouched
        assert not (masked & (orig == 0)).any()  # padding never masked


def test_mask_positions_are_random(gen):
    seq = left_pad([list(range(1, 11))], 10)
    hits = torch.stack([augment.mask(seq, 0.3, 99, gen)[0] == 99 for _ in range(300)]).float().mean(0)
    assert ((hits > 0.15) & (hits < 0.45)).all(), hits  # each position ~0.3


def test_reorder_permutes_one_contiguous_window(seq, gen):
    changed = 0
    for _ in range(20):
        out = augment.reorder(seq, 0.6, gen)
        assert out.shape == seq.shape and is_left_padded(out)
        for row, src in zip(out, ROWS):
            got = real(row)
            assert sorted(got) == sorted(src)
            diff = [i for i, (a, b) in enumerate(zip(got, src)) if a != b]
            if diff:
                changed += 1
                assert diff[-1] - diff[0] + 1 <= int(0.6 * len(src))  # within one window
    assert changed > 20


def test_substitute_uses_the_correlation_table(seq, gen):
    similar = torch.arange(200)
    similar[1:100] += 100  # item i -> i + 100
    out = augment.substitute(seq, 0.1, similar, gen)
    assert is_left_padded(out)
    for row, orig, src in zip(out, seq, ROWS):
        replaced = row != orig
        assert int(replaced.sum()) == (max(1, int(0.1 * len(src))) if src else 0)
        assert (row[replaced] == similar[orig[replaced]]).all()


def test_insert_adds_neighbours_before_items_and_drops_the_oldest(gen):
    similar = torch.arange(100) + 50
    similar[0] = 0
    seq = left_pad([[1, 2, 3, 4, 5], list(range(1, 9)), [7]], 8)
    out = augment.insert(seq, 0.4, similar, gen)
    assert out.shape == seq.shape and is_left_padded(out)
    first = real(out[0])
    assert len(first) == 5 + 2
    assert [v for v in first if v < 50] == [1, 2, 3, 4, 5]  # the original order survives
    for j, v in enumerate(first):  # each insert is the neighbour of the item right after it
        if v >= 50:
            assert first[j + 1] == v - 50
    full = real(out[1])
    assert len(full) == 8 and full[-1] == 8  # 8 + 3 items: the 3 oldest are dropped
    originals = [v for v in full if v < 50]
    assert originals == list(range(9 - len(originals), 9))
    assert real(out[2]) == [57, 7]


def test_choose_picks_per_row_from_allowed(gen):
    a = torch.zeros(3, 5, 4, dtype=torch.long)
    for i in range(3):
        a[i] = i + 1
    allowed = torch.tensor([[True, False, False], [False, True, True]] + [[True, True, True]] * 3)
    picks = torch.stack([augment.choose(a, allowed, gen)[:, 0] for _ in range(100)])
    assert (picks[:, 0] == 1).all() and set(picks[:, 1].tolist()) == {2, 3}
    assert set(picks[:, 2].tolist()) == {1, 2, 3}


def test_itemcf_iuf_neighbours_follow_co_occurrence():
    # items 1 and 2 always together, 3 and 4 together; 5 alone
    user = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4])
    item = torch.tensor([1, 2, 1, 2, 3, 4, 3, 4, 5])
    table = augment.itemcf_iuf_neighbours(user, item, num_users=5, num_items=6, k=1)
    assert table.shape == (6, 1)
    assert table[1, 0] == 2 and table[2, 0] == 1 and table[3, 0] == 4 and table[4, 0] == 3
    assert table[5, 0] == 5 and table[0, 0] == 0  # no co-occurrence: itself; padding stays 0


def test_itemcf_chunks_give_the_same_table():
    g = torch.Generator().manual_seed(1)
    user, item = torch.randint(0, 30, (400,), generator=g), torch.randint(1, 40, (400,), generator=g)
    a = augment.itemcf_iuf_neighbours(user, item, 30, 40, k=3)
    b = augment.itemcf_iuf_neighbours(user, item, 30, 40, k=3, chunk_elements=50)
    assert torch.equal(a, b)


def test_augmenter_short_rule_and_padding(seq, gen):
    similar = torch.arange(100)
    aug = augment.SequenceAugmenter(
        augment.METHODS,
        0.2,
        0.7,
        0.2,
        0.1,
        0.4,
        mask_id=99,
        similar=similar,
        short_threshold=4,
        short_methods=("mask",),
    )
    for _ in range(10):
        out = aug(seq, gen)
        assert out.shape == seq.shape and is_left_padded(out)
        assert real(out[2]) in ([99, 4], [3, 99])  # short: mask only (1 of its 2 items)
        assert real(out[3]) == [9]  # floor(0.7 * 1) = 0 items masked
        assert real(out[4]) == []
    with pytest.raises(ValueError, match="mask_id"):
        augment.SequenceAugmenter(("mask",))


def test_contrastive_loss_dot_and_exclude():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    c = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([0, 1])
    logits = a @ c.T
    expected = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(contrastive_loss(a, c, 1.0, target, similarity="dot"), expected)
    exclude = torch.tensor([[False, False, True], [True, True, True]])  # the target is never dropped
    masked = logits.clone()
    masked[0, 2] = -torch.inf
    masked[1, 0] = masked[1, 2] = -torch.inf
    got = contrastive_loss(a, c, 1.0, target, similarity="dot", exclude=exclude)
    assert torch.allclose(got, torch.nn.functional.cross_entropy(masked, target))
    with pytest.raises(ConfigError):
        contrastive_loss(a, c, 1.0, target, similarity="l2")


def test_pair_contrast_is_2n_nt_xent():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    z = torch.cat([z1, z2])
    sim = z @ z.T
    sim.fill_diagonal_(-torch.inf)
    target = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    expected = torch.nn.functional.cross_entropy(sim, target)
    assert torch.allclose(pair_contrast(z1, z2, 1.0, "dot"), expected)
    # same group: the other rows of the group drop out of the softmax
    groups = torch.tensor([0, 0, 1, 2])
    same = torch.cat([groups, groups])
    sim2 = sim.clone()
    drop = (same[:, None] == same[None, :]) & ~torch.nn.functional.one_hot(target, 8).bool()
    sim2[drop] = -torch.inf
    assert torch.allclose(
        pair_contrast(z1, z2, 1.0, "dot", groups), torch.nn.functional.cross_entropy(sim2, target)
    )


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def data():
    return planted_data(num_users=48, num_items=40, min_len=4, max_len=14)


def build(cls, cfg_cls, data, **kw):
    torch.manual_seed(0)
    cfg = cfg_cls(**{"max_seq_len": 12, "hidden_size": 16, "num_heads": 2, "num_layers": 1, **kw})
    if cls is ICLRec:
        cfg.num_intents = kw.get("num_intents", 4)
    return cls(cfg, data, TrainConfig(batch_size=16))


def train_batch(data, max_len=12, n=16):
    """The first ``n`` users' whole-sequence samples (None: every user's)."""
    from recstudio.data.views import Seq2SeqDataset

    view = Seq2SeqDataset(data, batch_size=16, seed=0, max_len=max_len)
    return view._batch(torch.arange(len(view.users) if n is None else n))


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=[m[0].__name__ for m in MODELS])
def test_contrastive_term_is_nonzero_with_gradients(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data)
    batch = train_batch(data)
    full = model.training_loss(batch)
    torch.manual_seed(1)
    model.config.cl_weight = 0.0
    if cls is ICLRec:
        model.config.seq_cl_weight = 0.0
    plain = model.training_loss(batch)
    assert full.item() != pytest.approx(plain.item(), abs=1e-4)
    model.config.cl_weight = 1.0
    model.zero_grad()
    # the contrastive term alone moves the encoder
    full_seq = batch["seq"][:, -12:]
    from recstudio.model.layers import trim_left_padding

    hidden = model.encode(trim_left_padding(full_seq)[0])
    if cls is DuoRec:
        positive = trim_left_padding(model.same_target_sequences(batch["user"]))[0]
        term = pair_contrast(hidden[:, -1], model.encode(positive)[:, -1], 1.0, "dot")
    else:
        term = model.contrastive_term(full_seq, hidden, batch)
    assert term.item() > 0 and torch.isfinite(term)
    term.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=[m[0].__name__ for m in MODELS])
def test_loss_decreases_on_a_tiny_batch(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data, dropout=0.0)
    batch = train_batch(data)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    first = model.training_loss(batch).item()
    for _ in range(40):
        opt.zero_grad()
        loss = model.training_loss(batch)
        loss.backward()
        opt.step()
    torch.manual_seed(0)
    assert model.training_loss(batch).item() < 0.7 * first


@pytest.mark.parametrize("cls,cfg_cls", MODELS, ids=[m[0].__name__ for m in MODELS])
def test_query_is_causal_and_ignores_padding(cls, cfg_cls, data):
    model = build(cls, cfg_cls, data).eval()
    rows = [[3, 5, 7, 9], [1, 2]]
    a = model.query_vectors({"seq": left_pad(rows, 6)})
    b = model.query_vectors({"seq": left_pad(rows, 12)})
    assert torch.allclose(a, b, atol=1e-5)
    hidden = model.encode(left_pad([[3, 5, 7, 9]], 6))
    changed = model.encode(left_pad([[3, 5, 7, 11]], 6))
    assert torch.allclose(hidden[:, :-1], changed[:, :-1], atol=1e-5)  # no look-ahead
    assert model.item_vectors().shape[0] == data.num_items


def test_mask_token_is_an_extra_input_row(data):
    model = build(CL4SRec, CL4SRecConfig, data)
    assert model.embedding.item.num_embeddings == data.num_items + 1
    assert model.augmenter.mask_id == data.num_items


def test_duorec_positive_has_the_same_target(data):
    model = build(DuoRec, DuoRecConfig, data)
    indptr, items = data.train.csr(data.num_users)
    users = torch.arange(data.num_users)[(indptr[1:] - indptr[:-1]) >= 2]
    flat = items.tolist()
    prefixes = {}  # target -> set of prefixes (as tuples) that precede it
    for u in users.tolist():
        seq = flat[indptr[u] : indptr[u + 1]]
        for t in range(1, len(seq)):
            prefixes.setdefault(seq[t], set()).add(tuple(seq[max(0, t - 12) : t]))
    for _ in range(3):
        drawn = model.same_target_sequences(users)
        assert drawn.shape == (len(users), 12) and is_left_padded(drawn)
        for u, row in zip(users.tolist(), drawn):
            last = flat[indptr[u + 1] - 1]
            assert tuple(real(row)) in prefixes[last]


def test_duorec_draws_another_sequence_when_there_is_one(data):
    model = build(DuoRec, DuoRecConfig, data)
    users = torch.arange(data.num_users)
    users = users[
        model.group_start[model.own_target[users] + 1] - model.group_start[model.own_target[users]] > 1
    ]
    own = train_batch(data, n=None)
    own_seq = {int(u): tuple(real(s)) for u, s in zip(own["user"], own["seq"])}
    same = sum(tuple(real(r)) == own_seq[int(u)] for u, r in zip(users, model.same_target_sequences(users)))
    assert same < 0.5 * len(users)  # identical prefixes across users are rare, own never drawn


def test_iclrec_intents_update_each_epoch(data):
    model = build(ICLRec, ICLRecConfig, data, num_intents=4)
    assert model.intents.shape[0] == 0
    model.update_intents()
    first = model.intents.clone()
    assert first.shape == (4, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = train_batch(data)
    for _ in range(3):
        opt.zero_grad()
        model.training_loss(batch).backward()
        opt.step()
    model.on_train_epoch_start()
    assert model.intents.shape == (4, 16) and not torch.allclose(first, model.intents)
    # the representations clustered are every training prefix's
    points = model.subsequence_vectors()
    assert points.shape[0] == int((model.train_sequences != 0).sum())


def test_coserec_uses_substitute_and_insert(data):
    model = build(CoSeRec, CoSeRecConfig, data)
    assert set(model.augmenter.methods) == set(augment.METHODS)
    similar = model.augmenter.similar
    assert similar.shape == (data.num_items,) and (similar[1:] != torch.arange(1, data.num_items)).any()


@pytest.mark.parametrize(
    "cfg_cls,key,value",
    [
        (CL4SRecConfig, "cl_weight", -0.1),
        (CL4SRecConfig, "cl_temperature", 0.0),
        (CL4SRecConfig, "cl_similarity", "l2"),
        (CL4SRecConfig, "crop_ratio", 0.0),
        (CL4SRecConfig, "mask_ratio", 1.5),
        (CoSeRecConfig, "insert_ratio", -0.2),
        (CoSeRecConfig, "augment_threshold", -1),
        (ICLRecConfig, "num_intents", 0),
        (ICLRecConfig, "seq_cl_weight", -1.0),
        (DuoRecConfig, "cl_temperature", -1.0),
    ],
)
def test_config_validation_names_the_key(cfg_cls, key, value):
    with pytest.raises(ConfigError, match=key):
        cfg_cls(**{key: value}).validate()
