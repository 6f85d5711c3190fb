"""Search spaces: validation naming the bad key, NNI conversion, suggestion and grids."""

from __future__ import annotations

import json

import optuna
import pytest

from recstudio.errors import ConfigError
from recstudio.model.registry import get_model_class
from recstudio.tune.space import (
    distributions,
    from_nni,
    grid,
    is_nni,
    load_search_space,
    normalize,
    pin,
    suggest,
)

NCF = get_model_class("NCF")
BPR = get_model_class("BPR")


def test_every_registered_default_space_is_valid() -> None:
    from recstudio.model.registry import all_models

    for cls in all_models():
        space = normalize(cls.search_space, cls)
        assert all("." in key for key in space), cls.__name__
        distributions(space)  # Optuna accepts every distribution


def test_normalize_resolves_keys_and_fills_defaults() -> None:
    space = normalize(
        {
            "embed_dim": [16, 32],
            "learning_rate": {"type": "float", "low": "1e-4", "high": 1e-2, "log": True},
            "num_negatives": {"type": "int", "low": 1, "high": 8},
            "data.min_user_inter": {"type": "int", "low": 0, "high": 10, "step": 5},
        },
        NCF,
    )
    assert space["model.embed_dim"] == {"type": "categorical", "choices": [16, 32]}
    assert space["train.learning_rate"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    assert space["model.num_negatives"] == {"type": "int", "low": 1, "high": 8, "log": False, "step": 1}
    assert space["data.min_user_inter"]["step"] == 5


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"embed_dimm": [8]}, "unknown config key 'embed_dimm' for this model (did you mean 'embed_dim'?)"),
        (
            {"train.learning_rat": [0.1]},
            "unknown config key 'train.learning_rat' (did you mean 'train.learning_rate'",
        ),
        (
            {"dropout": {"type": "float", "low": 0.5, "high": 0.1}},
            "'model.dropout': `low <= high` must hold, but got low=0.5, high=0.1",
        ),
        (
            {"dropout": {"type": "flaot", "low": 0, "high": 1}},
            "unknown type 'flaot'; expected one of float, int",
        ),
        ({"dropout": {"low": 0, "high": 1}}, "'model.dropout': missing 'type'"),
        (
            {"dropout": {"type": "float", "low": 0, "hihg": 1}},
            "unknown field 'hihg' for type float (did you mean 'high'?)",
        ),
        ({"embed_dim": {"type": "float", "low": 8, "high": 64}}, "takes an integer, so use type int"),
        ({"variant": {"type": "int", "low": 0, "high": 2}}, "'model.variant': the config key takes one of"),
        ({"variant": ["gmf", "nmf"]}, "config key 'model.variant' must be one of gmf, mlp, neumf; got 'nmf'"),
        ({"train.learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}, "`low > 0` must hold"),
        (
            {"embed_dim": {"type": "int", "low": 8, "high": 64, "step": 8, "log": True}},
            "`step == 1` must hold",
        ),
        ({"train.monitor": ["ndcg@10", "recall@10"]}, "'train.monitor' cannot be tuned"),
        ({"embed_dim": []}, "categorical needs a non-empty list 'choices'"),
        ({"embed_dim": [8, 8]}, "choices must be distinct"),
        (
            {"batch_size": [256, 512]},
            "key 'batch_size' is ambiguous: use one of train.batch_size, eval.batch_size",
        ),
    ],
)
def test_validation_names_the_key(space: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        normalize(space, NCF)
    assert message in str(err.value)


def test_list_choices_travel_as_json() -> None:
    space = normalize({"mlp_layers": [[64, 32], [32]]}, NCF)
    assert space["model.mlp_layers"]["encoded"] is True
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(6):
        trial = study.ask()
        values = suggest(trial, space)
        assert isinstance(trial.params["model.mlp_layers"], str)  # Optuna stores the JSON text
        seen.append(tuple(values["model.mlp_layers"]))
        study.tell(trial, 0.0)
    assert set(seen) <= {(64, 32), (32,)}


def test_suggest_returns_dotted_overrides_within_bounds() -> None:
    space = normalize(NCF.search_space, NCF)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    values = suggest(trial, space)
    assert set(values) == set(space)
    assert 1e-4 <= values["train.learning_rate"] <= 1e-2
    assert values["model.variant"] in ("gmf", "mlp", "neumf")


def test_pin_drops_fixed_keys() -> None:
    space = normalize(BPR.search_space, BPR)
    rest, removed = pin(space, {"model.embed_dim": 64, "train.epochs": 3})
    assert removed == ["model.embed_dim"]
    assert "model.embed_dim" not in rest and "train.learning_rate" in rest


def test_grid_values() -> None:
    space = normalize(
        {
            "embed_dim": [8, 16],
            "num_negatives": {"type": "int", "low": 1, "high": 5, "step": 2},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25},
        },
        NCF,
    )
    assert grid(space) == {
        "model.embed_dim": [8, 16],
        "model.num_negatives": [1, 3, 5],
        "model.dropout": [0.0, 0.25, 0.5],
    }
    with pytest.raises(ConfigError, match="'model.dropout' is a continuous float"):
        grid(normalize({"dropout": {"type": "float", "low": 0, "high": 1}}, NCF))


# --------------------------------------------------------------------------- NNI


def test_nni_conversion() -> None:
    nni = {
        "embed_dim": {"_type": "choice", "_value": [16, 32, 64]},
        "num_negatives": {"_type": "randint", "_value": [1, 9]},
        "dropout": {"_type": "uniform", "_value": [0.0, 0.5]},
        "learning_rate": {"_type": "loguniform", "_value": [0.0001, 0.01]},
        "train.batch_size": {"_type": "quniform", "_value": [256, 2048, 256]},
        "init_std": {"_type": "quniform", "_value": [0.005, 0.05, 0.005]},
        "data.min_user_inter": {"_type": "qloguniform", "_value": [1, 20, 1]},
    }
    assert is_nni(nni)
    converted = from_nni(nni)
    assert converted["embed_dim"] == {"type": "categorical", "choices": [16, 32, 64]}
    assert converted["num_negatives"] == {
        "type": "int",
        "low": 1,
        "high": 8,
    }  # randint's upper bound is exclusive
    assert converted["dropout"] == {"type": "float", "low": 0.0, "high": 0.5}
    assert converted["learning_rate"] == {"type": "float", "low": 0.0001, "high": 0.01, "log": True}
    assert converted["train.batch_size"] == {"type": "int", "low": 256, "high": 2048, "step": 256}
    assert converted["init_std"] == {"type": "float", "low": 0.005, "high": 0.05, "step": 0.005}
    assert converted["data.min_user_inter"] == {"type": "int", "low": 1, "high": 20, "log": True}
    space = normalize(nni, NCF)  # normalize converts NNI itself
    assert space["train.learning_rate"]["log"] is True
    assert space["model.num_negatives"]["high"] == 8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"_type": "normal", "_value": [0, 1]}, "_type 'normal' has no Optuna equivalent (it is unbounded)"),
        ({"_type": "qlognormal", "_value": [0, 1, 1]}, "_type 'qlognormal' has no Optuna equivalent"),
        ({"_type": "lognormal", "_value": [0, 1]}, "_type 'lognormal' has no Optuna equivalent"),
        (
            {"_type": "choice", "_value": [{"_name": "adam", "lr": {"_type": "uniform", "_value": [0, 1]}}]},
            "nested choices",
        ),
        (
            {"_type": "qloguniform", "_value": [1e-4, 1e-2, 1e-4]},
            "qloguniform with q=0.0001 has no Optuna equivalent",
        ),
        ({"_type": "randint", "_value": [5, 5]}, "`lower < upper` must hold, but got lower=5, upper=5"),
        ({"_type": "uniform", "_value": [0, 1, 2]}, "uniform takes 2 values"),
        ({"_type": "bogus", "_value": [1]}, "unknown _type 'bogus'"),
        ({"_type": "choice", "_value": []}, "_value must be a non-empty list"),
    ],
)
def test_nni_unsupported_is_a_clear_error(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_nni({"x": spec})
    assert "NNI search space 'x'" in str(err.value)
    assert message in str(err.value)


def test_load_search_space_files(tmp_path) -> None:
    nni = tmp_path / "search_space.json"
    nni.write_text(json.dumps({"embed_dim": {"_type": "choice", "_value": [8, 16]}}))
    assert load_search_space(nni) == {"embed_dim": {"_type": "choice", "_value": [8, 16]}}
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("model: {name: BPR}\ntune:\n  trials: 3\n  search_space:\n    embed_dim: [8, 16]\n")
    assert load_search_space(experiment) == {"embed_dim": [8, 16]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("embed_dim: [8, 16\n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_search_space(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_search_space(tmp_path / "missing.yaml")


def test_baseline_params_take_the_config_values_inside_the_space() -> None:
    from recstudio.experiment import resolve_config
    from recstudio.tune.space import baseline_params

    space = normalize(
        {
            "embed_dim": [16, 64],
            "reg_weight": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "train.weight_decay": {"type": "float", "low": 1e-8, "high": 1e-4, "log": True},
        },
        get_model_class("BPR"),
    )
    base = resolve_config(model="BPR", dataset="planted", overrides={"train.learning_rate": 5e-3}).to_dict()
    params = baseline_params(space, base)
    # BPR defaults embed_dim 64 and reg_weight 5e-3; --set learning rate; weight_decay 0 is outside
    assert params == {"model.embed_dim": 64, "model.reg_weight": 5e-3, "train.learning_rate": 5e-3}


@pytest.mark.parametrize("model", ["NCF", "FM", "MultiVAE"])
def test_builtin_spaces_contain_the_default_weight_decay(model: str) -> None:
    """--baseline reproduces the untuned config only if every default lies inside the space."""
    from recstudio.experiment import resolve_config
    from recstudio.tune.space import baseline_params

    cls = get_model_class(model)
    space = normalize(cls.search_space, cls)
    base = resolve_config(model=model, dataset="planted", overrides={}).to_dict()
    params = baseline_params(space, base)
    assert params["train.weight_decay"] == base["train"]["weight_decay"] == 0.0
