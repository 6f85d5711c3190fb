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


def _faiss() -> Any:
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
    query. ``use_gpu``: "auto" uses faiss-gpu when it is installed and the vectors are on CUDA;
    True asks for it; False never uses it. When a GPU index was wanted but faiss-gpu is missing,
    one line ``faiss-gpu not available; using CPU index`` is logged and a CPU index is built.
    """

    def __init__(
        self,
        item_vectors: torch.Tensor,
        metric: Literal["ip", "l2", "cosine"] = "ip",
        kind: Literal["flat", "ivf"] = "flat",
        nlist: int | None = None,
        nprobe: int = 8,
        use_gpu: bool | Literal["auto"] = "auto",
    ) -> None:
        if metric not in ("ip", "l2", "cosine"):
            raise ConfigError(f"ANN metric must be 'ip', 'l2' or 'cosine', got '{metric}'")
        if kind not in ("flat", "ivf"):
            raise ConfigError(f"ANN index kind must be 'flat' or 'ivf', got '{kind}'")
        if item_vectors.dim() != 2 or item_vectors.shape[0] < 2:
            raise ConfigError("ItemIndex needs item vectors [num_items, d] with at least one real item")
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
        else:
            real = self.num_items - 1
            self.nlist = nlist or max(1, min(int(round(math.sqrt(real))), real // 39))
            quantizer = faiss.IndexFlat(self.dim, faiss_metric)
            index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss_metric)
            index.train(vectors[1:])
            index.nprobe = min(nprobe, self.nlist)
            self._quantizer = quantizer  # faiss does not own it: keep it alive
        index.add(vectors)

        want_gpu = use_gpu is True or (use_gpu == "auto" and item_vectors.is_cuda)
        self.on_gpu = False
        if want_gpu:
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
        return getattr(self.index, "nprobe", None)

    @torch.no_grad()
    def search(
        self, query: torch.Tensor, k: int, exclude: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores [B, k], item ids [B, k]) per query, best first, on the query's device.

        Padding id 0 and ``exclude`` (bool [B, num_items], e.g. the history mask) are filtered
        out. The index is asked for k + (the largest number of excluded items in a row) + 1
        results, so a flat index returns exactly the top k allowed items. Where fewer than k
        allowed items are found (tiny catalogues, IVF lists that run dry) the tail holds id 0
        with score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        device = query.device
        q = _as_numpy(query)
        if self.metric == "cosine":
            _faiss().normalize_L2(q)
        extra = 1
        if exclude is not None:
            extra += int(exclude.sum(1).max()) if exclude.numel() else 0
        fetch = min(self.num_items, k + extra)
        raw_scores, raw_ids = self.index.search(q, fetch)
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
