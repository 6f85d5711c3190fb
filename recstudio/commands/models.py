"""``recstudio models``: the registry, by family."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def models_command(as_json: bool) -> None:
    """List the registered models by family, with their training view."""
    from recstudio.model.registry import FAMILIES, all_models

    models = all_models()
    if as_json:
        rows = [
            {"name": m.__name__, "family": m.family, "view": m.view, "description": m.description}
            for m in models
        ]
        click.echo(json.dumps(rows))
        return
    for family, title in FAMILIES.items():
        members = [m for m in models if m.family == family]
        click.echo(f"{title}:")
        if not members:
            click.echo("  (none yet)")
        for m in members:
            click.echo(f"  {m.__name__:10s} view={m.view:8s} {m.description}")
