"""Progress: a bar on a terminal, else lines with epoch, loss, monitor and ETA on stderr, which
-q and --json do not silence (issue 13)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

import recstudio.progress
from recstudio.progress import format_seconds, resolve_progress
from tests.test_cli_run import write_toy_dataset


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    assert resolve_progress("auto", quiet=False, stream=_Tty()) == "bar"
    assert resolve_progress("auto", quiet=True, stream=_Tty()) == "lines"
    assert resolve_progress("auto", quiet=False, stream=io.StringIO()) == "lines"
    assert resolve_progress("none", quiet=False, stream=_Tty()) == "none"
    assert format_seconds(42) == "42s" and format_seconds(185) == "3m05s" and format_seconds(7440) == "2h04m"


EPOCH_LINE = re.compile(
    r"^epoch (\d+)/4  loss \d+\.\d{4}  valid ndcg@10 \d\.\d{4} \(best \d\.\d{4} @\d+\)  "
    r"\d+\.\d+ s/epoch  elapsed \S+(  ETA <= \S+)?$"
)


@pytest.mark.parametrize("flags", [["-q"], ["--json"], ["-q", "--json"]])
def test_quiet_and_json_runs_still_report_each_epoch_on_stderr(
    workdir: Path, flags: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recstudio.cli import main

    monkeypatch.setattr(recstudio.progress, "MIN_LINE_GAP", 0.0)  # every epoch, however fast
    spec = write_toy_dataset(workdir)
    main(["run", "-m", "BPR", "-d", str(spec), "--epochs", "4", "--no-tracking", *flags])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [EPOCH_LINE.match(line) is not None for line in lines] == [True] * 4, err
    assert [int(EPOCH_LINE.match(line)[1]) for line in lines] == [1, 2, 3, 4]
    assert "ETA <= " in lines[0] and "ETA" not in lines[-1]
    if "--json" in flags:
        json.loads(out)  # stdout holds the JSON object only
    main(["run", "-m", "BPR", "-d", str(spec), "--epochs", "2", "--no-tracking", "-q", "--progress", "none"])
    assert "epoch " not in capsys.readouterr().err


def test_long_epochs_report_inside_the_epoch(
    workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recstudio.cli import main

    monkeypatch.setattr(recstudio.progress, "LINE_INTERVAL", 0.0)
    spec = write_toy_dataset(workdir)
    main(["run", "-m", "BPR", "-d", str(spec), "--epochs", "1", "--no-tracking", "-q",
          "--batch-size", "64", "--progress", "lines"])  # fmt: skip
    err = capsys.readouterr().err
    assert re.search(r"^epoch 1/1  batch \d+/\d+  epoch ETA \S+  loss \d+\.\d{4}$", err, re.M), err


def test_tune_json_reports_trial_progress(
    workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recstudio.cli import main

    monkeypatch.setattr(recstudio.progress, "MIN_LINE_GAP", 0.0)
    spec = write_toy_dataset(workdir)
    main(["tune", "-m", "BPR", "-d", str(spec), "--trials", "2", "--epochs", "2", "--json"])
    out, err = capsys.readouterr()
    assert json.loads(out)["study"]
    assert re.search(r"^trial 0: epoch 1/2  loss ", err, re.M)  # the first trial is never pruned
    assert re.search(r"^trial 0: epoch 2/2  loss ", err, re.M)
