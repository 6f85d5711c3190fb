"""Session data: a spec's session column makes each session its own sequence for sequential models."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from recstudio.data import prepare
from recstudio.data.preprocess import session_keys

EXAMPLE = Path(__file__).resolve().parents[1] / "experiments" / "datasets" / "sessions-example.yaml"

CLICKS = """session,user,item,ts
s1,u1,10,1
s1,u1,11,2
s1,u1,12,3
s2,u1,10,10
s2,u1,13,11
s2,u1,14,12
s3,u2,11,5
s3,u2,12,6
s3,u2,13,7
"""


def write_spec(root: Path, with_session: bool = True) -> Path:
    (root / "clicks.csv").write_text(CLICKS)
    roles = "{user: user, item: item, timestamp: ts" + (", session: session}" if with_session else "}")
    spec = root / "clicks.yaml"
    spec.write_text(
        f"name: clicks\nfolder: .\ninteractions:\n  file: clicks.csv\n  format: csv\n  roles: {roles}\n"
    )
    return spec


def test_session_keys_use_session_ids_unless_they_repeat_across_users():
    codes, uniques = session_keys(pa.array(["u1", "u1", "u2"]), pa.array([7, 8, 9]))
    assert uniques.to_pylist() == [7, 8, 9] and codes.tolist() == [0, 1, 2]
    # session "1" exists for both users: keys become user:session
    codes, uniques = session_keys(pa.array(["u1", "u1", "u2"]), pa.array([1, 1, 1]))
    assert uniques.to_pylist() == ["u1:1", "u2:1"] and codes.tolist() == [0, 0, 1]


def test_by_session_makes_one_sequence_per_session(tmp_path: Path):
    spec = write_spec(tmp_path)
    per_session = prepare(spec, {"by_session": True, "split": "loo"}, cache_dir=tmp_path / "c")
    per_user = prepare(spec, {"split": "loo"}, cache_dir=tmp_path / "c")
    assert per_session.user_vocab[1:] == ["s1", "s2", "s3"] and per_user.user_vocab[1:] == ["u1", "u2"]
    # leave-one-out within each session: the last click of every session is its test item
    item_of = {raw: i for i, raw in enumerate(per_session.item_vocab) if i}
    assert sorted(per_session.test.item.tolist()) == sorted(item_of[x] for x in (12, 14, 13))
    # per user, u1's repeated item 10 is one pair (drop_duplicates keeps the latest)
    assert len(per_user.train) + len(per_user.valid) + len(per_user.test) == 8
    assert len(per_session.train) + len(per_session.valid) + len(per_session.test) == 9
    assert per_session.cache_key != per_user.cache_key


def test_by_session_is_moot_and_shares_the_cache_without_a_session_column(tmp_path: Path):
    spec = write_spec(tmp_path, with_session=False)
    a = prepare(spec, {"by_session": True, "split": "loo"}, cache_dir=tmp_path / "c")
    b = prepare(spec, {"split": "loo"}, cache_dir=tmp_path / "c")
    assert a.cache_key == b.cache_key and b.manifest["cache_hit"]
    assert a.num_users == 3  # two users + padding


def test_sequential_models_default_to_sessions_and_general_ones_to_users(tmp_path: Path):
    from recstudio.experiment import resolve_config
    from recstudio.model.registry import all_models

    for cls in all_models():
        cfg = resolve_config(model=cls.__name__, dataset=str(EXAMPLE))
        assert cfg.data.by_session == (cls.family == "sequential"), cls.__name__
    sessions = prepare(EXAMPLE, {"by_session": True, "min_user_inter": 2}, cache_dir=tmp_path)
    users = prepare(EXAMPLE, {"min_user_inter": 2}, cache_dir=tmp_path)
    assert sessions.num_users - 1 == 217 and users.num_users - 1 == 60


@pytest.mark.parametrize("flag", ["--by-session", "--no-by-session"])
def test_cli_flag_is_generated(flag: str):
    from click.testing import CliRunner

    from recstudio.cli import cli

    out = CliRunner().invoke(cli, ["run", "--help"]).output
    assert flag.split("/")[0] in out


def test_order_says_what_the_row_order_follows(tmp_path: Path):
    timed = prepare(write_spec(tmp_path), cache_dir=tmp_path / "c")
    assert timed.order() == "time"
    untimed_spec = tmp_path / "untimed.yaml"
    untimed_spec.write_text(
        "name: untimed\nfolder: .\ninteractions:\n  file: clicks.csv\n  format: csv\n"
        "  roles: {user: user, item: item}\n"
    )
    assert prepare(untimed_spec, cache_dir=tmp_path / "c").order() == "file"


def test_sequential_model_without_time_warns_once_and_tags_the_run(workdir: Path, caplog):
    import logging

    from mlflow import MlflowClient

    import recstudio

    (workdir / "clicks.csv").write_text(CLICKS)
    spec = workdir / "untimed.yaml"
    spec.write_text(
        "name: untimed\nfolder: .\ninteractions:\n  file: clicks.csv\n  format: csv\n"
        "  roles: {user: user, item: item}\n"
    )
    with caplog.at_level(logging.WARNING, logger="recstudio"):
        first = recstudio.run(model="GRU4Rec", dataset=str(spec), train__epochs=1, quiet=True)
        recstudio.run(model="GRU4Rec", dataset=str(spec), train__epochs=1, quiet=True)
    warnings = [r for r in caplog.records if "file order" in r.getMessage()]
    assert len(warnings) == 1 and "GRU4Rec" in warnings[0].getMessage()
    run = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}").get_run(first["run_id"])
    assert run.data.tags["data.order"] == "file"
