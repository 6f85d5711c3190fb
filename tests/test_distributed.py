"""``--devices N``: one run as N DDP processes (gloo on CPU), started by ``recstudio.distributed``.

Each test spawns a second Python process (imports included), so each takes ~10-20 s.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from recstudio.experiment import resolve_config
from recstudio.pipeline import RunOptions, evaluate_checkpoint, run
from recstudio.testing import planted_data

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed (gloo)")


def _cfg(data, **overrides):  # noqa: ANN001, ANN202
    return resolve_config(model="BPR", dataset=data.name, overrides={"early_stop_patience": 0, **overrides})


def test_one_checkpoint_gives_the_same_metrics_on_one_and_two_processes(tmp_path: Path) -> None:
    data = planted_data()
    cfg = _cfg(data, epochs=3)
    trained = run(
        cfg,
        RunOptions(tracking=False, quiet=True, accelerator="cpu", checkpoint_dir=str(tmp_path)),
        data=data,
    )
    options = RunOptions(tracking=False, quiet=True, accelerator="cpu")
    one = evaluate_checkpoint(cfg, trained["checkpoint"], options, data=data)
    two = evaluate_checkpoint(
        cfg, trained["checkpoint"], RunOptions(**{**options.__dict__, "devices": 2}), data=data
    )
    assert set(one) == {"valid", "test"}
    assert one["test"]["ndcg@10"] > 0
    # every user is scored by exactly one rank and the float64 sums are all-reduced: equal up to
    # the order of the final additions (the last bit of a float64)
    assert two.keys() == one.keys()
    for split in one:
        assert two[split] == pytest.approx(one[split], rel=1e-12, abs=1e-15)
    assert one["test"] == pytest.approx(trained["test"], rel=1e-6)


def test_two_process_training_is_tracked_and_its_checkpoint_reproduces_its_test_metrics(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    data = planted_data()
    cfg = _cfg(data, epochs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(
        cfg,
        RunOptions(
            tracking_uri=uri, quiet=True, accelerator="cpu", devices=2, checkpoint_dir=str(tmp_path / "ckpt")
        ),
        data=data,
    )
    assert result["epochs"] == 2
    client = MlflowClient(tracking_uri=uri)
    mlflow_run = client.get_run(result["run_id"])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["devices"] == "2"
    assert len(client.get_metric_history(result["run_id"], "valid/ndcg_at_10")) == 2
    # only rank 0 tracks: one run in the experiment
    runs = client.search_runs([mlflow_run.info.experiment_id])
    assert len(runs) == 1
    again = evaluate_checkpoint(
        cfg, result["checkpoint"], RunOptions(tracking=False, quiet=True, accelerator="cpu"), data=data
    )
    assert again["test"] == pytest.approx(result["test"], rel=1e-6)


class _FailAtEpoch:
    """Lightning callback that raises on rank 0 only (options.callbacks never reach other ranks)."""

    def __new__(cls):  # noqa: ANN204
        import pytorch_lightning as pl

        class FailAtEpoch(pl.Callback):
            def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
                if trainer.current_epoch == 1:
                    raise RuntimeError("injected failure on rank 0")

        return FailAtEpoch()


def test_a_failure_on_rank_zero_stops_the_other_ranks() -> None:
    data = planted_data()
    cfg = _cfg(data, epochs=50)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="injected failure"):
        run(
            cfg,
            RunOptions(tracking=False, quiet=True, accelerator="cpu", devices=2, callbacks=[_FailAtEpoch()]),
            data=data,
        )
    assert time.monotonic() - t0 < 120
    deadline = time.monotonic() + 15
    while mp.active_children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not mp.active_children()


def test_devices_must_be_positive() -> None:
    from recstudio.errors import ConfigError

    data = planted_data()
    with pytest.raises(ConfigError, match="devices"):
        run(
            _cfg(data, epochs=1),
            RunOptions(tracking=False, quiet=True, accelerator="cpu", devices=0),
            data=data,
        )
