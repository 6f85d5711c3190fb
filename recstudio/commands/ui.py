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
    click.echo(f"MLflow UI on http://{host}:{port} (store {uri}); Ctrl-C stops it", err=True)
    try:
        subprocess.run(cmd, check=False, env=os.environ.copy())
    except KeyboardInterrupt:
        pass
