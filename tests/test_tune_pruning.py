"""The calibrated pruner (warm-up from the defaults trial's best epoch, successive-halving rungs),
its per-family profiles, and the registry's check that a search space contains every default."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from recstudio.errors import ConfigError, ModelError
from recstudio.model.registry import all_models, get_model_class, register
from recstudio.tune.calibrated import PROFILES, CalibratedPruner
from recstudio.tune.strategies import make_pruner

DIST = {"x": FloatDistribution(0.0, 1.0)}


def finished(values: dict[int, float], defaults: bool = False, best_epoch: int | None = None):
    """A completed trial with per-epoch values (its value: the best one)."""
    best = max(values, key=lambda s: values[s]) if best_epoch is None else best_epoch
    attrs = {"result": {"best_epoch": best}}
    if defaults:
        attrs["defaults"] = True
    return create_trial(
        state=TrialState.COMPLETE,
        value=max(values.values()),
        params={"x": 0.5},
        distributions=DIST,
        intermediate_values=values,
        user_attrs=attrs,
    )


def running(
    study: optuna.Study, values: dict[int, float], defaults: bool = False
) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    if defaults:
        trial.set_user_attr("defaults", True)
    for step, value in values.items():
        trial.report(value, step)
    return study._storage.get_trial(trial._trial_id)


def curve(level: float, epochs: int) -> dict[int, float]:
    return {e: level * (e + 1) / epochs for e in range(epochs)}


def test_warmup_and_rungs_follow_the_reference_epoch() -> None:
    p = CalibratedPruner(warmup_fraction=0.5, reduction_factor=2, max_epochs=200)
    assert p.warmup(99) == 50  # ceil(0.5 * (99 + 1))
    assert p.warmup(0) == 1
    assert p.warmup(None) == 100  # before any reference: half the configured epochs
    assert p.rungs(50, 500) == [49, 99, 199, 399]
    assert CalibratedPruner(0.3, 3, max_epochs=20).rungs(3, 30) == [2, 8, 26]
    assert CalibratedPruner(max_epochs=None).warmup(None) > 10**6  # no reference at all: never


def study_with_defaults(best_epoch: int = 9, direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    sign = 1.0 if direction == "maximize" else -1.0
    study.add_trial(
        finished({e: sign * 0.1 * (e + 1) for e in range(12)}, defaults=True, best_epoch=best_epoch)
    )
    study.add_trial(finished({e: sign * 0.1 * (e + 1) for e in range(12)}))
    study.add_trial(finished({e: sign * 0.09 * (e + 1) for e in range(12)}))
    return study


def test_no_pruning_before_the_warmup_then_the_worst_go_at_a_rung() -> None:
    study = study_with_defaults(best_epoch=9)  # warm-up ceil(0.5 * 10) = 5 epochs: rung 0 at epoch 4
    p = CalibratedPruner(0.5, 2, min_trials=2, max_epochs=50)
    poor = {e: 0.01 for e in range(4)}
    assert not p.prune(study, running(study, poor))  # epoch 3: still warming up
    assert p.prune(study, running(study, {**poor, 4: 0.01}))  # rung 0: bottom half
    good = {e: 0.11 * (e + 1) for e in range(5)}
    assert not p.prune(study, running(study, good))
    # between rungs nothing is decided again: epoch 5 of a trial that passed rung 0 at epoch 4
    assert not p.prune(study, running(study, {**{e: 0.1 * (e + 1) for e in range(5)}, 5: 0.0}))


def test_the_defaults_trial_is_never_pruned() -> None:
    study = study_with_defaults()
    p = CalibratedPruner(0.5, 2, min_trials=1, max_epochs=50)
    assert not p.prune(study, running(study, {e: 0.0 for e in range(20)}, defaults=True))


def test_reference_before_the_defaults_trial_finishes() -> None:
    study = optuna.create_study(direction="maximize")
    p = CalibratedPruner(0.5, 2, min_trials=1, max_epochs=40)
    # nothing completed: the warm-up is half the configured epochs (20), so epoch 10 is safe
    running(study, {e: 0.5 for e in range(15)})
    assert not p.prune(study, running(study, {e: 0.0 for e in range(11)}))
    # completed trials without a defaults trial: the median of their best epochs (3 -> warm-up 2)
    study.add_trial(finished({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}))
    study.add_trial(finished({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}))
    assert p.reference_epoch(study.get_trials()) == 3
    assert p.prune(study, running(study, {0: 0.0, 1: 0.0}))


def test_minimised_metrics_prune_the_largest() -> None:
    study = study_with_defaults(direction="minimize")  # values -0.1 * (e + 1): smaller is better
    p = CalibratedPruner(0.5, 2, min_trials=2, max_epochs=50)
    assert p.prune(study, running(study, {e: 5.0 for e in range(5)}))
    assert not p.prune(study, running(study, {e: -1.0 for e in range(5)}))


def test_the_last_epoch_is_never_pruned() -> None:
    """A one-epoch model (EASE): pruning at the end saves nothing and would lose the result."""
    study = optuna.create_study(direction="maximize")
    for defaults in (True, False, False):
        study.add_trial(finished({0: 0.5}, defaults=defaults, best_epoch=0))
    assert not CalibratedPruner(0.5, 2, min_trials=1, max_epochs=1).prune(study, running(study, {0: 0.0}))
    assert CalibratedPruner(0.5, 2, min_trials=1, max_epochs=2).prune(study, running(study, {0: 0.0}))


def test_too_few_trials_at_a_rung_prune_nothing() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(finished({e: 0.5 for e in range(10)}, defaults=True, best_epoch=3))
    p = CalibratedPruner(0.5, 2, min_trials=2, max_epochs=50)
    assert not p.prune(study, running(study, {e: 0.0 for e in range(2)}))


def test_profiles_per_family_and_options() -> None:
    for family in ("general", "knowledge", "social", "sequential"):
        assert (PROFILES[family].warmup_fraction, PROFILES[family].reduction_factor) == (0.5, 2)
    assert (PROFILES["feature"].warmup_fraction, PROFILES["feature"].reduction_factor) == (0.3, 3)
    p = make_pruner("calibrated", {}, max_epochs=30, family="feature")
    assert (p.warmup_fraction, p.reduction_factor, p.max_epochs) == (0.3, 3, 30)
    p = make_pruner("calibrated", {"reduction_factor": 4}, max_epochs=30, family="general")
    assert (p.warmup_fraction, p.reduction_factor) == (0.5, 4)
    with pytest.raises(ConfigError, match="warmup_fraction"):
        make_pruner("calibrated", {"warmup_fraction": 0.0})
    with pytest.raises(ConfigError, match="bad option"):
        make_pruner("calibrated", {"n_warmup_steps": 3})


def test_every_registered_space_contains_its_model_defaults() -> None:
    from recstudio.tune.space import contains, normalize

    for cls in all_models():
        space = normalize(cls.search_space, cls)
        assert space, cls.__name__
        config = dataclasses.asdict(cls.Config())
        for key, spec in space.items():
            if key.startswith("model."):
                assert contains(spec, config[key.split(".", 1)[1]]), (cls.__name__, key)


def test_register_rejects_a_space_that_excludes_a_default() -> None:
    base = get_model_class("BPR")
    bad = type("BadSpaceBPR", (base,), {"search_space": {"embed_dim": [16, 32]}})
    with pytest.raises(ModelError, match=r"BadSpaceBPR.*model\.embed_dim.*excludes the default 64"):
        register(bad)
    lr = type(
        "BadLrBPR",
        (base,),
        {"search_space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}},
    )
    with pytest.raises(ModelError, match=r"train\.learning_rate.*excludes the default 0\.002"):
        register(lr)  # BPR's default_overrides set the learning rate 2e-3
    with pytest.raises(ModelError, match="unknown"):
        get_model_class("BadSpaceBPR")  # nothing was registered


def test_the_callback_does_not_ask_the_pruner_before_min_epochs() -> None:
    """``train.min_epochs`` (UltraGCN: 150) marks validation that is not yet telling: values are
    reported, so other trials compare with them, but the trial cannot be pruned before it."""
    from types import SimpleNamespace

    from recstudio.tune.pruning import PruningCallback

    class Always(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    trial = optuna.create_study(direction="maximize", pruner=Always()).ask()
    callback = PruningCallback(trial, min_epochs=3)

    def validated(epoch: int) -> None:
        metrics = {"monitor": 0.1}
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics=metrics, current_epoch=epoch)
        callback.on_validation_end(trainer, None)

    validated(0)
    validated(1)
    assert callback.reported == {0: 0.1, 1: 0.1}
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        validated(2)
