"""Finding a run's servable model and registering it in the MLflow Model Registry."""

from __future__ import annotations

import os
import warnings
from typing import Any

from recstudio.errors import ConfigError
from recstudio.serve.pyfunc import MODEL_ARTIFACT


def _client(tracking_uri: str | None) -> tuple[Any, str]:
    from recstudio.track.tracker import mlflow_client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    return mlflow_client(uri), uri


def register_run_model(run_id: str | None, name: str, tracking_uri: str | None, what: str = "the run") -> int:
    """Register ``runs:/<run_id>/model`` as a new version of ``name``; returns the version.

    One ConfigError (exit 2) when there is no run, or the run logged no model (it ran with
    ``--no-log-model``, or before serving existed)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        raise ConfigError(f"{what} has no MLflow run (it was not tracked): nothing to register")
    client, uri = _client(tracking_uri)
    try:
        client.get_run(run_id)
        names = {a.path for a in client.list_artifacts(run_id)}
    except MlflowException as exc:
        raise ConfigError(f"cannot read MLflow run {run_id} at {uri}: {exc.message}") from None
    if MODEL_ARTIFACT not in names:
        raise ConfigError(
            f"MLflow run {run_id} ({what}) has no '{MODEL_ARTIFACT}' artifact to register "
            "(it ran with --no-log-model?)"
        )
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        version = mlflow.register_model(
            f"runs:/{run_id}/{MODEL_ARTIFACT}", name, tags={"registered_from": what}
        )
    except MlflowException as exc:
        raise ConfigError(f"cannot register model '{name}' at {uri}: {exc.message}") from None
    return int(version.version)


def load_served(model_uri: str, tracking_uri: str | None = None) -> Any:
    """The ``ServedModel`` behind an MLflow model URI (``models:/NAME/latest``,
    ``runs:/ID/model``) or a local folder holding one; exactly what ``mlflow models serve``
    loads."""
    import mlflow
    from mlflow.exceptions import MlflowException

    _, uri = _client(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one answer, no bars
    try:
        with warnings.catch_warnings():  # MLflow's advice on type hints: the signature says it
            warnings.simplefilter("ignore", UserWarning)
            model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise ConfigError(f"cannot load model {model_uri} from {uri}: {exc.message}") from None
    except OSError as exc:
        raise ConfigError(f"cannot load model {model_uri}: {exc}") from None
    python_model = model.unwrap_python_model()
    served = getattr(python_model, "served", None)
    if served is None:
        raise ConfigError(f"{model_uri} is not a RecStudio model")
    return served
