"""``mlflow models serve`` as a child process, for tests, benchmarks and notebooks.

``ModelServer(uri, tracking_uri)`` starts the MLflow scoring server for a logged or registered
model (``--env-manager local``: this environment's recstudio answers), waits until ``/ping``
answers, and ``post(body)`` sends one JSON request to ``/invocations``. Used as a context manager
it stops the server on exit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ModelServer:
    """A running ``mlflow models serve`` on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self, model_uri: str, tracking_uri: str, workers: int = 1, startup_seconds: float = 120.0
    ) -> None:
        self.port = free_port()
        # mlflow execs ``uvicorn`` by name: this environment's scripts first on PATH, so an
        # interpreter run without activating its virtual environment still finds it
        scripts = str(Path(sys.executable).parent)
        path = os.pathsep.join([scripts, os.environ.get("PATH", "")])
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        command = [
            str(mlflow_cli), "models", "serve", "--env-manager", "local", "-m", model_uri,
            "--host", "127.0.0.1", "-p", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + startup_seconds
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited: {self.process.stderr.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
                    return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow models serve did not answer /ping within {startup_seconds:.0f} s")

    def post(self, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) of one request to ``/invocations``."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
