"""The one place that wires an experiment end to end.

``run(cfg, options)`` prepares data (parquet cache), builds the model from the registry, trains it
with the Lightning ``Trainer`` (early stopping and a best-epoch checkpoint on the validation
monitor), evaluates the test split once at that checkpoint, and records everything in one MLflow
run. ``recstudio run``, ``recstudio.run()`` and every ``recstudio tune`` trial go through it, so a
trial and a single run cannot drift apart.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recstudio.config import ResolvedConfig
from recstudio.errors import ConfigError, TrainingError
from recstudio.experiment import resolve_config

log = logging.getLogger("recstudio")

STEPS_PER_LOOP_BATCH = 8
"""Training batches per Lightning batch (``StepGroups``): one optimizer step each, so training is
unchanged while Lightning's ~0.4 ms per-batch loop overhead runs once per 8 steps."""


@dataclass
class RunOptions:
    """How to run, as opposed to what to run (the config): never hyperparameters."""

    data_dir: str | None = None
    cache_dir: str | None = None
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str = "recstudio"
    run_name: str | None = None
    parent_run_id: str | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)
    accelerator: str = "auto"
    devices: int | str = "auto"
    quiet: bool = False
    verbose: bool = False
    progress: str = "auto"
    """auto | bar | lines | none (``recstudio.progress``); -q does not silence lines."""
    progress_prefix: str = ""
    """Put before each progress line (a study's trials: ``trial 3: ``)."""
    checkpoint_dir: str | None = None
    callbacks: list[Any] = field(default_factory=list)
    """Extra Lightning callbacks (e.g. Optuna pruning)."""
    log_model: bool = True
    """Log the best model as an MLflow model (``runs:/<run id>/model``, servable; tracked runs)."""
    save_resume_state: bool = True
    """Keep the resumable ``last.ckpt`` (``recstudio.resume``; one device only). A study's
    trials do not: nothing resumes a trial, and it would double their artifacts."""
    resume: Any = None
    """A ``recstudio.resume.ResumePoint`` to continue from (``recstudio run --resume``)."""
    resumed_from: str | None = None
    """What ``resume`` came from (a run id or a path), tagged on the new run."""


def _resolve_devices(options: RunOptions) -> tuple[str, int]:
    """(accelerator, number of devices): 'auto' is one GPU when CUDA is there, else the CPU.

    ``devices`` > 1 means that many DDP processes: one per GPU, or that many CPU processes.
    """
    import torch

    accelerator = options.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        log.warning("accelerator 'gpu' requested but CUDA is not available; using CPU")
        accelerator = "cpu"
    devices = 1 if options.devices == "auto" else int(options.devices)
    if devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {devices}")
    if accelerator == "gpu" and devices > torch.cuda.device_count():
        visible = torch.cuda.device_count()
        raise ConfigError(f"--devices {devices} asks for more GPUs than the {visible} visible")
    return accelerator, devices


CURVE_KEYS = ("train_loss", "epoch_seconds")
"""Per-epoch MLflow metrics besides ``valid/<metric>`` (step = epoch)."""


class _EpochRecorder:
    """Lightning callback: per-epoch loss/metrics/timings into a list and into MLflow.

    ``train_seconds`` is the epoch's training steps only (epoch start to the last batch's end),
    as RecBole times its ``_train_epoch``; ``valid_seconds`` the validation pass; ``epoch_seconds``
    the whole epoch, checkpointing and early-stopping checks included.
    """

    def __new__(cls, *args: Any, **kwargs: Any):  # build the subclass lazily (Lightning import)
        import pytorch_lightning as pl

        class EpochRecorder(pl.Callback):
            def __init__(self, tracker: Any, monitor: str) -> None:
                self.tracker = tracker
                self.monitor = monitor
                self.history: list[dict[str, float]] = []
                self.train_seconds: list[float] = []
                self.valid_seconds: list[float] = []
                self._t0 = 0.0
                self._last_batch_end = 0.0
                self._v0 = 0.0
                self._row: dict[str, float] = {}

            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                self._t0 = self._last_batch_end = time.perf_counter()
                self._row = {"epoch": trainer.current_epoch}

            def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
                self._last_batch_end = time.perf_counter()

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                # Lightning validates (and checkpoints) inside the epoch, after the last batch
                elapsed = self._last_batch_end - self._t0
                self.train_seconds.append(elapsed)
                self._row["epoch_seconds"] = time.perf_counter() - self._t0
                # callbacks run before the module's own epoch-end hook: read its accumulator
                loss = pl_module.epoch_mean_loss()
                if loss is not None:
                    self._row["train_loss"] = loss
                self._row["train_seconds"] = elapsed
                self.history.append(self._row)
                if self.tracker is not None:
                    # curves only: loss, validation metrics, epoch time (the split timings are
                    # in metrics.json); fewer keys keep the MLflow runs table and charts readable
                    metrics = {
                        k: v for k, v in self._row.items() if k in CURVE_KEYS or k.startswith("valid/")
                    }
                    self.tracker.log_metrics(metrics, step=trainer.current_epoch, synchronous=False)

            def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                self._v0 = time.perf_counter()

            def state_dict(self) -> dict[str, Any]:
                return {
                    "history": self.history,
                    "train_seconds": self.train_seconds,
                    "valid_seconds": self.valid_seconds,
                }

            def load_state_dict(self, state_dict: dict[str, Any]) -> None:
                """A resumed run: the earlier epochs, whose curves its MLflow run logs again."""
                self.history = list(state_dict["history"])
                self.train_seconds = list(state_dict["train_seconds"])
                self.valid_seconds = list(state_dict["valid_seconds"])
                if self.tracker is not None:
                    for row in self.history:
                        metrics = {k: v for k, v in row.items() if k in CURVE_KEYS or k.startswith("valid/")}
                        self.tracker.log_metrics(metrics, step=int(row["epoch"]), synchronous=False)

            def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
                # after the module's on_validation_epoch_end has computed and logged the metrics
                if trainer.sanity_checking:
                    return
                seconds = time.perf_counter() - self._v0
                self.valid_seconds.append(seconds)
                self._row["valid_seconds"] = seconds
                for key, value in pl_module.valid_metrics.items():
                    self._row[f"valid/{key}"] = float(value)

        return EpochRecorder(*args, **kwargs)


def _restore_sigint() -> None:
    """Lightning ignores further Ctrl-C after the first; give the default handler back."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _tame_lightning_logs(verbose: bool) -> None:
    """Lightning sets its loggers to INFO on import (GPU/TPU banners, tips): keep them for -v."""
    import warnings

    level = logging.INFO if verbose else logging.WARNING
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*returned.*None.*")
        # metrics are all-reduced by the evaluator itself before they are logged
        warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")
    # no validation split is reported once, by train_and_test, with what to do about it
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")


def _best_epoch(history: list[dict[str, float]], monitor_key: str) -> dict[str, float] | None:
    """The epoch row with the best monitor value (the earliest among ties)."""
    from recstudio.eval.metrics import higher_is_better

    rows = [r for r in history if monitor_key in r and math.isfinite(r[monitor_key])]
    if not rows:
        return None
    sign = 1.0 if higher_is_better(monitor_key.removeprefix("valid/")) else -1.0
    return max(rows, key=lambda r: (sign * r[monitor_key], -r["epoch"]))


class _BestCheckpoint:
    """Lightning callback: save the weights whenever the validation monitor improves.

    Written here rather than Lightning's ``ModelCheckpoint``, which skips a save when
    ``trainer.global_step`` has not moved since the last one, and the plain training step
    (``Recommender._plain_step``) steps the optimizers without Lightning's step counter.
    """

    def __new__(cls, *args: Any, **kwargs: Any):  # build the subclass lazily (Lightning import)
        import pytorch_lightning as pl

        class BestCheckpoint(pl.Callback):
            def __init__(self, path: Path, maximize: bool) -> None:
                self.path = path
                self.maximize = maximize
                self.best: float | None = None

            def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
                if trainer.sanity_checking:
                    return
                value = trainer.callback_metrics.get("monitor")
                if value is None or not math.isfinite(float(value)):
                    return
                value = float(value)
                better = self.best is None or (value > self.best if self.maximize else value < self.best)
                if better:
                    self.best = value
                    trainer.save_checkpoint(str(self.path), weights_only=True)

            def state_dict(self) -> dict[str, Any]:
                return {"best": self.best}

            def load_state_dict(self, state_dict: dict[str, Any]) -> None:
                self.best = state_dict["best"]

        return BestCheckpoint(*args, **kwargs)


def run(
    cfg: ResolvedConfig, options: RunOptions | None = None, data: Any = None, trial: Any = None
) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the result dict (``--json`` output)."""
    options = options or RunOptions()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    # data first: a missing or malformed file is bad input, not a failed run worth recording
    t0 = time.perf_counter()
    if data is None:
        data = prepare_for(cfg, options)
    timings["data_seconds"] = time.perf_counter() - t0
    if options.resume is not None and options.resume.cache_key != data.cache_key:
        raise ConfigError(
            f"--resume: the data changed since the checkpoint (its cache key "
            f"{options.resume.cache_key[:16]}, now {str(data.cache_key)[:16]}): a resumed run must "
            "train on the same prepared data"
        )

    tracker = None
    if options.tracking:
        from recstudio import __version__
        from recstudio.track.tracker import Tracker, git_commit

        tags = {
            "model": cfg.model_name,
            "dataset": cfg.dataset,
            "recstudio.version": __version__,
            **options.extra_tags,
        }
        commit = git_commit()
        if commit:
            tags["git.commit"] = commit
        if options.resumed_from:
            tags["recstudio.resumed_from"] = options.resumed_from
        tracker = Tracker(
            options.tracking_uri,
            experiment=options.experiment,
            run_name=options.run_name or f"{cfg.model_name}-{Path(cfg.dataset).stem}",
            parent_run_id=options.parent_run_id,
            tags=tags,
        )
        from recstudio.model.parts import resolved_params

        tracker.log_params({**cfg.flat(), **resolved_params(cfg.model)})
        tracker.log_text(cfg.to_yaml(), "config.yaml")

    try:
        result = _run_tracked(cfg, options, data, trial, tracker, timings).to_dict()
    except BaseException as exc:
        if tracker is not None:
            exc.run_id = tracker.run_id  # type: ignore[attr-defined]  (tune logs the traceback there)
            status = "KILLED" if _is_pruned(exc) else "FAILED"
            try:
                tracker.set_tags({"error": f"{type(exc).__name__}: {exc}"[:5000]})
                tracker.end(status)
            except Exception:  # the original error matters more than a tracking failure
                log.exception("could not close MLflow run %s", tracker.run_id)
        raise
    timings["total_seconds"] = time.perf_counter() - t_start
    result["timings"] = timings
    if tracker is not None:
        tracker.log_dict(result, "metrics.json")
        tracker.end("FINISHED")
    return result


def prepare_for(cfg: ResolvedConfig, options: RunOptions) -> Any:
    """The prepared data of ``cfg`` with the parts (knowledge graph, social graph) its model's
    data contract needs; a dataset without them fails here, in one line."""
    from recstudio.data import prepare
    from recstudio.data.spec import PART_TITLES, PartMissing
    from recstudio.errors import DataError
    from recstudio.model.registry import get_model_class

    parts = get_model_class(cfg.model_name).data_contract(cfg.model).parts
    try:
        return prepare(
            cfg.dataset, cfg.data, data_dir=options.data_dir, cache_dir=options.cache_dir, parts=parts
        )
    except PartMissing as exc:
        title = PART_TITLES.get(exc.part, exc.part)
        raise DataError(f"model {cfg.model_name} needs a {title}, but {exc}") from None


def _is_pruned(exc: BaseException) -> bool:
    return type(exc).__name__ == "TrialPruned"


def _run_tracked(
    cfg: ResolvedConfig,
    options: RunOptions,
    data: Any,
    trial: Any,
    tracker: Any,
    timings: dict[str, float],
) -> TrainResult:
    """Rank 0's run; with ``devices`` > 1 the other DDP ranks run beside it (``distributed``)."""
    accelerator, devices = _resolve_devices(options)
    if devices > 1 and not _has_trainable_parameters(cfg, data):
        log.warning("%s has nothing to train by gradient; using one device, not %d", cfg.model_name, devices)
        devices = 1
    order = data.order()
    _warn_file_order(cfg, data, order)
    if tracker is not None:
        tracker.set_tags(
            {
                "cache_key": data.cache_key,
                "data.order": order,
                **{f"data.{k}": v for k, v in data.summary().items()},
            }
        )
        log_dataset_input(tracker, data)
        tracker.set_tags({"devices": str(devices), "accelerator": accelerator})
    if devices == 1:
        return train_and_test(cfg, options, data, trial, tracker, timings)

    from recstudio.distributed import DistributedRun, free_port

    port = free_port()
    ckpt_root = options.checkpoint_dir or tempfile.mkdtemp(prefix="recstudio-ckpt-")
    options = replace(options, accelerator=accelerator, devices=devices, checkpoint_dir=ckpt_root)
    worker_options = replace(
        options, tracking=False, quiet=True, progress="none", callbacks=[], parent_run_id=None
    )
    log.info("training on %d %s processes (DDP, rendezvous on 127.0.0.1:%d)", devices, accelerator, port)
    with DistributedRun(devices, _ddp_rank_main, (devices, port, cfg, worker_options, data)):
        return train_and_test(
            cfg, options, data, trial, tracker, timings, rank=0, world_size=devices, port=port
        )


_FILE_ORDER_WARNED: set[str] = set()


def _warn_file_order(cfg: ResolvedConfig, data: Any, order: str) -> None:
    """A sequential model on data without time order learns the file's row order: say so once
    per dataset and process (a study's trials would repeat it)."""
    from recstudio.model.registry import get_model_class

    if order != "file" or get_model_class(cfg.model_name).family != "sequential":
        return
    if data.cache_key in _FILE_ORDER_WARNED:
        return
    _FILE_ORDER_WARNED.add(data.cache_key)
    log.warning(
        "dataset %s has no timestamp column: %s reads each user's rows in file order as their "
        "sequence (the run's tag data.order=file records it)",
        data.name,
        cfg.model_name,
    )


DATASET_DIGEST_CHARS = 16
"""MLflow stores a dataset digest in at most 36 characters; the cache key's first 16 hex digits
are also the suffix of the cache entry's folder (``<name>-<key[:16]>``)."""


def log_dataset_input(tracker: Any, data: Any) -> None:
    """The prepared data as the run's MLflow dataset input: name, the cache key as digest, the
    raw files (paths and sha256) as source, the counts as profile. Never fails the run."""
    manifest = data.manifest or {}
    files = manifest.get("raw_files") or {}
    paths = [Path(f["path"]) for f in files.values() if f.get("path")]
    folder = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else None
    source = {
        "uri": folder.resolve().as_uri() if folder else f"memory:{data.name}",
        "files": {name: {"path": f.get("path"), "sha256": f.get("sha256")} for name, f in files.items()},
        "spec": manifest.get("spec_origin"),
        "options": manifest.get("options"),
    }
    schema = {
        "mlflow_colspec": [
            {"name": "user", "type": "long"},
            {"name": "item", "type": "long"},
            {"name": "rating", "type": "float"},
            {"name": "time", "type": "double"},
        ]
    }
    try:
        tracker.log_dataset(
            name=data.name,
            digest=(data.cache_key or "in-memory")[:DATASET_DIGEST_CHARS],
            source=source,
            profile=data.summary(),
            schema=schema,
        )
    except Exception as exc:  # noqa: BLE001 - the dataset record is a convenience
        log.warning("could not log the dataset input of MLflow run %s: %s", tracker.run_id, exc)


def _has_trainable_parameters(cfg: ResolvedConfig, data: Any) -> bool:
    return any(p.requires_grad for p in build_model(cfg, data).parameters())


def _ddp_rank_main(
    rank: int, world_size: int, port: int, cfg: ResolvedConfig, options: RunOptions, data: Any
) -> None:
    """Entry point of DDP ranks 1..N-1 (a spawned process): the same training, untracked."""
    from recstudio.distributed import destroy_process_group

    logging.basicConfig(level=logging.WARNING)
    try:
        train_and_test(cfg, options, data, None, None, {}, rank=rank, world_size=world_size, port=port)
    finally:
        destroy_process_group()


@dataclass
class TrainResult:
    """What one training run produced (``to_dict`` is the ``--json`` result)."""

    run_id: str | None
    model: str
    dataset: str
    checkpoint: str
    best_epoch: int
    epochs: int
    valid: dict[str, float]
    test: dict[str, float]
    data: dict[str, Any]
    cache_key: str
    timings: dict[str, float] = field(default_factory=dict)
    model_size: int = 0
    """Numbers in the trained model's state dict (parameters and stored matrices, e.g. EASE's
    item-item weights): the size of its checkpoint in floats."""
    stopped: str = "epochs"
    """Why training ended: ``epochs`` (train.epochs ran), ``early_stopping`` or ``max_minutes``."""
    model_uri: str | None = None
    """The servable MLflow model (``runs:/<run id>/model``), when the run logged one."""
    resume_checkpoint: str | None = None
    """Where the resumable ``last.ckpt`` is (``recstudio run --resume``), when the run kept one."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model": self.model,
            "dataset": self.dataset,
            "checkpoint": self.checkpoint,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "valid": self.valid,
            "test": self.test,
            "data": self.data,
            "cache_key": self.cache_key,
            "model_size": self.model_size,
            "stopped": self.stopped,
            "model_uri": self.model_uri,
            "resume_checkpoint": self.resume_checkpoint,
        }


def build_model(cfg: ResolvedConfig, data: Any) -> Any:
    """The configured model on ``data`` (the registry looks its class up by name)."""
    from recstudio.model.registry import get_model_class

    return get_model_class(cfg.model_name)(cfg.model, data, cfg.train, cfg.eval)


def training_batches(model: Any, data: Any, cfg: ResolvedConfig, rank: int = 0, world_size: int = 1) -> Any:
    """The training loader the model's data contract declares: one view per input, mixed as
    the contract says, in groups of ``STEPS_PER_LOOP_BATCH`` steps in one process."""
    from recstudio.data.views import InputMix, StepGroups, build_view
    from recstudio.model.base import takes_step_groups

    contract = model.data_needs
    views = {}
    for spec in contract.inputs:
        options = {"static_negatives": cfg.train.static_negatives, **dict(spec.options)}
        views[spec.name] = build_view(
            spec.view,
            data,
            spec.batch_size or cfg.train.batch_size,
            cfg.train.seed,
            rank=rank,
            world_size=world_size,
            **options,
        )
    batches: Any = views[contract.main.name] if len(views) == 1 else InputMix(views, contract.alternate)
    if world_size == 1 and STEPS_PER_LOOP_BATCH > 1 and takes_step_groups(model):
        # DDP's reducer expects one backward per forward: groups only in one process
        batches = StepGroups(batches, STEPS_PER_LOOP_BATCH)
    return batches


def evaluation_plan(model: Any, data: Any, cfg: ResolvedConfig) -> Any:
    """The model's evaluation protocols and batches; the monitor must be one of its metrics."""
    from recstudio.eval.evaluation import EvalPlan

    needs = model.data_needs
    plan = EvalPlan(data, cfg.eval, needs.labelled, needs.eval_sequence, rated_model=needs.ratings)
    model.evaluation = plan.evaluation()
    keys = model.evaluation.keys()
    if cfg.train.monitor not in keys:
        raise ConfigError(
            f"config key 'train.monitor' is '{cfg.train.monitor}', which this evaluation "
            f"(protocol {'+'.join(plan.protocols)}) does not compute; it computes {', '.join(keys)}"
        )
    return plan


def _trainer(
    cfg: ResolvedConfig,
    options: RunOptions,
    callbacks: list[Any],
    ckpt_root: Path,
    has_valid: bool,
    num_batches: int,
    rank: int,
    world_size: int,
    port: int | None,
) -> Any:
    import pytorch_lightning as pl

    from recstudio.distributed import trainer_kwargs
    from recstudio.eval.metrics import higher_is_better
    from recstudio.progress import progress_lines, resolve_progress

    accelerator, devices = _resolve_devices(options)
    mode = resolve_progress(options.progress, options.quiet) if rank == 0 else "none"
    show_progress = mode == "bar"
    if show_progress:
        from pytorch_lightning.callbacks import TQDMProgressBar

        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=max(1, num_batches // 4))]
    elif mode == "lines":
        maximize = higher_is_better(cfg.train.monitor)
        callbacks = [*callbacks, progress_lines(cfg.train.monitor, maximize, prefix=options.progress_prefix)]
    distributed = trainer_kwargs(rank, world_size, port, accelerator, cfg.train.ddp_timeout)
    return pl.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator=accelerator,
        devices=devices,
        **distributed,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=show_progress,
        enable_model_summary=options.verbose,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=cfg.train.val_every,
        limit_val_batches=1.0 if has_valid else 0,
        deterministic=False,
        default_root_dir=str(ckpt_root),
        enable_checkpointing=False,
    )


def _early_stopping(cfg: ResolvedConfig, maximize: bool) -> Any:
    """Lightning's ``EarlyStopping`` on the monitor, held back until ``train.min_epochs`` epochs
    have run. Not ``Trainer(min_epochs=...)``: that would also hold back the ``max_minutes``
    timer. Before the minimum the patience still counts, so the first check after it stops a run
    that has not improved for ``early_stop_patience`` checks. (The class is made here because
    Lightning is imported lazily, to keep the CLI's start fast.)"""
    from pytorch_lightning.callbacks import EarlyStopping

    min_epochs = min(cfg.train.min_epochs, cfg.train.epochs)

    class _HeldEarlyStopping(EarlyStopping):
        epochs_done = 0

        def _run_early_stopping_check(self, trainer: Any) -> None:
            self.epochs_done = trainer.current_epoch + 1
            super()._run_early_stopping_check(trainer)

        def _evaluate_stopping_criteria(self, current: Any) -> tuple[bool, str | None]:
            should_stop, reason = super()._evaluate_stopping_criteria(current)
            if should_stop and self.epochs_done < min_epochs:
                return False, None
            return should_stop, reason

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            # a resumed run keeps the count of checks without improvement, under its own
            # patience (a larger one continues a run that early stopping ended)
            patience = self.patience
            super().load_state_dict(state_dict)
            self.patience = patience
            self.stopped_epoch = 0

    return _HeldEarlyStopping(
        monitor="monitor",
        mode="max" if maximize else "min",
        patience=cfg.train.early_stop_patience,
        check_on_train_epoch_end=False,
        check_finite=False,
    )


def _stop_reason(trainer: Any, early_stopping: Any, timer: Any, epochs: int, cfg: ResolvedConfig) -> str:
    """Why ``trainer.fit`` returned: the epoch budget, early stopping or the wall-clock cap."""
    if early_stopping is not None and early_stopping.stopped_epoch > 0:
        return "early_stopping"
    if timer is not None and epochs < cfg.train.epochs and timer.time_remaining("train") <= 0:
        return "max_minutes"
    return "epochs"


def _fit(
    trainer: Any,
    model: Any,
    train_batches: Any,
    valid_loader: Any,
    cfg: ResolvedConfig,
    ckpt_path: Path | None = None,
) -> None:
    """``trainer.fit`` (from ``ckpt_path`` when resuming) with Ctrl-C and out-of-memory turned
    into what callers expect."""
    import torch

    try:
        trainer.fit(
            model,
            train_dataloaders=train_batches,
            val_dataloaders=valid_loader,
            ckpt_path=str(ckpt_path) if ckpt_path is not None else None,
        )
    except torch.OutOfMemoryError as exc:
        raise TrainingError(f"out of memory while training {cfg.model_name}: {exc}") from exc
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) after its teardown; callers expect an interrupt
        if trainer.interrupted:
            _restore_sigint()
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        _restore_sigint()
        raise KeyboardInterrupt


def train_and_test(
    cfg: ResolvedConfig,
    options: RunOptions,
    data: Any,
    trial: Any,
    tracker: Any,
    timings: dict[str, float],
    rank: int = 0,
    world_size: int = 1,
    port: int | None = None,
) -> TrainResult:
    """Fit with early stopping, reload the best epoch, test once; one DDP rank of ``world_size``.

    The steps: build the model, its training batches and its evaluation plan (all from the
    model's data contract), fit closed-form parts, train with Lightning (best checkpoint and
    early stopping on the validation monitor), reload the best weights, test.
    """
    import pytorch_lightning as pl
    import torch

    _tame_lightning_logs(options.verbose)
    from recstudio.eval.metrics import higher_is_better

    pl.seed_everything(cfg.train.seed, workers=False, verbose=False)
    model = build_model(cfg, data)
    if world_size > 1:
        torch.manual_seed(cfg.train.seed + rank)  # same initial weights, own negative-sampling stream
    plan = evaluation_plan(model, data, cfg)
    train_batches = training_batches(model, data, cfg, rank, world_size)
    valid_loader = plan.loader("valid", rank, world_size) if plan.has_split("valid") else None
    has_valid = valid_loader is not None and len(valid_loader) > 0
    test_loader = plan.loader("test", rank, world_size)
    if not has_valid and rank == 0:
        log.info(
            "%s has no validation split: no early stopping, the last epoch is tested "
            "(ready-made splits: set data.valid_from_train, e.g. --valid-from-train 0.1)",
            cfg.dataset,
        )

    t0 = time.perf_counter()
    model.fit_closed_form(data)
    timings["closed_form_seconds"] = time.perf_counter() - t0

    ckpt_root = Path(options.checkpoint_dir or tempfile.mkdtemp(prefix="recstudio-ckpt-"))
    ckpt_root.mkdir(parents=True, exist_ok=True)
    best_path = ckpt_root / "best.ckpt"
    resume_from = None
    if options.resume is not None:
        # the best epoch's weights are put back as best.ckpt; the views draw from the next epoch
        resume_from = options.resume.write_for_fit(ckpt_root)
        train_batches.set_epoch(options.resume.epoch + 1)
    maximize = higher_is_better(cfg.train.monitor)
    recorder = _EpochRecorder(tracker, cfg.train.monitor)
    checkpoint = _BestCheckpoint(best_path, maximize)
    callbacks: list[Any] = [recorder, *options.callbacks, checkpoint]
    early_stopping = None
    if has_valid and cfg.train.early_stop_patience > 0:
        early_stopping = _early_stopping(cfg, maximize)
        callbacks.append(early_stopping)
    timer = None
    if cfg.train.max_minutes is not None:
        from datetime import timedelta

        from pytorch_lightning.callbacks import Timer

        # checked at each epoch's end (after its validation), so no epoch is cut short
        timer = Timer(duration=timedelta(minutes=cfg.train.max_minutes), interval="epoch")
        callbacks.append(timer)
    last_path = None
    trainable = any(p.requires_grad for p in model.parameters())  # closed-form: nothing to resume
    if options.save_resume_state and world_size == 1 and trainable:
        from recstudio.resume import LAST_CHECKPOINT, LastCheckpoint

        last_path = ckpt_root / LAST_CHECKPOINT
        callbacks.append(LastCheckpoint(last_path, cfg.to_yaml(), data.cache_key, best_path))
    trainer = _trainer(
        cfg, options, callbacks, ckpt_root, has_valid, len(train_batches), rank, world_size, port
    )
    t0 = time.perf_counter()
    try:
        _fit(trainer, model, train_batches, valid_loader if has_valid else None, cfg, resume_from)
    except BaseException:
        _keep_resume_state(tracker, last_path, interrupted=True)
        raise
    timings["fit_seconds"] = time.perf_counter() - t0
    epochs_run = len(recorder.train_seconds)
    stopped = _stop_reason(trainer, early_stopping, timer, epochs_run, cfg)
    if stopped == "max_minutes" and rank == 0:
        log.info(
            "%s: training stopped by train.max_minutes=%g after %d epochs",
            cfg.model_name,
            cfg.train.max_minutes,
            epochs_run,
        )
    resume_location = _keep_resume_state(tracker, last_path, interrupted=False)

    # ---------------------------------------------------------------- best checkpoint -> test
    if checkpoint.best is None:  # no validation (or no finite value): the last weights
        trainer.save_checkpoint(str(best_path), weights_only=True)
    if world_size > 1:
        trainer.strategy.barrier("recstudio-best-checkpoint")  # rank 0 has written it
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    best_row = _best_epoch(recorder.history, f"valid/{cfg.train.monitor}")

    t0 = time.perf_counter()
    trainer.test(model, dataloaders=test_loader, verbose=False)
    timings["test_seconds"] = time.perf_counter() - t0
    _epoch_timings(recorder, timings)
    result = TrainResult(
        run_id=tracker.run_id if tracker else None,
        model=cfg.model_name,
        dataset=cfg.dataset,
        checkpoint=str(best_path),
        best_epoch=int(best_row["epoch"]) if best_row else trainer.current_epoch - 1,
        epochs=len(recorder.train_seconds),
        valid=(
            {k[len("valid/") :]: v for k, v in best_row.items() if k.startswith("valid/")} if best_row else {}
        ),
        test=dict(model.test_metrics),
        data=data.summary(),
        cache_key=data.cache_key,
        timings=timings,
        model_size=state_size(model),
        stopped=stopped,
        resume_checkpoint=resume_location,
    )
    if tracker is not None:
        tracker.log_metrics(final_metrics(result, cfg.train.monitor), step=result.best_epoch)
        tracker.log_artifact(str(best_path), "checkpoints")
        result.checkpoint = tracker.artifact_location(f"checkpoints/{best_path.name}")
        if options.log_model:
            t0 = time.perf_counter()
            result.model_uri = _log_served_model(tracker, cfg, data, best_path, model)
            timings["model_log_seconds"] = time.perf_counter() - t0
        logged = last_path is None or resume_location != str(last_path)
        if options.checkpoint_dir is None and world_size == 1 and logged:
            # the checkpoints are the run's artifacts now: leave no temporary folder behind
            shutil.rmtree(ckpt_root, ignore_errors=True)
    return result


def _keep_resume_state(tracker: Any, last_path: Path | None, interrupted: bool) -> str | None:
    """Log the resumable ``last.ckpt`` as the run's ``resume/last.ckpt`` (when tracked) and say
    how to continue an interrupted run; returns where it is. Never fails the run."""
    from recstudio.resume import RESUME_ARTIFACT_DIR

    if last_path is None or not last_path.is_file():
        return None
    location = str(last_path)
    if tracker is not None:
        try:
            tracker.log_artifact(str(last_path), RESUME_ARTIFACT_DIR)
            location = tracker.artifact_location(f"{RESUME_ARTIFACT_DIR}/{last_path.name}")
        except Exception as exc:  # noqa: BLE001 - the local file still resumes
            log.warning("could not log the resumable checkpoint %s: %s", last_path, exc)
    if interrupted:
        source = tracker.run_id if tracker is not None else str(last_path)
        log.warning("training can continue from its last saved epoch: recstudio run --resume %s", source)
    return location


def _log_served_model(
    tracker: Any, cfg: ResolvedConfig, data: Any, best_path: Path, model: Any
) -> str | None:
    """The servable MLflow model of the run (its URI); a failure costs the model, not the run."""
    from recstudio.serve.pyfunc import log_served_model

    try:
        uri = log_served_model(tracker, cfg, data, best_path, model)
        tracker.set_tags({"recstudio.model_uri": uri})
        return uri
    except Exception as exc:  # the metrics and checkpoint are logged already
        log.warning("could not log the servable MLflow model: %s: %s", type(exc).__name__, exc)
        tracker.set_tags({"recstudio.model_error": f"{type(exc).__name__}: {exc}"[:5000]})
        return None


def state_size(model: Any) -> int:
    """Floating-point numbers in ``model.state_dict()`` (what its checkpoint stores)."""
    return int(sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()))


def final_metrics(result: TrainResult, monitor: str) -> dict[str, float]:
    """The single-value MLflow metrics of a finished run: every test metric (``test_<m>``), the
    validation monitor at the best epoch (``best_valid_<monitor>``, a study's objective) and
    ``best_epoch``, and ``model_size`` (floats in the checkpoint). They carry no ``/``: MLflow
    groups a run's charts into sections by the
    prefix before the last ``/`` and sorts named sections before the unnamed "Model metrics"
    one, so ``valid/*`` curves come first and these single points after them. The other
    validation metrics at the best epoch are points of the ``valid/<m>`` curves (step =
    best_epoch) and sit in ``metrics.json``; logging each again as its own key made 19
    single-point charts ahead of the curves."""
    from recstudio.track.tracker import best_valid_key, test_metric_key

    metrics = {test_metric_key(k): v for k, v in result.test.items()}
    if monitor in result.valid:
        metrics[best_valid_key(monitor)] = result.valid[monitor]
    metrics["best_epoch"] = float(result.best_epoch)
    metrics["model_size"] = float(result.model_size)
    return metrics


def _epoch_timings(recorder: Any, timings: dict[str, float]) -> None:
    whole_epochs = [row["epoch_seconds"] for row in recorder.history if "epoch_seconds" in row]
    for name, values in (
        ("train_epoch", recorder.train_seconds),
        ("valid_pass", recorder.valid_seconds),
        ("whole_epoch", whole_epochs),
    ):
        if values:
            timings[f"{name}_seconds_mean"] = statistics.fmean(values)
            timings[f"{name}_seconds_median"] = statistics.median(values)
            timings[f"{name}_seconds_min"] = min(values)


def evaluate_checkpoint(
    cfg: ResolvedConfig,
    checkpoint: str,
    options: RunOptions | None = None,
    data: Any = None,
    splits: tuple[str, ...] = ("valid", "test"),
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of a saved checkpoint on ``splits``, on one or ``options.devices``
    DDP processes (each rank scores a disjoint share of the users; sums are all-reduced)."""
    options = options or RunOptions(tracking=False, quiet=True)
    if data is None:
        data = prepare_for(cfg, options)
    accelerator, devices = _resolve_devices(options)
    options = replace(options, accelerator=accelerator, devices=devices, callbacks=[])
    if devices == 1:
        return _evaluate_rank(cfg, options, data, checkpoint, splits)
    from recstudio.distributed import DistributedRun, free_port

    port = free_port()
    with DistributedRun(devices, _ddp_evaluate_main, (devices, port, cfg, options, data, checkpoint, splits)):
        return _evaluate_rank(cfg, options, data, checkpoint, splits, rank=0, world_size=devices, port=port)


def _ddp_evaluate_main(
    rank: int,
    world_size: int,
    port: int,
    cfg: ResolvedConfig,
    options: RunOptions,
    data: Any,
    checkpoint: str,
    splits: tuple[str, ...],
) -> None:
    from recstudio.distributed import destroy_process_group

    logging.basicConfig(level=logging.WARNING)
    try:
        _evaluate_rank(cfg, options, data, checkpoint, splits, rank=rank, world_size=world_size, port=port)
    finally:
        destroy_process_group()


def _evaluate_rank(
    cfg: ResolvedConfig,
    options: RunOptions,
    data: Any,
    checkpoint: str,
    splits: tuple[str, ...],
    rank: int = 0,
    world_size: int = 1,
    port: int | None = None,
) -> dict[str, dict[str, float]]:
    import pytorch_lightning as pl
    import torch

    _tame_lightning_logs(options.verbose)
    model = build_model(cfg, data)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state))
    plan = evaluation_plan(model, data, cfg)
    from recstudio.distributed import trainer_kwargs

    distributed = trainer_kwargs(rank, world_size, port, options.accelerator, cfg.train.ddp_timeout)
    trainer = pl.Trainer(
        accelerator=options.accelerator,
        devices=options.devices,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tempfile.gettempdir(),
        **distributed,
    )
    results: dict[str, dict[str, float]] = {}
    for split in splits:
        trainer.test(model, dataloaders=plan.loader(split, rank, world_size), verbose=False)
        results[split] = dict(model.test_metrics)
    return results


def run_prepared(
    model: str,
    data: Any,
    overrides: dict[str, Any] | None = None,
    tracking: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Run on an in-memory PreparedData (tests, notebooks): no cache, tracking off by default."""
    cfg = resolve_config(model=model, dataset=data.name, overrides=overrides or {})
    return run(cfg, RunOptions(tracking=tracking, quiet=quiet), data=data)


def run_from_options(
    model: str,
    dataset: str,
    config: str | list[str] | None = None,
    data_dir: str | None = None,
    tracking_uri: str | None = None,
    quiet: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """The Python API behind ``recstudio.run``: ``train__epochs=5`` means ``train.epochs=5``."""
    from recstudio.data import load_spec

    spec = load_spec(dataset, data_dir=data_dir)
    dotted = {k.replace("__", "."): v for k, v in overrides.items()}
    files = [config] if isinstance(config, str) else list(config or [])
    cfg = resolve_config(
        model=model,
        dataset=dataset,
        config_files=files,
        overrides=dotted,
        dataset_defaults=spec.defaults,
        dataset_labels=getattr(spec, "labels", None),
    )
    return run(cfg, RunOptions(data_dir=data_dir, tracking_uri=tracking_uri, quiet=quiet))
