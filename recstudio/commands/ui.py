"""``recstudio ui``: the MLflow UI for the local store (or any tracking URI)."""

from __future__ import annotations

import os
import subprocess
import sys

import click


@click.command("ui")
@click.option(
    "--tracking-uri", help="Backend store URI (default $MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)."
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to bind (localhost only by default)."
)
@click.option("--port", default=5000, show_default=True, type=int)
def ui_command(tracking_uri: str | None, host: str, port: int) -> None:
    """Serve the MLflow UI for RecStudio's runs on localhost."""
    from recstudio.track.tracker import default_artifact_root, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        click.echo(f"runs are on a tracking server: open {uri} in a browser")
        return
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    artifacts = default_artifact_root(uri)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    base = f"http://{host}:{port}"
    click.echo(f"MLflow UI on {base} (store {uri}); Ctrl-C stops it", err=True)
    for name, link in experiment_links(uri, base):
        click.echo(f"  {name}: {link}", err=True)
    serve(cmd)


def experiment_links(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(label, URL) of RecStudio's experiments in the store, opening on the runs table, each
    followed by its saved views (``recstudio.track.views``): ``runs`` (every run with the key
    columns), and per study its trials with their key columns and the same view's charts
    (parallel coordinates first).

    MLflow 3.17's UI decides between its GenAI and model-training pages by a "workflow type"
    kept in the browser (GenAI unless switched) or given as ``?workflowType=machine_learning``;
    the experiment's ``mlflow.experimentKind`` tag is not enough there, so the links carry it.
    """
    from recstudio.track.tracker import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, mlflow_client
    from recstudio.track.views import VIEW_TAG_PREFIX, saved_views, view_link

    try:
        experiments = mlflow_client(tracking_uri).search_experiments()
    except Exception:  # noqa: BLE001 - links are a convenience; the UI itself reports store errors
        return []
    links = []
    for e in experiments:
        tags = e.tags or {}
        if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
            continue
        links.append((e.name, f"{base}/#/experiments/{e.experiment_id}?workflowType=machine_learning"))
        for key in saved_views(tags):
            links.append((f"  {key}", view_link(base, e.experiment_id, key)))
            if "compareRunCharts" in tags[VIEW_TAG_PREFIX + key]:  # a view with its own charts
                links.append((f"  {key} charts", view_link(base, e.experiment_id, key, charts=True)))
    return links


STOP_GRACE_SECONDS = 10.0
"""How long the server's process group gets to exit after SIGTERM before it is killed."""


def serve(cmd: list[str]) -> int:
    """Run ``cmd`` (``mlflow ui``) in its own process group until it exits or this process is
    told to stop (SIGTERM, SIGHUP, Ctrl-C); stopping ends the whole group.

    ``mlflow ui`` starts a server that forks worker processes; signalling only the direct
    child (or nothing, as ``kill <pid>`` of a plain ``subprocess.run`` did) left them serving.
    """
    import signal

    child = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)

    def stop(signum: int, frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return child.wait()
    except (_Stop, KeyboardInterrupt):
        stop_group(child)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stop(Exception):
    """A stop signal arrived while waiting for the server."""


def stop_group(child: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, then SIGKILL to what is left after the grace time."""
    import signal
    import time

    try:
        pgid = os.getpgid(child.pid)
    except ProcessLookupError:
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
