"""Command-line options generated from a pydantic model's fields, so the two never drift apart.

Each field becomes ``--field-name``: its type (and ``choices`` for a ``Literal``) and its
help text come from the field, and an option left out is ``None`` in the namespace, so
the model's own default applies. Validation stays with the model.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["add_model_options", "model_values"]

_SCALARS = (int, float, str, Path)


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return annotation


def add_model_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    skip: Collection[str] = (),
    types_: dict[str, Callable[[str], Any]] | None = None,
) -> list[str]:
    """Add one option per field of ``model`` (except ``skip``); return the field names added.

    Args:
        parser: Where the options go.
        model: The pydantic model.
        skip: Fields the command handles itself.
        types_: Per field, an argparse ``type`` that replaces the one read from the annotation.

    Raises:
        TypeError: A field of a type no option can express (add it to ``skip``).
    """
    added = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "").rstrip(".")
        if not field.is_required() and field.default_factory is None:
            default = field.default
            help_text += f" (default: {'none' if default is None else default})"
        inner = _unwrap_optional(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text.strip()}
        if types_ and name in types_:
            parser.add_argument(flag, type=types_[name], **kwargs)
        elif inner is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif get_origin(inner) is Literal:
            parser.add_argument(flag, choices=get_args(inner), **kwargs)
        elif inner in _SCALARS:
            parser.add_argument(flag, type=inner, **kwargs)
        else:
            raise TypeError(f"{model.__name__}.{name}: no command-line option for {field.annotation!r}; skip it")
        added.append(name)
    return added


def model_values(args: argparse.Namespace, names: Collection[str]) -> dict[str, Any]:
    """The options of ``names`` that were given (not ``None``)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
