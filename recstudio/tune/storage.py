"""Optuna storages: where studies live, and how to open one safely from several processes.

Every other tuning module reaches the database through here, so the SQLite specifics (a busy
timeout, the parent folder of the file) and the redaction of passwords from URLs are decided
once. One study lives in one RDB storage: SQLite ``./optuna.db`` by default, PostgreSQL or any
SQLAlchemy URL via ``--storage`` / ``$RECSTUDIO_OPTUNA_STORAGE``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna

from recstudio.errors import ConfigError, RecStudioError

STORAGE_ENV = "RECSTUDIO_OPTUNA_STORAGE"
DEFAULT_STORAGE_FILE = "optuna.db"
SQLITE_TIMEOUT_S = 60


def default_storage() -> str:
    """``$RECSTUDIO_OPTUNA_STORAGE``, else SQLite ``./optuna.db`` (absolute, so workers agree)."""
    env = os.environ.get(STORAGE_ENV)
    if env:
        return env
    return f"sqlite:///{Path(DEFAULT_STORAGE_FILE).resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password, for logs, tags and the CLI's output."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory SQLite)."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///") :])
    return None


def make_storage(
    url: str,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int = 1,
    stale_callback: Any = None,
    create_tables: bool = True,
) -> optuna.storages.RDBStorage:
    """An ``RDBStorage`` with heartbeats, stale-trial retry and a SQLite busy timeout.

    SQLite serialises writers; without a connect timeout a second worker gets "database is
    locked" at once. Workers pass ``create_tables=False``: the parent created the schema.
    """
    from optuna.exceptions import ExperimentalWarning

    engine_kwargs: dict[str, Any]
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    else:
        engine_kwargs = {"pool_pre_ping": True}
    callback = stale_callback
    if callback is None and heartbeat_interval:
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval or None,
                grace_period=grace_period if heartbeat_interval else None,
                heartbeat_stale_trial_callback=callback if heartbeat_interval else None,
                skip_table_creation=not create_tables,
            )
        except ImportError as exc:
            raise ConfigError(f"storage '{redact(url)}' needs a database driver: {exc}") from None
        except Exception as exc:
            if isinstance(exc, RecStudioError):
                raise
            raise ConfigError(f"cannot open Optuna storage '{redact(url)}': {exc}") from None


def open_existing(storage: str | None) -> tuple[str, optuna.storages.RDBStorage]:
    """(url, storage) of a storage that must already exist, for reading studies (no heartbeats).

    A missing SQLite file is an error rather than a new empty database: ``recstudio studies``
    in the wrong folder should say so, not list nothing.
    """
    url = storage or default_storage()
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise ConfigError(f"no Optuna storage at {path} (run `recstudio tune` first, or pass --storage)")
    return url, make_storage(url, heartbeat_interval=None)
