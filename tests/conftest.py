"""Shared fixtures: isolated working directory (MLflow store, cache) and real-data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """``$RECSTUDIO_DATA_DIR`` or ``../shared/datasets`` beside the checkout, if present."""
    env = os.environ.get("RECSTUDIO_DATA_DIR")
    for candidate in (Path(env) if env else None, REPO.parent / "shared" / "datasets"):
        if candidate is not None and candidate.is_dir():
            return candidate.resolve()
    return None


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary folder with its own ./mlruns, ./datasets and cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RECSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def shared_datasets() -> Path:
    path = real_data_dir()
    if path is None or not (path / "ml-100k" / "u.data").is_file():
        pytest.skip("real datasets not available (set RECSTUDIO_DATA_DIR)")
    return path
