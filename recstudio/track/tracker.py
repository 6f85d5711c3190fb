"""MLflow run lifecycle: one ``Tracker`` per run, built on ``MlflowClient`` (no global state).

The fluent ``mlflow.start_run`` API keeps an active-run stack per process; trials of a study
and parallel workers are simpler and safer with explicit run ids, so everything here passes
``run_id`` around.

Embedded default: MLflow 3 refuses the old ``./mlruns`` file store, so without a tracking URI
we use SQLite at ``./mlruns/mlflow.db`` with artifacts in ``./mlruns/artifacts``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from recstudio.errors import TrackingError

log = logging.getLogger("recstudio.track")

DEFAULT_MLRUNS = "mlruns"
MAX_PARAM_LENGTH = 6000


def default_tracking_uri(mlruns_dir: str | Path = DEFAULT_MLRUNS) -> str:
    path = Path(mlruns_dir).resolve()
    return f"sqlite:///{path / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``--tracking-uri`` beats ``MLFLOW_TRACKING_URI`` beats the embedded SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store; servers decide their own (proxied) location."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def mlflow_client(tracking_uri: str):
    """``MlflowClient`` for ``tracking_uri``; a new local SQLite store starts from a migrated copy."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        check_local_store(db, tracking_uri)
        if not db.exists():
            seed_sqlite_store(db)
    return MlflowClient(tracking_uri=tracking_uri)


def check_local_store(db: Path, tracking_uri: str) -> None:
    """Fail in one line, at once, when a local SQLite store cannot be used.

    MLflow retries opening any SQL store for ~100 s (meant for a database server that is still
    starting); a folder that cannot be written or a file that is not a database never recovers.
    Remote stores (http, postgresql) keep MLflow's retries.
    """
    hint = "pass --tracking-uri sqlite:///<writable folder>/mlflow.db (or set MLFLOW_TRACKING_URI)"

    def fail(reason: str) -> TrackingError:
        return TrackingError(f"cannot use the MLflow tracking store '{tracking_uri}': {reason}; {hint}")

    import sqlite3
    import tempfile

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot create folder '{db.parent}' ({exc.strerror or exc})") from None
    if not db.exists():
        try:  # a probe file: os.access says yes to root on a read-only file system
            fd, probe = tempfile.mkstemp(dir=db.parent, prefix=".mlflow-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise fail(f"folder '{db.parent}' is not writable ({exc.strerror or exc})") from None
        return
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=10)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise fail(f"'{db}' cannot be opened as a SQLite database ({exc})") from None


def _store_template_path() -> Path:
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recstudio"
    return cache / f"mlflow-{mlflow.__version__}-empty-store.db"


def _build_store_template(template: Path) -> None:
    """An MLflow SQLite store with every migration applied and no experiment in it."""
    import sqlite3
    import tempfile

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as work:
        db = Path(work) / "store.db"
        store = SqlAlchemyStore(f"sqlite:///{db}", Path(work).as_uri())
        store.engine.dispose()
        # the default experiment records this folder as its artifact location: drop it, and
        # MLflow recreates it (pointing at the right place) when the copy is first opened
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            conn.execute("DELETE FROM experiments WHERE experiment_id = 0")
        conn.close()
        os.replace(db, template)


def seed_sqlite_store(db: Path) -> bool:
    """Create the SQLite store ``db`` as a copy of an empty, fully migrated one; True if done.

    MLflow builds a new store by running its whole chain of schema migrations, 1.9 s on the
    2-core machine, paid by every new experiment folder (and by each test that makes one). The
    migrated, empty store is built once per MLflow version under ``~/.cache/recstudio`` and
    copied (~10 ms). The copy is put in place with ``os.link``, which never replaces a store
    another process created meanwhile. Any failure leaves the job to MLflow, as before.
    """
    import shutil
    import tempfile

    try:
        template = _store_template_path()
        if not template.exists():
            _build_store_template(template)
        fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=".mlflow-seed-")
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.link(tmp, db)
        finally:
            os.unlink(tmp)
        return True
    except FileExistsError:
        return False  # another process created the store first: use theirs
    except Exception as exc:  # noqa: BLE001 - an optimisation only: MLflow creates the store itself
        log.debug("could not seed the MLflow store %s from a template (%s); MLflow will create it", db, exc)
        return False


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
"""The experiment kind MLflow 3's UI reads (``mlflow.experimentKind``) to open an experiment on
its runs table ("Model training") rather than the GenAI "Overview". MLflow 3.17's UI reads a
per-browser "workflow type" instead (GenAI unless switched, or ``?workflowType=machine_learning``
in the URL), so ``recstudio ui`` also prints links that carry it."""


def get_or_create_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """Experiment id for ``name``, creating it (race-safe) with artifacts beside a local store,
    marked as a model-training experiment and with the general saved UI view ``runs``
    (``recstudio.track.views``); an experiment without them gets them too."""
    from recstudio.track.views import RUNS_VIEW_KEY, VIEW_TAG_PREFIX, runs_view

    view_tag = VIEW_TAG_PREFIX + RUNS_VIEW_KEY
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        tags = exp.tags or {}
        if EXPERIMENT_KIND_TAG not in tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        if view_tag not in tags:
            client.set_experiment_tag(exp.experiment_id, view_tag, json.dumps(runs_view()))
        return exp.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=default_artifact_root(tracking_uri),
            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND, view_tag: json.dumps(runs_view())},
        )
    except Exception:  # another worker created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """One MLflow run: params, per-epoch metrics (step = epoch), final metrics, tags, artifacts."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "recstudio",
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        try:
            self.client = mlflow_client(self.tracking_uri)
            self.experiment_id = get_or_create_experiment(self.client, experiment, self.tracking_uri)
            run_tags = dict(tags or {})
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(f"cannot open MLflow tracking store '{self.tracking_uri}': {exc}") from exc
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri
        self._pending: list[Any] = []
        # Queued (asynchronous) logging pays off against a server, where every write is a round
        # trip. Against a local SQLite file a write takes ~1.5 ms, while ending a run that used
        # MLflow's queue waits up to ~1 s for its worker thread to stop: write directly there.
        self._queue_writes = not self.tracking_uri.startswith("sqlite:")

    # ------------------------------------------------------------------ logging
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0, synchronous: bool = True) -> None:
        """Log metrics; ``synchronous=False`` queues them when the store is remote (per-epoch
        logging stays off the hot path), and writes them at once to a local SQLite store."""
        synchronous = synchronous or not self._queue_writes
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            op = self.client.log_batch(
                self.run_id, metrics=items[start : start + 1000], synchronous=synchronous
            )
            if op is not None:
                self._pending.append(op)

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: dict[str, Any],
        profile: dict[str, Any],
        schema: dict[str, Any] | None = None,
        context: str = "training",
    ) -> None:
        """Record the run's data as an MLflow dataset input (``log_dataset_to_run``)."""
        log_dataset_to_run(self.client, self.run_id, name, digest, source, profile, schema, context)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: dict[str, Any], artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=2, default=str), artifact_file)

    def flush(self) -> None:
        for op in self._pending:
            op.wait()
        self._pending.clear()

    def end(self, status: str = "FINISHED") -> None:
        """Close the run: FINISHED, FAILED or KILLED."""
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status=status)

    def artifact_location(self, artifact_path: str) -> str:
        """A local path when artifacts live on this disk, else the artifact URI."""
        uri = f"{self.artifact_uri.rstrip('/')}/{artifact_path}"
        if uri.startswith("file://"):
            from urllib.parse import unquote, urlparse

            return unquote(urlparse(uri).path)
        return uri


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . / and space; '@' is not allowed
    return key.replace("@", "_at_")


def test_metric_key(metric: str) -> str:
    """MLflow key of a run's test value of ``metric`` (``ndcg@10`` -> ``test_ndcg_at_10``)."""
    return _metric_key(f"test_{metric}")


def best_valid_key(metric: str) -> str:
    """MLflow key of the validation ``metric`` at the best epoch (a study's objective)."""
    return _metric_key(f"best_valid_{metric}")


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def git_commit() -> str | None:
    """The source checkout's commit, when RecStudio runs from a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def log_dataset_to_run(
    client: Any,
    run_id: str,
    name: str,
    digest: str,
    source: dict[str, Any],
    profile: dict[str, Any],
    schema: dict[str, Any] | None = None,
    context: str = "training",
) -> None:
    """Record data as an MLflow dataset input of run ``run_id`` (the runs table's Dataset
    column): runs on the same prepared data share ``name`` and ``digest``; a changed raw file or
    preprocessing option changes the digest."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="local",
        source=json.dumps(source, default=str),
        schema=json.dumps(schema) if schema else None,
        profile=json.dumps(profile, default=str),
    )
    tags = [InputTag(key="mlflow.data.context", value=context)]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])
