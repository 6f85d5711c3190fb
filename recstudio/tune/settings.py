"""What one invocation of a study runs: ``TuneSettings``.

The settings are the single value passed from the command line (or a notebook) to the study
and on to every spawned worker, so they are a plain picklable dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recstudio.tune.space import SearchSpace

DEFAULT_TRIALS = 20


@dataclass
class TuneSettings:
    """Everything a worker needs to run trials of one study (picklable: workers are spawned)."""

    model: str
    dataset: str
    base_config: dict[str, Any]
    """The fixed part, fully resolved (``ResolvedConfig.to_dict()``, ``train.monitor = metric``)."""
    space: SearchSpace
    metric: str
    study_name: str
    storage: str
    trials: int | None = DEFAULT_TRIALS
    """New trials this invocation runs (resumed studies keep their old trials on top)."""
    timeout: float | None = None
    """Seconds after which no new trial starts (running ones finish)."""
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    """Sampler seed (``--seed``); worker i and a resumed study derive their own from it."""
    seed_offset: int = 0
    workers: int = 1
    baseline: bool = False
    """A new study's first trial uses the fixed config's values of the searched keys."""
    heartbeat_interval: int = 60
    grace_period: int | None = None
    max_retry: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)
    """Keys fixed on the command line (``--set``/flags), for the record."""
    # run options
    data_dir: str | None = None
    cache_dir: str | None = None
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str = "recstudio"
    accelerator: str = "auto"
    devices: int | str = "auto"
    quiet: bool = False
    verbose: bool = False
    data: Any = None
    """An in-memory PreparedData used instead of the dataset spec (tests, notebooks)."""
