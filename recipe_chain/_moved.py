"""Deprecation aliases for public names that moved to another module.

A module whose names moved sets ``__getattr__ = moved_names(__name__, {"Name": "new.module"})``;
reading ``old.module.Name`` then warns once per access and returns the object from its new home.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

__all__ = ["moved_names"]


def moved_names(module: str, moves: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that serves ``moves`` (name -> new module) with a DeprecationWarning."""

    def __getattr__(name: str) -> object:
        target = moves.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to {target}.{name}; import it from there", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(target), name)

    return __getattr__
