"""Name a model, get its resolved config: the registry lookup joined with config resolution.

``recstudio.config`` is the bottom layer and never looks models up; this module sits above the
registry and the config, so every entry point (CLI, Python API, tune trials, benchmarks, tests)
resolves a config the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recstudio.config import ResolvedConfig, model_name_in, read_config_files, resolve
from recstudio.errors import ConfigError


def resolve_config(
    model: str | None = None,
    dataset: str | None = None,
    config_files: list[str | Path] | tuple = (),
    overrides: dict[str, Any] | None = None,
    dataset_defaults: dict[str, Any] | None = None,
    dataset_labels: str | None = None,
) -> ResolvedConfig:
    """Resolve the config of ``model`` (a registered name, or the one the config files name).

    ``dataset_defaults`` is the dataset spec's ``defaults``; ``dataset_labels`` its label rule,
    which becomes the ``data.label`` default of models that train on labelled rows.
    """
    from recstudio.model.registry import get_model_class

    file_layer = read_config_files(config_files)
    name = model or model_name_in(file_layer)
    if not name:
        raise ConfigError("no model given: pass --model or set model.name in the config file")
    model_cls = get_model_class(name)
    common = dict(overrides=overrides, dataset_defaults=dataset_defaults, file_layer=file_layer)
    cfg = resolve(model_cls, dataset, **common)
    layer = model_data_layer(model_cls, cfg.model, dataset_labels)
    if layer:  # resolved again with the layer under the config files and --set
        cfg = resolve(model_cls, dataset, model_layer=layer, **common)
    return cfg


def model_data_layer(model_cls: type, model_config: Any, dataset_labels: str | None) -> dict[str, Any]:
    """Config values that depend on the model (under its resolved hyperparameters) and the
    dataset together: a model whose data contract is ``labelled`` trains on every labelled row,
    so the dataset's label rule becomes ``data.label`` and its rating filter for top-k models
    (``min_rating``) is lifted; it is judged pointwise, so its monitor is ``auc`` unless the
    model's own section defaults name one (a model that an option makes pointwise, such as
    ``FM`` with ``pointwise=true``, would otherwise keep the ranking monitor ``ndcg@10``, which
    pointwise evaluation does not compute). A model whose contract asks for ``ratings`` keeps the
    raw rating values (``data.binarize`` off). Files and ``--set`` still override all of these."""
    from recstudio.config import flatten

    contract = model_cls.data_contract(model_config)
    layer: dict[str, Any] = {}
    if contract.ratings:  # a rating model (PMF) fits the raw values
        layer["data"] = {"binarize": False}
    if not contract.labelled:
        return layer
    if dataset_labels:
        layer.setdefault("data", {}).update({"label": dataset_labels, "min_rating": None})
    if "train.monitor" not in flatten(getattr(model_cls, "default_overrides", {}) or {}):
        layer["train"] = {"monitor": "auc"}
    return layer


def build_overrides(set_items: tuple[str, ...], config_flags: dict[str, Any]) -> dict[str, Any]:
    """``--set key=value`` items (values read as YAML) with explicit flags on top."""
    from recstudio.config import parse_set_option

    overrides: dict[str, Any] = {}
    for item in set_items:
        key, value = parse_set_option(item)
        overrides[key] = value
    overrides.update(config_flags)  # explicit flags win over --set
    return overrides


def resolve_from_cli(
    model: str | None,
    dataset: str | None,
    data_dir: str | None,
    config_files: tuple[str, ...] | list[str],
    set_items: tuple[str, ...],
    config_flags: dict[str, Any],
) -> ResolvedConfig:
    """Resolve a config from command-line values exactly as ``recstudio run`` does (``tune`` and
    ``evaluate`` too): the dataset may come from a config file; its spec supplies defaults and
    its label rule."""
    from recstudio.config import load_yaml
    from recstudio.data import load_spec

    file_dataset = None
    for path in config_files:
        file_dataset = load_yaml(path).get("dataset", file_dataset)
    dataset_name = dataset or file_dataset
    spec = load_spec(dataset_name, data_dir=data_dir) if dataset_name else None
    return resolve_config(
        model=model,
        dataset=dataset_name,
        config_files=list(config_files),
        overrides=build_overrides(set_items, config_flags),
        dataset_defaults=spec.defaults if spec is not None else None,
        dataset_labels=spec.labels if spec is not None else None,
    )
