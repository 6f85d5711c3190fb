"""Ready-made splits without a valid file: hold validation out of the given train file
(``data.valid_from_train``), so early stopping works; ``datasets info`` says the split is given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recstudio.testing import planted_data

SPEC = """\
name: given
interactions:
  format: tsv
  columns: [user, item, ts]
  roles: {user: user, item: item, timestamp: ts}
splits: {train: a.base, test: a.test}
"""


@pytest.fixture
def given_spec(workdir: Path) -> Path:
    data = planted_data(num_users=80, num_items=40, seed=3)
    train, test = [], []
    for part, rows in ((data.train, train), (data.valid, train), (data.test, test)):
        for u, i, t in zip(part.user.tolist(), part.item.tolist(), part.time.tolist()):
            rows.append(f"{u}\t{i}\t{int(t) + 1000}")
    (workdir / "a.base").write_text("\n".join(train) + "\n")
    (workdir / "a.test").write_text("\n".join(test) + "\n")
    (workdir / "given.yaml").write_text(SPEC)
    return workdir / "given.yaml"


def test_valid_held_out_of_the_given_train_file_per_user(given_spec: Path) -> None:
    from recstudio.config import DataConfig
    from recstudio.data import prepare

    plain = prepare(str(given_spec), DataConfig())
    assert len(plain.valid) == 0
    by_time = prepare(str(given_spec), DataConfig(valid_from_train=0.1, split_order="time"))
    assert len(by_time.test) == len(plain.test)
    assert len(by_time.train) + len(by_time.valid) == len(plain.train)
    # per user: ~10% of the train rows (at least one train row kept), the latest ones by time
    users = by_time.valid.user.numpy()
    assert len(np.unique(users)) == len(users) == 80  # 8-12 train rows each: one valid row
    for u in np.unique(users)[:10]:
        latest_train = by_time.train.time[by_time.train.user == u].max()
        assert by_time.valid.time[by_time.valid.user == u].min() >= latest_train
    shuffled = prepare(str(given_spec), DataConfig(valid_from_train=0.1))
    assert len(shuffled.valid) == len(by_time.valid) and shuffled.cache_key != by_time.cache_key


def test_valid_from_train_needs_ready_made_splits(workdir: Path) -> None:
    from recstudio.config import DataConfig
    from recstudio.data import prepare
    from recstudio.errors import ConfigError
    from tests.test_cli_run import write_toy_dataset

    spec = write_toy_dataset(workdir)
    with pytest.raises(ConfigError, match="data.valid_from_train' applies to ready-made splits"):
        prepare(str(spec), DataConfig(valid_from_train=0.1))


def test_cli_early_stops_on_the_held_out_valid_quietly_and_info_says_given(
    given_spec: Path, capsys: pytest.CaptureFixture
) -> None:
    from recstudio.cli import main

    args = ["run", "-m", "BPR", "-d", str(given_spec), "--no-tracking", "-q", "--json"]
    main([*args, "--epochs", "60", "--early-stop-patience", "2", "--learning-rate", "0.05",
          "--valid-from-train", "0.1", "--split-order", "time"])  # fmt: skip
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["valid"] and result["data"]["valid"] > 0
    assert result["epochs"] < 60 and result["best_epoch"] < result["epochs"] - 1  # stopped early
    assert "val_dataloader" not in captured.err and "Warning" not in captured.err

    main(["run", "-m", "BPR", "-d", str(given_spec), "--no-tracking", "-q", "--epochs", "1"])
    assert "val_dataloader" not in capsys.readouterr().err  # no Lightning warning under -q

    main(["datasets", "info", str(given_spec)])
    out = capsys.readouterr().out
    assert "split: given by the spec (train a.base, test a.test)" in out and "valid_from_train" in out
    assert "split=user_entry" not in out and "split_ratio" not in out
    main(["datasets", "info", str(given_spec), "--set", "data.valid_from_train=0.1"])
    assert "valid: 0.1 of each user's train rows" in capsys.readouterr().out
