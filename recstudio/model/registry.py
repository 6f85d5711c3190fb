"""Model registry: ``@register`` on a model class; lookups by name are case-insensitive.

Model modules are discovered by importing every module under ``recstudio.model.<family>``
packages, so adding a model is adding one file.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import TYPE_CHECKING

from recstudio.errors import ModelError

if TYPE_CHECKING:
    from recstudio.model.base import Recommender

FAMILY_PACKAGES = ("general", "ae", "seq", "kg", "fm", "social")
FAMILIES = {
    "general": "general (collaborative filtering)",
    "sequential": "sequential",
    "knowledge": "knowledge-based",
    "feature": "feature-based",
    "social": "social",
}
_REGISTRY: dict[str, type[Recommender]] = {}
_discovered = False


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator: make ``cls`` available by its class name.

    The model's search space is validated here, and must contain every default it searches
    (``recstudio.tune.space.check_defaults_inside``): a study's defaults trial reproduces the
    untuned model, so a space that excludes a default is an error when the model is defined,
    not a surprise in a study.
    """
    from recstudio.tune.space import check_defaults_inside

    key = cls.__name__.lower()
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise ModelError(f"model name '{cls.__name__}' is registered twice")
    if cls.family not in FAMILIES:
        raise ModelError(f"model '{cls.__name__}' declares unknown family '{cls.family}'")
    check_defaults_inside(cls)
    _REGISTRY[key] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for family in FAMILY_PACKAGES:
        package = importlib.import_module(f"recstudio.model.{family}")
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"recstudio.model.{family}.{info.name}")
    _discovered = True


def get_model_class(name: str) -> type[Recommender]:
    _discover()
    cls = _REGISTRY.get(name.lower())
    if cls is None:
        names = sorted(c.__name__ for c in _REGISTRY.values())
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ModelError(f"unknown model '{name}'{hint}; available: {', '.join(names)}")
    return cls


def all_models() -> list[type[Recommender]]:
    _discover()
    return sorted(_REGISTRY.values(), key=lambda c: (c.family, c.__name__))
