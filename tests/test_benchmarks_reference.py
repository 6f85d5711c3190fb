"""The reference comparison's own parts that run in this environment (the reference libraries
themselves run in their own virtualenvs, see benchmarks/reference/setup.sh)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _compare_module():
    path = REPO / "benchmarks" / "reference" / "compare.py"
    spec = importlib.util.spec_from_file_location("reference_compare", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_atomic_files_keep_every_interaction(tmp_path: Path) -> None:
    """RecBole's atomic format: typed header, tab-separated, one row per raw interaction; the
    ml-1m pairs get the constant rating/timestamp columns the original RecStudio requires."""
    compare = _compare_module()
    raw = tmp_path / "raw"
    (raw / "ml-100k").mkdir(parents=True)
    (raw / "ml-100k" / "u.data").write_text("1\t10\t4\t881250949\n2\t20\t2\t891717742\n1\t30\t5\t878887116\n")
    (raw / "ml-1m").mkdir()
    pd.DataFrame({"userID": ["1", "1", "2"], "movieID": ["1193", "661", "914"]}).to_parquet(
        raw / "ml-1m" / "ratings.parquet"
    )
    work = tmp_path / "work"
    compare.write_atomic_files(raw, work, ["ml-100k", "ml-1m"])

    small = pd.read_csv(work / "ml-100k" / "ml-100k.inter", sep="\t")
    assert list(small.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert small.values.tolist() == [[1, 10, 4, 881250949], [2, 20, 2, 891717742], [1, 30, 5, 878887116]]
    pairs = pd.read_csv(work / "ml-1m" / "ml-1m.inter", sep="\t")
    assert list(pairs.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert pairs[["user_id:token", "item_id:token"]].values.tolist() == [[1, 1193], [1, 661], [2, 914]]


def test_steady_state_skips_the_first_epoch_and_data_root_is_required(monkeypatch) -> None:
    compare = _compare_module()
    assert compare.steady([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert compare.steady([5.0]) == 5.0
    monkeypatch.delenv("RECSTUDIO_DATA_DIR", raising=False)
    with pytest.raises(SystemExit, match="RECSTUDIO_DATA_DIR"):
        compare.data_root(None)
