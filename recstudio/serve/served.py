"""Top-k recommendations for raw user ids (or recent raw item ids) from a served model.

``ServedModel`` rebuilds a trained model from its serving folder (``recstudio.serve.bundle``) and
answers requests the way evaluation ranks: one evaluation batch per request (``user``,
``history_mask``, and for sequential models ``seq``/``seq_len``), scored by the model's own
``score_batch`` with padding and the seen items masked, then ``topk``. The history is everything
the data knows about the user (train, valid and test splits): a served model recommends what
comes after all of it, and never an item the user has already interacted with. Item-tower
models whose ranking is a nearest-neighbour search (inner product, cosine or euclidean scorer)
retrieve from the folder's exact faiss index instead of scoring every item (same top-k).

A request to a sequential model may give recent item ids instead of (or with) a user id: they
are the sequence, and seen items are those plus, with a user id, the user's own history. Unknown
ids raise ``UnknownIds`` (a ``ConfigError``) naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from recstudio.errors import ConfigError

log = logging.getLogger(__name__)


class UnknownIds(ConfigError):
    """A request named ids the model has never seen."""


def write_item_index(model: Any, metric: str, path: Path) -> None:
    """An exact faiss index over ``model``'s evaluation item vectors, written to ``path``."""
    from recstudio.ann.faiss_index import ItemIndex

    with torch.no_grad():
        model.eval()
        model.prepare_evaluation()
        vectors = model.eval_item_vectors()
    ItemIndex(vectors, metric=metric, kind="flat", use_gpu=False).save(str(path))
    model.eval_cache = {}


def _id_lookup(vocab: list[Any]) -> dict[str, int]:
    """Raw id (as text, so 42 and "42" both match) -> internal id; index 0 is padding."""
    return {str(raw): i for i, raw in enumerate(vocab) if i > 0}


class ServedModel:
    """A trained model ready to answer top-k requests in raw ids (CPU or the given device)."""

    def __init__(
        self,
        cfg: Any,
        data: Any,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        index_path: str | Path | None = None,
        index_metric: str | None = None,
    ) -> None:
        from recstudio.data.dataset import Interactions
        from recstudio.pipeline import build_model

        self.cfg, self.data = cfg, data
        self.device = torch.device(device)
        model = build_model(cfg, data)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
        self.model = model.to(self.device).eval()
        with torch.no_grad():
            self.model.prepare_evaluation()  # item vectors, graph propagation: once
        self.sequence_len: int | None = model.data_needs.eval_sequence
        history = Interactions.concat([data.train, data.valid, data.test])
        self.history_indptr, self.history_items = history.csr(data.num_users)
        self.users = _id_lookup(data.user_vocab)
        self.items = _id_lookup(data.item_vocab)
        self.index = None
        if index_path is not None and index_metric is not None and Path(index_path).is_file():
            from recstudio.ann.faiss_index import ItemIndex

            self.index = ItemIndex.load(str(index_path), index_metric)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ServedModel:
        """The model of a serving folder written by ``write_bundle``."""
        from recstudio.serve.bundle import INDEX_FILE, read_bundle

        info, cfg, data, checkpoint = read_bundle(folder)
        return cls(cfg, data, checkpoint, device, Path(folder) / INDEX_FILE, info.get("index_metric"))

    @property
    def model_name(self) -> str:
        return self.cfg.model_name

    # ------------------------------------------------------------------ ids
    def _internal(self, ids: Sequence[Any], lookup: dict[str, int], kind: str) -> list[int]:
        found = [lookup.get(str(raw)) for raw in ids]
        unknown = [raw for raw, i in zip(ids, found, strict=True) if i is None]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise UnknownIds(f"unknown {kind} id(s) for model {self.model_name} on {self.data.name}: {shown}")
        return [int(i) for i in found if i is not None]

    # ------------------------------------------------------------------ requests
    def _batch(
        self, users: list[int] | None, recent: list[list[int]] | None, n: int
    ) -> dict[str, torch.Tensor]:
        """One evaluation-shaped batch for ``n`` requests (see the module docstring), built with
        the evaluation's own CSR helpers."""
        from recstudio.eval.ranking import dense_mask, last_items, subset_csr

        num_items, cpu = self.data.num_items, torch.device("cpu")
        user = torch.zeros(n, dtype=torch.long)
        mask = torch.zeros(n, num_items, dtype=torch.bool)
        sequence: tuple[torch.Tensor, torch.Tensor] | None = None
        if users is not None:
            user = torch.tensor(users, dtype=torch.long)
            sequence = subset_csr(self.history_indptr, self.history_items, user)
            mask |= dense_mask(*sequence, 0, n, num_items, cpu)
        if recent is not None:  # the request's items are the sequence (and seen)
            indptr = torch.zeros(n + 1, dtype=torch.long)
            torch.cumsum(torch.tensor([len(r) for r in recent], dtype=torch.long), 0, out=indptr[1:])
            sequence = (indptr, torch.tensor([i for r in recent for i in r], dtype=torch.long))
            mask |= dense_mask(*sequence, 0, n, num_items, cpu)
        mask[:, 0] = True  # padding is never a candidate
        batch = {"user": user, "history_mask": mask}
        if self.sequence_len and sequence is not None:
            batch["seq"], batch["seq_len"] = last_items(*sequence, self.sequence_len)
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def recommend(
        self,
        users: Sequence[Any] | None = None,
        items: Sequence[Sequence[Any]] | None = None,
        k: int = 10,
    ) -> list[dict[str, Any]]:
        """Top-k for each request: ``[{"user": raw or None, "items": [raw ids], "scores": [..]}]``.

        ``users``: raw user ids; ``items``: per request, recent raw item ids, oldest first
        (sequential models only; with ``users`` too, the user's history is also excluded).
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if users is None and items is None:
            raise ConfigError("a request needs user ids or recent item ids")
        n = len(users) if users is not None else len(items or [])
        if items is not None and len(items) != n:
            raise ConfigError(f"{len(items)} item lists for {n} users: give one per user")
        if users is None and not self.sequence_len:
            raise ConfigError(
                f"model {self.model_name} is not sequential: give user ids (recent item ids alone "
                "are a sequential model's query)"
            )
        internal_users = self._internal(list(users), self.users, "user") if users is not None else None
        recent = [self._internal(list(r), self.items, "item") for r in items] if items is not None else None
        if n == 0:
            return []
        batch = self._batch(internal_users, recent, n)
        k = min(k, self.data.num_items - 1)
        if self.index is not None:
            query = self.model.query_vectors(batch)
            scores, ids = self.index.search(query, k, exclude=batch["history_mask"])
        else:
            scores, ids = self.model.recommend(batch, k)
        vocab = self.data.item_vocab
        answers = []
        for i in range(n):
            keep = ids[i] > 0  # fewer allowed items than k: the tail is padding
            answers.append(
                {
                    "user": users[i] if users is not None else None,
                    "items": [vocab[j] for j in ids[i][keep].tolist()],
                    "scores": [float(s) for s in scores[i][keep].tolist()],
                }
            )
        return answers
