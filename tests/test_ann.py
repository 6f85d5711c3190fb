"""faiss ItemIndex: exact flat search equals torch top-k; IVF and HNSW recall; exclusion; CPU fallback."""

from __future__ import annotations

import logging
import math

import pytest
import torch

pytest.importorskip("faiss")

from recstudio.ann import ItemIndex, faiss_gpu_available  # noqa: E402
from recstudio.ann.faiss_index import HNSW_CPU_MESSAGE  # noqa: E402
from recstudio.errors import ConfigError  # noqa: E402
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


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_hnsw_recall_and_ef_search(metric: str) -> None:
    gen = torch.Generator().manual_seed(2)
    items, query = torch.randn(3000, 16, generator=gen), torch.randn(100, 16, generator=gen)
    index = ItemIndex(items, metric=metric, kind="hnsw", hnsw_m=16, ef_search=16, use_gpu=False)
    assert index.params() == {
        "kind": "hnsw",
        "metric": metric,
        "hnsw_m": 16,
        "ef_construction": 100,
        "ef_search": 16,
        "on_gpu": False,
    }
    ref = exact_topk(query, items, metric, 10, None).indices

    def recall() -> float:
        _, ids = index.search(query, 10)
        return sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), ref.tolist())) / ref.numel()

    low = recall()
    index.ef_search = 256  # no rebuild: a longer candidate list finds (almost) the exact top 10
    assert index.ef_search == 256
    high = recall()
    assert 0.5 < low <= high and high > 0.97


def test_long_exclusions_deepen_only_their_rows() -> None:
    """Rows with very different history lengths each get their exact top k (flat; HNSW with a large
    efSearch), whether their first fetch suffices or they need several deeper rounds."""
    gen = torch.Generator().manual_seed(3)
    items, query = torch.randn(500, 8, generator=gen), torch.randn(40, 8, generator=gen)
    density = torch.linspace(0.0, 0.95, 40)[:, None]  # 0 to ~475 excluded items per row
    exclude = torch.rand(40, 500, generator=gen) < density
    for kind in ("flat", "hnsw"):
        scores, ids = ItemIndex(items, kind=kind, ef_search=512, use_gpu=False).search(query, 10, exclude)
        ref = exact_topk(query, items, "ip", 10, exclude)
        assert torch.equal(ids, ref.indices), kind
        assert torch.allclose(scores, ref.values, atol=1e-4)


def test_ivf_nprobe_setter_and_params() -> None:
    items = torch.randn(2000, 8, generator=torch.Generator().manual_seed(4))
    index = ItemIndex(items, kind="ivf", nlist=16, nprobe=2, use_gpu=False)
    assert index.params() == {"kind": "ivf", "metric": "ip", "nlist": 16, "nprobe": 2, "on_gpu": False}
    index.nprobe = 100  # capped at nlist: every list scanned, the search is exact
    assert index.nprobe == 16
    _, ids = index.search(items[1:6], 5)
    assert torch.equal(ids, exact_topk(items[1:6], items, "ip", 5, None).indices)
    with pytest.raises(ConfigError, match="ef_search applies to HNSW"):
        index.ef_search = 10


def test_hnsw_stays_on_cpu_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recstudio.ann.faiss_index"):
        index = ItemIndex(torch.randn(10, 4), kind="hnsw", use_gpu=True)
    assert not index.on_gpu
    assert [r.getMessage() for r in caplog.records] == [HNSW_CPU_MESSAGE]


def test_bad_index_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="flat, ivf, hnsw"):
        ItemIndex(torch.randn(10, 4), kind="lsh")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_and_load_answer_the_same(kind: str, tmp_path) -> None:
    gen = torch.Generator().manual_seed(5)
    items, query = torch.randn(1000, 8, generator=gen), torch.randn(10, 8, generator=gen)
    exclude = torch.rand(10, 1000, generator=gen) < 0.3
    index = ItemIndex(items, metric="l2", kind=kind, nlist=10, hnsw_m=8, use_gpu=False)
    index.save(str(tmp_path / "items.faiss"))
    loaded = ItemIndex.load(str(tmp_path / "items.faiss"), metric="l2")
    assert loaded.params() == index.params()
    for a, b in zip(index.search(query, 5, exclude), loaded.search(query, 5, exclude)):
        assert torch.equal(a, b)


def _allowed_topk(query, items, metric: str, k: int, exclude: torch.Tensor):
    """Exact top k allowed items, the tail padded with id 0 at -inf where fewer are allowed."""
    scores = build_scorer(SCORER[metric]).matrix(query, items)
    scores[:, 0] = -math.inf
    scores = scores.masked_fill(exclude, -math.inf)
    values, ids = torch.topk(scores, k, dim=1)
    return values, ids.masked_fill(values == -math.inf, 0)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_history_sized_depth_equals_exact_allowed_topk(metric: str) -> None:
    """Rows of every history size (none, short, most of the catalogue, all of it, more than the
    catalogue leaves for k) share one batch, so several depth buckets and second rounds run; a
    flat index must still give each row exactly its top k allowed items, id 0 only as padding."""
    gen = torch.Generator().manual_seed(6)
    n, k = 400, 12
    items, query = torch.randn(n, 8, generator=gen), torch.randn(64, 8, generator=gen)
    density = torch.linspace(0.0, 1.0, 64)[:, None]
    exclude = torch.rand(64, n, generator=gen) < density
    exclude[-3:, 1:] = True  # nothing allowed
    exclude[-6:-3, 1:] = True
    exclude[-6:-3, 1 : 1 + 5] = False  # 5 allowed items < k
    index = ItemIndex(items, metric=metric, kind="flat", use_gpu=False)
    scores, ids = index.search(query, k, exclude)
    ref_scores, ref_ids = _allowed_topk(query, items, metric, k, exclude)
    assert torch.equal(ids, ref_ids)
    assert torch.allclose(scores, ref_scores, atol=1e-4)  # -inf matches -inf
    real = ids > 0
    assert not exclude.gather(1, ids)[real].any()
    assert real[-6:-3].sum(1).tolist() == [5, 5, 5] and not real[-3:].any()
    assert (scores[~real] == -math.inf).all()
    # one query at a time (the serving path) gives each row the same answer
    for row in (0, 20, 40, 60, 62):
        one_scores, one_ids = index.search(query[row : row + 1], k, exclude[row : row + 1])
        assert torch.equal(one_ids[0], ids[row])


def test_ivf_exclusion_equals_its_full_depth_answer() -> None:
    """IVF: the answer is the top k allowed items among the scanned lists, the same as a fetch of
    the whole catalogue filtered afterwards; rows whose lists run dry end in id 0 at -inf."""
    gen = torch.Generator().manual_seed(7)
    items, query = torch.randn(2000, 8, generator=gen), torch.randn(50, 8, generator=gen)
    exclude = torch.rand(50, 2000, generator=gen) < torch.linspace(0.0, 0.99, 50)[:, None]
    index = ItemIndex(items, kind="ivf", nlist=40, nprobe=2, use_gpu=False)
    scores, ids = index.search(query, 10, exclude)
    raw_scores, raw_ids = index.index.search(query.numpy(), 2000)
    raw_ids = torch.from_numpy(raw_ids)
    bad = (raw_ids <= 0) | exclude.gather(1, raw_ids.clamp_min(0))
    for row in range(50):
        keep = raw_ids[row][~bad[row]][:10].tolist()
        assert ids[row].tolist() == keep + [0] * (10 - len(keep))
        assert (scores[row, len(keep) :] == -math.inf).all()
    assert (ids == 0).any()  # some rows ran dry at nprobe=2


def test_search_input_handling() -> None:
    gen = torch.Generator().manual_seed(8)
    items, query = torch.randn(100, 4, generator=gen), torch.randn(3, 4, generator=gen)
    index = ItemIndex(items, metric="cosine", use_gpu=False)
    before = query.clone()
    _, ids = index.search(query, 5, torch.zeros(3, 100, dtype=torch.uint8))  # non-bool mask
    assert torch.equal(query, before)  # cosine normalises a copy, not the caller's tensor
    assert torch.equal(ids, index.search(query, 5)[1])
    with pytest.raises(ValueError, match="exclude must be bool"):
        index.search(query, 5, torch.zeros(3, 99, dtype=torch.bool))
    scores, ids = index.search(query[:0], 5, torch.zeros(0, 100, dtype=torch.bool))
    assert ids.shape == (0, 5) and scores.shape == (0, 5)
    # an uncommon layout: a transposed (non-contiguous) mask reads the same
    mask = torch.rand(100, 3, generator=gen).T < 0.5
    assert torch.equal(index.search(query, 5, mask)[1], index.search(query, 5, mask.contiguous())[1])


def test_exclusion_lookup_torch_path_matches_numpy() -> None:
    """The GPU path reads the mask with torch (gather on its device); check it on CPU tensors."""
    from recstudio.ann.faiss_index import _Exclusion

    gen = torch.Generator().manual_seed(9)
    mask = torch.rand(6, 50, generator=gen) < 0.5
    ids = torch.randint(-1, 50, (4, 7), generator=gen).numpy()
    rows = torch.tensor([5, 0, 3, 3]).numpy()
    as_numpy, as_torch = _Exclusion(mask), _Exclusion(mask)
    as_torch.flat = None  # what a CUDA mask gets
    expected = mask[torch.from_numpy(rows)[:, None], torch.from_numpy(ids).clamp_min(0)].numpy()
    valid = ids >= 0
    assert (as_numpy.lookup(rows, ids)[valid] == expected[valid]).all()
    assert (as_torch.lookup(rows, ids)[valid] == expected[valid]).all()
    assert as_numpy.counts.tolist() == mask.sum(1).tolist()
