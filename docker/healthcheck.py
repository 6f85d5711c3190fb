#!/usr/bin/env python3
"""Worker container health: the MLflow tracking server and the Optuna database answer.

Checks only what is configured: ``MLFLOW_TRACKING_URI`` when it is http(s) (GET /health) and
``RECSTUDIO_OPTUNA_STORAGE`` when it is PostgreSQL (a connection; the password comes from
``PGPASSWORD`` when the URL has none). Creates no CUDA context. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def check_mlflow(uri: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as resp:
            if resp.status != 200:
                return f"mlflow /health answered {resp.status}"
    except Exception as exc:  # noqa: BLE001 - any failure is unhealthy
        return f"mlflow {uri} unreachable: {exc}"
    return None


def check_postgres(url: str) -> str | None:
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(url)
        with psycopg.connect(
            host=u.host or "localhost",
            port=u.port or 5432,
            user=u.username,
            password=u.password,  # None: libpq reads PGPASSWORD
            dbname=u.database,
            connect_timeout=10,
        ) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        first_line = (str(exc).splitlines() or [""])[0]
        return f"optuna storage unreachable: {type(exc).__name__}: {first_line}"
    return None


def main() -> int:
    problems = []
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking.startswith(("http://", "https://")):
        problems.append(check_mlflow(tracking))
    storage = os.environ.get("RECSTUDIO_OPTUNA_STORAGE", "")
    if storage.startswith("postgresql"):
        problems.append(check_postgres(storage))
    problems = [p for p in problems if p]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
