"""Approximate (or exact) top-k item retrieval with faiss, for serving and fast candidate search.

``ItemIndex`` indexes the item vectors of an item-tower model (row i = item id i; row 0 is
padding and is never returned) and answers ``search(query, k, exclude)`` with tensors on the
query's device. Scores follow the scorers' convention, higher is better: inner product ("ip"),
cosine similarity ("cosine") or negative squared distance ("l2"). faiss is imported on first use,
so ``import recstudio`` does not pay for it.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import torch

from recstudio.errors import ConfigError

logger = logging.getLogger(__name__)

GPU_FALLBACK_MESSAGE = "faiss-gpu not available; using CPU index"
HNSW_CPU_MESSAGE = "faiss has no GPU HNSW index; keeping the HNSW index on CPU"
INDEX_KINDS = ("flat", "ivf", "hnsw")
GPU_MAX_K = 2048
"""faiss-gpu answers at most this many results per query; longer fetches use a CPU copy."""


def _faiss() -> Any:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines list CPU probes
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise ConfigError("ANN retrieval needs faiss: pip install faiss-cpu (or faiss-gpu-cu12)") from exc
    return faiss


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """float32 C-contiguous numpy for faiss; no copy for a CPU float32 contiguous tensor."""
    x = x.detach()
    if x.device.type != "cpu" or x.dtype != torch.float32:
        x = x.to("cpu", torch.float32)
    return np.ascontiguousarray(x.numpy())


class ItemIndex:
    """A faiss index over item vectors [num_items, d].

    ``kind="flat"`` is exact; ``kind="ivf"`` clusters the items into ``nlist`` lists (default
    about sqrt(num_items), at least 39 training points per list) and scans ``nprobe`` of them per
    query; ``kind="hnsw"`` is a graph index (``hnsw_m`` links per node, ``ef_construction`` and
    ``ef_search`` candidate-list sizes when building and searching: larger is slower and more
    exact). ``use_gpu``: "auto" uses faiss-gpu when it is installed and the vectors are on CUDA;
    True asks for it; False never uses it. When a GPU index was wanted but faiss-gpu is missing,
    one line ``faiss-gpu not available; using CPU index`` is logged and a CPU index is built;
    faiss has no GPU HNSW, so an HNSW index stays on CPU with one line saying so.
    """

    def __init__(
        self,
        item_vectors: torch.Tensor,
        metric: Literal["ip", "l2", "cosine"] = "ip",
        kind: Literal["flat", "ivf", "hnsw"] = "flat",
        nlist: int | None = None,
        nprobe: int = 8,
        use_gpu: bool | Literal["auto"] = "auto",
        hnsw_m: int = 32,
        ef_construction: int = 100,
        ef_search: int = 64,
    ) -> None:
        if metric not in ("ip", "l2", "cosine"):
            raise ConfigError(f"ANN metric must be 'ip', 'l2' or 'cosine', got '{metric}'")
        if kind not in INDEX_KINDS:
            raise ConfigError(f"ANN index kind must be one of {', '.join(INDEX_KINDS)}, got '{kind}'")
        if item_vectors.dim() != 2 or item_vectors.shape[0] < 2:
            raise ConfigError("ItemIndex needs item vectors [num_items, d] with at least one real item")
        sizes = {
            "nprobe": nprobe,
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
        }
        for name, value in {**sizes, "nlist": nlist or 1}.items():
            if value < 1:
                raise ConfigError(f"ANN option {name} must be >= 1, got {value}")
        faiss = _faiss()
        self.metric = metric
        self.kind = kind
        self.num_items, self.dim = item_vectors.shape
        vectors = _as_numpy(item_vectors)
        if metric == "cosine":
            faiss.normalize_L2(vectors)
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            index = faiss.IndexFlat(self.dim, faiss_metric)
        elif kind == "ivf":
            real = self.num_items - 1
            self.nlist = min(nlist, real) if nlist else max(1, min(int(round(math.sqrt(real))), real // 39))
            quantizer = faiss.IndexFlat(self.dim, faiss_metric)
            index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss_metric)
            index.train(vectors[1:])
            index.nprobe = min(nprobe, self.nlist)
            self._quantizer = quantizer  # faiss does not own it: keep it alive
        else:
            self.hnsw_m, self.ef_construction = hnsw_m, ef_construction
            index = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss_metric)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        index.add(vectors)

        want_gpu = use_gpu is True or (use_gpu == "auto" and item_vectors.is_cuda)
        self.on_gpu = False
        self._cpu_index = index
        if want_gpu and kind == "hnsw":
            logger.warning(HNSW_CPU_MESSAGE)
        elif want_gpu:
            if faiss_gpu_available():
                self._resources = faiss.StandardGpuResources()
                device = item_vectors.device.index if item_vectors.is_cuda else 0
                index = faiss.index_cpu_to_gpu(self._resources, device or 0, index)
                self.on_gpu = True
            else:
                logger.warning(GPU_FALLBACK_MESSAGE)
        self.index = index

    @property
    def nprobe(self) -> int | None:
        """IVF lists scanned per query (None for other kinds); settable without a rebuild."""
        return getattr(self.index, "nprobe", None) if self.kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise ConfigError(f"nprobe applies to IVF indexes, not '{self.kind}'")
        for index in (self.index, self._cpu_index):  # the CPU copy serves long fetches on GPU
            index.nprobe = min(int(value), self.nlist)

    @property
    def ef_search(self) -> int | None:
        """HNSW search candidate-list size (None for other kinds); settable without a rebuild."""
        return int(self.index.hnsw.efSearch) if self.kind == "hnsw" else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.kind != "hnsw":
            raise ConfigError(f"ef_search applies to HNSW indexes, not '{self.kind}'")
        self.index.hnsw.efSearch = int(value)

    def save(self, path: str) -> None:
        """Write the (CPU) faiss index to ``path``; ``ItemIndex.load`` reads it back."""
        _faiss().write_index(self._cpu_index, str(path))

    @classmethod
    def load(cls, path: str, metric: Literal["ip", "l2", "cosine"] = "ip") -> ItemIndex:
        """An index written by ``save`` (CPU; ``metric`` as it was built with, faiss does not
        record cosine's normalisation)."""
        faiss = _faiss()
        index = faiss.read_index(str(path))
        self = cls.__new__(cls)
        self.metric, self.num_items, self.dim, self.on_gpu = metric, int(index.ntotal), int(index.d), False
        self.index = self._cpu_index = index
        if isinstance(index, faiss.IndexHNSW):
            self.kind, self.hnsw_m = "hnsw", int(index.hnsw.nb_neighbors(1))
            self.ef_construction = int(index.hnsw.efConstruction)
        elif isinstance(index, faiss.IndexIVF):
            self.kind, self.nlist = "ivf", int(index.nlist)
        else:
            self.kind = "flat"
        return self

    def params(self) -> dict[str, Any]:
        """What was built, for reports: kind, metric, the kind's own settings and placement."""
        out: dict[str, Any] = {"kind": self.kind, "metric": self.metric}
        if self.kind == "ivf":
            out.update(nlist=self.nlist, nprobe=self.nprobe)
        elif self.kind == "hnsw":
            out.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search)
        out["on_gpu"] = self.on_gpu
        return out

    def _raw_search(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.index if not self.on_gpu or fetch <= GPU_MAX_K else self._cpu_index
        return index.search(q, fetch)

    def search(
        self, query: torch.Tensor, k: int, exclude: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores [B, k], item ids [B, k]) per query, best first, on the query's device.

        Padding id 0 and ``exclude`` (bool [B, num_items], e.g. the history mask) are filtered
        out. Without ``exclude`` one faiss call fetches k + 1 (rounded up to a power of two)
        results. With it, each row's first fetch is sized to its own history: next power of two
        of k + 1 + (its excluded count) / 4, rows of equal depth sharing one faiss call (a model
        ranks only part of a user's history above its k-th unseen item, and faiss's cost grows
        with the depth, so fetching the whole history's worth at once is slower). Rows still
        short of k allowed items whose index was not exhausted ask once more, for k + 1 + (their
        excluded count) (rounded up, at most num_items): at that depth a flat index always holds
        the k best allowed items, so flat search returns exactly the top k allowed items in at
        most two rounds. Where fewer than k allowed items are found (tiny catalogues, IVF lists
        that run dry) the tail holds id 0 with score -inf. The work is numpy on faiss's arrays
        (no autograd, no torch ops on CPU), so a single query costs little beyond faiss itself.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        device = query.device
        q = _as_numpy(query)
        if self.metric == "cosine":
            q = q.copy()  # q may share the caller's memory: normalize a copy in place
            _faiss().normalize_L2(q)
        rows = q.shape[0]
        if exclude is None or not exclude.numel() or not rows:
            scores, ids, _ = self._fetch(q, self._fetch_size(k + 1), k, None)
            return _to_torch(scores, ids, device)
        if tuple(exclude.shape) != (rows, self.num_items):
            raise ValueError(f"exclude must be bool [{rows}, {self.num_items}], got {list(exclude.shape)}")
        mask = _Exclusion(exclude)
        need = np.minimum(k + 1 + mask.counts, self.num_items)  # k allowed items are certain (flat)
        first = self._fetch_sizes(k + 1 + mask.counts // FIRST_FETCH_HISTORY_DIVISOR)
        out_scores = out_ids = None
        retry = []
        for depth, sel in _buckets(first):
            scores, ids, short = self._fetch(q if sel is None else q[sel], depth, k, mask, sel)
            if sel is None:
                out_scores, out_ids = scores, ids
            else:
                if out_scores is None:
                    out_scores = np.empty((rows, k), dtype=np.float32)
                    out_ids = np.empty((rows, k), dtype=np.int64)
                out_scores[sel], out_ids[sel] = scores, ids
            if short.any():
                short_rows = np.flatnonzero(short) if sel is None else sel[short]
                retry.append(short_rows[need[short_rows] > depth])
        if retry and (again := np.concatenate(retry)).size:
            for depth, sub in _buckets(self._fetch_sizes(need[again])):
                sel = again if sub is None else again[sub]
                out_scores[sel], out_ids[sel], _ = self._fetch(q[sel], depth, k, mask, sel)
        return _to_torch(out_scores, out_ids, device)

    def _fetch_size(self, need: int) -> int:
        return min(1 << (need - 1).bit_length(), self.num_items)

    def _fetch_sizes(self, need: np.ndarray) -> np.ndarray:
        """``_fetch_size`` per row: ``need`` rounded up to a power of two, at most num_items."""
        _, bits = np.frexp(need - 1)  # the bit length of need - 1 (0 for need = 1)
        return np.minimum(np.left_shift(1, bits.astype(np.int64)), self.num_items)

    def _fetch(
        self,
        q: np.ndarray,
        fetch: int,
        k: int,
        mask: _Exclusion | None,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``fetch`` results per row from faiss, padding and excluded items dropped, the first k
        kept in faiss's (best-first) order: (scores [b, k], ids [b, k], short [b]), where short
        rows found fewer than k allowed items and were not cut off by the index running dry
        (a -1 id: deeper fetches would find nothing more). ``rows``: the rows of ``mask`` that
        ``q`` holds (None: all)."""
        raw_scores, raw_ids = self._raw_search(q, fetch)
        if self.metric == "l2":
            raw_scores = np.negative(raw_scores)  # faiss returns squared distances; higher is better
        head = raw_ids[:, :k]
        if mask is None and fetch >= k and bool((head > 0).all()):  # the common case: nothing dropped
            return np.ascontiguousarray(raw_scores[:, :k]), np.ascontiguousarray(head), _NO_ROWS
        bad = raw_ids <= 0  # -1: no result, 0: padding
        if mask is not None:
            bad |= mask.lookup(rows, raw_ids)
        order = np.argsort(bad, axis=1, kind="stable")[:, :k]  # allowed first, faiss order kept
        order += np.arange(0, order.shape[0] * fetch, fetch)[:, None]  # flat positions
        scores, ids = raw_scores.reshape(-1).take(order), raw_ids.reshape(-1).take(order)
        found = fetch - np.count_nonzero(bad, axis=1)
        short = found < k
        if short.any() or fetch < k:
            missing = np.arange(k) >= found[:, None]
            if fetch < k:
                scores = np.pad(scores, ((0, 0), (0, k - fetch)))
                ids = np.pad(ids, ((0, 0), (0, k - fetch)))
            scores[missing], ids[missing] = -np.inf, 0
            short &= raw_ids[:, -1] >= 0
        return scores, ids, short


FIRST_FETCH_HISTORY_DIVISOR = 4
"""A row's first fetch covers k + 1 + (excluded count) / this: on BPR / ml-1m the k-th allowed
item sits at depth 24 for the median user (history 87 items), 106 at the 99th percentile, so
about a fifth of the history ranks above it; 1/5 to 1/3 gave the fewest faiss results overall."""

_NO_ROWS = np.zeros(0, dtype=bool)


class _Exclusion:
    """The exclusion mask, read where it lives: numpy on CPU (no copy), torch on a GPU."""

    def __init__(self, exclude: torch.Tensor) -> None:
        exclude = exclude.detach()
        if exclude.dtype != torch.bool:
            exclude = exclude != 0
        self.tensor = exclude
        self.num_items = exclude.shape[1]
        self.flat: np.ndarray | None = None
        if exclude.is_cuda:
            self.counts = exclude.sum(1, dtype=torch.int32).cpu().numpy().astype(np.int64)
        else:
            array = exclude.numpy()
            self.flat = np.ascontiguousarray(array).reshape(-1)  # no copy when contiguous
            if array.shape[0] == 1:  # one query (serving): the cheapest count
                self.counts = np.array([np.count_nonzero(array)], dtype=np.int64)
            else:  # a uint8 sum: ~3x faster than torch's bool sum (~30x its default int64 one)
                self.counts = array.view(np.uint8).sum(1, dtype=np.int64)

    def lookup(self, rows: np.ndarray | None, ids: np.ndarray) -> np.ndarray:
        """exclude[row, id] for faiss's ids [b, fetch] (any value where id is -1: the caller
        drops those)."""
        if self.flat is not None:
            base = (np.arange(ids.shape[0]) if rows is None else rows) * self.num_items
            # one flat take: several times faster than 2-D fancy indexing
            return np.take(self.flat, ids + base[:, None], mode="clip")
        sub = self.tensor if rows is None else self.tensor[torch.from_numpy(rows).to(self.tensor.device)]
        ids = torch.from_numpy(ids).to(sub.device).clamp_min_(0)
        return sub.gather(1, ids).cpu().numpy()


def _buckets(depths: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
    """(depth, rows) per distinct depth; rows None when every row shares it (no copies)."""
    low = depths.min()
    if low == depths.max():
        return [(int(low), None)]
    return [(int(v), np.flatnonzero(depths == v)) for v in np.unique(depths)]


def _to_torch(scores: np.ndarray, ids: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    s, i = torch.from_numpy(scores), torch.from_numpy(ids)
    return (s, i) if device.type == "cpu" else (s.to(device), i.to(device))
