"""Resumable runs: the state a run saves at its epoch ends, and how a later run continues it.

A run that a wall-clock cap (``train.max_minutes``), an interruption or its epoch budget ended
can go on where it stopped: ``recstudio run --resume RUN_ID`` (or a ``last.ckpt`` path). The
single-device training of ``recstudio run`` keeps ``last.ckpt``: Lightning's full checkpoint
(weights, optimizer and scheduler state, epoch counters, early-stopping state) plus what this
project adds: the random number generators, the per-epoch history, the best validation value
and the best epoch's weights, the config and the data's cache key. It is rewritten at an epoch's
end at most every ``SAVE_INTERVAL_SECONDS`` and always after the last epoch; a tracked run logs
it as ``resume/last.ckpt``, also when training fails or is interrupted.

The continued run is a new run (a new MLflow run tagged ``recstudio.resumed_from``, with the
earlier epochs' curves logged again) that trains as the uninterrupted run would have from that
epoch on: same batches, same negatives, same weights (tested). Only the keys that say how long
to train may change (``RESUMABLE_KEYS``); ``train.max_minutes`` caps the continued run's own
time, and a larger ``train.early_stop_patience`` continues a run that early stopping ended.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from recstudio.errors import ConfigError

LAST_CHECKPOINT = "last.ckpt"
RESUME_ARTIFACT_DIR = "resume"
"""A tracked run's resumable state is its artifact ``resume/last.ckpt``."""
SAVE_INTERVAL_SECONDS = 30.0
"""At most one save per this many seconds of training (and always after the last epoch): fast
epochs would otherwise spend more time writing than training."""
RESUMABLE_KEYS = ("train.epochs", "train.max_minutes", "train.early_stop_patience", "train.min_epochs")
"""Config keys a resumed run may change: how long it trains, never what it trains."""
STATE_KEY = "recstudio.LastCheckpoint"
"""Where this project's part of the checkpoint sits (``checkpoint["callbacks"][STATE_KEY]``)."""


def capture_rng() -> dict[str, Any]:
    """The state of every random number generator training draws from."""
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {  # tensors and plain values: loadable with weights_only=True
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class LastCheckpoint:
    """Lightning callback: write the resumable ``last.ckpt`` at epoch ends (see the module
    docstring). Placed after the Timer and early stopping, so it sees their stop decision and
    saves the final epoch. Its own state (in the checkpoint) is the RNG state at the save, the
    config, the data's cache key and the best epoch's checkpoint file."""

    def __new__(cls, *args: Any, **kwargs: Any):  # build the subclass lazily (Lightning import)
        import pytorch_lightning as pl

        class _LastCheckpoint(pl.Callback):
            def __init__(
                self,
                path: Path,
                config_yaml: str,
                cache_key: str,
                best_path: Path,
                interval: float = SAVE_INTERVAL_SECONDS,
            ) -> None:
                self.path = Path(path)
                self.config_yaml = config_yaml
                self.cache_key = cache_key
                self.best_path = Path(best_path)
                self.interval = interval
                self._saved_at = time.monotonic()

            @property
            def state_key(self) -> str:
                return STATE_KEY

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                last_epoch = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
                due = time.monotonic() - self._saved_at >= self.interval
                if due or last_epoch or trainer.should_stop:
                    trainer.save_checkpoint(str(self.path))
                    self._saved_at = time.monotonic()

            def state_dict(self) -> dict[str, Any]:
                best = self.best_path.read_bytes() if self.best_path.is_file() else None
                return {
                    "rng": capture_rng(),
                    "config": self.config_yaml,
                    "cache_key": self.cache_key,
                    "best_checkpoint": best,
                }

            def load_state_dict(self, state_dict: dict[str, Any]) -> None:
                # Lightning restores callbacks just before the first resumed epoch: from here
                # on every draw is the one the uninterrupted run made
                restore_rng(state_dict["rng"])

        return _LastCheckpoint(*args, **kwargs)


class ResumePoint:
    """A ``last.ckpt`` read for resuming: its config, cache key, epoch and best weights."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same bad input
            raise ConfigError(f"--resume: cannot read checkpoint {self.path}: {exc}") from None
        own = _own_state(checkpoint)
        if own is None:
            raise ConfigError(
                f"--resume: {self.path} is not a resumable checkpoint (a run's last.ckpt: best.ckpt "
                "holds weights only)"
            )
        self.checkpoint = checkpoint
        self.config_yaml: str = own["config"]
        self.cache_key: str = own["cache_key"]
        self.best_checkpoint: bytes | None = own.get("best_checkpoint")
        self.epoch = int(checkpoint.get("epoch", 0))

    def write_for_fit(self, folder: Path) -> Path:
        """The checkpoint Lightning resumes from, in ``folder``: the original without the wall-clock
        timer's elapsed time (``train.max_minutes`` caps the continued run's own time) and the
        best epoch's checkpoint file put back beside it as ``best.ckpt``."""
        checkpoint = dict(self.checkpoint)
        callbacks = {k: v for k, v in checkpoint.get("callbacks", {}).items() if not k.startswith("Timer")}
        checkpoint["callbacks"] = callbacks
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "resume-from.ckpt"
        torch.save(checkpoint, target)
        if self.best_checkpoint is not None:
            (folder / "best.ckpt").write_bytes(self.best_checkpoint)
        return target


def _own_state(checkpoint: Any) -> dict[str, Any] | None:
    if not isinstance(checkpoint, dict):
        return None
    own = checkpoint.get("callbacks", {}).get(STATE_KEY)
    return own if isinstance(own, dict) and "config" in own else None


def changed_keys(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Flat config keys whose value differs between the checkpoint's config and the resumed
    run's, other than ``RESUMABLE_KEYS``."""
    keys = sorted(set(saved) | set(new))
    return [k for k in keys if k not in RESUMABLE_KEYS and saved.get(k) != new.get(k)]


def check_same_experiment(saved: dict[str, Any], new: dict[str, Any]) -> None:
    """One error naming the first key a resumed run may not change."""
    changed = changed_keys(saved, new)
    if changed:
        key = changed[0]
        raise ConfigError(
            f"--resume continues the same experiment: config key '{key}' was {saved.get(key)!r} in "
            f"the checkpoint, not {new.get(key)!r} (a resumed run may change only "
            f"{', '.join(RESUMABLE_KEYS)})"
        )


def locate(source: str, tracking_uri: str | None, workdir: Path) -> ResumePoint:
    """The resume point named by ``--resume``: a ``last.ckpt`` file, or an MLflow run id whose
    ``resume/last.ckpt`` is downloaded into ``workdir``."""
    path = Path(source)
    if path.is_file():
        return ResumePoint(path)
    import os

    from mlflow.exceptions import MlflowException

    from recstudio.track.tracker import mlflow_client, resolve_tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one file, no bar
    client = mlflow_client(resolve_tracking_uri(tracking_uri))
    try:
        client.get_run(source)
    except MlflowException:
        raise ConfigError(f"--resume: '{source}' is neither a checkpoint file nor an MLflow run id") from None
    artifact = f"{RESUME_ARTIFACT_DIR}/{LAST_CHECKPOINT}"
    try:
        local = client.download_artifacts(source, artifact, str(workdir))
    except (MlflowException, OSError):
        raise ConfigError(
            f"--resume: MLflow run {source} has no {artifact} (study trials and runs on several "
            "devices keep none)"
        ) from None
    return ResumePoint(Path(local))


def resolve_resumed(
    point: ResumePoint,
    model: str | None,
    dataset: str | None,
    data_dir: str | None,
    config_files: tuple[str, ...] | list[str],
    set_items: tuple[str, ...],
    config_flags: dict[str, Any],
    workdir: Path,
) -> Any:
    """The resumed run's config: the checkpoint's, with the command line on top, which may change
    only ``RESUMABLE_KEYS`` (one error naming any other changed key)."""
    from recstudio.experiment import resolve_from_cli

    saved_file = workdir / "resumed-config.yaml"
    saved_file.write_text(point.config_yaml)
    saved = resolve_from_cli(None, None, data_dir, [str(saved_file)], (), {})
    cfg = resolve_from_cli(
        model, dataset, data_dir, [str(saved_file), *config_files], set_items, config_flags
    )
    check_same_experiment(saved.flat(), cfg.flat())
    done = point.epoch + 1
    if done >= cfg.train.epochs:
        raise ConfigError(
            f"--resume: the checkpoint has run {done} epochs and train.epochs is {cfg.train.epochs}: "
            "give a larger --epochs to train on"
        )
    return cfg
