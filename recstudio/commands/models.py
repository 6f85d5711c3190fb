"""``recstudio models [NAME]``: the registry by family, or one model's contract, defaults and space."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click


def describe_model(cls: type) -> dict[str, Any]:
    """A model's metadata as data: family, data contract (under its defaults), hyperparameter
    defaults with their allowed ranges, section defaults it sets, its search space and its
    pruning profile in studies."""
    from recstudio.config import declared_ranges
    from recstudio.tune.calibrated import describe_profile

    config = cls.Config()
    contract = cls.data_contract(config)
    return {
        "name": cls.__name__,
        "family": cls.family,
        "description": cls.description,
        "inputs": [
            {
                "name": i.name,
                "view": i.view,
                "optimizer": i.optimizer,
                **({"options": dict(i.options)} if i.options else {}),
            }
            for i in contract.inputs
        ],
        "alternate": contract.alternate if len(contract.inputs) > 1 else None,
        "parts": list(contract.parts),
        "labelled": contract.labelled,
        "evaluation": "pointwise" if contract.labelled else "ranking",
        "config": _own_fields_first(config),
        "ranges": declared_ranges(cls.Config),
        "default_overrides": cls.default_overrides,
        "search_space": cls.search_space,
        "pruning": describe_profile(cls.family),
    }


def _own_fields_first(config: Any) -> dict[str, Any]:
    """Config values with the model's own hyperparameters before the shared part options."""
    from recstudio.model.parts import RankingParts

    values = dataclasses.asdict(config)
    shared = {f.name for f in dataclasses.fields(RankingParts)} if isinstance(config, RankingParts) else set()
    return {k: v for k, v in values.items() if k not in shared} | {
        k: v for k, v in values.items() if k in shared
    }


def _summary(cls: type) -> str:
    contract = cls.data_contract(cls.Config())
    views = "+".join(dict.fromkeys(i.view for i in contract.inputs))  # each view once (RecVAE: 4 passes)
    needs = f" needs={','.join(contract.parts)}" if contract.parts else ""
    return f"  {cls.__name__:10s} {views:14s}{needs} {cls.description}"


@click.command("models")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_command(name: str | None, as_json: bool) -> None:
    """List the registered models by family with their training inputs; with NAME, show that
    model's data contract, hyperparameter defaults, search space and pruning profile."""
    from recstudio.model.registry import FAMILIES, all_models, get_model_class

    if name is not None:
        info = describe_model(get_model_class(name))
        if as_json:
            click.echo(json.dumps(info, default=str))
            return
        click.echo(f"{info['name']} ({info['family']}): {info['description']}")
        for i in info["inputs"]:
            click.echo(f"  trains on: {i['view']} -> {i['name']} loss, optimizer {i['optimizer']}")
        if info["alternate"]:
            click.echo(f"  inputs alternate: {info['alternate']}")
        if info["parts"]:
            click.echo(f"  needs: {', '.join(info['parts'])}")
        click.echo(f"  evaluated: {info['evaluation']}")
        click.echo("  hyperparameters (model.*):")
        for key, value in info["config"].items():
            allowed = f"  ({info['ranges'][key]})" if key in info["ranges"] else ""
            click.echo(f"    {key} = {value!r}{allowed}")
        if info["default_overrides"]:
            click.echo(f"  section defaults: {json.dumps(info['default_overrides'])}")
        click.echo("  search space (recstudio tune; contains every default above):")
        for key, spec in info["search_space"].items():
            click.echo(f"    {key}: {json.dumps(spec)}")
        click.echo(f"  pruning (recstudio tune, {info['family']} family): {info['pruning']['rule']}")
        return
    models = all_models()
    if as_json:
        click.echo(json.dumps([describe_model(m) for m in models], default=str))
        return
    for family, title in FAMILIES.items():
        members = [m for m in models if m.family == family]
        click.echo(f"{title}:")
        if not members:
            click.echo("  (none yet)")
        for m in members:
            click.echo(_summary(m))
