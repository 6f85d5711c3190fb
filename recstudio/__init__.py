"""RecStudio: a PyTorch recommendation library and experiment platform.

Heavy dependencies (torch, Lightning, MLflow, Optuna) are imported lazily so that the CLI and
``import recstudio`` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "run"]


def run(model: str, dataset: str, **overrides: Any) -> dict[str, Any]:
    """Train and evaluate one model; returns the same dict as ``recstudio run --json``.

    ``overrides`` are dotted config keys (``train.epochs=5``) given as keyword arguments with
    dots replaced by double underscores (``train__epochs=5``), or plain section-less keys that the
    config resolves (``epochs=5``). ``data_dir``, ``config`` (path to YAML) and ``tracking_uri``
    are run options.
    """
    from recstudio.pipeline import run_from_options

    return run_from_options(model=model, dataset=dataset, **overrides)
