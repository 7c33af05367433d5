"""Write-behind for the knowledge store: a durable local journal in front of Chroma.

With ``RecipeKnowledgeStore(..., write_behind=True)``, a write (``add_edit``,
``add_edits``) does not wait for Chroma. It commits the Chroma ``upsert`` it would have
made to a SQLite journal beside the store's Chroma files (``synchronous=FULL``: the
commit survives a process crash and a power loss), adds the records to an in-memory
*overlay*, and returns. A background thread moves journal entries into Chroma, oldest
first and several per ``upsert``, then drops them from the journal and the overlay.

The thread commits in groups: it starts a write once the oldest pending record has
waited :data:`WRITE_DELAY_S` or :data:`GROUP_RECORDS` records are pending, whichever
comes first. A Chroma upsert costs about as much for one record as for dozens, and on a
small CPU it competes with the next write's encoder pass for the cores, so writing one
record per upsert would slow the very calls write-behind is meant to speed up.

The store reads through the overlay: its gate and query search the overlay's active
records next to Chroma's candidates, and fetching records by id prefers the overlay's
newer version. Operations that read or change many records at once (``list_edits``,
``count``, ``update_edit``, deletions, ``clear``, ``reindex``) first write everything
pending. A store opened on a path whose journal still holds entries (a process that
ended before its writer caught up) writes them to Chroma before anything else.

Store objects of the namespace in the writing process share its queue
(:mod:`recipe_chain.store_lock`), so they see a pending edit at once; other processes
see it once it reaches Chroma (:meth:`WriteBehindQueue.drain` waits for that). One write-behind store at a time may have a namespace of a path open:
it holds an exclusive lock (:class:`WriterLock`), which also tells a store opening the
path whether journal entries belong to a live writer (left alone) or to one that ended
(written to Chroma).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["JOURNAL_FILE", "UpsertBatch", "EditJournal", "WriteBehindQueue", "WriterLock"]

logger = logging.getLogger(__name__)

JOURNAL_FILE = "recipe_chain_journal.sqlite3"
"""The journal's file name, in the embedded store's directory."""

WRITE_DELAY_S = 0.5
"""Longest time a pending record waits for others to join its Chroma upsert."""
GROUP_RECORDS = 256
"""Pending records that start a Chroma upsert without waiting for :data:`WRITE_DELAY_S`."""

_MAX_RECORDS_PER_UPSERT = 1024
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0


class WriterLock:
    """An exclusive, non-blocking advisory lock on a file (``flock``), held by the one
    write-behind store of a namespace. Released by :meth:`release` or when the process
    ends, however it ends. Where ``fcntl`` is missing (Windows) every acquire succeeds.

    Args:
        path: The lock file (created if missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; ``False`` if another holder (any process, this one included) has it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def lock_path(directory: Path, collection: str) -> Path:
    """The writer lock file of one collection's journal entries."""
    return directory / f"{JOURNAL_FILE}.{collection}.lock"


@dataclass
class UpsertBatch:
    """The arguments of one Chroma ``upsert``."""

    ids: list[str]
    embeddings: np.ndarray  # (N, d) float32
    metadatas: list[dict[str, Any]]
    documents: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PendingRecord:
    """A record in the overlay: the newest journaled version of one id."""

    seq: int  # journal sequence number of the entry that wrote this version
    key: np.ndarray  # (d,) float32
    meta: dict[str, Any]
    document: str


class EditJournal:
    """Journal entries (one per write) of one Chroma collection, in a SQLite file.

    Several collections (namespaces) share a file; each journal object sees its own.

    Args:
        path: The SQLite file (created if missing).
        collection: The Chroma collection the entries belong to.
    """

    def __init__(self, path: Path, collection: str) -> None:
        self.path = path
        self.collection = collection
        # one connection, used under the queue's state lock from several threads
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, "
            "ids TEXT NOT NULL, metadatas TEXT NOT NULL, documents TEXT NOT NULL, dim INTEGER NOT NULL, "
            "embeddings BLOB NOT NULL)"
        )

    def append(self, batch: UpsertBatch) -> int:
        """Commit one entry and return its sequence number."""
        embeddings = np.ascontiguousarray(batch.embeddings, dtype=np.float32)  # (N, d)
        cursor = self._db.execute(
            "INSERT INTO entries (collection, ids, metadatas, documents, dim, embeddings) VALUES (?, ?, ?, ?, ?, ?)",
            (
                self.collection,
                json.dumps(batch.ids),
                json.dumps(batch.metadatas),
                json.dumps(batch.documents),
                int(embeddings.shape[1]),
                embeddings.tobytes(),
            ),
        )
        return int(cursor.lastrowid)  # type: ignore[arg-type]

    def entries(self) -> list[tuple[int, UpsertBatch]]:
        """Every entry of this collection, oldest first."""
        rows = self._db.execute(
            "SELECT seq, ids, metadatas, documents, dim, embeddings FROM entries WHERE collection = ? ORDER BY seq",
            (self.collection,),
        ).fetchall()
        out = []
        for seq, ids, metas, docs, dim, blob in rows:
            embeddings = np.frombuffer(blob, dtype=np.float32).reshape(-1, dim)  # (N, d)
            out.append((seq, UpsertBatch(json.loads(ids), embeddings, json.loads(metas), json.loads(docs))))
        return out

    def remove_through(self, seq: int) -> None:
        """Drop this collection's entries up to and including ``seq``."""
        self._db.execute("DELETE FROM entries WHERE collection = ? AND seq <= ?", (self.collection, seq))

    def close(self) -> None:
        self._db.close()


def merged(entries: list[tuple[int, UpsertBatch]]) -> UpsertBatch:
    """One upsert equal to the entries applied in order (the last version of each id wins)."""
    last: dict[str, tuple[np.ndarray, dict[str, Any], str]] = {}
    for _, batch in entries:
        for i, edit_id in enumerate(batch.ids):
            last.pop(edit_id, None)  # re-insert: keep the order of last writes
            last[edit_id] = (batch.embeddings[i], batch.metadatas[i], batch.documents[i])
    ids = list(last)
    return UpsertBatch(
        ids=ids,
        embeddings=np.stack([last[i][0] for i in ids]).astype(np.float32, copy=False),
        metadatas=[last[i][1] for i in ids],
        documents=[last[i][2] for i in ids],
    )


class WriteBehindQueue:
    """Journaled upserts of one collection, visible in an overlay until a background
    thread has written them to Chroma.

    Args:
        journal: Where entries are committed.
        write: Writes one merged batch to Chroma (the collection's ``upsert``).
        max_pending: Pending records beyond which :meth:`append` writes everything
            pending itself before returning (back-pressure on bulk imports).
        delay_s: Longest wait of a pending record for others to join its upsert.
        group_records: Pending records that start an upsert at once.
    """

    def __init__(
        self,
        journal: EditJournal,
        write: Callable[[UpsertBatch], None],
        max_pending: int = 4096,
        delay_s: float = WRITE_DELAY_S,
        group_records: int = GROUP_RECORDS,
    ) -> None:
        self.journal = journal
        self._write = write
        self.max_pending = max_pending
        self.delay_s = delay_s
        self.group_records = group_records
        self._oldest_since = 0.0  # time.monotonic() when the backlog last became non-empty
        self._state = threading.Lock()  # the overlay, the journal connection, the counters
        self._drain_lock = threading.Lock()  # one writer of journal entries to Chroma at a time
        self._wake = threading.Condition(self._state)
        self._overlay: dict[str, PendingRecord] = {}
        self._pending_records = 0
        self._stop = False
        self._last_error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ writing
    def append(self, batch: UpsertBatch) -> None:
        """Journal ``batch`` (durably), show it in the overlay and wake the writer thread.

        Raises:
            sqlite3.Error: If the journal commit fails; nothing changed then.
        """
        with self._state:
            seq = self.journal.append(batch)
            for i, edit_id in enumerate(batch.ids):
                self._overlay[edit_id] = PendingRecord(
                    seq, np.array(batch.embeddings[i], dtype=np.float32), dict(batch.metadatas[i]), batch.documents[i]
                )
            if self._pending_records == 0:
                self._oldest_since = time.monotonic()
            self._pending_records += len(batch)
            self._wake.notify()
            backlog = self._pending_records > self.max_pending
        self._ensure_thread()
        if backlog:
            self.drain()

    def drain(self) -> int:
        """Write every pending entry to Chroma now, in this thread; return how many records.

        Raises:
            Exception: Whatever the Chroma write raised; the entries stay journaled and
                pending, and are tried again.
        """
        written = 0
        with self._drain_lock:
            while True:
                with self._state:
                    entries = self.journal.entries()
                if not entries:
                    return written
                written += self._write_entries(entries)

    def _write_entries(self, entries: list[tuple[int, UpsertBatch]]) -> int:
        """Write ``entries`` (oldest first) in merged upserts, then forget them."""
        done = 0
        start = 0
        while start < len(entries):
            stop, count = start, 0
            while stop < len(entries) and (stop == start or count + len(entries[stop][1]) <= _MAX_RECORDS_PER_UPSERT):
                count += len(entries[stop][1])
                stop += 1
            chunk = entries[start:stop]
            self._write(merged(chunk))  # outside the state lock: gates and new writes go on meanwhile
            last_seq = chunk[-1][0]
            with self._state:
                self.journal.remove_through(last_seq)
                for edit_id in [i for i, r in self._overlay.items() if r.seq <= last_seq]:
                    del self._overlay[edit_id]
                self._pending_records = max(0, self._pending_records - count)
                if self._pending_records:  # written meanwhile: they wait (at most) from now
                    self._oldest_since = time.monotonic()
                self._last_error = None
            done += count
            start = stop
        return done

    # ------------------------------------------------------------------ reading
    def overlay(self) -> dict[str, PendingRecord]:
        """A snapshot of the pending records by id (take it *before* reading Chroma)."""
        with self._state:
            return dict(self._overlay) if self._overlay else {}

    @property
    def pending(self) -> int:
        """Records journaled but not yet written to Chroma (counting repeats of an id)."""
        with self._state:
            return self._pending_records

    @property
    def last_error(self) -> BaseException | None:
        """The writer thread's last failure, cleared by the next successful write."""
        return self._last_error

    # ------------------------------------------------------------------ the writer thread
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._state:
                if self._stop or (self._thread is not None and self._thread.is_alive()):
                    return
                self._thread = threading.Thread(
                    target=self._run, name=f"recipe-chain-write-behind[{self.journal.collection}]", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        delay = _RETRY_FIRST_S
        while True:
            with self._state:
                while not self._stop and self._pending_records == 0:
                    self._wake.wait()
                # group commit: let more writes join, up to delay_s after the oldest one
                while not self._stop and 0 < self._pending_records < self.group_records:
                    remaining = self._oldest_since + self.delay_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
                if self._stop:
                    return
            try:
                self.drain()
                delay = _RETRY_FIRST_S
            except Exception as exc:  # noqa: BLE001 - kept journaled; retried, and raised by drain()/close()
                self._last_error = exc
                logger.warning(
                    "Writing %d journaled record(s) to Chroma failed (retrying in %.1f s): %s",
                    self.pending, delay, exc, exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                with self._state:
                    self._wake.wait(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    def close(self) -> None:
        """Stop the writer thread, write what is pending, close the journal.

        If the final write fails, the entries stay in the journal (a store opened on the
        same path writes them) and a warning says so.
        """
        with self._state:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
        try:
            self.drain()
        except Exception as exc:  # noqa: BLE001 - nothing is lost: the journal keeps them
            logger.warning(
                "Closing with %d record(s) not yet in Chroma (%s); they stay in the journal %s and are written "
                "when a store opens this path again.", self.pending, exc, self.journal.path,
            )
        self.journal.close()
