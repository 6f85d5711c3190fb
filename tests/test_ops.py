"""Fast training ops (``recstudio.model.ops``) and the manual optimisation step of the base class."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recstudio.model.loss import BCELoss, BPRLoss
from recstudio.model.ops import (
    Embedding,
    full_softmax_inner_product_loss,
    gather_rows,
    l2_normalize,
    sampled_inner_product_loss,
    sum_squared_rows,
)
from recstudio.testing import planted_data

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc)")


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


@pytest.mark.parametrize("kind, loss_module", [("bpr", BPRLoss()), ("bce", BCELoss())])
@pytest.mark.parametrize("num_negatives", [1, 4])
@pytest.mark.parametrize("reg_weight", [0.0, 0.3])
@needs_compiler
def test_sampled_inner_product_loss_matches_autograd(
    kind: str, loss_module: nn.Module, num_negatives: int, reg_weight: float
) -> None:
    """The hand-written forward/backward equals gather + inner product + loss module + the
    BPR-Opt penalty under autograd: value and both gradients, repeated rows included."""
    torch.manual_seed(2)
    n, d, num_items = 50, 8, 12  # few items: most rows are used several times
    items_ref = torch.randn(num_items, d, dtype=torch.float64, requires_grad=True)
    query_ref = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    items_fast = items_ref.detach().clone().requires_grad_(True)
    query_fast = query_ref.detach().clone().requires_grad_(True)
    candidates = torch.randint(1, num_items, (n, 1 + num_negatives))
    vectors = items_ref[candidates]
    scores = (query_ref.unsqueeze(1) * vectors).sum(-1)
    ref = loss_module(scores[:, 0], scores[:, 1:])
    ref = ref + reg_weight / n * (query_ref.pow(2).sum() + vectors.pow(2).sum())
    fast = sampled_inner_product_loss(query_fast, items_fast, candidates, kind, reg_weight, padding_idx=None)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-12)
    (3.0 * ref).backward()  # a non-unit upstream gradient must scale every term
    (3.0 * fast).backward()
    assert torch.allclose(query_fast.grad, query_ref.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(items_fast.grad, items_ref.grad, rtol=1e-10, atol=1e-12)
    assert items_fast.grad[1:].abs().sum() > 0


@needs_compiler
def test_sampled_inner_product_loss_padding_and_bad_input() -> None:
    items = torch.randn(6, 3, requires_grad=True)
    query = torch.randn(4, 3)
    candidates = torch.tensor([[0, 1], [2, 0], [3, 4], [5, 1]])
    sampled_inner_product_loss(query, items, candidates, "bpr", padding_idx=0).backward()
    assert items.grad[0].abs().sum() == 0 and items.grad[1:].abs().sum() > 0
    assert query.grad is None  # no gradient asked for the query, none computed
    with pytest.raises(ValueError, match="kind"):
        sampled_inner_product_loss(query, items, candidates, "hinge")
    with pytest.raises(ValueError, match="candidates"):
        sampled_inner_product_loss(query, items, candidates[:, :1], "bpr")


@needs_compiler
@pytest.mark.parametrize("loss", ["bpr", "bce"])
def test_bpr_fused_step_equals_generic_step(loss: str) -> None:
    """BPR's fused training loss gives the generic path's loss and gradients on a real batch."""
    from recstudio.model.general.bpr import BPR
    from recstudio.model.scorer import InnerProductScorer

    data = planted_data(num_users=30, num_items=25, seed=3)
    model = BPR(BPR.Config(loss=loss, num_negatives=3, reg_weight=0.01), data)
    users = torch.randint(1, data.num_users, (64,))
    batch = {"user": users, "item": torch.randint(1, data.num_items, (64,))}
    assert model.fused_loss_kind(model.user_vectors(users)) == loss

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(7)  # the same negatives on both paths
        value = model.training_loss(batch)
        value.backward()
        return value.item(), [p.grad.clone() for p in (model.user_emb.weight, model.item_emb.weight)]

    fused_value, fused_grads = loss_and_grads()

    class PlainInnerProduct(InnerProductScorer):
        """A subclass: the fused path must not assume its formula, so the generic path runs."""

    model.scorer = PlainInnerProduct()
    assert model.fused_loss_kind(model.user_vectors(users)) is None
    generic_value, generic_grads = loss_and_grads()
    assert fused_value == pytest.approx(generic_value, rel=1e-6)
    for fused, generic in zip(fused_grads, generic_grads):
        assert torch.allclose(fused, generic, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("keep", [0, 1 << 24], ids=["recompute", "keep"])
@pytest.mark.parametrize("budget", [1, 50, 1 << 19])
@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_full_softmax_inner_product_loss_matches_cross_entropy(
    budget: int, temperature: float, keep: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row blocks of one row, a few rows, all rows, with the probabilities recomputed in
    backward or kept from forward: the value and both gradients of
    ``F.cross_entropy((query @ items.T) / T, target)`` with padding column 0 at -inf (float64)."""
    from recstudio.model import ops

    monkeypatch.setattr(ops, "SOFTMAX_CPU_BLOCK_ELEMENTS", budget)
    monkeypatch.setattr(ops, "SOFTMAX_KEEP_ELEMENTS", keep)
    torch.manual_seed(4)
    n, d, num_items = 37, 6, 15
    query = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    items = torch.randn(num_items, d, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, num_items, (n,))
    fast = full_softmax_inner_product_loss(query, items, target, temperature)
    first = torch.autograd.grad(3.0 * fast, (query, items), retain_graph=True)
    fast_grads = torch.autograd.grad(3.0 * fast, (query, items))  # a second backward: the same
    for a, b in zip(first, fast_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    scores = query @ items.T
    scores[:, 0] = -torch.inf
    ref = torch.nn.functional.cross_entropy(scores / temperature, target)
    ref_grads = torch.autograd.grad(3.0 * ref, (query, items))
    assert fast.item() == pytest.approx(ref.item(), rel=1e-12)
    for got, want in zip(fast_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert fast_grads[1][0].abs().sum() == 0  # the padding item gets no gradient
    with pytest.raises(ValueError, match="target"):
        full_softmax_inner_product_loss(query, items, target[:-1])


def test_softmax_model_fused_loss_equals_generic_loss() -> None:
    """A sequential model's full-softmax training loss (fused path) gives the generic path's
    loss and gradients on a real batch; a scorer subclass runs the generic path."""
    from recstudio.model.scorer import InnerProductScorer
    from recstudio.model.seq.stamp import STAMP, STAMPConfig

    data = planted_data(num_users=30, num_items=25, min_len=6, max_len=14, seed=3)
    model = STAMP(STAMPConfig(max_seq_len=10, embed_dim=8, init_std=0.3), data)
    seq = torch.randint(0, data.num_items, (16, 10))
    target = torch.randint(1, data.num_items, (16, 10))
    target[seq == 0] = 0
    batch = {"seq": seq, "target": target, "user": torch.arange(1, 17)}
    assert model.fused_full_softmax(model.item_vectors(), model.item_vectors())

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        value = model.training_loss(batch)
        value.backward()
        return value.item(), [p.grad.clone() for p in model.parameters()]

    fused_value, fused_grads = loss_and_grads()

    class PlainInnerProduct(InnerProductScorer):
        """A subclass: the fused path must not assume its formula, so the generic path runs."""

    model.scorer = PlainInnerProduct()
    assert not model.fused_full_softmax(model.item_vectors(), model.item_vectors())
    generic_value, generic_grads = loss_and_grads()
    assert fused_value == pytest.approx(generic_value, rel=1e-6)
    for fused, generic in zip(fused_grads, generic_grads):
        torch.testing.assert_close(fused, generic, rtol=1e-4, atol=1e-7)


def test_step_scheduler_decays_learning_rate_each_epoch() -> None:
    """Manual optimisation steps epoch schedulers itself: after 3 epochs lr = lr0 * gamma**3."""
    from recstudio.experiment import resolve_config
    from recstudio.pipeline import RunOptions, run

    data = planted_data()
    cfg = resolve_config(
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

    from recstudio.experiment import resolve_config
    from recstudio.pipeline import RunOptions, run

    data = planted_data()
    moved: dict[float | None, float] = {}
    for clip in (None, 1e-4):
        cfg = resolve_config(
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
                self.state["steps"] = torch.tensor(float(pl_module.optimizer_steps))

        run(cfg, RunOptions(tracking=False, quiet=True, callbacks=[Probe(state)]), data=data)
        moved[clip] = float(state["delta"])
        steps = float(state["steps"])
    assert steps >= 1
    assert moved[1e-4] <= steps * 1e-4 * 1.001
    assert moved[None] > 10 * steps * 1e-4


@pytest.mark.parametrize("variant", ["plain", "clip", "hook"])
def test_plain_step_only_when_no_skipped_hook_matters(variant: str) -> None:
    """One process, 32-bit, no clipping, no step hooks: the plain step (loss.backward and the
    optimizer's own step) runs; otherwise Lightning's path runs, with its hooks at every step.
    Either way every optimizer step is taken and counted."""
    import pytorch_lightning as pl

    from recstudio.experiment import resolve_config
    from recstudio.pipeline import RunOptions, run

    data = planted_data()
    cfg = resolve_config(
        model="BPR",
        dataset=data.name,
        overrides={
            "epochs": 2,
            "early_stop_patience": 0,
            "batch_size": 256,
            "gradient_clip": 1.0 if variant == "clip" else None,
        },
    )
    seen: dict[str, object] = {"backward_hooks": 0}

    class Probe(pl.Callback):
        def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen["direct"] = pl_module._plain_step
            seen["global_step"] = pl_module.optimizer_steps
            seen["steps_per_epoch"] = len(trainer.train_dataloader.view)  # StepGroups: steps, not groups

    class BackwardHook(Probe):
        def on_after_backward(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen["backward_hooks"] += 1

    probe = BackwardHook() if variant == "hook" else Probe()
    run(cfg, RunOptions(tracking=False, quiet=True, callbacks=[probe]), data=data)
    assert seen["direct"] is (variant == "plain")
    assert seen["global_step"] == 2 * seen["steps_per_epoch"] > 0
    if variant == "hook":
        assert seen["backward_hooks"] == seen["global_step"]  # the hook ran at every step


def test_bpr_subclass_with_its_own_user_vectors_is_not_bypassed() -> None:
    """BPR's fused path gathers user rows from the table itself; a subclass that computes user
    vectors differently must see its ``user_vectors`` used."""
    from recstudio.model.general.bpr import BPR

    calls = []

    class ScaledUsers(BPR):
        def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
            calls.append(users.shape[0])
            return 2.0 * super().user_vectors(users)

    data = planted_data(num_users=30, num_items=25, seed=4)
    batch = {"user": torch.randint(1, data.num_users, (16,)), "item": torch.randint(1, data.num_items, (16,))}
    ScaledUsers(ScaledUsers.Config(), data).training_loss(batch).backward()
    assert calls == [16]


@pytest.mark.parametrize("variant", ["plain", "hook"])
def test_step_groups_train_exactly_like_single_batches(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouping training batches per Lightning batch changes no step: the same parameters, epoch
    losses and optimizer step count, bitwise, with groups of 1, 3 (a partial last group) and 8,
    on the plain step ("plain") and on Lightning's path (a backward hook, run at every step)."""
    import pytorch_lightning as pl

    import recstudio.pipeline as pipeline
    from recstudio.experiment import resolve_config

    data = planted_data()
    cfg = resolve_config(
        model="BPR",
        dataset=data.name,
        overrides={"epochs": 2, "early_stop_patience": 0, "batch_size": 128, "seed": 7},
    )

    class Probe(pl.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.after_backward = 0

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.losses.append(pl_module.epoch_mean_loss())

        def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.params = torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()])
            self.global_step = pl_module.optimizer_steps
            self.loader_batches = trainer.num_training_batches
            self.direct = pl_module._plain_step

    class HookProbe(Probe):
        def on_after_backward(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.after_backward += 1

    probes = {}
    for steps in (1, 3, 8):
        monkeypatch.setattr(pipeline, "STEPS_PER_LOOP_BATCH", steps)
        probes[steps] = HookProbe() if variant == "hook" else Probe()
        pipeline.run(
            cfg, pipeline.RunOptions(tracking=False, quiet=True, callbacks=[probes[steps]]), data=data
        )
    reference = probes[1]
    steps_per_epoch = reference.loader_batches
    assert reference.direct is (variant == "plain")
    assert reference.global_step == 2 * steps_per_epoch > 8
    for steps in (3, 8):
        probe = probes[steps]
        assert probe.loader_batches == -(-steps_per_epoch // steps)
        assert probe.global_step == reference.global_step
        assert probe.losses == reference.losses
        assert torch.equal(probe.params, reference.params)
        if variant == "hook":
            assert probe.after_backward == reference.after_backward == reference.global_step


@pytest.mark.parametrize(("shape", "dim"), [((7, 5), 1), ((3, 4, 6), -1), ((3, 4, 6), 1)])
def test_l2_normalize_matches_f_normalize_values_and_gradients(shape, dim):
    torch.manual_seed(0)
    big = torch.randn(*shape, dtype=torch.double)
    big[0] = 0.0  # an all-zero row (padding): x / eps, as F.normalize
    tiny = torch.randn(*shape, dtype=torch.double) * 1e-14  # norms below eps
    grad = torch.randn(*shape, dtype=torch.double)
    for x in (big, tiny):
        x = x.clone().requires_grad_()
        torch.testing.assert_close(l2_normalize(x, dim), F.normalize(x, dim=dim))
        (ours,) = torch.autograd.grad(l2_normalize(x, dim), x, grad)
        (want,) = torch.autograd.grad(F.normalize(x, dim=dim), x, grad)
        torch.testing.assert_close(ours, want)
    with torch.no_grad():
        torch.testing.assert_close(l2_normalize(big, dim), F.normalize(big, dim=dim))
