"""Training views: batch keys and shapes, padding, shifting, epochs, DDP shards."""

from __future__ import annotations

import pytest
import torch

from recstudio.data.dataset import Interactions, PreparedData
from recstudio.data.views import build_view
from recstudio.errors import ConfigError


def _data() -> PreparedData:
    """Users 1..4, items 1..9. Train sequences (by time): u1 = 5 3 7 2, u2 = 4, u3 = none, u4 = 6 8."""
    user = torch.tensor([1, 1, 1, 1, 2, 4, 4])
    item = torch.tensor([5, 3, 7, 2, 4, 6, 8])
    train = Interactions(user, item, torch.ones(7), torch.arange(7, dtype=torch.float64))
    empty = Interactions(
        *(torch.zeros(0, dtype=t) for t in (torch.long, torch.long, torch.float32, torch.float64))
    )
    return PreparedData(
        name="toy",
        num_users=5,
        num_items=10,
        train=train,
        valid=empty,
        test=empty,
        user_vocab=[None, 1, 2, 3, 4],
        item_vocab=[None, *range(1, 10)],
    )


def _epoch(view) -> list[dict[str, torch.Tensor]]:
    return list(iter(view))


def test_triplet_batches_cover_rows_once_per_epoch_with_new_order() -> None:
    data = _data()
    view = build_view("triplet", data, batch_size=3, seed=7)
    assert len(view) == 3
    first = _epoch(view)
    assert [len(b["user"]) for b in first] == [3, 3, 1]
    assert set(first[0]) == {"user", "item", "rating"} and first[0]["rating"].dtype == torch.float32
    pairs = sorted(
        zip(torch.cat([b["user"] for b in first]).tolist(), torch.cat([b["item"] for b in first]).tolist())
    )
    assert pairs == sorted(zip(data.train.user.tolist(), data.train.item.tolist()))
    second = _epoch(view)
    assert not torch.equal(torch.cat([b["item"] for b in first]), torch.cat([b["item"] for b in second]))
    replay = build_view("triplet", data, batch_size=3, seed=7)
    assert torch.equal(torch.cat([b["item"] for b in _epoch(replay)]), torch.cat([b["item"] for b in first]))
    replay.set_epoch(1)
    assert torch.equal(torch.cat([b["item"] for b in _epoch(replay)]), torch.cat([b["item"] for b in second]))


def test_static_negatives_avoid_the_users_training_items() -> None:
    from recstudio.testing import planted_data

    data = planted_data(num_users=30, num_items=20, seed=1)
    view = build_view("triplet", data, batch_size=64, seed=0, static_negatives=3)
    owned = set(zip(data.train.user.tolist(), data.train.item.tolist()))
    for batch in view:
        for user, negs in zip(batch["user"].tolist(), batch["neg_item"].tolist()):
            assert not any((user, n) in owned for n in negs)


def test_triplet_static_negatives() -> None:
    view = build_view("triplet", _data(), batch_size=4, seed=0, static_negatives=5)
    batch = next(iter(view))
    assert batch["neg_item"].shape == (4, 5)
    all_neg = view.neg_item
    assert all_neg.min() >= 1 and all_neg.max() <= 9  # never padding id 0


@pytest.mark.parametrize("static_negatives", [0, 2])
def test_triplet_epoch_gather_gives_the_batch_by_batch_batches(monkeypatch, static_negatives: int) -> None:
    """The whole-epoch gather (batches are slices of it) and the per-batch gather used above the
    memory limit yield identical batches."""
    import recstudio.data.views as views

    def epoch_with_limit(view, limit: int) -> list[dict[str, torch.Tensor]]:
        monkeypatch.setattr(views, "EPOCH_GATHER_LIMIT", limit)
        return _epoch(view)

    whole = build_view("triplet", _data(), batch_size=3, seed=5, static_negatives=static_negatives)
    per_batch = build_view("triplet", _data(), batch_size=3, seed=5, static_negatives=static_negatives)
    for _ in range(2):
        sliced, built = epoch_with_limit(whole, 256 << 20), epoch_with_limit(per_batch, 0)
        assert len(sliced) == len(built) == 3
        storage = [b["user"].untyped_storage().data_ptr() for b in sliced + built]
        assert storage[0] == storage[1] == storage[2]  # slices of one epoch gather
        assert len(set(storage[3:])) == 3  # built one by one
        for a, b in zip(sliced, built):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_user_view_history_multi_hot() -> None:
    view = build_view("user", _data(), batch_size=8, seed=0)
    assert len(view) == 1
    batch = next(iter(view))
    assert sorted(batch["user"].tolist()) == [1, 2, 4]  # user 3 has no training items
    assert batch["history"].shape == (3, 10) and batch["history"].dtype == torch.float32
    rows = {
        u: set(torch.nonzero(h).flatten().tolist()) for u, h in zip(batch["user"].tolist(), batch["history"])
    }
    assert rows == {1: {2, 3, 5, 7}, 2: {4}, 4: {6, 8}}


def test_seq_view_left_padded_most_recent_last() -> None:
    view = build_view("seq", _data(), batch_size=8, seed=0, max_len=3)
    batch = next(iter(view))
    by_user = {
        u: (s.tolist(), n) for u, s, n in zip(batch["user"].tolist(), batch["seq"], batch["seq_len"].tolist())
    }
    assert by_user == {1: ([3, 7, 2], 3), 2: ([0, 0, 4], 1), 4: ([0, 6, 8], 2)}


def test_seq2seq_view_shifts_by_one() -> None:
    view = build_view("seq2seq", _data(), batch_size=8, seed=0, max_len=4)
    batch = next(iter(view))
    assert set(batch) == {"user", "seq", "target", "seq_len"}
    got = {
        u: (s.tolist(), t.tolist(), n)
        for u, s, t, n in zip(
            batch["user"].tolist(), batch["seq"], batch["target"], batch["seq_len"].tolist()
        )
    }
    # user 2 has a single item: no (input, target) pair, so it is left out
    assert got == {1: ([0, 5, 3, 7], [0, 3, 7, 2], 3), 4: ([0, 0, 0, 6], [0, 0, 0, 8], 1)}
    short = next(iter(build_view("seq2seq", _data(), batch_size=8, seed=0, max_len=2)))
    row = short["user"].tolist().index(1)
    assert short["seq"][row].tolist() == [3, 7] and short["target"][row].tolist() == [7, 2]


def _samples(view) -> set[tuple]:
    return {
        (u, tuple(s.tolist()), tuple(t.tolist()), n)
        for b in _epoch(view)
        for u, s, t, n in zip(b["user"].tolist(), b["seq"], b["target"], b["seq_len"].tolist())
    }


def test_seq2seq_chunks_hold_every_transition_once() -> None:
    """chunk_len C: (user, chunk) samples of C positions, the latest target last; max_len None
    keeps every transition; the same chunks as cutting the whole-sequence rows."""
    one = _samples(build_view("seq2seq", _data(), batch_size=3, seed=0, max_len=None, chunk_len=1))
    assert one == {(1, (5,), (3,), 1), (1, (3,), (7,), 1), (1, (7,), (2,), 1), (4, (6,), (8,), 1)}
    two = _samples(build_view("seq2seq", _data(), batch_size=8, seed=0, max_len=None, chunk_len=2))
    assert two == {(1, (3, 7), (7, 2), 2), (1, (0, 5), (0, 3), 1), (4, (0, 6), (0, 8), 1)}
    capped = _samples(build_view("seq2seq", _data(), batch_size=8, seed=0, max_len=2, chunk_len=1))
    assert capped == {(1, (3,), (7,), 1), (1, (7,), (2,), 1), (4, (6,), (8,), 1)}
    # against the whole-sequence rows cut into chunks, on random sequences
    torch.manual_seed(0)
    n = 400
    user = torch.sort(torch.randint(1, 30, (n,))).values
    item = torch.randint(1, 50, (n,))
    train = Interactions(user, item, torch.ones(n), torch.arange(n, dtype=torch.float64))
    data = PreparedData(
        name="random",
        num_users=30,
        num_items=50,
        train=train,
        valid=train,
        test=train,
        user_vocab=[None, *range(1, 30)],
        item_vocab=[None, *range(1, 50)],
    )
    whole = next(iter(build_view("seq2seq", data, batch_size=64, seed=0, max_len=40)))
    cut = set()
    for u, s, t in zip(whole["user"].tolist(), whole["seq"], whole["target"]):
        for s_c, t_c in zip(s.view(-1, 4), t.view(-1, 4)):
            if bool((t_c > 0).any()):
                cut.add((u, tuple(s_c.tolist()), tuple(t_c.tolist()), int((t_c > 0).sum())))
    assert _samples(build_view("seq2seq", data, batch_size=16, seed=1, max_len=40, chunk_len=4)) == cut


def test_seq2seq_chunks_with_context_train_each_target_once_after_its_history() -> None:
    """context_len K: each chunk of C targets is preceded by the K inputs before it (no target
    there); every target is trained exactly once; a sample is the slice of the user's whole
    sequence that ends at its chunk."""
    view = build_view("seq2seq", _data(), batch_size=8, seed=0, max_len=None, chunk_len=1, context_len=2)
    got = _samples(view)
    assert got == {
        (1, (5, 3, 7), (0, 0, 2), 3),
        (1, (0, 5, 3), (0, 0, 7), 2),
        (1, (0, 0, 5), (0, 0, 3), 1),
        (4, (0, 0, 6), (0, 0, 8), 1),
    }
    torch.manual_seed(1)
    n = 500
    user = torch.sort(torch.randint(1, 20, (n,))).values
    item = torch.randperm(n) + 1  # distinct items: a target names its position
    train = Interactions(user, item, torch.ones(n), torch.arange(n, dtype=torch.float64))
    data = PreparedData(
        name="random",
        num_users=20,
        num_items=n + 1,
        train=train,
        valid=train,
        test=train,
        user_vocab=[None, *range(1, 20)],
        item_vocab=[None, *range(1, n + 1)],
    )
    width = 200  # longer than any user's sequence: the whole rows
    whole = next(iter(build_view("seq2seq", data, batch_size=64, seed=0, max_len=width)))
    rows = {u: (s, t) for u, s, t in zip(whole["user"].tolist(), whole["seq"], whole["target"])}
    for size, context in ((3, 5), (4, 4), (1, 7)):
        trained: dict[tuple[int, int], int] = {}
        view = build_view(
            "seq2seq", data, batch_size=16, seed=2, max_len=None, chunk_len=size, context_len=context
        )
        samples = [
            (u, tuple(s.tolist()), tuple(t.tolist()))
            for b in _epoch(view)
            for u, s, t in zip(b["user"].tolist(), b["seq"], b["target"])
        ]
        for u, seq, target in samples:  # a list: a sample emitted twice would count twice
            s_all, t_all = rows[u]
            # the slice of the whole row that ends at this chunk's newest target (always trained)
            end = int(torch.nonzero(t_all == target[-1])[0, 0]) + 1
            assert tuple(s_all[end - len(seq) : end].tolist()) == seq
            assert target[:context] == (0,) * context  # context columns: no target
            assert target[context:] == tuple(t_all[end - size : end].tolist())
            for i, t in enumerate(target[context:]):
                if t:
                    trained[(u, end - size + i)] = trained.get((u, end - size + i), 0) + 1
        every = {(u, i) for u, (_, t_all) in rows.items() for i in range(width) if t_all[i] > 0}
        assert set(trained) == every and set(trained.values()) == {1}


def test_seq2seq_chunk_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="chunk_len must be >= 1"):
        build_view("seq2seq", _data(), batch_size=2, seed=0, chunk_len=0)
    with pytest.raises(ConfigError, match="max_len None"):
        build_view("seq2seq", _data(), batch_size=2, seed=0, max_len=None)
    with pytest.raises(ConfigError, match="context_len"):
        build_view("seq2seq", _data(), batch_size=2, seed=0, context_len=3)  # without chunk_len


def test_als_view_alternates_user_and_item_blocks() -> None:
    view = build_view("als", _data(), batch_size=3, seed=0)
    batches = _epoch(view)
    assert len(view) == len(batches) == 2 + 3
    sides = [int(b["side"]) for b in batches]
    assert sides == [0, 0, 1, 1, 1] and batches[0]["side"].dim() == 0
    users = torch.cat([b["ids"] for b in batches if int(b["side"]) == 0])
    items = torch.cat([b["ids"] for b in batches if int(b["side"]) == 1])
    assert sorted(users.tolist()) == [1, 2, 3, 4] and sorted(items.tolist()) == list(range(1, 10))


@pytest.mark.parametrize("name", ["triplet", "user", "seq", "seq2seq", "als"])
def test_ddp_shards_are_disjoint_and_equal(name: str) -> None:
    data = _data()
    views = [build_view(name, data, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(views[0]) == len(views[1])
    key = "ids" if name == "als" else "user" if name != "triplet" else None
    shares = []
    for view in views:
        batches = _epoch(view)
        if key is None:  # triplet rows are identified by (user, item)
            share = list(
                zip(
                    torch.cat([b["user"] for b in batches]).tolist(),
                    torch.cat([b["item"] for b in batches]).tolist(),
                )
            )
        else:
            share = [(int(b.get("side", 0)), i) for b in batches for i in b[key].tolist()]
        shares.append(share)
    assert len(shares[0]) == len(shares[1])
    assert not set(shares[0]) & set(shares[1])


def test_unknown_view_and_bad_options() -> None:
    with pytest.raises(
        ConfigError, match="unknown dataset view .graph.*triplet, pointwise, user, seq, seq2seq, als, kg"
    ):
        build_view("graph", _data(), 4, 0)
    with pytest.raises(ConfigError, match="batch_size"):
        build_view("triplet", _data(), 0, 0)
    with pytest.raises(ConfigError, match="rank"):
        build_view("triplet", _data(), 4, 0, rank=2, world_size=2)


@pytest.mark.parametrize("steps", [1, 3, 4, 100])
def test_step_groups_regroup_the_same_batches_in_order(steps: int) -> None:
    """StepGroups yields the view's batches unchanged, in order, ``steps`` per list (the last
    list may be shorter); its length counts lists and set_epoch reaches the view."""
    from recstudio.data.views import StepGroups

    data = _data()
    plain = build_view("triplet", data, batch_size=2, seed=5)  # 4 batches: 3 -> groups of 3 and 1
    grouped = StepGroups(build_view("triplet", data, batch_size=2, seed=5), steps)
    plain.set_epoch(2)
    grouped.set_epoch(2)
    expected = _epoch(plain)
    groups = list(grouped)
    assert len(groups) == len(grouped) == -(-len(expected) // steps)
    assert all(len(g) == steps for g in groups[:-1]) and 1 <= len(groups[-1]) <= steps
    flat = [batch for group in groups for batch in group]
    assert len(flat) == len(expected)
    for got, want in zip(flat, expected, strict=True):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ConfigError, match="steps per group"):
        StepGroups(plain, 0)
