"""``recstudio datasets``: list built-in specs and cache entries, prepare, inspect, clear.

Heavy modules (torch, pyarrow) load inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

_CACHE_OPTION = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Cache root (default $RECSTUDIO_CACHE_DIR, else ./datasets/.cache).",
)
_DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder with the raw files (else $RECSTUDIO_DATA_DIR/<name>, then ./datasets/<name>).",
)
_SET_OPTION = click.option(
    "-s",
    "--set",
    "set_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Data option, e.g. -s min_rating=4 -s split=loo (keys of the 'data' config section).",
)
_JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def _logging(quiet: bool = False) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("recstudio").setLevel(logging.WARNING if quiet else logging.INFO)


def _data_overrides(set_items: tuple[str, ...]) -> dict[str, Any]:
    from recstudio.config import parse_set_option
    from recstudio.errors import ConfigError

    out: dict[str, Any] = {}
    for item in set_items:
        key, value = parse_set_option(item)
        section, dot, name = key.partition(".")
        if dot and section != "data":
            raise ConfigError(f"datasets commands take only data options, got '{key}'")
        out[name if dot else key] = value
    return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@click.group("datasets")
def datasets() -> None:
    """List, prepare, inspect or clear datasets and the parquet cache."""


@datasets.command("list")
@_CACHE_OPTION
@_JSON_OPTION
def list_command(cache_dir: str | None, as_json: bool) -> None:
    """Built-in dataset specs and the cache entries (name, key, size, created, options)."""
    from recstudio.data import builtin_names, list_cache

    entries = list_cache(cache_dir)
    if as_json:
        click.echo(json.dumps({"builtin": builtin_names(), "cache": entries}, indent=2, default=str))
        return
    click.echo(f"built-in datasets: {', '.join(builtin_names())}")
    if not entries:
        click.echo("cache: empty")
        return
    click.echo(f"{'name':<16} {'key':<16} {'size':>9}  {'created':<25} options")
    for row in entries:
        opts = row["options"]
        short = ", ".join(
            f"{k}={v}"
            for k, v in opts.items()
            if k in ("min_rating", "min_user_inter", "min_item_inter", "split", "label")
        )
        state = "" if row["complete"] else f"  [incomplete: {row['problem']}]"
        click.echo(
            f"{row['name']:<16} {row['key'][:16]:<16} {_size(row['size']):>9}  "
            f"{str(row['created']):<25} {short}{state}"
        )


@datasets.command("prepare")
@click.argument("dataset")
@_DATA_DIR_OPTION
@_CACHE_OPTION
@_SET_OPTION
@click.option("--no-download", is_flag=True, help="Fail instead of downloading missing raw files.")
@click.option(
    "--parts",
    default=None,
    metavar="PART[,PART]",
    help="Relation parts that must be prepared (kg, social); missing files then fail the command. "
    "Default: every part the spec declares, those whose files are missing shown as not available.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@_JSON_OPTION
def prepare_command(
    dataset: str,
    data_dir: str | None,
    cache_dir: str | None,
    set_items: tuple[str, ...],
    no_download: bool,
    parts: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Preprocess DATASET (a built-in name or a spec YAML) into the cache; a hit only loads it.

    The relation parts the spec declares (knowledge graph, social graph) and the labelled variant
    of its recommended label rule are prepared too."""
    from recstudio.data import info

    _logging(quiet)
    wanted = tuple(p.strip() for p in parts.split(",") if p.strip()) if parts is not None else None
    result = info(
        dataset,
        _data_overrides(set_items),
        data_dir=data_dir,
        cache_dir=cache_dir,
        download=not no_download,
        parts=wanted,
    )
    _print_info(result, as_json)


@datasets.command("info")
@click.argument("dataset")
@_DATA_DIR_OPTION
@_CACHE_OPTION
@_SET_OPTION
@click.option("--no-download", is_flag=True, help="Fail instead of downloading missing raw files.")
@_JSON_OPTION
def info_command(
    dataset: str,
    data_dir: str | None,
    cache_dir: str | None,
    set_items: tuple[str, ...],
    no_download: bool,
    as_json: bool,
) -> None:
    """Counts, split sizes, features, relation parts and labels of DATASET under the given data
    options (prepares what is not cached; a part whose files are missing shows as not available)."""
    from recstudio.data import info

    _logging(quiet=True)
    result = info(
        dataset, _data_overrides(set_items), data_dir=data_dir, cache_dir=cache_dir, download=not no_download
    )
    _print_info(result, as_json)


def _print_info(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    s = result["summary"]
    click.echo(f"{result['name']}  (cache {'hit' if result['cache_hit'] else 'built'}: {result['path']})")
    click.echo(
        f"  users {s['users']}, items {s['items']}, interactions {s['interactions']} "
        f"(density {s['density']:.4%})"
    )
    click.echo(f"  train {s['train']}, valid {s['valid']}, test {s['test']}")
    stages = {
        k: v for k, v in result["counts"].items() if k not in ("users", "items", "train", "valid", "test")
    }
    click.echo("  rows after each step: " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    split = result.get("split") or {}
    cut_keys = ("split", "split_ratio", "split_order", "split_seed")
    options = result["options"]
    if split.get("given"):
        files = ", ".join(f"{k} {v}" for k, v in split["files"].items())
        held = split.get("valid_from_train")
        valid = (
            f"; valid: {held['share']:g} of each user's train rows (by {held['order']})"
            if held
            else "; no valid file (set data.valid_from_train to hold one out of train)"
            if "valid" not in split["files"]
            else ""
        )
        click.echo(f"  split: given by the spec ({files}){valid}")
        options = {k: v for k, v in options.items() if k not in cut_keys and k != "valid_from_train"}
    click.echo("  options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    for side, fields in result["features"].items():
        desc = ", ".join(f"{f} ({d.get('cardinality', d.get('width'))})" for f, d in fields.items())
        click.echo(f"  {side} features: {desc}")
    if result.get("context"):
        desc = ", ".join(f"{f} ({d.get('cardinality')})" for f, d in result["context"].items())
        click.echo(f"  interaction context: {desc}")
    for part, d in (result.get("parts") or {}).items():
        if not d.get("available"):
            click.echo(f"  {part}: not available: {d.get('why')}")
        elif part == "kg":
            c = d.get("counts", {})
            click.echo(
                f"  kg: {d['triples']} triples, {d['entities']} entities, {d['relations']} relations; "
                f"{d['linked_items']} items linked ({c.get('links_unknown_items', 0)} links to items "
                "not in the data dropped)"
            )
        elif part == "social":
            c = d.get("counts", {})
            kind = "directed" if d["directed"] else "undirected"
            click.echo(
                f"  social: {d['links']} {kind} links ({d['edges']} edges) among {d['users']} users; "
                f"dropped {c.get('unknown_users', 0)} naming users not in the data, "
                f"{c.get('self_loops', 0)} self-loops"
            )
    labels = result.get("labels")
    if labels:
        share = ", ".join(
            f"{k} {v:.1%}" if v is not None else f"{k} -" for k, v in labels["positive_share"].items()
        )
        origin = "data.label" if labels["source"] == "data.label" else "the spec's rule"
        click.echo(f"  labels: {labels['rule']} ({origin}); positive share: {share}")


@datasets.command("clear")
@click.argument("name", required=False)
@click.option("--all", "clear_all", is_flag=True, help="Remove every cache entry.")
@_CACHE_OPTION
def clear_command(name: str | None, clear_all: bool, cache_dir: str | None) -> None:
    """Remove the cache entries of dataset NAME, or of all datasets with --all."""
    from recstudio.data import clear_cache

    if not name and not clear_all:
        raise click.UsageError("name a dataset, or pass --all")
    if name and clear_all:
        raise click.UsageError("give a dataset name or --all, not both")
    if name and name.endswith((".yaml", ".yml")):
        from recstudio.data import load_spec

        name = load_spec(name).name
    removed = clear_cache(None if clear_all else name, cache_dir)
    click.echo(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")
