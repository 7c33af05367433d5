"""One writer per store directory: the lock every writable embedded store holds.

The discipline (see :class:`~recipe_chain.store.RecipeKnowledgeStore`): **one process
writes a store directory at a time**, and inside that process every store object on the
directory shares one write lock, so writes and their supersession read-modify-writes run
one after another. Store objects of one namespace also share a write-behind store's
queue while it is open: its pending edits are theirs to see, supersede and wait for.

Why a whole process, not each call: an embedded Chroma keeps its vector index in the
memory of the process that opened it, so a second process writing the same directory
works against an index that misses the first one's records (Chroma's ``Error finding
id``, and generated ids that collide). Read-only stores take no lock.

Across processes the lock is an ``flock`` on ``<path>/recipe-chain.lock``: the kernel
drops it when its holder exits, however it exits (``SIGKILL`` included), so a crashed
writer never leaves a stale lock behind. The holder's process id is written into the
file for the error message of the next writer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe_chain.errors import StoreBusyError

if TYPE_CHECKING:
    from recipe_chain.write_behind import WriteBehindQueue

__all__ = ["LOCK_FILE", "PathWriteLock", "acquire_path_lock", "client_mutex", "shared_queue"]

logger = logging.getLogger(__name__)

LOCK_FILE = "recipe-chain.lock"
_POLL_S = 0.05


@dataclass
class PathWriteLock:
    """The write lock of one store directory, shared by this process's store objects on it.

    Attributes:
        path: The store directory.
        mutex: Serialises writes of every store object on ``path`` in this process.
        queues: Collection name -> the write-behind queue of the store that opened it with
            ``write_behind=True``; every store object of that collection writes through it.
        deleted_ids: Collection name -> its deleted-ids collection, or ``None`` while it
            has none (only this process can create one while it holds the lock).
    """

    path: Path
    mutex: threading.RLock = field(default_factory=threading.RLock)
    queues: dict[str, WriteBehindQueue] = field(default_factory=dict)
    deleted_ids: dict[str, Any] = field(default_factory=dict)
    _fd: int | None = None
    _holders: int = 0

    def release(self) -> None:
        """Drop one holder; the last one releases the directory for other processes."""
        with _REGISTRY_LOCK:
            self._holders -= 1
            if self._holders > 0:
                return
            _REGISTRY.pop(self.path, None)
            if self._fd is not None:
                os.close(self._fd)  # closing the descriptor releases the flock
                self._fd = None
        logger.debug("Released the write lock of %s", self.path)


_REGISTRY: dict[Path, PathWriteLock] = {}  # directory -> this process's lock on it
_REGISTRY_LOCK = threading.Lock()
_OPENING: dict[Path, threading.Lock] = {}  # directory -> held while this process takes its file lock


def _flock(path: Path, timeout: float) -> int:
    """Take the directory's file lock, waiting up to ``timeout`` seconds; return its descriptor."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
        return -1
    lock_file = path / LOCK_FILE
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise StoreBusyError(
                    f"The store at {path} is open for writing by another process (pid {holder}). One process "
                    "writes a store directory at a time: close the other store, open this one with "
                    "read_only=True, wait for the lock with lock_timeout=SECONDS, or serve the store from "
                    "one process (a Chroma server or `recipe-chain serve`)."
                ) from None
            time.sleep(_POLL_S)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    return fd


def acquire_path_lock(path: Path, *, timeout: float = 0.0) -> PathWriteLock:
    """Join (or take) this process's write lock on store directory ``path``.

    Args:
        path: The store directory (it must exist).
        timeout: Seconds to wait for another process to release the directory.

    Raises:
        StoreBusyError: Another process holds the directory.
    """
    path = path.resolve()
    with _REGISTRY_LOCK:
        opening = _OPENING.setdefault(path, threading.Lock())
    # One thread of this process waits for other processes, holding no process-wide lock
    # (stores on other directories open meanwhile); the others wait for it and then join.
    with opening:
        with _REGISTRY_LOCK:
            lock = _REGISTRY.get(path)
            if lock is not None:
                lock._holders += 1
                return lock
        fd = _flock(path, timeout)
        with _REGISTRY_LOCK:
            lock = PathWriteLock(path=path, _fd=None if fd < 0 else fd, _holders=1)
            _REGISTRY[path] = lock
    logger.debug("Took the write lock of %s", path)
    return lock


_CLIENT_MUTEXES: dict[str, threading.RLock] = {}  # identity -> write lock of an ephemeral / client store


def client_mutex(identity: str) -> threading.RLock:
    """The write lock shared by this process's store objects on one collection of an
    ephemeral or ``client=`` store (no directory to lock)."""
    with _REGISTRY_LOCK:
        return _CLIENT_MUTEXES.setdefault(identity, threading.RLock())


def shared_queue(path: Path, collection: str) -> WriteBehindQueue | None:
    """The write-behind queue this process has open on ``collection`` of ``path``, if any."""
    lock = _REGISTRY.get(path)
    return None if lock is None else lock.queues.get(collection)
