"""ANN retrieval over item vectors with faiss (CPU everywhere, GPU where faiss-gpu is installed)."""

from __future__ import annotations

from recstudio.ann.faiss_index import ItemIndex, faiss_gpu_available

__all__ = ["ItemIndex", "faiss_gpu_available"]
