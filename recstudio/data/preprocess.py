"""Filter, remap and split interactions; encode side features. Vectorized numpy throughout.

Order of operations (each step sees the previous step's output):

1. ``min_rating``: drop rows whose rating is below it.
2. ``binarize``: every kept rating becomes 1.0 (also when there is no rating column). With a
   label rule (``data.label``) rows are labelled 0/1 instead (``label_rows``, on the raw values,
   before any filter): every row is kept and ratings keep their raw values.
3. ``drop_duplicates``: one row per (user, item) -- the latest by time, ties and missing times
   resolved by file order (the last row in the file wins). With ready-made splits this is done
   within each split.
4. k-core: drop users with fewer than ``min_user_inter`` rows and items with fewer than
   ``min_item_inter`` rows, repeated until nothing changes (a fixpoint).
5. Remap raw ids to 1..n in ascending raw-id order (numeric for int ids, lexicographic for
   strings); 0 is padding.
6. Split (unless the spec gives ready-made splits), see ``split_labels``.

With ``data.by_session`` (the default of sequential models) and a session column in the spec,
each session is its own sequence from step 0 on: the "user" of every step above is the session
(duplicates, k-core and the split are per session; the user vocabulary holds session ids, or
"user:session" when session ids repeat across users).

"Time" is the timestamp column when there is one, else the file order; every sort that uses it
is stable, so equal timestamps keep file order. Each split comes out sorted by (user, time, file
order), as ``PreparedData`` promises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recstudio.config import DataConfig
from recstudio.data.dataset import FeatureTable, Interactions
from recstudio.data.readers import RawInteractions
from recstudio.data.spec import FeatureSpec, FieldSpec, LabelRule, parse_label_rule
from recstudio.errors import ConfigError, DataError

log = logging.getLogger("recstudio.data")

_EPS = 1e-9


@dataclass
class Processed:
    """What preprocessing produces: the three splits, the id vocabularies and per-stage counts."""

    train: Interactions
    valid: Interactions
    test: Interactions
    user_vocab: pa.Array
    """Raw id of internal user id i + 1 (padding id 0 is not included)."""
    item_vocab: pa.Array
    counts: dict[str, int]


def check_config(cfg: DataConfig) -> None:
    """Range checks that ``config.resolve`` also makes, for callers that build a DataConfig directly."""
    ratio = list(cfg.split_ratio)
    if len(ratio) not in (2, 3) or any(r < 0 for r in ratio) or sum(ratio) <= 0:
        raise ConfigError(f"config key 'data.split_ratio' must be 2 or 3 non-negative numbers, got {ratio}")
    if cfg.min_user_inter < 0 or cfg.min_item_inter < 0:
        raise ConfigError("config keys 'data.min_user_inter' and 'data.min_item_inter' must be >= 0")
    if cfg.split not in ("user_entry", "entry", "user", "loo"):
        raise ConfigError(
            f"config key 'data.split' must be one of user_entry, entry, user, loo; got {cfg.split!r}"
        )
    if not 0.0 <= cfg.valid_from_train < 1.0:
        raise ConfigError(f"config key 'data.valid_from_train' must be in [0, 1), got {cfg.valid_from_train}")
    if cfg.split_order not in ("random", "time"):
        raise ConfigError(f"config key 'data.split_order' must be random or time; got {cfg.split_order!r}")
    label_rule(cfg)


def label_rule(cfg: DataConfig) -> LabelRule | None:
    """The parsed ``data.label`` rule (None when unset); a malformed rule is a ConfigError."""
    if getattr(cfg, "label", None) is None:
        return None
    try:
        return parse_label_rule(cfg.label)
    except ValueError as exc:
        raise ConfigError(f"config key 'data.label' {exc}") from None


# --------------------------------------------------------------------------- labels and context


def extra_columns(
    rule: LabelRule | None, roles: dict[str, str], fields: tuple[FieldSpec, ...], rule_text: str | None = None
) -> dict[str, tuple[str, str]]:
    """Columns to read besides the roles: {column: (kind, who needs it)} for the label rule
    (unless it names the rating/timestamp role) and the interaction context fields."""
    extra: dict[str, tuple[str, str]] = {}
    if rule is not None and not (rule.column in ("rating", "timestamp") and rule.column in roles):
        extra[rule.column] = ("float", f"the label rule data.label={rule_text or str(rule)!r}")
    for f in fields:
        kind = "float" if f.type == "bucket" and f.extract is None else "str"
        for col in f.source_columns():
            extra.setdefault(col, (kind, f"interactions.fields.{f.name}"))
    return extra


def label_rows(raw: RawInteractions, rule: LabelRule, roles: dict[str, str]) -> np.ndarray:
    """0/1 float32 per raw row: the rule on the rating/timestamp role or on the named column."""
    if rule.column == "rating" and "rating" in roles:
        values = raw.rating
    elif rule.column == "timestamp" and "timestamp" in roles:
        values = raw.time
    else:
        values = raw.columns[rule.column].to_numpy(zero_copy_only=False).astype(np.float64)
    assert values is not None
    return rule.apply(values).astype(np.float32)


def encode_context(raw: RawInteractions, fields: tuple[FieldSpec, ...]) -> tuple[dict[str, np.ndarray], dict]:
    """Codes per raw row of each interaction context field (categorical: 1..k in sorted value
    order; bucket: ``1 + searchsorted(bins, x, 'right')``; 0 = unknown), with vocabularies from
    the whole file, like the feature files. Returns (codes, {name: {type, cardinality, labels}})."""
    codes: dict[str, np.ndarray] = {}
    info: dict = {}
    for f in fields:
        values = raw.columns[f.column or f.name]
        c, card, labels = _bucket(values, f) if f.type == "bucket" else _categorical(values, f)
        codes[f.name] = c
        info[f.name] = {"type": f.type, "cardinality": card, "labels": labels}
    return codes, info


def factorize_sorted(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(codes int64 [N], uniques) with uniques in ascending order, so code order = raw-id order."""
    encoded = pc.dictionary_encode(values)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return rank[indices], encoded.dictionary.take(pa.array(order))


def session_keys(user: pa.Array, session: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Sequence keys of session data, factorized as ``factorize_sorted``: the session id when
    every session belongs to one user (the usual case), else "user:session" strings."""
    codes, uniques = factorize_sorted(session)
    user_codes, _ = factorize_sorted(user)
    lo = np.full(len(uniques), np.iinfo(np.int64).max)
    hi = np.full(len(uniques), -1)
    np.minimum.at(lo, codes, user_codes)
    np.maximum.at(hi, codes, user_codes)
    if (lo == hi).all():
        return codes, uniques
    joined = pc.binary_join_element_wise(pc.cast(user, pa.string()), pc.cast(session, pa.string()), ":")
    return factorize_sorted(joined)


# --------------------------------------------------------------------------- filtering


def preprocess(raw: RawInteractions, cfg: DataConfig, name: str) -> Processed:
    """Run steps 1-6 of the module docstring on raw interactions."""
    check_config(cfg)
    if cfg.by_session and raw.session is not None:
        user, user_uniques = session_keys(raw.user, raw.session)
    else:
        user, user_uniques = factorize_sorted(raw.user)
    item, item_uniques = factorize_sorted(raw.item)
    cols: dict[str, np.ndarray] = {"user": user, "item": item, "order": np.arange(len(raw), dtype=np.int64)}
    for key, value in (
        ("rating", raw.rating),
        ("time", raw.time),
        ("split", raw.split),
        ("label", raw.label),
    ):
        if value is not None:
            cols[key] = value
    for field_name, codes in raw.context.items():
        cols[f"ctx.{field_name}"] = codes
    counts = {"raw": len(raw)}

    def keep(mask: np.ndarray, stage: str, culprit: str) -> None:
        if not mask.all():
            for key in cols:
                cols[key] = cols[key][mask]
        counts[stage] = len(cols["user"])
        if counts[stage] == 0:
            raise DataError(f"{culprit} removed every interaction of dataset '{name}'")

    if cfg.min_rating is not None:
        if "rating" not in cols:
            raise ConfigError(
                f"config key 'data.min_rating' is set ({cfg.min_rating}) "
                f"but dataset '{name}' has no rating column"
            )
        lo, hi = float(cols["rating"].min()), float(cols["rating"].max())
        keep(
            cols["rating"] >= cfg.min_rating,
            "min_rating",
            f"data.min_rating={cfg.min_rating} (ratings {lo}..{hi})",
        )
    if cfg.drop_duplicates:
        keep(_latest_per_pair(cols, len(item_uniques)), "drop_duplicates", "data.drop_duplicates")
    if cfg.min_user_inter > 1 or cfg.min_item_inter > 1:
        mask = k_core(cols["user"], cols["item"], cfg.min_user_inter, cfg.min_item_inter)
        culprit = (
            f"the k-core filter (data.min_user_inter={cfg.min_user_inter}, "
            f"data.min_item_inter={cfg.min_item_inter})"
        )
        keep(mask, "k_core", culprit)

    user_ids, user_vocab = _compact(cols["user"], user_uniques)
    item_ids, item_vocab = _compact(cols["item"], item_uniques)
    order = cols["order"]
    time = cols["time"].astype(np.float64) if "time" in cols else order.astype(np.float64)
    labelled = "label" in cols
    binarize = (cfg.binarize and not labelled) or "rating" not in cols
    rating = np.ones(len(order), np.float32) if binarize else cols["rating"].astype(np.float32)

    perm = stable_user_time_order(user_ids, time if "time" in cols else None)
    user_ids, item_ids, rating, time = user_ids[perm], item_ids[perm], rating[perm], time[perm]
    label = cols["label"][perm].astype(np.float32) if labelled else None
    context = {name: cols[f"ctx.{name}"][perm] for name in raw.context}
    if "split" in cols:
        split = cols["split"][perm]
        if cfg.valid_from_train > 0:
            split = valid_from_train(split, user_ids, len(user_vocab) + 1, cfg, name)
    else:
        if cfg.valid_from_train > 0:
            raise ConfigError(
                f"config key 'data.valid_from_train' applies to ready-made splits (splits: in the "
                f"spec), but dataset '{name}' is split by data.split={cfg.split}; use data.split_ratio"
            )
        split = split_labels(user_ids, time, order[perm], len(user_vocab) + 1, cfg)
    parts = [_select(split == code, user_ids, item_ids, rating, time, label, context) for code in range(3)]
    counts.update(users=len(user_vocab), items=len(item_vocab), train=len(parts[0]), valid=len(parts[1]))
    counts["test"] = len(parts[2])
    if len(parts[0]) == 0:
        raise DataError(f"the split left no training interactions in dataset '{name}'")
    return Processed(parts[0], parts[1], parts[2], user_vocab, item_vocab, counts)


def stable_user_time_order(user: np.ndarray, time: np.ndarray | None) -> np.ndarray:
    """Permutation sorting rows by (user, time, file order): two stable sorts, no lexsort."""
    perm = np.argsort(time, kind="stable") if time is not None else np.arange(len(user))
    return perm[np.argsort(user[perm], kind="stable")]


def _latest_per_pair(cols: dict[str, np.ndarray], num_items: int) -> np.ndarray:
    """Mask keeping the latest row of each (user, item) pair (per split for ready-made splits).

    Rows are stably sorted by time (if any), then stably by pair key, so the last row of each key
    run is the latest one, ties going to the later row in the file.
    """
    key = cols["user"] * np.int64(num_items) + cols["item"]
    if "split" in cols:
        key = key * 3 + cols["split"]
    perm = np.argsort(cols["time"], kind="stable") if "time" in cols else np.arange(len(key))
    perm = perm[np.argsort(key[perm], kind="stable")]
    sorted_key = key[perm]
    last = np.ones(len(key), dtype=bool)
    last[:-1] = sorted_key[1:] != sorted_key[:-1]
    mask = np.zeros(len(key), dtype=bool)
    mask[perm[last]] = True
    return mask


def k_core(user: np.ndarray, item: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Mask of rows in the (min_user, min_item)-core, iterated to a fixpoint (one bincount a round)."""
    alive = np.flatnonzero(np.ones(len(user), dtype=bool))
    nu, ni = int(user.max()) + 1, int(item.max()) + 1
    while len(alive):
        u, i = user[alive], item[alive]
        ok = (np.bincount(u, minlength=nu)[u] >= min_user) & (np.bincount(i, minlength=ni)[i] >= min_item)
        if ok.all():
            break
        alive = alive[ok]
    mask = np.zeros(len(user), dtype=bool)
    mask[alive] = True
    return mask


def _compact(codes: np.ndarray, uniques: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Renumber the codes still present to 1..n, keeping raw-id order; return (ids, vocab)."""
    present = np.bincount(codes, minlength=len(uniques)) > 0
    used = np.flatnonzero(present)
    remap = np.zeros(len(uniques), dtype=np.int64)
    remap[used] = np.arange(1, len(used) + 1)
    return remap[codes], uniques.take(pa.array(used))


def _select(mask: np.ndarray, user, item, rating, time, label=None, context=None) -> Interactions:  # noqa: ANN001
    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values[mask]))

    return Interactions(
        user=tensor(user),
        item=tensor(item),
        rating=tensor(rating),
        time=tensor(time),
        label=tensor(label) if label is not None else None,
        context={name: tensor(codes) for name, codes in (context or {}).items()},
    )


# --------------------------------------------------------------------------- splitting


def split_labels(
    user: np.ndarray, time: np.ndarray, order: np.ndarray, num_users: int, cfg: DataConfig
) -> np.ndarray:
    """0/1/2 (train/valid/test) per row; rows must be sorted by (user, time, file order).

    Methods (``data.split``):

    - ``user_entry``: each user's rows are ordered (``split_order``: seeded shuffle, or by time)
      and cut by ``split_ratio``; the earliest rows go to train.
    - ``entry``: the same cut over all rows at once (a global random or temporal split).
    - ``user``: users are cut into disjoint train/valid/test groups by ``split_ratio`` (shuffled
      with the seed, or by their first interaction time for ``split_order: time``). A valid/test
      user's first ``split_ratio[0]`` share of rows (in ``split_order``) goes to train as fold-in
      history; the rest are that user's valid or test targets (a held-out user with a single
      row has only history). Train-group users are all train.
    - ``loo``: leave-one-out, always by time: the last row -> test, the second last -> valid, the
      rest -> train. Users with fewer than 3 rows fill train first, then test (1 row: train only;
      2 rows: train + test).

    Rounding (``holdout_counts``): for n rows and normalized ratios (a, b, c), valid and test
    together get round(n * (b + c)) rows (halves round up), capped at n - 1 so that every user
    with at least one row keeps at least one train row. Of those, test gets round(n * c), but at
    least one when anything is held out (and c > 0); valid gets the rest; train gets the
    remaining rows. With [0.8, 0.1, 0.1]: 1-2 rows -> all train; 3-5 rows -> 1 test; 10 rows ->
    8/1/1; 20 rows -> 16/2/2.

    A 2-element ``split_ratio`` [train, test] means no validation split: valid is empty (for
    ``loo`` too).
    """
    rng = np.random.default_rng(cfg.split_seed)
    b, c = _ratios(cfg.split_ratio)
    n_rows = len(user)
    counts = np.bincount(user, minlength=num_users)
    starts = np.cumsum(counts) - counts
    chrono = np.arange(n_rows) - starts[user]  # position within the user's rows, by time

    def within_user(order_kind: str) -> np.ndarray:
        if order_kind == "time":
            return chrono
        # a random order inside each user block: sort by (user, random 32-bit key)
        keys = (user.astype(np.int64) << 32) | rng.integers(0, 1 << 32, n_rows, dtype=np.int64)
        pos = np.empty(n_rows, dtype=np.int64)
        pos[np.argsort(keys)] = chrono
        return pos

    if cfg.split == "user_entry":
        n_valid, n_test = holdout_counts(counts, b, c)
        return _cut(within_user(cfg.split_order), counts[user], n_valid[user], n_test[user])
    if cfg.split == "loo":
        n_test = (counts >= 2).astype(np.int64)
        n_valid = ((counts >= 3) & (len(cfg.split_ratio) == 3)).astype(np.int64)
        return _cut(chrono, counts[user], n_valid[user], n_test[user])
    if cfg.split == "entry":
        if cfg.split_order == "time":
            by_file = np.argsort(order)
            pos = np.empty(n_rows, dtype=np.int64)
            pos[by_file[np.argsort(time[by_file], kind="stable")]] = np.arange(n_rows)  # ties: file order
        else:
            pos = rng.permutation(n_rows)
        n_valid, n_test = holdout_counts(np.array([n_rows]), b, c)
        return _cut(pos, n_rows, n_valid[0], n_test[0])
    # split == "user": disjoint user groups, then fold-in history for the held-out users
    users = np.flatnonzero(counts)
    if cfg.split_order == "time":
        group_order = users[np.lexsort((users, time[starts[users]]))]
    else:
        group_order = rng.permutation(users)
    group_pos = np.zeros(num_users, dtype=np.int64)
    group_pos[group_order] = np.arange(len(users))
    g_valid, g_test = holdout_counts(np.array([len(users)]), b, c)
    group = _cut(group_pos, len(users), g_valid[0], g_test[0])  # per user id (0 for absent ids)
    _, n_target = holdout_counts(counts, 0.0, b + c)
    history = _cut(within_user(cfg.split_order), counts[user], 0, n_target[user]) == 0
    row_group = group[user]
    return np.where(history, 0, row_group).astype(np.int8)


def valid_from_train(
    split: np.ndarray, user: np.ndarray, num_users: int, cfg: DataConfig, name: str
) -> np.ndarray:
    """Ready-made splits: move ``data.valid_from_train`` of each user's train rows to valid.

    Rows are sorted by (user, time, file order). Per user, the rows are ordered by
    ``split_order`` (time: the latest become valid; random: a seeded shuffle) and counted with
    the rule of ``holdout_counts`` (a user keeps at least one train row; halves round up).
    """
    if (split == 1).any():
        raise ConfigError(
            f"config key 'data.valid_from_train' is set, but dataset '{name}' has a ready-made valid "
            "file; drop one of them"
        )
    train = np.flatnonzero(split == 0)
    user_t = user[train]
    counts = np.bincount(user_t, minlength=num_users)
    starts = np.cumsum(counts) - counts
    chrono = np.arange(len(train)) - starts[user_t]
    if cfg.split_order == "time":
        pos = chrono
    else:
        rng = np.random.default_rng(cfg.split_seed)
        keys = (user_t.astype(np.int64) << 32) | rng.integers(0, 1 << 32, len(train), dtype=np.int64)
        pos = np.empty(len(train), dtype=np.int64)
        pos[np.argsort(keys)] = chrono
    n_valid, _ = holdout_counts(counts, cfg.valid_from_train, 0.0)
    out = split.copy()
    out[train] = _cut(pos, counts[user_t], n_valid[user_t], 0)
    return out


def _ratios(ratio: list[float]) -> tuple[float, float]:
    r = np.asarray(ratio, dtype=np.float64)
    r = r / r.sum()
    return (float(r[1]), float(r[2])) if len(r) == 3 else (0.0, float(r[1]))


def holdout_counts(n: np.ndarray, b: float, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(valid, test) counts for groups of n rows; see ``split_labels`` for the rounding rule."""
    n = np.asarray(n, dtype=np.int64)
    n_hold = np.minimum(np.floor(n * (b + c) + 0.5 + _EPS).astype(np.int64), np.maximum(n - 1, 0))
    n_test = np.floor(n * c + 0.5 + _EPS).astype(np.int64)
    if c > 0:  # test is filled first: it gets a row whenever anything is held out
        n_test = np.maximum(n_test, (n_hold > 0).astype(np.int64))
    n_test = np.minimum(n_test, n_hold)
    return n_hold - n_test, n_test


def _cut(pos, n, n_valid, n_test) -> np.ndarray:  # noqa: ANN001 - arrays or scalars, broadcast
    """Label positions 0..n-1: the first n - valid - test are train, then valid, then test."""
    return (pos >= n - n_valid - n_test).astype(np.int8) + (pos >= n - n_test).astype(np.int8)


# --------------------------------------------------------------------------- features


def encode_features(
    table: pa.Table, fspec: FeatureSpec, vocab: pa.Array, what: str
) -> tuple[FeatureTable, dict]:
    """Encode a feature file into a FeatureTable aligned with internal ids (row 0 = padding).

    Categorical codes are 1..k in sorted value order (0 = unknown or empty); buckets are
    ``1 + searchsorted(bins, value, 'right')`` (0 = missing); multi-hot comes from 0/1 flag
    columns or from one separated list column (sorted token vocabulary). Vocabularies come from
    the whole file, so codes do not depend on which users/items the filters kept. Ids without a
    row in the file get code 0 / an all-zero vector; for duplicate ids the first row wins.
    Returns the table and a JSON-able description (cardinalities, widths, labels).
    """
    n_rows = len(vocab) + 1
    ids = table[fspec.id].combine_chunks()
    vocab_key, ids = _align_id_types(vocab, ids)
    found = pc.index_in(vocab_key, value_set=ids).to_numpy(zero_copy_only=False)
    found = np.nan_to_num(found.astype(np.float64), nan=-1).astype(np.int64)
    present = found >= 0
    rows = np.flatnonzero(present) + 1  # internal ids that have a feature row
    src = found[present]  # the file row of each internal id that has one
    out = FeatureTable()
    info: dict = {"rows_matched": int(present.sum()), "fields": {}}
    for f in fspec.fields:
        if f.type == "multi_hot":
            matrix, labels = _multi_hot(table, f)
            full = np.zeros((n_rows, matrix.shape[1]), dtype=np.float32)
            full[rows] = matrix[src]
            out.multi_hot[f.name] = torch.from_numpy(full)
            info["fields"][f.name] = {"type": "multi_hot", "width": int(matrix.shape[1]), "labels": labels}
            continue
        values = table[f.column or f.name].combine_chunks()
        codes, card, labels = _bucket(values, f) if f.type == "bucket" else _categorical(values, f)
        full = np.zeros(n_rows, dtype=np.int64)
        full[rows] = codes[src]
        out.categorical[f.name] = torch.from_numpy(full)
        out.cardinality[f.name] = card
        info["fields"][f.name] = {"type": f.type, "cardinality": card, "labels": labels}
    if not present.any():
        log.warning("%s: no id in the feature file matches an id of the interactions", what)
    return out, info


def _align_id_types(vocab: pa.Array, ids: pa.Array) -> tuple[pa.Array, pa.Array]:
    if ids.type == vocab.type:
        return vocab, ids
    try:
        return vocab, pc.cast(ids, vocab.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pc.cast(vocab, pa.string()), pc.cast(ids, pa.string())


def _strings(values: pa.Array, f) -> pd.Series:  # noqa: ANN001
    text = pc.fill_null(pc.cast(values, pa.string()), "")  # nulls (parquet) become "" = unknown
    s = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object).str.strip()
    if f.extract is not None:
        s = s.str.extract(f.extract, expand=False)
    return s


def _categorical(values: pa.Array, f) -> tuple[np.ndarray, int, list]:  # noqa: ANN001
    s = _strings(values, f)
    if f.prefix is not None:
        s = s.str.slice(0, f.prefix)
    missing = s.isna().to_numpy() | (s.fillna("") == "").to_numpy()
    codes = np.zeros(len(s), dtype=np.int64)
    if (~missing).any():
        sub, uniques = factorize_sorted(pa.array(s[~missing].to_numpy(dtype=object), type=pa.string()))
        codes[~missing] = sub + 1
        labels = uniques.to_pylist()
    else:
        labels = []
    return codes, len(labels) + 1, labels


def _bucket(values: pa.Array, f) -> tuple[np.ndarray, int, list]:  # noqa: ANN001
    if f.extract is not None or pa.types.is_string(values.type):
        num = pd.to_numeric(_strings(values, f), errors="coerce").to_numpy(dtype=np.float64)
    else:
        num = values.to_numpy(zero_copy_only=False).astype(np.float64)
    bins = np.asarray(f.bins, dtype=np.float64)
    codes = np.where(np.isnan(num), 0, np.searchsorted(bins, np.nan_to_num(num), side="right") + 1)
    edges = (
        [f"<{bins[0]:g}"] + [f"[{lo:g},{hi:g})" for lo, hi in zip(bins[:-1], bins[1:])] + [f">={bins[-1]:g}"]
    )
    return codes.astype(np.int64), len(bins) + 2, edges


def _multi_hot(table: pa.Table, f) -> tuple[np.ndarray, list]:  # noqa: ANN001
    if f.columns is not None:
        cols = [np.nan_to_num(table[c].to_numpy().astype(np.float32)) for c in f.columns]
        return (np.stack(cols, axis=1) != 0).astype(np.float32), list(f.columns)
    values = table[f.column or f.name].combine_chunks()
    lists = pc.split_pattern(values, f.sep)
    tokens = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.not_equal(pc.utf8_length(tokens), 0)
    tokens, parents = tokens.filter(keep), parents[keep.to_numpy(zero_copy_only=False)]
    matrix = np.zeros((len(values), 0), dtype=np.float32)
    labels: list = []
    if len(tokens):
        codes, uniques = factorize_sorted(tokens)
        matrix = np.zeros((len(values), len(uniques)), dtype=np.float32)
        matrix[parents, codes] = 1.0
        labels = uniques.to_pylist()
    return matrix, labels


# --------------------------------------------------------------------------- relation parts


def _lookup(values: pa.Array, vocab: pa.Array) -> np.ndarray:
    """Position of each value in ``vocab`` (-1 when absent); int and string ids are compared as
    found, or as strings when their types differ."""
    vocab, values = _align_id_types(vocab, values)
    found = pc.index_in(values, value_set=vocab).to_numpy(zero_copy_only=False)
    return np.nan_to_num(found.astype(np.float64), nan=-1).astype(np.int64)


def _first_of_each(*keys: np.ndarray) -> np.ndarray:
    """Mask keeping the first row (in row order) of each distinct key tuple."""
    if len(keys[0]) == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort(keys[::-1])  # stable: equal keys keep row order
    sorted_keys = [k[order] for k in keys]
    new = np.ones(len(order), dtype=bool)
    same = np.ones(len(order) - 1, dtype=bool)
    for k in sorted_keys:
        same &= k[1:] == k[:-1]
    new[1:] = ~same
    mask = np.zeros(len(order), dtype=bool)
    mask[order[new]] = True
    return mask


def _line(row: int, path, header: bool, parquet: bool) -> str:  # noqa: ANN001
    return f"'{path}' row {row + 1}" if parquet else f"'{path}' line {row + 1 + int(header)}"


def build_kg(
    triples: pa.Table,
    triple_roles: dict[str, str],
    links: pa.Table,
    link_roles: dict[str, str],
    item_vocab: pa.Array,
    where: dict[str, tuple],
    name: str,
):  # noqa: ANN201 - (KnowledgeGraph, counts)
    """Remap a knowledge graph to the prepared data's item ids.

    Entity ids are 1..E over the sorted raw ids of every head and tail; relation ids 1..R over the
    sorted raw relation ids (0 is padding for both). Exact duplicate triples are dropped (the
    first is kept). Links: item raw ids go through the item vocabulary; links to items that are
    not in the prepared data are counted and dropped; a link to an entity that appears in no
    triple is an error; an item linked twice keeps its first link. ``where`` maps 'triples' and
    'links' to (path, header, parquet) for error messages.
    """
    from recstudio.data.dataset import KnowledgeGraph

    head = triples[triple_roles["head"]].combine_chunks()
    tail = triples[triple_roles["tail"]].combine_chunks()
    if head.type != tail.type:
        head, tail = pc.cast(head, pa.string()), pc.cast(tail, pa.string())
    n_raw = len(head)
    codes, entities = factorize_sorted(pa.concat_arrays([head, tail]))
    codes = codes.astype(np.int64, copy=False)
    h, t = codes[:n_raw] + 1, codes[n_raw:] + 1
    r_codes, relations = factorize_sorted(triples[triple_roles["relation"]].combine_chunks())
    r = r_codes.astype(np.int64, copy=False) + 1
    keep = _first_of_each(h, r, t)
    h, r, t = h[keep], r[keep], t[keep]

    link_item = links[link_roles["item"]].combine_chunks()
    link_entity = links[link_roles["entity"]].combine_chunks()
    entity_pos = _lookup(link_entity, entities)
    unknown = np.flatnonzero(entity_pos < 0)
    if len(unknown):
        row = int(unknown[0])
        path, header, parquet = where["links"]
        raise DataError(
            f"{_line(row, path, header, parquet)}: unknown entity {link_entity[row].as_py()!r} "
            f"(column '{link_roles['entity']}'): it appears in no triple of {where['triples'][0]} "
            f"({len(unknown)} link{'s' if len(unknown) > 1 else ''} name entities without triples)"
        )
    item_pos = _lookup(link_item, item_vocab)
    known = item_pos >= 0
    first = np.zeros(len(item_pos), dtype=bool)
    first[np.flatnonzero(known)[_first_of_each(item_pos[known])]] = True
    item_entity = np.zeros(len(item_vocab) + 1, dtype=np.int64)
    item_entity[item_pos[first] + 1] = entity_pos[first] + 1
    counts = {
        "triples_raw": n_raw,
        "duplicate_triples": int(n_raw - keep.sum()),
        "triples": int(keep.sum()),
        "entities": len(entities),
        "relations": len(relations),
        "links_raw": len(link_item),
        "links_unknown_items": int((~known).sum()),
        "links_repeated_items": int(known.sum() - first.sum()),
        "linked_items": int(first.sum()),
    }
    log.info(
        "%s: knowledge graph: %d triples (%d duplicates dropped), %d entities, %d relations; "
        "%d of %d links kept (%d to items not in the prepared data dropped, %d repeated items dropped)",
        name,
        counts["triples"],
        counts["duplicate_triples"],
        counts["entities"],
        counts["relations"],
        counts["linked_items"],
        counts["links_raw"],
        counts["links_unknown_items"],
        counts["links_repeated_items"],
    )
    kg = KnowledgeGraph(
        head=torch.from_numpy(np.ascontiguousarray(h)),
        relation=torch.from_numpy(np.ascontiguousarray(r)),
        tail=torch.from_numpy(np.ascontiguousarray(t)),
        num_entities=len(entities) + 1,
        num_relations=len(relations) + 1,
        item_entity=torch.from_numpy(item_entity),
        entity_vocab=[None, *entities.to_pylist()],
        relation_vocab=[None, *relations.to_pylist()],
    )
    return kg, counts


def build_social(table: pa.Table, roles: dict[str, str], user_vocab: pa.Array, directed: bool, name: str):  # noqa: ANN201 - (SocialGraph, counts)
    """Remap social links to the prepared data's user ids.

    Self-loops and links naming users that are not in the prepared interactions (filtered out or
    never seen) are dropped and counted (one INFO line). Repeated links keep their first row (for
    an undirected graph, (a, b) and (b, a) are the same link); an undirected graph then stores
    both directions. Edges come out sorted by (source, target).
    """
    from recstudio.data.dataset import SocialGraph

    source_raw = table[roles["source"]].combine_chunks()
    target_raw = table[roles["target"]].combine_chunks()
    if source_raw.type != target_raw.type:
        source_raw, target_raw = pc.cast(source_raw, pa.string()), pc.cast(target_raw, pa.string())
    n_raw = len(source_raw)
    if "weight" in roles:
        weight = table[roles["weight"]].to_numpy().astype(np.float32)
    else:
        weight = np.ones(n_raw, dtype=np.float32)
    self_loop = pc.equal(source_raw, target_raw).to_numpy(zero_copy_only=False)
    src, tgt = _lookup(source_raw, user_vocab) + 1, _lookup(target_raw, user_vocab) + 1
    unknown = ~self_loop & ((src == 0) | (tgt == 0))
    keep = ~self_loop & ~unknown
    src, tgt, weight = src[keep], tgt[keep], weight[keep]
    a, b = (src, tgt) if directed else (np.minimum(src, tgt), np.maximum(src, tgt))
    first = _first_of_each(a, b)
    a, b, weight = a[first], b[first], weight[first]
    if not directed:
        a, b, weight = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([weight, weight])
    order = np.lexsort((b, a))
    counts = {
        "rows": n_raw,
        "self_loops": int(self_loop.sum()),
        "unknown_users": int(unknown.sum()),
        "duplicates": int(keep.sum() - first.sum()),
        "links": int(first.sum()),
        "edges": len(order),
    }
    log.info(
        "%s: social graph (%s): %d links kept of %d rows; dropped %d naming users not in the "
        "prepared interactions, %d self-loops, %d repeated links%s",
        name,
        "directed" if directed else "undirected",
        counts["links"],
        n_raw,
        counts["unknown_users"],
        counts["self_loops"],
        counts["duplicates"],
        "" if directed else " (a link listed in both directions counts once)",
    )
    graph = SocialGraph(
        source=torch.from_numpy(np.ascontiguousarray(a[order])),
        target=torch.from_numpy(np.ascontiguousarray(b[order])),
        weight=torch.from_numpy(np.ascontiguousarray(weight[order])),
        directed=directed,
    )
    return graph, counts
