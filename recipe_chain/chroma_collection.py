"""What the knowledge store keeps around its Chroma collection: the store directory's
checks, a collection wrapper that names a vanished namespace, and the record of deleted
ids (so that no generated id is handed out twice).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recipe_chain.errors import NamespaceNotFoundError, StorePathError

__all__ = ["DELETED_SUFFIX", "MAX_IDS_PER_CALL", "PAGE", "DeletedIds", "GuardedCollection", "checked_store_dir"]

DELETED_SUFFIX = "__deleted"  # "<collection>__deleted" holds the collection's deleted ids
PAGE = 5000  # records per Chroma get / delete / upsert of a long list
# Most ids (or query hits) asked of Chroma in one call: it reads their records with one SQL
# statement, and SQLite refuses more than 32,766 variables in a statement.
MAX_IDS_PER_CALL = 4096


def checked_store_dir(path: str | os.PathLike[str], read_only: bool) -> Path:
    """The resolved store directory, created if missing (unless ``read_only``).

    Raises:
        StorePathError: If it is a file, or a directory this process cannot write (a
            read-only open still needs to write: Chroma opens its database read-write),
            or (``read_only``) if it does not exist.
    """
    resolved = Path(path).expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise StorePathError(
            f"The store path {resolved} is a file, not a directory. Pass the directory that holds the store "
            "(or a new one to create it)."
        )
    if not resolved.exists():
        if read_only:
            raise StorePathError(f"No store at {resolved}: a read-only store must already exist. Check the path.")
        try:
            resolved.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorePathError(
                f"Cannot create the store directory {resolved} ({exc.strerror}). Choose a path you can write."
            ) from None
    if not os.access(resolved, os.W_OK | os.X_OK):
        raise StorePathError(
            f"The store directory {resolved} is not writable by this process. Chroma writes to its database even to "
            "read it, so also read_only=True needs write access: fix the permissions or copy the store to a "
            "writable place."
        )
    return resolved


class GuardedCollection:
    """A Chroma collection whose calls raise :class:`NamespaceNotFoundError`, naming the
    namespace and the fix, when the collection was deleted underneath the store."""

    def __init__(self, collection: Any, namespace: str, identity: str) -> None:
        from chromadb.errors import NotFoundError

        self._inner, self._namespace, self._identity, self._not_found = collection, namespace, identity, NotFoundError

    @property
    def metadata(self) -> Any:
        return self._inner.metadata

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except self._not_found as exc:
                raise NamespaceNotFoundError(
                    f"Namespace {self._namespace!r} of {self._identity.split('#')[0]} was deleted while this store "
                    "was open (by another client or process). Open a new store to start it afresh."
                ) from exc

        return call


class DeletedIds:
    """The ids of a collection's deleted edits, in the side collection ``<name>__deleted``.

    Args:
        client: The chromadb client of the store.
        collection: The store's collection name.
        known: Shared memo of the side collection per collection name (a directory's
            writer keeps it in the directory lock: no other process can create the side
            collection meanwhile, which saves a Chroma lookup on every write); ``None``
            looks it up each time until it exists.
    """

    def __init__(self, client: Any, collection: str, known: dict[str, Any] | None = None) -> None:
        self._client, self._name, self._known = client, collection, known
        self._side: Any | None = None

    def _collection(self, *, create: bool = False) -> Any | None:
        if self._side is not None:
            return self._side
        if self._known is not None and self._name in self._known:
            self._side = self._known[self._name]
        else:
            from chromadb.errors import NotFoundError

            try:
                self._side = self._client.get_collection(self._name + DELETED_SUFFIX, embedding_function=None)
            except NotFoundError:
                self._side = None
        if self._side is None and create:
            self._side = self._client.get_or_create_collection(
                self._name + DELETED_SUFFIX, metadata={"recipe_chain.deleted_ids_of": self._name},
                embedding_function=None,
            )
        if self._known is not None:
            self._known[self._name] = self._side
        return self._side

    def among(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` belonged to deleted edits."""
        side = self._collection()
        if side is None or not ids:
            return set()
        found: set[str] = set()
        for start in range(0, len(ids), MAX_IDS_PER_CALL):
            found.update(side.get(ids=list(ids[start : start + MAX_IDS_PER_CALL]), include=[])["ids"])
        return found

    def remember(self, ids: Sequence[str]) -> None:
        """Record ``ids`` as used for good. Called before their records are deleted: a
        crash in between leaves an id both stored and remembered, still never reused."""
        side = self._collection(create=True)
        assert side is not None
        for start in range(0, len(ids), PAGE):
            chunk = list(ids[start : start + PAGE])
            side.upsert(ids=chunk, embeddings=np.ones((len(chunk), 1), dtype=np.float32))
