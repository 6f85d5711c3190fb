"""``recstudio datasets list|prepare|info|clear`` through click's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from recstudio.data.cli import datasets
from recstudio.errors import DataError

SPEC = """\
name: clitoy
interactions:
  file: r.csv
  roles: {user: u, item: i, rating: r}
"""


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    monkeypatch.setenv("RECSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    rows = [f"{u},{i},{(u * i) % 5 + 1}" for u in range(1, 21) for i in range(1, 31) if (u + i) % 3]
    (tmp_path / "r.csv").write_text("u,i,r\n" + "\n".join(rows) + "\n")
    (tmp_path / "clitoy.yaml").write_text(SPEC)
    return tmp_path / "clitoy.yaml"


def test_prepare_info_list_clear(spec: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(datasets, ["prepare", str(spec), "-s", "min_rating=3", "-s", "data.split=loo", "-q"])
    assert out.exit_code == 0, out.output
    assert "clitoy" in out.output and "train" in out.output
    out = runner.invoke(
        datasets, ["info", str(spec), "--set", "min_rating=3", "--set", "split=loo", "--json"]
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["cache_hit"] is True and result["options"]["split"] == "loo"
    assert result["summary"]["users"] == 16 and result["summary"]["test"] == 16  # users 5, 10, 15, 20 rate 1
    out = runner.invoke(datasets, ["list", "--json"])
    listed = json.loads(out.output)
    assert "ml-100k" in listed["builtin"] and [e["name"] for e in listed["cache"]] == ["clitoy"]
    out = runner.invoke(datasets, ["list"])
    assert "clitoy" in out.output and "split=loo" in out.output
    out = runner.invoke(datasets, ["clear", str(spec)])
    assert out.exit_code == 0 and "removed 1 cache entry" in out.output
    assert runner.invoke(datasets, ["clear"]).exit_code == 2  # a name or --all is required
    assert "removed 0" in runner.invoke(datasets, ["clear", "--all"]).output


def test_errors_surface_as_recstudio_errors(spec: Path) -> None:
    out = CliRunner().invoke(datasets, ["prepare", "no-such-dataset"])
    assert isinstance(out.exception, DataError) and "built-in datasets are" in str(out.exception)
    out = CliRunner().invoke(datasets, ["prepare", str(spec), "-s", "train.epochs=3"])
    assert "only data options" in str(out.exception)
