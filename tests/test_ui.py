"""``recstudio ui``: stopping it (SIGTERM, as ``kill PID`` sends) stops the MLflow server and
every worker it started (issue 13)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_stopping_recstudio_ui_stops_the_server_and_its_workers(tmp_path: Path) -> None:
    """SIGTERM here; Ctrl-C (SIGINT) takes the same path in ``commands.ui.serve``."""
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    ui = subprocess.Popen(
        [sys.executable, "-m", "recstudio", "ui", "--port", str(port), "--tracking-uri", uri],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not _serving(port):
            assert ui.poll() is None, "recstudio ui exited before serving"
            assert time.monotonic() < deadline, "the MLflow UI did not start"
            time.sleep(0.5)
        started = psutil.Process(ui.pid).children(recursive=True)
        assert started, "mlflow ui runs as a child process"
        os.kill(ui.pid, signal.SIGTERM)
        assert ui.wait(timeout=30) is not None
        gone, alive = psutil.wait_procs(started, timeout=20)
        assert not alive, [p.cmdline() for p in alive]
        assert not _serving(port)
    finally:
        if ui.poll() is None:
            ui.kill()
        for p in started:
            if p.is_running():
                p.kill()
