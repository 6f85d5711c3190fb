"""Config layering and validation: unknown keys and bad values name the culprit."""

from __future__ import annotations

import pytest

from recstudio.config import DataConfig, coerce, parse_set_option
from recstudio.errors import ConfigError
from recstudio.experiment import resolve_config


def test_defaults_and_layer_order(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("train:\n  epochs: 7\n  learning_rate: 0.01\nmodel:\n  embed_dim: 16\n")
    cfg = resolve_config(
        model="bpr",
        dataset="ml-100k",
        config_files=[exp],
        overrides={"train.learning_rate": 0.05, "batch_size": 128},
        dataset_defaults={"data": {"min_rating": 3}, "train": {"epochs": 3}},
    )
    assert cfg.model_name == "BPR"
    assert cfg.train.epochs == 7  # experiment file beats dataset defaults
    assert cfg.train.learning_rate == 0.05  # --set beats the file
    assert cfg.train.batch_size == 128  # bare key resolved to train.batch_size
    assert cfg.model.embed_dim == 16
    assert cfg.data.min_rating == 3.0 and isinstance(cfg.data.min_rating, float)
    assert cfg.data == DataConfig(min_rating=3.0)


def test_model_default_overrides_apply_before_dataset_defaults():
    cfg = resolve_config(model="SASRec", dataset="x", dataset_defaults={"data": {"min_rating": 3}})
    assert cfg.data.split == "loo"
    assert cfg.data.min_rating == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"train.learnig_rate": 0.1},
            "unknown config key 'train.learnig_rate' (did you mean 'train.learning_rate'?)",
        ),
        ({"train.epochs": "ten"}, "config key 'train.epochs' expects an integer, got 'ten'"),
        ({"train.learner": "adamm"}, "did you mean 'adam'?"),
        ({"train.learner": "sparse_adam"}, "'train.learner' must be one of adam, adamw, sgd, adagrad"),
        ({"data.split": "random"}, "config key 'data.split' must be one of"),
        ({"train.learning_rate": -1.0}, "'train.learning_rate' must be > 0"),
        ({"train.monitor": "ndcg@7"}, "'train.monitor' must name a ranking metric at one of eval.cutoffs"),
        ({"model.embed_dimm": 8}, "unknown config key 'model.embed_dimm' (did you mean 'model.embed_dim'?)"),
        ({"nonsense": 1}, "unknown config key 'nonsense'"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(model="BPR", dataset="ml-100k", overrides=overrides)
    assert message in str(info.value)


def test_unknown_model_suggests():
    from recstudio.errors import ModelError

    with pytest.raises(ModelError, match="unknown model 'BRP'"):
        resolve_config(model="BRP", dataset="ml-100k")


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml' line"):
        resolve_config(model="BPR", dataset="d", config_files=[bad])
    typo = tmp_path / "typo.yaml"
    typo.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        resolve_config(model="BPR", dataset="d", config_files=[typo])
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(model="BPR", dataset="d", config_files=[tmp_path / "missing.yaml"])


def test_round_trip_through_yaml(tmp_path):
    cfg = resolve_config(model="BPR", dataset="ml-100k", overrides={"epochs": 3, "eval.cutoffs": [5, 10]})
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    again = resolve_config(config_files=[path])
    assert again.to_dict() == cfg.to_dict()
    assert cfg.flat()["train.epochs"] == 3


def test_set_option_parsing_and_coercion():
    assert parse_set_option("train.learning_rate=1e-3") == ("train.learning_rate", 1e-3)
    assert parse_set_option("eval.cutoffs=[5, 10]") == ("eval.cutoffs", [5, 10])
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_option("epochs")
    assert coerce(3, float, "k") == 3.0
    with pytest.raises(ConfigError):
        coerce(True, int, "k")


def test_config_layer_never_looks_models_up():
    """The bottom layer resolves a given model class; name lookup lives in recstudio.experiment."""
    import subprocess
    import sys

    code = (
        "import sys, recstudio.config as c; "
        "assert 'recstudio.model.registry' not in sys.modules, 'config imported the registry'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
