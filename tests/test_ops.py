"""Fast training ops (``recstudio.model.ops``) and the manual optimisation step of the base class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recstudio.model.ops import Embedding, gather_rows, sum_squared_rows
from recstudio.testing import planted_data


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_gather_rows_matches_nn_embedding(padding_idx: int | None) -> None:
    torch.manual_seed(0)
    ref = nn.Embedding(40, 6, padding_idx=padding_idx)
    fast = Embedding(40, 6, padding_idx=padding_idx)
    fast.weight.data.copy_(ref.weight.data)
    index = torch.randint(0, 40, (25, 3))
    index[0, 0] = 0  # the padding row is used at least once
    grad = torch.randn(25, 3, 6)
    out_ref, out_fast = ref(index), fast(index)
    assert torch.equal(out_ref, out_fast)
    out_ref.backward(grad)
    out_fast.backward(grad)
    assert torch.allclose(ref.weight.grad, fast.weight.grad, atol=1e-6)
    if padding_idx is not None:
        assert fast.weight.grad[padding_idx].abs().sum() == 0


def test_gather_rows_without_grad_is_plain_lookup() -> None:
    weight = torch.randn(10, 4)
    index = torch.tensor([[1, 2], [3, 9]])
    assert torch.equal(gather_rows(weight, index), weight[index])


@pytest.mark.parametrize("num_rows", [5, 500])  # fewer rows than indices (bincount) and more
def test_sum_squared_rows_value_and_gradient(num_rows: int) -> None:
    torch.manual_seed(1)
    index = torch.randint(0, num_rows, (64, 2))
    w_ref = torch.randn(num_rows, 3, requires_grad=True)
    w_fast = w_ref.detach().clone().requires_grad_(True)
    ref = w_ref[index].pow(2).sum()
    fast = sum_squared_rows(w_fast, index)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    ref.backward()
    fast.backward()
    assert torch.allclose(w_ref.grad, w_fast.grad, atol=1e-5)


def test_sum_squared_rows_reuses_gathered_rows() -> None:
    weight = torch.randn(100, 3)
    index = torch.tensor([4, 4, 7])
    rows = weight[index]
    assert sum_squared_rows(weight, index, rows=rows).item() == pytest.approx(rows.pow(2).sum().item())


def test_step_scheduler_decays_learning_rate_each_epoch() -> None:
    """Manual optimisation steps epoch schedulers itself: after 3 epochs lr = lr0 * gamma**3."""
    from recstudio.config import resolve
    from recstudio.pipeline import RunOptions, run

    data = planted_data()
    cfg = resolve(
        model="BPR",
        dataset=data.name,
        overrides={
            "epochs": 3,
            "early_stop_patience": 0,
            "learning_rate": 0.01,
            "scheduler": "step",
            "scheduler_step": 1,
            "scheduler_gamma": 0.5,
        },
    )
    seen: list[float] = []

    import pytorch_lightning as pl

    class LrProbe(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

        def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    run(cfg, RunOptions(tracking=False, quiet=True, callbacks=[LrProbe()]), data=data)
    assert seen == pytest.approx([0.01, 0.005, 0.0025, 0.00125])


def test_gradient_clipping_bounds_the_update() -> None:
    """SGD with lr 1 and gradients clipped to norm c moves the weights at most c per step."""
    import pytorch_lightning as pl

    from recstudio.config import resolve
    from recstudio.pipeline import RunOptions, run

    data = planted_data()
    moved: dict[float | None, float] = {}
    for clip in (None, 1e-4):
        cfg = resolve(
            model="BPR",
            dataset=data.name,
            overrides={
                "epochs": 1,
                "early_stop_patience": 0,
                "learner": "sgd",
                "learning_rate": 1.0,
                "gradient_clip": clip,
                "reg_weight": 0.0,
                "init_std": 0.1,
            },
        )
        state: dict[str, torch.Tensor] = {}

        class Probe(pl.Callback):
            def __init__(self, state: dict[str, torch.Tensor]) -> None:
                self.state = state

            def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
                self.state["start"] = torch.cat(
                    [p.detach().flatten().clone() for p in pl_module.parameters()]
                )

            def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
                end = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
                self.state["delta"] = (end - self.state["start"]).norm()
                self.state["steps"] = torch.tensor(float(trainer.global_step))

        run(cfg, RunOptions(tracking=False, quiet=True, callbacks=[Probe(state)]), data=data)
        moved[clip] = float(state["delta"])
        steps = float(state["steps"])
    assert steps >= 1
    assert moved[1e-4] <= steps * 1e-4 * 1.001
    assert moved[None] > 10 * steps * 1e-4
