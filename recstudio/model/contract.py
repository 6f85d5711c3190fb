"""A model's data contract: what it trains on, what its evaluation batches carry, its optimizers.

Every model declares one ``DataContract`` (``Recommender.data_contract(config)``); the pipeline
reads it and nothing else, so a model never reaches for data on its own and the pipeline never
guesses (there is no "does the config happen to have a ``max_seq_len``").

- ``inputs``: one or several training inputs, each a view of the prepared data (``triplet``,
  ``pointwise``, ``user``, ``seq``, ``seq2seq``, ``als``, ``kg``; see ``recstudio.data.views``)
  with its options. Input ``main`` feeds ``training_loss(batch)``; any other input ``x`` feeds
  ``x_loss(batch)`` (or the loss of the input its ``loss`` names), stepping the optimizer the
  input names.
- ``alternate``: how several inputs share an epoch. ``"zip"``: every step gets one batch of each
  input in one dict (the first input's keys as they are, the others' as ``"<name>.<key>"``), one
  loss, one optimizer step (CKE's joint CF + KG loss); the epoch is as long as the longest input
  and shorter ones start over. ``"step"``: inputs take turns step by step (A, B, A, B, ...), each
  with its own loss and optimizer; the epoch ends when the longest input ends, shorter ones start
  over. ``"epoch"``: all batches of the first input, then all of the second, ... (KGAT's CF then
  KG pass, a GAN's generator then discriminator pass).
- ``parts``: typed parts of the prepared data the model needs beyond interactions (``"kg"``,
  ``"social"``); a dataset without them fails in one line before anything is built.
- ``labelled``: the model trains on labelled rows (every row kept, a 0/1 label from the data's
  label rule) and is judged pointwise (AUC, GAUC, log loss) unless the config asks otherwise.
- ``ratings``: the model trains on the raw rating values (``rating`` of the ``triplet`` and
  ``pointwise`` batches; the model's config layer turns ``data.binarize`` off) and is also judged
  on them: RMSE and MAE of ``score_pairs`` on the valid/test rows. A dataset without ratings
  fails in one line when the model is built.
- ``eval_sequence``: evaluation batches carry each user's last L history items (``seq``,
  ``seq_len``), for sequential models.
- ``optimizers``: the optimizer names the inputs step, derived from ``inputs``;
  ``Recommender.optimizer_groups()`` says which parameters each one moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from recstudio.errors import ConfigError, ModelError

Alternate = Literal["zip", "step", "epoch"]
PARTS = ("kg", "social")
MAIN = "main"


@dataclass(frozen=True)
class TrainInput:
    """One training input: a view of the data, the loss it feeds and the optimizer it steps."""

    view: str
    name: str = MAIN
    """``main`` feeds ``training_loss``; another name ``x`` feeds the model's ``x_loss``."""
    optimizer: str = MAIN
    options: Mapping[str, Any] = field(default_factory=dict)
    """View options (e.g. ``max_len`` for sequence views, ``num_negatives`` for the kg view)."""
    batch_size: int | None = None
    """Batch size of this input; None: ``train.batch_size``."""
    loss: str | None = None
    """The input whose loss this one feeds (None: its own): several passes of one objective in an
    epoch (RecVAE's three encoder passes) are inputs with their own names and one loss."""

    def loss_method(self) -> str:
        name = self.loss or self.name
        return "training_loss" if name == MAIN else f"{name}_loss"


@dataclass(frozen=True)
class DataContract:
    """What a model needs from the data (see the module docstring)."""

    inputs: tuple[TrainInput, ...] = (TrainInput("triplet"),)
    alternate: Alternate = "step"
    parts: tuple[str, ...] = ()
    labelled: bool = False
    eval_sequence: int | None = None
    ratings: bool = False

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ModelError("a data contract needs at least one training input")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ModelError(f"training input names must be unique, got {names}")
        if self.alternate not in ("zip", "step", "epoch"):
            raise ModelError(f"alternate must be zip, step or epoch, got {self.alternate!r}")
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ModelError(f"unknown data part(s) {unknown}; parts are {', '.join(PARTS)}")
        if self.alternate == "zip" and len({i.optimizer for i in self.inputs}) > 1:
            raise ModelError("zipped inputs share one loss, hence one optimizer")

    @property
    def optimizers(self) -> tuple[str, ...]:
        """Optimizer names in first-use order (``main`` first when present)."""
        return tuple(dict.fromkeys(i.optimizer for i in self.inputs))

    @property
    def main(self) -> TrainInput:
        return self.inputs[0]


def sequence_input(max_seq_len: int, window_context: int | None = None) -> TrainInput:
    """The ``seq2seq`` training input of a whole-sequence model.

    ``window_context`` None: one sample per user, its last ``max_seq_len`` positions (targets
    older than that are not trained). K >= 0: every target of every user, in windows of
    ``max_seq_len`` positions whose first K are context only (the view's ``chunk_len`` =
    ``max_seq_len`` - K, ``context_len`` = K): each target is trained once, after at least K items
    of history where the user has them, as RecBole's per-prefix instances are, for about
    ``max_seq_len / (max_seq_len - K)`` times the positions.
    """
    if window_context is None:
        return TrainInput("seq2seq", options={"max_len": max_seq_len})
    check_window_context(max_seq_len, window_context)
    options = {"max_len": None, "chunk_len": max_seq_len - window_context, "context_len": window_context}
    return TrainInput("seq2seq", options=options)


def check_window_context(max_seq_len: int, window_context: int | None) -> None:
    """The config check of ``model.window_context`` (None, or 0 <= K < ``max_seq_len``)."""
    if window_context is not None and not 0 <= window_context < max_seq_len:
        raise ConfigError(
            f"config key 'model.window_context' must be in [0, max_seq_len={max_seq_len}), "
            f"got {window_context}"
        )
