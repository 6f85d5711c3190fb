"""Preprocessing: filters, k-core fixpoint, id remapping, every split method, features."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from recstudio.config import DataConfig
from recstudio.data.dataset import Interactions
from recstudio.data.preprocess import encode_features, holdout_counts, k_core, preprocess
from recstudio.data.readers import RawInteractions
from recstudio.data.spec import parse_spec
from recstudio.errors import ConfigError, DataError


def _raw(user, item, rating=None, time=None, split=None) -> RawInteractions:
    return RawInteractions(
        user=pa.array(user),
        item=pa.array(item),
        rating=None if rating is None else np.asarray(rating, dtype=np.float64),
        time=None if time is None else np.asarray(time, dtype=np.float64),
        split=None if split is None else np.asarray(split, dtype=np.int8),
    )


def _synthetic(
    n_users: int = 60, n_items: int = 80, seed: int = 0, with_time: bool = True
) -> RawInteractions:
    """Distinct (user, item) pairs, 1 to 30 rows per user, times with deliberate ties."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):  # test data set-up, not library code
        k = int(rng.integers(1, 31))
        users += [u + 100] * k
        items += list(rng.choice(n_items, size=k, replace=False) + 1000)
    order = rng.permutation(len(users))
    users, items = np.array(users)[order], np.array(items)[order]
    rating = rng.integers(1, 6, len(users))
    time = rng.integers(0, 50, len(users)) if with_time else None
    return _raw(users, items, rating, time)


def _all(out) -> Interactions:
    return Interactions.concat([out.train, out.valid, out.test])


def _pairs(inter: Interactions) -> set[tuple[int, int]]:
    return set(zip(inter.user.tolist(), inter.item.tolist()))


def _assert_sorted(inter: Interactions) -> None:
    key = inter.user.double() * 1e6 + inter.time
    assert torch.all(key[1:] >= key[:-1]), "rows must be sorted by (user, time)"


# --------------------------------------------------------------------------- filters


def test_min_rating_binarize_and_remap() -> None:
    raw = _raw(["b", "a", "b", "c"], [20, 10, 30, 10], rating=[5, 4, 1, 3], time=[1, 2, 3, 4])
    out = preprocess(raw, DataConfig(min_rating=3, split_ratio=[1, 0, 0]), "t")
    assert out.user_vocab.to_pylist() == ["a", "b", "c"]  # sorted raw ids -> 1..n
    assert out.item_vocab.to_pylist() == [10, 20]
    assert out.counts["min_rating"] == 3
    assert out.train.user.tolist() == [1, 2, 3] and out.train.item.tolist() == [1, 2, 1]
    assert out.train.rating.tolist() == [1.0, 1.0, 1.0]
    kept = preprocess(raw, DataConfig(binarize=False, split_ratio=[1, 0, 0]), "t")
    assert sorted(kept.train.rating.tolist()) == [1.0, 3.0, 4.0, 5.0]


def test_min_rating_needs_a_rating_column() -> None:
    with pytest.raises(ConfigError, match="data.min_rating"):
        preprocess(_raw([1], [1]), DataConfig(min_rating=3), "t")


def test_filter_that_empties_the_data_is_named() -> None:
    raw = _raw([1, 2], [1, 1], rating=[1, 2])
    with pytest.raises(DataError, match=r"data.min_rating=5.*removed every interaction of dataset 't'"):
        preprocess(raw, DataConfig(min_rating=5), "t")
    with pytest.raises(DataError, match=r"k-core.*min_user_inter=3"):
        preprocess(_raw([1, 2], [1, 1]), DataConfig(min_user_inter=3), "t")


def test_drop_duplicates_keeps_latest_then_last_in_file() -> None:
    # pair (1, 7): times 5, 9, 9 -> the last row with time 9 (rating 3) wins
    raw = _raw([1, 1, 1, 1], [7, 7, 7, 8], rating=[1, 2, 3, 4], time=[5, 9, 9, 1])
    out = preprocess(raw, DataConfig(binarize=False, split_ratio=[1, 0, 0]), "t")
    assert out.train.item.tolist() == [2, 1] and out.train.rating.tolist() == [4.0, 3.0]
    no_time = _raw([1, 1, 1], [7, 8, 7], rating=[1, 2, 3])
    out = preprocess(no_time, DataConfig(binarize=False, split_ratio=[1, 0, 0]), "t")
    assert out.train.rating.tolist() == [2.0, 3.0]  # last in file; file order is the time
    assert out.train.time.tolist() == [1.0, 2.0]
    kept = preprocess(no_time, DataConfig(drop_duplicates=False, split_ratio=[1, 0, 0]), "t")
    assert len(kept.train) == 3


def _reference_core(pairs: list[tuple[int, int]], mu: int, mi: int) -> set[tuple[int, int]]:
    rows = set(pairs)
    while True:  # the obvious reference, fine for a test
        uc: dict[int, int] = {}
        ic: dict[int, int] = {}
        for u, i in rows:
            uc[u] = uc.get(u, 0) + 1
            ic[i] = ic.get(i, 0) + 1
        keep = {(u, i) for u, i in rows if uc[u] >= mu and ic[i] >= mi}
        if keep == rows:
            return rows
        rows = keep


def test_k_core_reaches_the_fixpoint() -> None:
    # removing item 3 (1 row) drops user 2 below 2 rows, which drops item 2 below 2 rows ...
    user = np.array([0, 0, 1, 1, 2, 2, 3])
    item = np.array([0, 1, 0, 1, 2, 3, 2])
    mask = k_core(user, item, 2, 2)
    assert mask.tolist() == [True, True, True, True, False, False, False]
    rng = np.random.default_rng(1)
    u, i = rng.integers(0, 40, 400), rng.integers(0, 60, 400)
    pairs = sorted(set(zip(u.tolist(), i.tolist())))
    pu, pi = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    got = {p for p, m in zip(pairs, k_core(pu, pi, 5, 4)) if m}
    assert got == _reference_core(pairs, 5, 4)


def test_k_core_in_preprocess_counts() -> None:
    out = preprocess(_synthetic(), DataConfig(min_user_inter=5, min_item_inter=3, split_ratio=[1, 0, 0]), "t")
    users = torch.bincount(out.train.user)[1:]
    items = torch.bincount(out.train.item)[1:]
    assert users.min() >= 5 and items.min() >= 3
    assert out.counts["k_core"] == len(out.train) < out.counts["raw"]


# --------------------------------------------------------------------------- splits


def test_holdout_rounding_rule() -> None:
    n = np.array([0, 1, 2, 3, 5, 10, 20])
    valid, test = holdout_counts(n, 0.1, 0.1)
    assert test.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert valid.tolist() == [0, 0, 0, 0, 0, 1, 2]
    train = n - valid - test
    assert np.all(train[n > 0] >= 1)
    valid, test = holdout_counts(np.array([1, 2, 4]), 0.0, 1.0)  # everything held out, train keeps 1
    assert test.tolist() == [0, 1, 3]


@pytest.mark.parametrize("order", ["random", "time"])
def test_user_entry_split(order: str) -> None:
    raw = _synthetic()
    cfg = DataConfig(split="user_entry", split_order=order, split_ratio=[0.7, 0.1, 0.2], split_seed=3)
    out = preprocess(raw, cfg, "t")
    for part in (out.train, out.valid, out.test):
        _assert_sorted(part)
    all_rows = _all(out)
    assert len(all_rows) == len(raw) and len(_pairs(all_rows)) == len(raw)  # disjoint, complete
    n = torch.bincount(all_rows.user, minlength=out.counts["users"] + 1)
    n_valid, n_test = holdout_counts(n.numpy(), 0.1, 0.2)
    assert torch.equal(torch.bincount(out.test.user, minlength=len(n)), torch.from_numpy(n_test))
    assert torch.equal(torch.bincount(out.valid.user, minlength=len(n)), torch.from_numpy(n_valid))
    assert torch.all(torch.bincount(out.train.user, minlength=len(n))[1:] >= 1)
    again = preprocess(raw, cfg, "t")
    assert torch.equal(again.test.item, out.test.item)
    if order == "time":  # chronological: train <= valid <= test within each user
        for u in range(1, len(n)):
            tr, va, te = (p.time[p.user == u] for p in (out.train, out.valid, out.test))
            later = torch.cat([va, te])
            if len(later):
                assert tr.max() <= later.min()
            if len(va) and len(te):
                assert va.max() <= te.min()
    else:
        other = preprocess(raw, DataConfig(split_ratio=[0.7, 0.1, 0.2], split_seed=4), "t")
        assert not torch.equal(other.test.item, out.test.item)


def test_entry_split_global_ratio_and_time() -> None:
    raw = _synthetic()
    out = preprocess(raw, DataConfig(split="entry", split_order="time", split_ratio=[0.8, 0.1, 0.1]), "t")
    n = len(raw)
    assert len(out.test) == round(n * 0.1) and len(out.valid) == round(n * 0.2) - round(n * 0.1)
    assert out.train.time.max() <= out.valid.time.min() and out.valid.time.max() <= out.test.time.min()
    rnd = preprocess(raw, DataConfig(split="entry", split_ratio=[0.8, 0.1, 0.1]), "t")
    assert len(rnd.test) == len(out.test) and _pairs(_all(rnd)) == _pairs(_all(out))


def test_user_split_disjoint_groups_with_fold_in_history() -> None:
    raw = _synthetic(n_users=100)
    out = preprocess(raw, DataConfig(split="user", split_ratio=[0.6, 0.2, 0.2], split_order="time"), "t")
    valid_users, test_users = set(out.valid.user.tolist()), set(out.test.user.tolist())
    assert valid_users.isdisjoint(test_users)
    assert 15 <= len(valid_users) <= 20 and 15 <= len(test_users) <= 20  # 20 users each, minus 1-row users
    train_users = set(out.train.user.tolist())
    assert valid_users | test_users <= train_users  # held-out users keep fold-in history in train
    for u in list(test_users)[:10]:
        hist, target = out.train.time[out.train.user == u], out.test.time[out.test.user == u]
        n = len(hist) + len(target)
        assert len(target) == holdout_counts(np.array([n]), 0.0, 0.4)[1][0]
        assert hist.max() <= target.min()  # time order: the first share is the history


def test_loo_split_and_stable_ties() -> None:
    # user 1: rows at times 1,2,2,3 -> test = time 3; valid = the *second* time-2 row (file order)
    # user 2: 2 rows -> train + test; user 3: 1 row -> train only
    raw = _raw([1, 1, 1, 1, 2, 2, 3], [10, 11, 12, 13, 10, 11, 10], time=[2, 1, 2, 3, 5, 6, 1])
    out = preprocess(raw, DataConfig(split="loo"), "t")
    assert out.test.user.tolist() == [1, 2] and out.test.item.tolist() == [4, 2]
    assert out.valid.user.tolist() == [1] and out.valid.item.tolist() == [3]
    assert out.train.user.tolist() == [1, 1, 2, 3] and out.train.item.tolist() == [2, 1, 1, 1]
    two = preprocess(raw, DataConfig(split="loo", split_ratio=[0.9, 0.1]), "t")
    assert len(two.valid) == 0 and len(two.test) == 2


def test_two_element_ratio_means_no_validation() -> None:
    out = preprocess(_synthetic(), DataConfig(split_ratio=[0.8, 0.2]), "t")
    assert len(out.valid) == 0 and len(out.test) > 0


def test_ready_made_splits_are_kept_and_remapped_together() -> None:
    raw = _raw([5, 5, 9, 7], [3, 4, 3, 4], split=[0, 0, 1, 2])
    out = preprocess(raw, DataConfig(split="loo"), "t")
    assert out.user_vocab.to_pylist() == [5, 7, 9]
    assert (
        out.train.user.tolist() == [1, 1] and out.valid.user.tolist() == [3] and out.test.user.tolist() == [2]
    )


def test_bad_split_ratio() -> None:
    with pytest.raises(ConfigError, match="data.split_ratio"):
        preprocess(_synthetic(), DataConfig(split_ratio=[1.0]), "t")


# --------------------------------------------------------------------------- features


def test_encode_features() -> None:
    spec = parse_spec(
        {
            "name": "toy",
            "interactions": {"file": "a.csv", "roles": {"user": "u", "item": "i"}},
            "user_features": {
                "file": "u.csv",
                "id": "uid",
                "fields": {
                    "age": {"type": "bucket", "bins": [18, 25]},
                    "gender": "categorical",
                    "zip": {"type": "categorical", "column": "zip", "prefix": 1},
                    "year": {"type": "bucket", "column": "date", "extract": r"(\d{4})", "bins": [1990]},
                    "flags": {"type": "multi_hot", "columns": ["f1", "f2"]},
                    "tags": {"type": "multi_hot", "column": "tags", "sep": "|"},
                },
            },
        }
    )
    table = pa.table(
        {
            "uid": [30, 10, 20],
            "age": [40.0, 17.0, None],
            "gender": ["M", "F", ""],
            "zip": ["55455", "T8H", "94110"],
            "date": ["01-Jan-1995", "1980", "unknown"],
            "f1": [1.0, 0.0, 1.0],
            "f2": [0.0, 0.0, 1.0],
            "tags": ["b|a", "", "c"],
        }
    )
    vocab = pa.array([10, 20, 30, 40])  # internal ids 1..4; id 40 has no feature row
    ft, info = encode_features(table, spec.user_features, vocab, "user_features")
    assert ft.categorical["age"].tolist() == [0, 1, 0, 3, 0] and ft.cardinality["age"] == 4
    assert ft.categorical["gender"].tolist() == [0, 1, 0, 2, 0] and ft.cardinality["gender"] == 3
    assert ft.categorical["zip"].tolist() == [0, 3, 2, 1, 0]
    assert ft.categorical["year"].tolist() == [0, 1, 0, 2, 0]
    assert ft.multi_hot["flags"].tolist() == [[0, 0], [0, 0], [1, 1], [1, 0], [0, 0]]
    assert info["fields"]["tags"]["labels"] == ["a", "b", "c"]
    assert ft.multi_hot["tags"].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert info["rows_matched"] == 3
