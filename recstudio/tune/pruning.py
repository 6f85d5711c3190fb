"""Optuna pruning as a Lightning callback: report every validation, stop a hopeless trial.

Written on ``pytorch_lightning`` (the package RecStudio trains with) because
optuna-integration's callback targets the separate ``lightning`` package and would pull in a
second copy of Lightning.

The value is read in ``on_validation_end``, not ``on_validation_epoch_end``: Lightning calls
callbacks' epoch-end hooks *before* the LightningModule's own hook, where the model logs
``monitor``, so ``trainer.callback_metrics`` still holds the previous epoch there.
"""

from __future__ import annotations

import logging
import math

import optuna
import pytorch_lightning as pl

log = logging.getLogger("recstudio.tune")


class PruningCallback(pl.Callback):
    """Report ``trainer.callback_metrics[monitor]`` to ``trial`` (step = epoch) after each validation;
    raise ``optuna.TrialPruned`` when the study's pruner says so.

    ``reported`` keeps what was reported ({epoch: value}), so the caller can tell how far a
    pruned trial got. With ``prune=False`` (the defaults trial) values are reported, so that
    pruners compare other trials with them, but the trial is never stopped. Before
    ``min_epochs`` epochs (the trial's ``train.min_epochs``: its validation is not yet telling,
    e.g. UltraGCN's popularity plateau) values are reported but the pruner is not asked.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        monitor: str = "monitor",
        metric_name: str | None = None,
        prune: bool = True,
        min_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.prune = prune
        self.min_epochs = min_epochs
        self.trial = trial
        self.monitor = monitor
        self.metric_name = metric_name or monitor
        self.reported: dict[int, float] = {}
        self._warned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                log.warning(
                    "pruning: '%s' is not among the logged metrics; this trial cannot be pruned", self.monitor
                )
                self._warned = True
            return
        value = float(value)
        epoch = int(trainer.current_epoch)
        if not math.isfinite(value):  # a NaN report would poison the pruner's medians
            return
        self.trial.report(value, step=epoch)
        self.reported[epoch] = value
        if self.prune and epoch + 1 >= self.min_epochs and self.trial.should_prune():
            message = f"pruned at epoch {epoch} ({self.metric_name}={value:.4f})"
            raise optuna.TrialPruned(message)
