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
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


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

    @torch.no_grad()
    def search(
        self, query: torch.Tensor, k: int, exclude: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores [B, k], item ids [B, k]) per query, best first, on the query's device.

        Padding id 0 and ``exclude`` (bool [B, num_items], e.g. the history mask) are filtered
        out. The index is first asked for about 2(k + 1) results per row; rows left with fewer
        than k allowed items ask again 4x deeper (one faiss call per round for all of them) until
        they have k or have fetched k + (their excluded items) + 1, so a flat index returns
        exactly the top k allowed items while a short or low-scored history costs no depth.
        Where fewer than k allowed items are found (tiny catalogues, IVF lists that run dry) the
        tail holds id 0 with score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        device = query.device
        q = _as_numpy(query)
        if self.metric == "cosine":
            _faiss().normalize_L2(q)
        if exclude is None or not exclude.numel():
            return self._search_group(q, self._fetch_size(k + 1), None, k, device)
        # Deepen only where needed: rows whose first `fetch` results hold fewer than k allowed
        # items ask again, 4x deeper, until they have k or have seen all they could need.
        rows = q.shape[0]
        cap = (exclude.sum(1) + (k + 1)).clamp(max=self.num_items).cpu()
        top_scores = torch.full((rows, k), -math.inf, device=device)
        top_ids = torch.zeros((rows, k), dtype=torch.long, device=device)
        pending = torch.arange(rows)
        fetch = self._fetch_size(2 * (k + 1))
        while pending.numel():
            whole = pending.numel() == rows
            sub_q = q if whole else q[pending.numpy()]
            sub_exclude = exclude if whole else exclude[pending.to(exclude.device)]
            scores, ids = self._search_group(sub_q, fetch, sub_exclude, k, device)
            done = (scores[:, -1] > -math.inf).cpu() | (cap[pending] <= fetch)
            if whole and bool(done.all()):
                return scores, ids
            finished, on_device = pending[done].to(device), done.to(device)
            top_scores[finished], top_ids[finished] = scores[on_device], ids[on_device]
            pending = pending[~done]
            fetch = min(fetch * 4, self.num_items)
        return top_scores, top_ids

    def _fetch_size(self, need: int) -> int:
        return min(1 << (need - 1).bit_length(), self.num_items)

    def _search_group(
        self, q: np.ndarray, fetch: int, exclude: torch.Tensor | None, k: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``fetch`` results per row from faiss, padding and ``exclude`` dropped, best k kept."""
        raw_scores, raw_ids = self._raw_search(q, fetch)
        scores = torch.from_numpy(raw_scores).to(device)
        ids = torch.from_numpy(raw_ids).to(device)
        if self.metric == "l2":
            scores = -scores  # faiss returns squared distances; higher must be better
        bad = ids <= 0  # -1: no result, 0: padding
        if exclude is not None:
            bad |= exclude.to(device).gather(1, ids.clamp_min(0))
        scores = scores.masked_fill(bad, -math.inf)
        ids = ids.masked_fill(bad, 0)
        take = min(k, fetch)
        top_scores, order = torch.topk(scores, take, dim=1)
        top_ids = ids.gather(1, order)
        if take < k:
            pad = (0, k - take)
            top_scores = torch.nn.functional.pad(top_scores, pad, value=-math.inf)
            top_ids = torch.nn.functional.pad(top_ids, pad, value=0)
        return top_scores, top_ids
