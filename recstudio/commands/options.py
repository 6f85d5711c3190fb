"""Click options shared by commands, generated from the config schema so ``--help`` stays true."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Callable
from typing import Any, Literal

import click

from recstudio.config import DataConfig, TrainConfig

# flags that are not section fields but common model hyperparameters
MODEL_SHORTCUTS = {"embed_dim": (int, "Embedding size (model.embed_dim), for models that have one.")}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after a field) of a dataclass, read from source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _click_type(tp: Any) -> tuple[Any, bool] | None:
    """(click type, is_flag) for a field annotation; None for types that only --set can give."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return click.Choice([str(a) for a in args]), False
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _click_type(inner[0]) if len(inner) == 1 else None
    if tp is bool:
        return None, True
    if tp in (int, float, str):
        return tp, False
    return None


def config_flags(sections: tuple[tuple[str, type], ...] = (("train", TrainConfig), ("data", DataConfig))):
    """Decorator adding one ``--kebab-name`` option per scalar field of the given sections.

    Values land in ``kwargs['config_flags']`` as dotted keys, only when given on the command line.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        specs: list[tuple[str, str]] = []
        options: list[Any] = []
        for section, cls in sections:
            docs = field_docs(cls)
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                typ = _click_type(hints[f.name])
                if typ is None:
                    continue
                click_type, is_flag = typ
                flag = f.name.replace("_", "-")
                default = f.default if f.default is not dataclasses.MISSING else None
                help_text = f"{docs.get(f.name, '')} [{section}.{f.name}, default: {default}]".strip()
                param = f"cfg__{section}__{f.name}"
                if is_flag:
                    option = click.option(f"--{flag}/--no-{flag}", param, default=None, help=help_text)
                else:
                    option = click.option(f"--{flag}", param, type=click_type, default=None, help=help_text)
                options.append(option)
                specs.append((param, f"{section}.{f.name}"))
        for name, (tp, help_text) in MODEL_SHORTCUTS.items():
            param = f"cfg__model__{name}"
            options.append(
                click.option(f"--{name.replace('_', '-')}", param, type=tp, default=None, help=help_text)
            )
            specs.append((param, f"model.{name}"))
        for option in reversed(options):  # click lists options in decoration order, outermost first
            func = option(func)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = {}
            for param, dotted in specs:
                value = kwargs.pop(param, None)
                if value is not None:
                    flags[dotted] = value
            kwargs["config_flags"] = flags
            return func(*args, **kwargs)

        wrapper.__name__ = func.__name__
        wrapper.__doc__ = func.__doc__
        wrapper.__click_params__ = getattr(func, "__click_params__", [])  # type: ignore[attr-defined]
        return wrapper

    return decorate
