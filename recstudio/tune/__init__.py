"""Hyperparameter tuning: Optuna studies whose trials are ``pipeline.run`` calls.

- ``space``: search spaces as data (validation against the config schema, NNI conversion,
  ``suggest(trial, space)``);
- ``pruning``: the Lightning callback that reports each validation to the trial;
- ``objective``: one trial = one run = one nested MLflow child run;
- ``study``: storage, create/resume, samplers, pruners, the MLflow parent run, worker processes;
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
    "from_nni",
    "load_search_space",
    "normalize",
    "run_study",
    "suggest",
]

_LAZY = {
    "PruningCallback": "recstudio.tune.pruning",
    "TuneSettings": "recstudio.tune.study",
    "run_study": "recstudio.tune.study",
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
