"""``recstudio recommend``: top-k items for users from a logged or registered model."""

from __future__ import annotations

import json

import click

from recstudio.commands.run import TRACKING_URI_HELP
from recstudio.errors import ConfigError


@click.command("recommend")
@click.option(
    "--model",
    "model_uri",
    required=True,
    help="MLflow model URI: models:/NAME/latest, models:/NAME/VERSION, runs:/RUN_ID/model, or a folder.",
)
@click.option("-u", "--user", "users", multiple=True, metavar="ID", help="Raw user id (repeatable).")
@click.option(
    "--items",
    "items",
    multiple=True,
    metavar="ID,ID,...",
    help="Recent raw item ids, oldest first, comma-separated (sequential models; one per --user, "
    "or alone for an anonymous sequence; repeatable).",
)
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--tracking-uri", help=TRACKING_URI_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON (the server's predictions).")
def recommend_command(
    model_uri: str,
    users: tuple[str, ...],
    items: tuple[str, ...],
    k: int,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Top-k recommendations in raw ids, seen items excluded: the answer `mlflow models serve`
    gives for the same model.

    \b
    Examples:
      recstudio recommend --model models:/ml100k-bpr/latest --user 42 -k 10
      recstudio recommend --model runs:/3f2c.../model --user 42 --user 7 --json
      recstudio recommend --model models:/seq/1 --items 50,172,133
    """
    from recstudio.cli import setup_logging

    setup_logging(quiet=True)
    if not users and not items:
        raise ConfigError("give at least one --user (or --items for a sequential model)")
    recent = [[i for i in group.split(",") if i] for group in items] if items else None
    if recent is not None and users and len(recent) != len(users):
        raise ConfigError(f"{len(recent)} --items for {len(users)} --user: give one per user")
    from recstudio.serve.registry import load_served

    served = load_served(model_uri, tracking_uri)
    answers = served.recommend(users=list(users) or None, items=recent, k=k)
    if as_json:
        click.echo(json.dumps({"predictions": answers}, default=str))
        return
    for answer in answers:
        who = f"user {answer['user']}" if answer["user"] is not None else "sequence"
        click.echo(f"{who}: {' '.join(str(i) for i in answer['items'])}")
