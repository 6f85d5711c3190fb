"""A trained model as an MLflow model (pyfunc flavor): served by ``mlflow models serve``.

The MLflow model holds the serving folder (``recstudio.serve.bundle``) as its one artifact and
this module's ``RecStudioPyfunc`` as its Python model, so ``mlflow.pyfunc.load_model`` and
``mlflow models serve --env-manager local -m runs:/<run>/model`` (or ``models:/<name>/<version>``)
answer requests with ``ServedModel``. Request (``POST /invocations``)::

    {"dataframe_records": [{"user": "42"}, {"user": "7"}], "params": {"k": 10}}
    {"dataframe_records": [{"items": ["50", "172", "133"]}]}          # sequential models

Answer: ``{"predictions": [{"user": "42", "items": [raw item ids, best first], "scores": [...]}]}``.
Unknown ids answer HTTP 400 with the message naming them (``INVALID_PARAMETER_VALUE``).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

MODEL_ARTIFACT = "model"
"""Artifact path of the MLflow model in each run: ``runs:/<run id>/model``."""
BUNDLE_ARTIFACT = "bundle"
DEFAULT_K = 10


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(AnyType(), "user", required=False), ColSpec(AnyType(), "items", required=False)])
    params = ParamSchema([ParamSpec("k", "long", DEFAULT_K)])
    return ModelSignature(inputs=inputs, params=params)


def _column(frame: Any, name: str) -> list[Any] | None:
    if name not in frame.columns:
        return None
    values = frame[name].tolist()
    if all(_missing(v) for v in values):
        return None
    return values


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class RecStudioPyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` answers top-k requests in raw ids (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from recstudio.serve.served import ServedModel

        self.served = ServedModel.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> list:
        # a DataFrame hint: MLflow validates with the logged signature, not the hint
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from recstudio.errors import ConfigError

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        users, items = _column(frame, "user"), _column(frame, "items")
        if items is not None:
            items = [[] if _missing(r) else list(r) for r in items]
        k = int((params or {}).get("k", DEFAULT_K))
        try:
            return self.served.recommend(users=users, items=items, k=k)
        except ConfigError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


def save_pyfunc(bundle: Path, target: Path) -> Path:
    """Save the MLflow model of serving folder ``bundle`` at ``target`` (a new folder)."""
    with warnings.catch_warnings():  # MLflow's advice on type hints and input examples
        warnings.simplefilter("ignore", UserWarning)
        _save(target, bundle)
    return target


def _save(target: Path, bundle: Path) -> None:
    import recstudio

    mlflow.pyfunc.save_model(
        str(target),
        python_model=str(Path(__file__).with_name("mlflow_model.py")),  # models from code: no pickle
        artifacts={BUNDLE_ARTIFACT: str(bundle)},
        signature=_signature(),
        # explicit requirements: MLflow would otherwise load the model to infer them
        pip_requirements=[f"recstudio=={recstudio.__version__}"],
    )


def log_served_model(tracker: Any, cfg: Any, data: Any, checkpoint: str | Path, model: Any) -> str:
    """Log the run's best model as ``runs:/<run id>/model``; returns that URI."""
    from recstudio.serve.bundle import write_bundle

    workdir = Path(tempfile.mkdtemp(prefix="recstudio-model-"))
    try:
        bundle = write_bundle(workdir / BUNDLE_ARTIFACT, cfg, data, checkpoint, model)
        save_pyfunc(bundle, workdir / MODEL_ARTIFACT)
        tracker.client.log_artifacts(tracker.run_id, str(workdir / MODEL_ARTIFACT), MODEL_ARTIFACT)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return f"runs:/{tracker.run_id}/{MODEL_ARTIFACT}"
