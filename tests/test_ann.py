"""faiss ItemIndex: exact flat search equals torch top-k; IVF recall; exclusion; CPU fallback."""

from __future__ import annotations

import logging
import math

import pytest
import torch

pytest.importorskip("faiss")

from recstudio.ann import ItemIndex, faiss_gpu_available  # noqa: E402
from recstudio.model.scorer import build_scorer  # noqa: E402

SCORER = {"ip": "inner_product", "l2": "euclidean", "cosine": "cosine"}


def exact_topk(query: torch.Tensor, items: torch.Tensor, metric: str, k: int, exclude: torch.Tensor | None):
    scores = build_scorer(SCORER[metric]).matrix(query, items)
    scores[:, 0] = -math.inf
    if exclude is not None:
        scores = scores.masked_fill(exclude, -math.inf)
    return torch.topk(scores, k, dim=1)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_flat_index_equals_exact_topk(metric: str) -> None:
    gen = torch.Generator().manual_seed(0)
    items, query = torch.randn(300, 16, generator=gen), torch.randn(20, 16, generator=gen)
    exclude = torch.rand(20, 300, generator=gen) < 0.1
    index = ItemIndex(items, metric=metric, kind="flat", use_gpu=False)
    for mask in (None, exclude):
        scores, ids = index.search(query, 10, exclude=mask)
        ref = exact_topk(query, items, metric, 10, mask)
        assert torch.equal(ids, ref.indices)
        assert torch.allclose(scores, ref.values, atol=1e-4)
        assert (ids != 0).all()
        if mask is not None:
            assert not mask.gather(1, ids).any()


def test_padding_row_never_returned() -> None:
    items = torch.zeros(5, 4)
    items[0] = 100.0  # the padding row would win every inner product
    items[1:] = torch.randn(4, 4)
    scores, ids = ItemIndex(items, use_gpu=False).search(torch.ones(3, 4), 4)
    assert (ids != 0).all() and torch.isfinite(scores).all()
    # asking for more than there are real items pads the tail with id 0 at -inf
    scores, ids = ItemIndex(items, use_gpu=False).search(torch.ones(1, 4), 6)
    assert ids[0, 4:].tolist() == [0, 0] and scores[0, 4:].tolist() == [-math.inf, -math.inf]


def test_ivf_recall_is_reasonable() -> None:
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(20, 32, generator=gen) * 3
    items = centers[torch.randint(0, 20, (4000,), generator=gen)] + torch.randn(4000, 32, generator=gen)
    query = centers[torch.randint(0, 20, (50,), generator=gen)] + torch.randn(50, 32, generator=gen)
    index = ItemIndex(items, metric="ip", kind="ivf", nprobe=8, use_gpu=False)
    assert index.nlist >= 8 and index.nprobe == 8
    _, ids = index.search(query, 20)
    ref = exact_topk(query, items, "ip", 20, None).indices
    recall = sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), ref.tolist())) / ref.numel()
    assert recall > 0.8


def test_cpu_fallback_logs_one_clear_line(caplog: pytest.LogCaptureFixture) -> None:
    if faiss_gpu_available():
        pytest.skip("faiss-gpu is installed here")
    with caplog.at_level(logging.INFO, logger="recstudio.ann.faiss_index"):
        index = ItemIndex(torch.randn(10, 4), use_gpu=True)
    assert not index.on_gpu
    assert [r.getMessage() for r in caplog.records] == ["faiss-gpu not available; using CPU index"]
