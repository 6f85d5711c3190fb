"""Evaluation splits, blocks, and the evaluator against a per-user Python reference."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from recstudio.data.dataset import Interactions, PreparedData
from recstudio.errors import ConfigError
from recstudio.eval.ranking import EvalSplit, RankingEvaluator, build_eval_split

METRICS = ["recall", "precision", "map", "ndcg", "mrr", "hit", "auc"]


def inter(rows: list[tuple[int, int, float]]) -> Interactions:
    """(user, item, time) rows, already sorted by (user, time)."""
    user = torch.tensor([r[0] for r in rows], dtype=torch.long)
    item = torch.tensor([r[1] for r in rows], dtype=torch.long)
    time = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    return Interactions(user, item, torch.ones(len(rows)), time)


def tiny() -> PreparedData:
    train = inter([(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 4, 1), (2, 5, 2), (3, 6, 1), (4, 1, 1), (4, 7, 2)])
    valid = inter([(1, 4, 4), (2, 6, 3), (2, 1, 4), (4, 2, 3)])
    test = inter([(1, 5, 5), (1, 2, 6), (3, 7, 2), (4, 3, 4)])
    return PreparedData("tiny", 5, 8, train, valid, test, list(range(5)), list(range(8)))


def synthetic(num_users: int = 60, num_items: int = 50, seed: int = 0) -> PreparedData:
    """Random implicit data; per user 80/10/10 chronological split, some users without targets."""
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[tuple[int, int, float]]] = {"train": [], "valid": [], "test": []}
    for u in range(1, num_users):
        n = int(torch.randint(3, 30, (1,), generator=gen))
        items = torch.randperm(num_items - 1, generator=gen)[:n] + 1
        for t, i in enumerate(items.tolist()):
            frac = t / n
            name = "train" if frac < 0.8 else "valid" if frac < 0.9 else "test"
            parts[name].append((u, i, float(t)))
    return PreparedData(
        "synthetic",
        num_users,
        num_items,
        inter(parts["train"]),
        inter(parts["valid"]),
        inter(parts["test"]),
        list(range(num_users)),
        list(range(num_items)),
    )


def test_valid_split_history_targets_and_seq() -> None:
    split = build_eval_split(tiny(), "valid", max_seq_len=4)
    assert split.users.tolist() == [1, 2, 4]  # user 3 has no validation target
    assert len(split) == 3
    assert split.seq.tolist() == [[0, 1, 2, 3], [0, 0, 4, 5], [0, 0, 1, 7]]
    assert split.seq_len.tolist() == [3, 2, 2]
    (batch,) = list(split.blocks(10))
    assert batch["user"].tolist() == [1, 2, 4]
    hist = batch["history_mask"]
    assert hist[:, 0].all()  # padding column is always masked
    assert [sorted(torch.nonzero(r).flatten().tolist()) for r in hist] == [[0, 1, 2, 3], [0, 4, 5], [0, 1, 7]]
    tgt = batch["target_mask"]
    assert [sorted(torch.nonzero(r).flatten().tolist()) for r in tgt] == [[4], [1, 6], [2]]
    assert batch["seq"].tolist() == split.seq.tolist()


def test_test_split_uses_train_plus_valid() -> None:
    split = build_eval_split(tiny(), "test", max_seq_len=3)
    assert split.users.tolist() == [1, 3, 4]
    assert split.seq.tolist() == [[2, 3, 4], [0, 0, 6], [1, 7, 2]]
    assert split.seq_len.tolist() == [3, 1, 3]
    (batch,) = list(split.blocks(2048))
    hist = [sorted(torch.nonzero(r).flatten().tolist()) for r in batch["history_mask"]]
    assert hist == [[0, 1, 2, 3, 4], [0, 6], [0, 1, 2, 7]]
    tgt = [sorted(torch.nonzero(r).flatten().tolist()) for r in batch["target_mask"]]
    assert tgt == [[2, 5], [7], [3]]


def test_no_seq_without_max_seq_len_and_bad_args() -> None:
    split = build_eval_split(tiny(), "valid")
    assert split.seq is None
    assert "seq" not in next(iter(split.blocks(2)))
    with pytest.raises(ConfigError):
        build_eval_split(tiny(), "train")
    with pytest.raises(ConfigError):
        build_eval_split(tiny(), "valid", True)  # a bool is not a sequence length
    with pytest.raises(ConfigError):
        RankingEvaluator(["ndcgg"], [10])


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_blocks_shard_users_exactly_once(world_size: int) -> None:
    split = build_eval_split(synthetic(), "valid", max_seq_len=5)
    seen: list[int] = []
    lengths = set()
    for rank in range(world_size):
        blocks = split.blocks(4, rank=rank, world_size=world_size)
        batches = list(blocks)
        assert len(batches) == len(blocks)
        lengths.add(len(blocks))
        for b in batches:
            assert b["history_mask"].shape == b["target_mask"].shape == (len(b["user"]), split.num_items)
            assert len(b["user"]) <= 4
            seen += b["user"].tolist()
    assert sorted(seen) == split.users.tolist()
    assert len(lengths) == 1  # every rank runs the same number of steps


def test_more_ranks_than_users_gives_empty_blocks() -> None:
    split = build_eval_split(tiny(), "valid")  # 3 users
    sizes = []
    for rank in range(5):
        batches = list(split.blocks(2, rank=rank, world_size=5))
        assert len(batches) == 1
        sizes.append(len(batches[0]["user"]))
        assert batches[0]["target_mask"].shape == (sizes[-1], split.num_items)
    assert sorted(sizes) == [0, 0, 1, 1, 1]


def reference(
    split: EvalSplit, scores: torch.Tensor, cutoffs: list[int], mask_history: bool
) -> dict[str, float]:
    """Per-user Python implementation of docs/metrics.md (continuous random scores: no ties)."""
    sums: dict[str, float] = {}
    n_users = n_auc = 0
    for row in range(len(split)):
        h = set(split.history_items[split.history_indptr[row] : split.history_indptr[row + 1]].tolist())
        t = set(split.target_items[split.target_indptr[row] : split.target_indptr[row + 1]].tolist())
        s = scores[row].tolist()
        cands = [i for i in range(1, len(s)) if not (mask_history and i in h)]
        ranked = sorted(cands, key=lambda i: -s[i])
        n_users += 1
        for k in cutoffs:
            top = ranked[:k]
            hit = [1 if i in t else 0 for i in top]
            nh = sum(hit)
            first = next((r + 1 for r, x in enumerate(hit) if x), None)
            dcg = sum(x / math.log2(r + 2) for r, x in enumerate(hit))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(t))))
            ap = sum((sum(hit[: r + 1]) / (r + 1)) * x for r, x in enumerate(hit)) / min(k, len(t))
            vals = {
                "recall": nh / len(t),
                "precision": nh / k,
                "hit": float(nh > 0),
                "mrr": 1 / first if first else 0.0,
                "ndcg": dcg / idcg,
                "map": ap,
            }
            for m, v in vals.items():
                sums[f"{m}@{k}"] = sums.get(f"{m}@{k}", 0.0) + v
        pos = [s[i] for i in cands if i in t]
        neg = [s[i] for i in cands if i not in t]
        if pos and neg:
            n_auc += 1
            pairs = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
            sums["auc"] = sums.get("auc", 0.0) + pairs / (len(pos) * len(neg))
    out = {k: v / n_users for k, v in sums.items() if k != "auc"}
    out["auc"] = sums.get("auc", 0.0) / n_auc
    return out


@pytest.mark.parametrize("mask_history", [True, False])
@pytest.mark.parametrize("which", ["valid", "test"])
def test_evaluator_matches_reference(mask_history: bool, which: str) -> None:
    split = build_eval_split(synthetic(), which)
    scores = torch.randn(len(split), split.num_items, generator=torch.Generator().manual_seed(5))
    cutoffs = [1, 5, 10]
    ev = RankingEvaluator(METRICS, cutoffs, mask_history=mask_history)
    start = 0
    for batch in split.blocks(7):
        n = len(batch["user"])
        ev.update(scores[start : start + n], batch)
        start += n
    got = ev.compute()
    exp = reference(split, scores, cutoffs, mask_history)
    assert set(got) == set(exp)
    for key, value in exp.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # reset really forgets
    ev.reset()
    assert math.isnan(ev.compute()["ndcg@5"])


def test_evaluator_ignores_masked_items_in_top_k_and_tiny_catalogue() -> None:
    # 4 items (3 real), cutoff 5 > catalogue: masked target at -inf must never count as a hit
    scores = torch.tensor([[0.0, 0.3, 0.2, 0.1]])
    batch = {
        "user": torch.tensor([1]),
        "history_mask": torch.tensor([[True, False, True, False]]),
        "target_mask": torch.tensor([[False, False, True, True]]),
    }
    ev = RankingEvaluator(["recall", "precision", "ndcg", "hit"], [5])
    ev.update(scores, batch)
    got = ev.compute()
    # ranked: item 1 (miss), item 3 (hit at rank 2); item 2 is a masked target
    assert got["recall@5"] == pytest.approx(1 / 2)
    assert got["precision@5"] == pytest.approx(1 / 5)
    assert got["ndcg@5"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_evaluator_handles_empty_blocks_and_users_without_targets() -> None:
    ev = RankingEvaluator(METRICS, [2])
    empty = {
        "user": torch.zeros(0, dtype=torch.long),
        "history_mask": torch.zeros(0, 5, dtype=torch.bool),
        "target_mask": torch.zeros(0, 5, dtype=torch.bool),
    }
    ev.update(torch.zeros(0, 5), empty)
    batch = {
        "user": torch.tensor([1, 2]),
        "history_mask": torch.tensor([[True, False, False, False, False]] * 2),
        "target_mask": torch.tensor([[False, True, False, False, False], [False] * 5]),
    }
    ev.update(torch.tensor([[0.0, 4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0, 4.0]]), batch)
    got = ev.compute()
    assert got["hit@2"] == 1.0 and got["auc"] == 1.0  # user 2 (no target) is left out


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # forked children must not reuse the parent's OpenMP pool
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        split = build_eval_split(synthetic(), "valid")
        scores = torch.randn(len(split), split.num_items, generator=torch.Generator().manual_seed(9))
        ev = RankingEvaluator(METRICS, [3, 10])
        blocks = split.blocks(5, rank=rank, world_size=world_size)
        for start, stop in blocks.bounds:
            batch = blocks._batch(start, stop)
            ev.update(scores[start:stop], batch)
        torch.save(ev.compute(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not hasattr(os, "fork") or not torch.distributed.is_available(), reason="needs fork + gloo"
)
def test_ddp_all_reduce_gives_global_means() -> None:
    split = build_eval_split(synthetic(), "valid")
    scores = torch.randn(len(split), split.num_items, generator=torch.Generator().manual_seed(9))
    single = RankingEvaluator(METRICS, [3, 10])
    single.update(scores, next(iter(split.blocks(len(split)))))
    expected = single.compute()
    with tempfile.TemporaryDirectory() as tmp:
        # fork: the children need not import torch again (spawn takes ~10 s on a busy 2-core box)
        mp.start_processes(
            _ddp_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True, start_method="fork"
        )
        for rank in range(2):
            got = torch.load(os.path.join(tmp, f"rank{rank}.pt"))
            for key, value in expected.items():
                assert got[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ties", [False, True])
def test_cuda_evaluation_matches_cpu(ties: bool) -> None:
    split = build_eval_split(synthetic(num_users=300, num_items=120), "test", max_seq_len=6)
    gen = torch.Generator().manual_seed(11)
    scores = torch.randn(len(split), split.num_items, generator=gen)
    if ties:  # many exact ties: exercises the device sort / two-sided search path of AUC
        scores = scores.round()  # (top-k order among tied items is arbitrary: compare AUC only)
    results = []
    for device in ("cpu", "cuda"):
        ev = RankingEvaluator(METRICS, [1, 5, 20])
        for start, stop in split.blocks(64).bounds:
            batch = split.blocks(64, device=device)._batch(start, stop)
            assert batch["target_mask"].device.type == device and batch["seq"].device.type == device
            ev.update(scores[start:stop].to(device), batch)
        results.append(ev.compute())
    cpu, cuda = results
    for key, value in cpu.items():
        if key == "auc" or not ties:
            assert cuda[key] == pytest.approx(value, abs=1e-9), key


def test_eval_blocks_are_built_once_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    from recstudio.eval.ranking import EvalBlocks
    from recstudio.testing import planted_data

    split = build_eval_split(planted_data(), "valid")
    blocks = split.blocks(7)
    built = []
    original = EvalBlocks._batch
    monkeypatch.setattr(EvalBlocks, "_batch", lambda self, a, b: built.append(a) or original(self, a, b))
    first = list(blocks)
    second = list(blocks)
    assert len(built) == len(blocks) > 1  # the second pass built nothing
    assert all(a is b for a, b in zip(first, second))

    monkeypatch.setattr(EvalBlocks, "cache_bytes", 0)  # too big to keep: rebuilt every pass
    built.clear()
    uncached = split.blocks(7)
    list(uncached)
    list(uncached)
    assert len(built) == 2 * len(uncached)
