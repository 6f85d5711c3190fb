"""The C kernels of ``recstudio.native``: built on first use, same values and gradients as
the torch code, bad ids rejected, thread count irrelevant to gradients, clean fallback."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from recstudio import native
from recstudio.model import ops
from recstudio.model.ops import sampled_inner_product_loss

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc)")


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """``native.kernels()`` recomputed from scratch, building into an empty cache dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("RECSTUDIO_NATIVE", raising=False)
    native.kernels.cache_clear()
    yield tmp_path
    native.kernels.cache_clear()


def _generic_loss(query, items, candidates, kind, reg, query_index=None):
    """The formula the kernels implement, written with the loss modules and autograd: the
    generic path models run on CUDA or without a compiler."""
    from recstudio.model.loss import BCELoss, BPRLoss

    q = query if query_index is None else query[query_index]
    vectors = items[candidates]
    scores = (q.unsqueeze(1) * vectors).sum(-1)
    loss = (BPRLoss() if kind == "bpr" else BCELoss())(scores[:, 0], scores[:, 1:])
    if reg:
        loss = loss + reg / candidates.shape[0] * (q.pow(2).sum() + vectors.pow(2).sum())
    return loss


def _loss_and_grads(query, items, candidates, kind, reg, query_index=None, use_native=True):
    """Loss and (query, items) gradients of ``2.5 * loss``, by the C kernels or the generic code
    (padding rows 0 get no gradient in either)."""
    query = query.detach().clone().requires_grad_(True)
    items = items.detach().clone().requires_grad_(True)
    if use_native:
        loss = sampled_inner_product_loss(
            query,
            items,
            candidates,
            kind,
            reg,
            padding_idx=0,
            query_index=query_index,
            query_padding_idx=None if query_index is None else 0,
        )
    else:
        loss = _generic_loss(query, items, candidates, kind, reg, query_index)
    (2.5 * loss).backward()
    if not use_native:
        items.grad[0] = 0
        if query_index is not None:
            query.grad[0] = 0
    return loss.detach(), query.grad, items.grad


@needs_compiler
@pytest.mark.parametrize("kind", ["bpr", "bce"])
@pytest.mark.parametrize("num_negatives", [1, 3])
@pytest.mark.parametrize("reg_weight", [0.0, 0.2])
@pytest.mark.parametrize("with_query_index", [False, True])
@pytest.mark.parametrize("batch", [40, 700])  # 700 rows: above the kernels' threading threshold
def test_native_kernels_equal_the_torch_code(
    kind: str, num_negatives: int, reg_weight: float, with_query_index: bool, batch: int
) -> None:
    assert native.kernels() is not None
    torch.manual_seed(5)
    num_items, num_queries, d = 30, 25, 16  # few rows: most are used several times in a batch
    items = torch.randn(num_items, d, dtype=torch.float64)
    candidates = torch.randint(0, num_items, (batch, 1 + num_negatives))
    candidates[0, 0] = 0  # the padding row is used and must get no gradient
    if with_query_index:
        query = torch.randn(num_queries, d, dtype=torch.float64)
        query_index = torch.randint(0, num_queries, (batch,))
        query_index[1] = 0
    else:
        query, query_index = torch.randn(batch, d, dtype=torch.float64), None
    fast = _loss_and_grads(query, items, candidates, kind, reg_weight, query_index, True)
    ref = _loss_and_grads(query, items, candidates, kind, reg_weight, query_index, False)
    assert fast[0].item() == pytest.approx(ref[0].item(), rel=1e-12)
    for a, b in zip(fast[1:], ref[1:]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    assert fast[2][0].abs().sum() == 0 and fast[2][1:].abs().sum() > 0
    if with_query_index:
        assert fast[1][0].abs().sum() == 0


@needs_compiler
def test_native_float32_matches_torch_float32() -> None:
    torch.manual_seed(6)
    query, items = torch.randn(944, 64), torch.randn(1683, 64)
    users, candidates = torch.randint(1, 944, (2048,)), torch.randint(1, 1683, (2048, 2))
    fast = _loss_and_grads(query, items, candidates, "bpr", 1e-4, users, True)
    ref = _loss_and_grads(query, items, candidates, "bpr", 1e-4, users, False)
    assert fast[0].item() == pytest.approx(ref[0].item(), rel=1e-5)
    for a, b in zip(fast[1:], ref[1:]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@needs_compiler
def test_native_gradients_do_not_depend_on_the_thread_count() -> None:
    """Each gradient row is summed by one thread in batch order: bitwise the same for 1 and 2."""
    torch.manual_seed(7)
    query, items = torch.randn(300, 32), torch.randn(200, 32)
    users, candidates = torch.randint(0, 300, (4096,)), torch.randint(0, 200, (4096, 3))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_loss_and_grads(query, items, candidates, "bce", 0.1, users, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][2], results[1][2])
    assert results[0][0].item() == pytest.approx(results[1][0].item(), rel=1e-6)


@needs_compiler
def test_native_rejects_out_of_range_ids() -> None:
    assert native.kernels() is not None
    items, query = torch.randn(6, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    with pytest.raises(IndexError, match="item id 6 out of range"):
        sampled_inner_product_loss(query[:2], items, torch.tensor([[1, 2], [3, 6]]), "bpr")
    with pytest.raises(IndexError, match="item id -1 out of range"):
        sampled_inner_product_loss(query[:2], items, torch.tensor([[1, -1], [3, 2]]), "bpr")
    with pytest.raises(IndexError, match="query id 5 out of range"):
        sampled_inner_product_loss(
            query, items, torch.tensor([[1, 2], [3, 4]]), "bpr", query_index=torch.tensor([0, 5])
        )
    with pytest.raises(ValueError, match="query_index"):
        sampled_inner_product_loss(
            query, items, torch.tensor([[1, 2]]), "bpr", query_index=torch.tensor([0, 1])
        )


@needs_compiler
def test_kernels_build_into_the_cache_once(fresh_native) -> None:
    lib = native.kernels()
    assert lib is not None
    built = list((fresh_native / "recstudio" / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary file left behind
    mtime = built[0].stat().st_mtime_ns
    native.kernels.cache_clear()
    assert native.kernels() is not None
    assert built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_without_a_compiler_training_falls_back_to_torch(fresh_native, monkeypatch, caplog) -> None:
    """No compiler: one warning naming the compiler's error, and models take the generic path."""
    from recstudio.model.general.bpr import BPR
    from recstudio.testing import planted_data

    monkeypatch.setenv("CC", "/bin/false")
    with caplog.at_level(logging.WARNING, logger="recstudio.native"):
        assert native.kernels() is None
    assert "native CPU kernels unavailable" in caplog.text and "/bin/false" in caplog.text
    data = planted_data(num_users=20, num_items=16, seed=3)
    model = BPR(BPR.Config(embed_dim=4), data)
    assert model.fused_loss_kind(model.user_emb.weight) is None
    batch = {"user": torch.tensor([1, 2, 3]), "item": torch.tensor([4, 5, 6])}
    model.training_loss(batch).backward()  # the generic autograd path ran
    assert model.item_emb.weight.grad[4:7].abs().sum() > 0
    with pytest.raises(ValueError, match="native kernels"):
        sampled_inner_product_loss(
            torch.randn(2, 3), torch.randn(6, 3), torch.tensor([[1, 2], [3, 4]]), "bpr"
        )


def test_recstudio_native_0_disables_the_kernels(fresh_native, monkeypatch) -> None:
    monkeypatch.setenv("RECSTUDIO_NATIVE", "0")
    assert native.kernels() is None
    assert not (fresh_native / "recstudio" / "native").exists()  # nothing compiled


def test_native_is_only_used_for_cpu_float_tensors_of_one_dtype(monkeypatch) -> None:
    monkeypatch.setattr(native, "kernels", lambda: object())  # as if the library had loaded
    f32, f64, ids = torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64), torch.tensor([[1, 2]])
    assert ops.native_available(f32, f32, ids) and ops.native_available(f64, f64, ids, torch.tensor([0]))
    assert not ops.native_available(f32.half(), f32.half(), ids)
    assert not ops.native_available(f32, f64, ids)
    assert not ops.native_available(f32, f32, ids.int())
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert not ops.native_available(f32, f32, ids)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_count_below_equals_brute_force(dtype: torch.dtype) -> None:
    torch.manual_seed(8)
    x = torch.randint(-3, 4, (40, 300)).to(dtype)  # many ties
    x[torch.rand(40, 300) < 0.1] = -torch.inf
    rows = torch.randint(0, 40, (500,))
    values = x[rows, torch.randint(0, 300, (500,))]
    below, below_or_equal, excluded = native.count_below(x, rows, values)
    assert torch.equal(below, (x[rows] < values[:, None]).sum(1))
    assert torch.equal(below_or_equal, (x[rows] <= values[:, None]).sum(1))
    assert torch.equal(excluded, torch.isneginf(x).sum(1))
    with pytest.raises(IndexError, match="row ids"):
        native.count_below(x, torch.tensor([40]), values[:1])


@needs_compiler
def test_auc_from_the_counting_kernel_equals_the_sorting_path() -> None:
    """Full-ranking AUC: the C counting pass and the sort + binary-search path agree exactly,
    with ties, excluded (-inf) entries, targets among them, and users without targets."""
    from recstudio.eval.metrics import auc_from_prepared

    torch.manual_seed(9)
    b, num = 300, 500
    x = torch.randn(b, num).round(decimals=1)  # ties
    x[torch.rand(b, num) < 0.1] = -torch.inf
    per_user = torch.randint(0, 8, (b,))  # some users have no targets
    rows = torch.repeat_interleave(torch.arange(b), per_user)
    cols = torch.randint(0, num, (rows.numel(),))
    assert native.kernels() is not None
    fast = auc_from_prepared(x, rows, cols)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "kernels", lambda: None)
        assert native.count_below(x, rows, x[rows, cols]) is None
        slow = auc_from_prepared(x, rows, cols)
    assert torch.equal(fast[1], slow[1]) and bool(fast[1].any()) and not bool(fast[1].all())
    assert torch.allclose(fast[0], slow[0], rtol=0, atol=1e-15)
