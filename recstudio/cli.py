"""The ``recstudio`` command line. Commands are imported lazily so ``--help`` answers at once.

Exit codes: 0 success, 2 bad input (unknown model or dataset, bad config, malformed data, usage
errors), 1 runtime failure (training diverged, out of memory, tracking store unreachable), 130
interrupted. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

# command name -> (module, attribute, one-line help shown by `recstudio --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("recstudio.commands.run", "run_command", "Train and evaluate one model; log it to MLflow."),
    "tune": ("recstudio.commands.tune", "tune_command", "Run an Optuna study whose trials are runs."),
    "studies": ("recstudio.commands.tune", "studies_command", "List Optuna studies in a storage."),
    "best": ("recstudio.commands.tune", "best_command", "Show, export or register a study's best trial."),
    "evaluate": (
        "recstudio.commands.evaluate",
        "evaluate_command",
        "Full-ranking metrics of a saved checkpoint (a run's or a file).",
    ),
    "recommend": (
        "recstudio.commands.recommend",
        "recommend_command",
        "Top-k items for users from a logged or registered MLflow model.",
    ),
    "models": ("recstudio.commands.models", "models_command", "List the registered models by family."),
    "datasets": ("recstudio.data.cli", "datasets", "List, prepare, inspect or clear datasets and the cache."),
    "ui": ("recstudio.commands.ui", "ui_command", "Serve the MLflow UI for the local tracking store."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Logs go to stderr (stdout is reserved for --json); Lightning's chatter only with -v."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("recstudio").setLevel(level)
    for noisy in (
        "pytorch_lightning",
        "lightning_fabric",
        "lightning.pytorch",
        "alembic",
        "mlflow",
        "urllib3",
    ):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # MLflow draws a bar for every artifact download (logging a model does one)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recstudio")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """RecStudio: recommendation models on PyTorch Lightning, tuned with Optuna, tracked in MLflow.

    \b
    Quick start:
      recstudio run --model BPR --dataset ml-100k
      recstudio tune --model NCF --dataset ml-100k --trials 50
      recstudio ui
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> Any:
    """Entry point: one clear error line and a meaningful exit code instead of a traceback."""
    from recstudio.errors import RecStudioError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        return cli.main(args=args, prog_name="recstudio", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except RecStudioError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


def console_main() -> None:
    """The ``recstudio`` console script and ``python -m recstudio``: ``main``, then a fast exit.

    Python's own interpreter teardown (finalising torch, Lightning, MLflow and the ~3,000
    modules they load) took ~3 s on the project's 2-core machine, a tenth of a whole
    ``recstudio run``. After the command has finished, the exit handlers (``atexit``: MLflow's
    pending async logging, logging's flush, multiprocessing's child cleanup) run and the output
    streams are flushed as in a normal exit; then the process ends without the teardown.
    Unexpected exceptions still end the normal way, with their traceback.
    """
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    _fast_exit(code)


def _fast_exit(code: int | str | None) -> None:
    import atexit

    if isinstance(code, str):  # sys.exit("message") prints it and exits with 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be written
            pass
    os._exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    console_main()
