"""Registry of sparsifiers. Every module in this package is imported, so a new method is one
file with a :class:`Sparsifier` subclass decorated with :func:`register` (docs/sparsifiers.md)."""

from __future__ import annotations

import importlib
import pkgutil

from .base import NoOptions, Sparsifier

_REGISTRY: dict[str, type[Sparsifier]] = {}


def register(cls: type[Sparsifier]) -> type[Sparsifier]:
    """Class decorator adding ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Sparsifier]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method '{name}' (known: {', '.join(list_methods())})")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["NoOptions", "Sparsifier", "get_method", "list_methods", "register"]
