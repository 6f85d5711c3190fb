"""Hyperparameter tuning: Optuna studies whose trials are ``pipeline.run`` calls.

- ``settings``: ``TuneSettings`` and building them from CLI values and ``tune:`` sections;
- ``space``: search spaces as data (validation against the config schema, NNI conversion,
  ``suggest(trial, space)``);
- ``strategies``: samplers and pruners by name, their defaults and seeds;
- ``storage``: Optuna storage URLs and connections (SQLite specifics, password redaction);
- ``study``: create or resume a study (compatibility checks, direction), load it, stale trials;
- ``objective``: one trial = one run = one nested MLflow child run;
- ``pruning``: the Lightning callback that reports each validation to the trial;
- ``parent``: the study's MLflow parent run and the callback that updates it after each trial;
- ``workers``: the trial budget, one worker's trial loop, worker processes and their GPUs;
- ``runner``: ``run_study``, one invocation from checks to summary;
- ``results``: summaries, the best trial, ``list_studies``, ``export_config``;
- ``plots``: study plots as HTML artifacts.

Names are imported lazily (Optuna, MLflow and Lightning are heavy), so ``import recstudio.tune``
is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "PruningCallback",
    "TuneSettings",
    "best_trial",
    "build_settings",
    "export_config",
    "from_nni",
    "list_studies",
    "load_search_space",
    "normalize",
    "run_study",
    "suggest",
]

_LAZY = {
    "PruningCallback": "recstudio.tune.pruning",
    "TuneSettings": "recstudio.tune.settings",
    "build_settings": "recstudio.tune.settings",
    "run_study": "recstudio.tune.runner",
    "best_trial": "recstudio.tune.results",
    "export_config": "recstudio.tune.results",
    "list_studies": "recstudio.tune.results",
    "from_nni": "recstudio.tune.space",
    "load_search_space": "recstudio.tune.space",
    "normalize": "recstudio.tune.space",
    "suggest": "recstudio.tune.space",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recstudio.tune' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
