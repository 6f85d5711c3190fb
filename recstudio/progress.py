"""Training progress: a live bar on a terminal, plain lines anywhere else.

``--progress auto`` (the default) shows Lightning's bar when the bar's stream is a terminal and
``-q`` is not given; otherwise one line per epoch (at most one a second) and one every
``LINE_INTERVAL`` seconds inside a long epoch, with the epoch, the training loss, the
validation monitor (and its best so far) and an ETA. Lines go to stderr, so ``--json`` keeps
stdout for its one JSON object, and ``-q`` (which only drops log messages) does not silence
them: a 16-minute run says how far it is. ``--progress none`` is silent.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Literal, TextIO

Progress = Literal["auto", "bar", "lines", "none"]
PROGRESS_CHOICES: tuple[str, ...] = ("auto", "bar", "lines", "none")

LINE_INTERVAL = 10.0
"""Seconds between progress lines inside an epoch."""
MIN_LINE_GAP = 1.0
"""Epoch lines closer together than this are skipped (the last epoch always prints)."""


def resolve_progress(progress: str, quiet: bool, stream: TextIO | None = None) -> str:
    """``bar``, ``lines`` or ``none`` for ``progress``: auto is the bar on a terminal without -q."""
    if progress != "auto":
        return progress
    stream = stream if stream is not None else sys.stdout  # where Lightning's bar writes
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty and not quiet else "lines"


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h04m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_lines(*args: Any, **kwargs: Any) -> Any:
    """The Lightning callback that writes progress lines (built lazily: Lightning imports)."""
    import pytorch_lightning as pl

    class ProgressLines(pl.Callback):
        def __init__(
            self,
            monitor: str,
            maximize: bool,
            prefix: str = "",
            stream: TextIO | None = None,
            interval: float = LINE_INTERVAL,
            min_gap: float = MIN_LINE_GAP,
        ) -> None:
            self.monitor = monitor
            self.maximize = maximize
            self.prefix = prefix
            self.stream = stream
            self.interval = interval
            self.min_gap = min_gap
            self.best: tuple[float, int] | None = None
            self._start = self._epoch_start = self._last_line = 0.0
            self._epoch_seconds: list[float] = []
            self._fresh: float | None = None

        def _write(self, text: str) -> None:
            stream = self.stream if self.stream is not None else sys.stderr
            print(f"{self.prefix}{text}", file=stream, flush=True)
            self._last_line = time.monotonic()

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self._start = self._last_line = time.monotonic()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._epoch_start = time.monotonic()
            self._fresh = None

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
        ) -> None:
            now = time.monotonic()
            if now - self._last_line < self.interval:
                return
            total = trainer.num_training_batches
            done = idx + 1
            parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
            if isinstance(total, int) and total > 0:
                parts.append(f"batch {done}/{total}")
                elapsed = now - self._epoch_start
                parts.append(f"epoch ETA {format_seconds(elapsed / done * (total - done))}")
            loss = pl_module.epoch_mean_loss()
            if loss is not None:
                parts.append(f"loss {loss:.4f}")
            self._write("  ".join(parts))

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            value = pl_module.valid_metrics.get(self.monitor)
            if value is None or not math.isfinite(float(value)):
                return
            self._fresh = float(value)
            better = self.best is None or (
                self._fresh > self.best[0] if self.maximize else self._fresh < self.best[0]
            )
            if better:
                self.best = (self._fresh, trainer.current_epoch + 1)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            now = time.monotonic()
            self._epoch_seconds.append(now - self._epoch_start)
            epoch, max_epochs = trainer.current_epoch + 1, trainer.max_epochs
            last = epoch >= max_epochs or trainer.should_stop
            if not last and now - self._last_line < self.min_gap:
                return
            parts = [f"epoch {epoch}/{max_epochs}"]
            loss = pl_module.epoch_mean_loss()
            if loss is not None:
                parts.append(f"loss {loss:.4f}")
            if self._fresh is not None:
                best = f" (best {self.best[0]:.4f} @{self.best[1]})" if self.best else ""
                parts.append(f"valid {self.monitor} {self._fresh:.4f}{best}")
            mean = sum(self._epoch_seconds) / len(self._epoch_seconds)
            parts.append(f"{mean:.2f} s/epoch")
            parts.append(f"elapsed {format_seconds(now - self._start)}")
            if not last:
                # an upper bound: early stopping usually ends the run sooner
                parts.append(f"ETA <= {format_seconds(mean * (max_epochs - epoch))}")
            self._write("  ".join(parts))

    return ProgressLines(*args, **kwargs)
