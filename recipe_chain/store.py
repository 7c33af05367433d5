"""The RECIPE knowledge repository: edits in Chroma, gated by the Knowledge Sentinel.

:class:`RecipeKnowledgeStore` keeps every edit as one Chroma record in the collection
``f"{collection_prefix}__{namespace}"`` (one collection per namespace, so a query never
sees another namespace's edits):

* **embedding**: the edit's key, ``editor.encode_statements([statement])`` (float32), in a
  collection whose HNSW index uses the *cosine* space. Candidates are then re-scored
  exactly with RECIPE's ``q·k/√d`` on the client. (An ``ip`` HNSW index is the textbook
  match for ``q·k`` but is useless for trained RECIPE keys: they share one dominant
  direction, Chroma's inner-product graph leaves most of them unreachable, and on 1,000
  CounterFact edits the right edit came back for 5 % of prompts. Trained keys have
  near-constant norms, so cosine candidates plus the exact re-score recover 96.8 %.);
* **document**: the statement ``"<prompt> <target_new>"``;
* **metadata**: ``edit_id``, ``namespace``, ``prompt``, ``prompt_norm`` (see below),
  ``target_new``, ``subject`` (omitted when ``None``), ``created_at``, ``active``,
  ``superseded_by`` (omitted when ``None``), ``previous_targets`` (a JSON list),
  ``encoder_fingerprint``, ``key_precision`` (``"float32"``, or ``"int8"`` when the
  editor's ``int8_statements`` was on; absent means float32), and the user's metadata
  under ``user.<key>``.

The collection's own metadata records the encoder fingerprint of the editor that wrote
the keys. Opening it with another editor raises :class:`EncoderMismatchError`; the way
out is :meth:`RecipeKnowledgeStore.open_for_reindex` followed by
:meth:`RecipeKnowledgeStore.reindex`, which re-encodes every statement.

**Prompt vectors** are not stored: they are derived from the stored key (and, with
target slots, the stored target), ``editor.prefix_vectors(key[None], [target])[0]``. The key is the float32 vector Chroma returns
(its cosine index may change the last bits of the editor's output when it takes a key
in: up to about 1e-7 relative), so after a reopen (in any process) the vectors are
bit-identical.

**The gate** (:meth:`RecipeKnowledgeStore.gate`): the query is encoded by the query
head; Chroma returns the approximate top ``candidate_k`` active edits with their keys;
the client re-scores them exactly (``q·k/√d``) and computes ``sim(q, sentinel)`` from
``editor.sentinel_key()`` (cached per store; the sentinel never goes into Chroma). The
best candidate is admitted iff ``best > sentinel + gate_margin``; with
``use_gate=False`` the top-1 is always admitted (ablation).

**Corrections.** Two edits are *the same fact* when their normalised prompts are equal
(:func:`normalize_prompt`: Unicode NFC, case-folded, whitespace collapsed, stripped;
prompts, targets and subjects are stored in NFC). Adding
an edit of a fact that has an active edit *supersedes* it: the old edit stays stored with
``active=False`` and ``superseded_by=<new id>``; the new edit gets
``previous_targets = old.previous_targets + [old.target_new]``. Only active edits are
gate candidates, so the LLM always gets the newest target. Deleting the newest edit
re-activates the one it superseded (undo). :meth:`RecipeKnowledgeStore.update_edit`
changes ``target_new`` in place: the id stays, the key is re-encoded and the old target
is appended to ``previous_targets``.

**Generated ids.** An edit added without an explicit ``edit_id`` gets 32 hex digits: the
first 24 are a hash of its normalised prompt (its fact), the last 8 the fact's version
number (0 for its first edit, then one above the highest stored version). Finding the
edits a new edit supersedes is then a lookup by id, which stays under a millisecond at
100k edits, where Chroma's metadata filter on ``prompt_norm`` scans every record (about
15-20 ms at 100k on the benchmark machine). **Generated ids are never reused**: deleting
an edit records its id in a side collection ``<collection>__deleted``, a deleted version
keeps its number, and a delete of an id that is gone raises :class:`EditNotFoundError`
and changes nothing. (An explicit ``edit_id`` of a deleted edit may be given again: that
is the caller's choice.) So versions have no gaps, and probing them 16 ids at a time finds the
newest at any history length. Once an edit with an explicit id has been written to a
namespace, that namespace uses the metadata filter for good (and random ids for new
edits), as do stores created by recipe-chain versions without this scheme.

**Atomicity and crashes.** Each batch of :meth:`RecipeKnowledgeStore.add_edits` (new
edits plus the edits they supersede) is one Chroma ``upsert`` call, so a crash leaves a
prefix of whole batches. Every input is validated (types, blanks, metadata, ids,
statement length) before the first batch is written, so bad input never leaves a
partial import. A failed call leaves the store's content as it was.

**Write-behind** (``write_behind=True``, embedded stores): a write returns once the
Chroma upsert it would make is committed to a SQLite journal in the store's directory; a
background thread writes journal entries to Chroma. Until then the edits are gated,
queried and fetched from an in-memory overlay (with the editor's exact keys; Chroma's
rounding above applies once written), and superseding, undo and corrections work as
usual. ``list_edits``, ``count``, ``update_edit``, deletions, ``clear`` and ``reindex``
first write everything pending; :meth:`RecipeKnowledgeStore.flush` does only that. A
failed Chroma write is retried and loses nothing; a store opened on a path whose journal
holds entries (its writer was killed) writes them first. Other store objects of the
namespace in the same process share the queue and see pending edits at once; other
processes see an edit once it is written. See :mod:`recipe_chain.write_behind`.

**One writer per store directory** (:mod:`recipe_chain.store_lock`). An embedded store
opened for writing holds its directory's lock until :meth:`RecipeKnowledgeStore.close`:
a writable store in another process waits up to ``lock_timeout`` seconds, then raises
:class:`~recipe_chain.errors.StoreBusyError`. (Embedded Chroma keeps its vector index in
the memory of the process that opened it, so two writing processes would lose and
overwrite each other's edits.) Store objects in one process share the lock: their writes,
and the read-modify-write of each supersession, run one at a time, while gates and
queries run concurrently; they also share an open write-behind queue, so every one of
them sees pending edits. ``read_only=True`` takes no lock and refuses writes with
:class:`~recipe_chain.errors.ReadOnlyStoreError`; in another process it lists records at
once, but its gates raise :class:`~recipe_chain.errors.StoreBusyError` while Chroma's
vector index on disk lags the records the writing process adds. Ephemeral and ``client=`` stores share
a lock per collection within the process; a Chroma server cannot be locked from here, so
let one process write each of its namespaces.

**Text length.** Statements and queries longer than the encoder's ``max_length`` tokens
raise ``ValueError`` (no silent truncation: it would drop the new target).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from recipe_chain.edit_text import check_targets_visible
from recipe_chain.editor import RecipeEditor, statement_of
from recipe_chain.errors import (
    DuplicateEditError,
    EditNotFoundError,
    EncoderMismatchError,
    NamespaceNotFoundError,
    ReadOnlyStoreError,
    RecipeChainError,
    StoreBusyError,
)
from recipe_chain.gate import admits, rank, rescore, sentinel_similarity, shortlist, verified_choice
from recipe_chain.records import EditLike, EditRecord, GateCandidate, GateResult, ScalarMeta
from recipe_chain.chroma_collection import (
    MAX_IDS_PER_CALL,
    PAGE,
    DeletedIds,
    GuardedCollection,
    checked_store_dir,
)
from recipe_chain.store_lock import PathWriteLock, acquire_path_lock, client_mutex, shared_queue
from recipe_chain.verifier import EditVerifier, VerifierChoice
from recipe_chain.write_behind import (
    JOURNAL_FILE,
    EditJournal,
    PendingRecord,
    UpsertBatch,
    WriteBehindQueue,
    WriterLock,
    lock_path,
    merged,
)

if TYPE_CHECKING:
    import chromadb.api

    from recipe_chain.retrievers import RecipeKnowledgeRetriever

__all__ = [
    "ScalarMeta",
    "EditRecord",
    "GateCandidate",
    "GateResult",
    "RecipeKnowledgeStore",
    "normalize_prompt",
    "collection_name",
    "DEFAULT_STORE_PATH",
    "USER_METADATA_PREFIX",
]

logger = logging.getLogger(__name__)

DEFAULT_STORE_PATH = "./recipe-store"
"""Where the embedded store lives when neither ``path``, ``client`` nor ``ephemeral`` is given."""

USER_METADATA_PREFIX = "user."
"""Chroma metadata keys of the user's own metadata start with this prefix."""

SCHEMA_VERSION = 1

# Collection-level metadata.
_C_FINGERPRINT = "recipe_chain.encoder_fingerprint"
_C_SCHEMA = "recipe_chain.schema"
_C_NAMESPACE = "recipe_chain.namespace"
# HNSW space of the candidate index (see the module docstring); "ip" is still opened (stores
# written by 0.1.0 development builds) with a warning.
_HNSW_SPACE = "cosine"
_ACCEPTED_SPACES = ("cosine", "ip")
# How many records Chroma's HNSW segment takes in before it persists its index (Chroma's
# default is 1000). A one-record add gets slower with every record written since the last
# persist (it looks like a re-read of the unpersisted log; the effect is measured). Into a 100k-record collection on
# the 2-core benchmark machine, the p50 of 50 consecutive adds rose from 16 to 42 ms over
# 600 adds with 1000, and stayed at 14-20 ms with 100
# (benchmarks/results/chroma_sync_threshold.md).
_HNSW_SYNC_THRESHOLD = 100
_C_REP_DIM = "recipe_chain.rep_dim"
_C_REINDEX_TARGET = "recipe_chain.reindex_target"  # set while an in-place reindex runs
_C_REINDEX_COMPLETE = "recipe_chain.reindex_complete"  # set on a finished copy before the swap
_REINDEX_SUFFIX = "__reindex"
# How generated edit ids are made (see "Generated ids" in the module docstring). Stores
# created before this key existed have random ids and keep them.
_C_ID_SCHEME = "recipe_chain.generated_ids"
_FACT_VERSION_IDS = "fact-version"
# Set once an edit with an explicit id was written: such an edit sits at no fact-version
# id, so from then on supersessions are found with a metadata filter.
_C_EXPLICIT_IDS = "recipe_chain.explicit_ids"
_ID_FLAGS = (_C_ID_SCHEME, _C_EXPLICIT_IDS)
_FACT_ID_HEX = 24  # hex digits of the fact hash; the other 8 hold the version
_VERSION_WINDOW = 16  # fact-version ids probed per fact and round

# Record-level metadata keys we own.
_EDIT_ID = "edit_id"
_NAMESPACE = "namespace"
_PROMPT = "prompt"
_PROMPT_NORM = "prompt_norm"
_TARGET = "target_new"
_SUBJECT = "subject"
_CREATED = "created_at"
_ACTIVE = "active"
_SUPERSEDED_BY = "superseded_by"
_PREVIOUS = "previous_targets"
_FINGERPRINT = "encoder_fingerprint"
_KEY_PRECISION = "key_precision"

# Record fields a ``list_edits(where=...)`` filter may name, and their metadata keys.
_WHERE_FIELDS = {
    "edit_id": _EDIT_ID,
    "prompt": _PROMPT,
    "prompt_norm": _PROMPT_NORM,
    "target_new": _TARGET,
    "subject": _SUBJECT,
    "created_at": _CREATED,
    "active": _ACTIVE,
    "superseded_by": _SUPERSEDED_BY,
    "encoder_fingerprint": _FINGERPRINT,
    "key_precision": _KEY_PRECISION,
}
_WHERE_LOGICAL = ("$and", "$or")
_EDIT_KEYS = frozenset({"prompt", "target_new", "subject", "metadata", "edit_id"})

_NAME_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
_MAX_NAME_LEN = 63
_MAX_ID_LEN = 256
_PROGRESS_THRESHOLD = 1000
_SEARCH_WIDEN_ROUNDS = 3
_MAX_HITS_PER_QUERY_CALL = MAX_IDS_PER_CALL  # queries x n_results per Chroma query
_PAGE = PAGE
# Chroma's errors for a vector index that is behind the records (another process writes them)
_STALE_INDEX_ERRORS = ("hnsw segment reader", "Error finding id")


def fact_version_id(prompt_norm: str, version: int) -> str:
    """The generated id of version ``version`` of the fact with normalised prompt ``prompt_norm``.

    Example:
        >>> fact_version_id("the capital of france is", 0)[-8:]
        '00000000'
    """
    digest = hashlib.sha256(prompt_norm.encode("utf-8")).hexdigest()[:_FACT_ID_HEX]
    return f"{digest}{version:08x}"


def _oldest_first(heads: dict[str, list[_Stored]]) -> dict[str, list[_Stored]]:
    for group in heads.values():
        group.sort(key=lambda s: (str(s.meta.get(_CREATED, "")), s.edit_id))  # newest last
    return heads


def normalize_prompt(prompt: str) -> str:
    """The correction key of a prompt: Unicode NFC, case-folded, whitespace collapsed, stripped.

    NFC makes the composed and decomposed spellings of a character ("é" as one code
    point, or "e" + a combining accent) one fact.

    Example:
        >>> normalize_prompt("  The mother  tongue of\\tDanielle Darrieux IS ")
        'the mother tongue of danielle darrieux is'
    """
    return " ".join(unicodedata.normalize("NFC", unicodedata.normalize("NFC", prompt).casefold()).split())


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value or len(value) > _MAX_NAME_LEN or not _NAME_RE.match(value):
        raise ValueError(
            f"Invalid {what} {value!r}: use 1-{_MAX_NAME_LEN} letters or digits, optionally separated by "
            "single '.', '_' or '-' (no leading, trailing or doubled separators)"
        )
    return value


def collection_name(namespace: str, collection_prefix: str = "recipe") -> str:
    """The Chroma collection of a namespace: ``f"{collection_prefix}__{namespace}"``.

    Raises:
        ValueError: If either name is invalid (a name never contains ``"__"``, so two
            different ``(prefix, namespace)`` pairs never share a collection).
    """
    return f"{_check_name(collection_prefix, 'collection_prefix')}__{_check_name(namespace, 'namespace')}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _check_text(value: object, what: str) -> str:
    """``value`` in Unicode NFC (one stored form for what looks the same), if it is a non-blank str."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty or whitespace")
    return unicodedata.normalize("NFC", value)


def _check_edit_id(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"edit_id must be a str, got {type(value).__name__}")
    if not value.strip() or value != value.strip() or len(value) > _MAX_ID_LEN:
        raise ValueError(f"edit_id must be 1-{_MAX_ID_LEN} characters without surrounding whitespace, got {value!r}")
    if any(ord(ch) < 32 for ch in value):
        raise ValueError(f"edit_id must not contain control characters, got {value!r}")
    return value


def _check_metadata(metadata: object) -> dict[str, ScalarMeta]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to scalars, got {type(metadata).__name__}")
    out: dict[str, ScalarMeta] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be str, got {type(key).__name__} {key!r}")
        if not key or key[0] in "$#":
            raise ValueError(f"metadata key {key!r} must be non-empty and not start with '$' or '#'")
        if not isinstance(value, (str, int, float, bool)):
            raise TypeError(
                f"metadata[{key!r}] is {type(value).__name__}; only str, int, float and bool values can be stored"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metadata[{key!r}] must be a finite number, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise ValueError(f"metadata[{key!r}] does not fit in a 64-bit integer")
        out[key] = value
    return out


@dataclass
class _Pending:
    """A validated edit waiting to be written."""

    edit_id: str
    explicit: bool
    prompt: str
    target_new: str
    subject: str | None
    metadata: dict[str, ScalarMeta]
    statement: str
    prompt_norm: str
    chroma_meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Stored:
    """A record read back from Chroma, with its key."""

    edit_id: str
    meta: dict[str, Any]
    document: str
    key: torch.Tensor | None  # (d,) float32


class RecipeKnowledgeStore:
    """Edits as keys in Chroma, with the Knowledge Sentinel gate.

    Exactly one backend is used: ``client`` (any chromadb client, e.g. an ``HttpClient``
    to a Chroma server, used as is), ``ephemeral=True`` (an in-memory
    ``chromadb.EphemeralClient``; in one process all ephemeral clients share one
    in-memory database, so use distinct namespaces or prefixes), or ``path`` (a
    ``chromadb.PersistentClient``; the default when nothing is given is
    :data:`DEFAULT_STORE_PATH`).

    Args:
        editor: The RECIPE editor whose knowledge head writes keys, whose query head
            encodes queries, and whose sentinel and prompt encoder the gate uses.
        path: Directory of the embedded (persistent) store.
        client: A chromadb client to use instead of creating one.
        namespace: The knowledge base; each namespace is its own Chroma collection.
        collection_prefix: Prefix of the collection names.
        ephemeral: Keep the store in memory.
        use_gate: ``False`` disables the sentinel (always admit the top-1; ablation).
        gate_margin: Extra margin the best candidate must beat the sentinel by.
        candidate_k: How many approximate candidates the gate re-scores exactly.
        allow_reindex: Open a store written by another encoder without raising; every
            operation that needs keys then raises until :meth:`reindex` is called.
            :meth:`open_for_reindex` is the same with a clearer name.
        write_behind: Return from writes once they are committed to a local journal,
            and let a background thread write them to Chroma (see
            :mod:`recipe_chain.write_behind`). Pending edits are gated and fetched like
            stored ones. Needs ``path`` (the journal lives in the store's directory).
            :meth:`flush` waits for Chroma; :meth:`close` flushes.
        verifier: The gate's second stage: ``"auto"`` (the editor's), an
            :class:`~recipe_chain.verifier.EditVerifier`, or ``None`` (sentinel only).
        read_only: Open for listing, gating and generation only: no directory lock is
            taken, a missing namespace is not created, and writes raise
            :class:`~recipe_chain.errors.ReadOnlyStoreError`.
        lock_timeout: Seconds to wait when another process holds the directory's write
            lock (embedded stores; see "One writer per store directory" above).

    Raises:
        EncoderMismatchError: If the namespace was written by an editor with another
            fingerprint (and ``allow_reindex`` is false).
        StoreBusyError: If another process writes the directory (after ``lock_timeout``).
        StorePathError: If ``path`` is a file or a directory this process cannot write,
            or (``read_only``) does not exist.
        NamespaceNotFoundError: If ``read_only`` and the namespace does not exist.
        ValueError: For an invalid namespace, prefix or option, more than one backend,
            or ``write_behind`` without ``path``.

    Example:
        >>> from recipe_chain.store import RecipeKnowledgeStore
        >>> store = RecipeKnowledgeStore(editor, path="./recipe-store")  # doctest: +SKIP
        >>> store.add_edit("The mother tongue of Danielle Darrieux is", "English")  # doctest: +SKIP
        >>> result = store.gate("What is the mother tongue of Danielle Darrieux?")  # doctest: +SKIP
        >>> result.fired, result.prompt_vectors.shape  # doctest: +SKIP
        (True, torch.Size([4, 576]))
    """

    def __init__(
        self,
        editor: RecipeEditor,
        *,
        path: str | os.PathLike[str] | None = None,
        client: chromadb.api.ClientAPI | None = None,
        namespace: str = "default",
        collection_prefix: str = "recipe",
        ephemeral: bool = False,
        use_gate: bool = True,
        gate_margin: float = 0.0,
        candidate_k: int = 8,
        allow_reindex: bool = False,
        write_behind: bool = False,
        verifier: VerifierChoice = "auto",
        read_only: bool = False,
        lock_timeout: float = 0.0,
    ) -> None:
        if not isinstance(editor, RecipeEditor):
            raise TypeError(f"editor must be a RecipeEditor, got {type(editor).__name__}")
        self._name = collection_name(namespace, collection_prefix)
        self.namespace = namespace
        self.collection_prefix = collection_prefix
        if sum(x is not None and x is not False for x in (path, client, ephemeral or None)) > 1:
            raise ValueError("Pass at most one of path=, client= and ephemeral=True")
        if not isinstance(use_gate, bool):
            raise TypeError(f"use_gate must be a bool, got {type(use_gate).__name__}")
        if isinstance(gate_margin, bool) or not isinstance(gate_margin, (int, float)) or not math.isfinite(gate_margin):
            raise ValueError(f"gate_margin must be a finite number, got {gate_margin!r}")
        if isinstance(candidate_k, bool) or not isinstance(candidate_k, int) or candidate_k < 1:
            raise ValueError(f"candidate_k must be a positive int, got {candidate_k!r}")
        if not isinstance(write_behind, bool):
            raise TypeError(f"write_behind must be a bool, got {type(write_behind).__name__}")
        if write_behind and (client is not None or ephemeral):
            raise ValueError(
                "write_behind=True needs an embedded store (path=): its journal lives in the store's directory"
            )
        if not isinstance(read_only, bool):
            raise TypeError(f"read_only must be a bool, got {type(read_only).__name__}")
        if read_only and write_behind:
            raise ValueError("read_only=True and write_behind=True exclude each other")
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout >= 0:
            raise ValueError(f"lock_timeout must be a non-negative number of seconds, got {lock_timeout!r}")
        self.read_only = read_only
        if verifier == "auto":
            verifier = editor.gate_verifier
        elif verifier is not None and not isinstance(verifier, EditVerifier):
            raise TypeError(f"verifier must be 'auto', an EditVerifier or None, got {type(verifier).__name__}")
        self.verifier: EditVerifier | None = verifier
        self.editor = editor
        self.use_gate = use_gate
        self.gate_margin = float(gate_margin)
        self.candidate_k = candidate_k
        # serialises writes and supersession read-modify-writes (shared by the store objects
        # of one directory or collection in this process)
        self._lock: threading.RLock = threading.RLock()
        self._path_lock: PathWriteLock | None = None
        # Serialises encoder calls: a fast tokenizer must not be used by two threads at once.
        self._encode_lock = threading.Lock()
        self._closed = False
        self._sentinel_cache: tuple[str, torch.Tensor] | None = None
        self._stale = False
        self._own_queue: WriteBehindQueue | None = None  # the queue this store opened (write_behind=True)
        self._writer_lock: WriterLock | None = None

        import chromadb  # imported here: no import-time side effects for users who never open a store

        self._owns_client = client is None
        self.path: Path | None = None
        if client is not None:
            self._client = client
            self.identity = _client_identity(client, self._name)
            self._lock = client_mutex(self.identity)
        elif ephemeral:
            self._client = chromadb.EphemeralClient()
            self.identity = f"chroma:ephemeral#{self._identity_suffix()}"
            self._lock = client_mutex(self.identity)
        else:
            resolved = checked_store_dir(path if path is not None else DEFAULT_STORE_PATH, read_only)
            self.path = resolved
            if not read_only:
                self._path_lock = acquire_path_lock(resolved, timeout=float(lock_timeout))
                self._lock = self._path_lock.mutex
            try:
                self._client = chromadb.PersistentClient(path=str(resolved))
            except BaseException:
                if self._path_lock is not None:
                    self._path_lock.release()
                raise
            self.identity = f"chroma:persistent:{resolved}#{self._identity_suffix()}"
        known = self._path_lock.deleted_ids if self._path_lock is not None else None
        self._deleted_ids = DeletedIds(self._client, self._name, known)
        try:
            if write_behind:
                assert self.path is not None
                lock = WriterLock(lock_path(self.path, self._name))
                if not lock.acquire():
                    raise RecipeChainError(
                        f"Another write-behind store (in this or another process) has namespace {namespace!r} of "
                        f"{self.path} open; close it first, or open this one without write_behind"
                    )
                self._writer_lock = lock
            self._collection = self._open_collection(allow_reindex)
            if write_behind:
                assert self.path is not None and self._path_lock is not None
                with self._lock:
                    queue = WriteBehindQueue(EditJournal(self.path / JOURNAL_FILE, self._name), self._upsert_now)
                    self._path_lock.queues[self._name] = self._own_queue = queue
        except BaseException:
            self._release_client()
            raise
        logger.debug("Opened knowledge store %s (%s)", self.identity, self._name)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open_for_reindex(cls, editor: RecipeEditor, **kwargs: Any) -> RecipeKnowledgeStore:
        """Open a store written by another encoder, to :meth:`reindex` it.

        Args:
            editor: The new editor (usually also the one passed to :meth:`reindex`).
            **kwargs: The constructor's keyword arguments (``path``, ``client``, ...).

        Returns:
            The store; until :meth:`reindex` runs, :attr:`needs_reindex` is true and
            gating, querying and writing raise :class:`EncoderMismatchError`, while
            :meth:`get_edit`, :meth:`list_edits`, :meth:`count`, deletions and
            :meth:`clear` work.

        Example:
            >>> store = RecipeKnowledgeStore.open_for_reindex(new_editor, path="./recipe-store")  # doctest: +SKIP
            >>> store.reindex(new_editor)  # doctest: +SKIP
        """
        kwargs["allow_reindex"] = True
        return cls(editor, **kwargs)

    def _identity_suffix(self) -> str:
        return self.namespace if self.collection_prefix == "recipe" else f"{self.collection_prefix}/{self.namespace}"

    def _collection_metadata(
        self, fingerprint: str, rep_dim: int, ids_from: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Collection metadata; the id-scheme flags are copied from ``ids_from`` (a collection's
        metadata), or set for a new, empty collection when it is ``None``."""
        flags = {_C_ID_SCHEME: _FACT_VERSION_IDS} if ids_from is None else {
            k: ids_from[k] for k in _ID_FLAGS if k in ids_from
        }
        return {
            _C_FINGERPRINT: fingerprint,
            _C_SCHEMA: SCHEMA_VERSION,
            _C_NAMESPACE: self.namespace,
            _C_REP_DIM: rep_dim,
            **flags,
        }

    def _fact_version_ids(self) -> bool:
        """Whether generated ids, and supersession lookups, use fact-version ids here."""
        meta = self._collection.metadata or {}
        return meta.get(_C_ID_SCHEME) == _FACT_VERSION_IDS and not meta.get(_C_EXPLICIT_IDS)

    def _create_collection(self, name: str, metadata: dict[str, Any]) -> Any:
        from chromadb.errors import ChromaError

        try:
            return self._client.create_collection(
                name,
                configuration={"hnsw": {"space": _HNSW_SPACE, "sync_threshold": _HNSW_SYNC_THRESHOLD}},
                metadata=metadata,
                embedding_function=None,
            )
        except ChromaError as exc:
            if "already exists" not in str(exc):
                raise
            return self._client.get_collection(name, embedding_function=None)  # created concurrently

    def _get_collection(self, name: str) -> Any | None:
        from chromadb.errors import NotFoundError

        try:
            return self._client.get_collection(name, embedding_function=None)
        except NotFoundError:
            return None

    def _open_collection(self, allow_reindex: bool) -> Any:
        current = self.editor.fingerprint
        rep_dim = self.editor.config.rep_dim
        collection = self._get_collection(self._name)
        if collection is None and not self.read_only:
            collection = self._recover_swap()
        if collection is None:
            if self.read_only:
                raise NamespaceNotFoundError(
                    f"No namespace {self.namespace!r} in {self.identity.split('#')[0]}; a read-only store cannot "
                    f"create it. Existing namespaces: {self.namespaces() or 'none'}"
                )
            collection = self._create_collection(self._name, self._collection_metadata(current, rep_dim))
        self._replay_journal(collection)
        meta = dict(collection.metadata or {})
        space = (getattr(collection, "configuration_json", None) or {}).get("hnsw") or {}
        if space.get("space", _HNSW_SPACE) not in _ACCEPTED_SPACES:
            raise RecipeChainError(
                f"Chroma collection {self._name!r} uses distance space {space.get('space')!r}; a RECIPE store "
                f"uses {_HNSW_SPACE!r}. It was not created by recipe-chain."
            )
        if space.get("space") == "ip":
            logger.warning(
                "Chroma collection %r uses an inner-product index, which misses most trained RECIPE keys; "
                "copy its edits into a new store (add_edits) to get a cosine index.", self._name
            )
        stored = meta.get(_C_FINGERPRINT)
        pending = meta.get(_C_REINDEX_TARGET)
        if stored is None:
            if collection.count():
                raise RecipeChainError(
                    f"Chroma collection {self._name!r} holds records but no recipe-chain metadata; "
                    "it was not created by recipe-chain. Use another namespace or collection_prefix."
                )
            stored = current
            collection.modify(metadata=self._collection_metadata(current, rep_dim))
        self._fingerprint = str(stored)
        if stored == current and not pending:
            return collection
        if not pending and collection.count() == 0:
            logger.info("Empty store %s adopts encoder fingerprint %s (was %s)", self.identity, current, stored)
            if meta.get(_C_REP_DIM) not in (None, rep_dim):
                self._client.delete_collection(self._name)
                collection = self._create_collection(self._name, self._collection_metadata(current, rep_dim))
            else:
                collection.modify(metadata=self._collection_metadata(current, rep_dim))
            self._fingerprint = current
            return collection
        if not allow_reindex:
            raise EncoderMismatchError(self._mismatch_message(str(stored), current, pending))
        logger.warning("Store %s needs a reindex: %s", self.identity, self._mismatch_message(str(stored), current, pending))
        self._stale = True
        return collection

    def _replay_journal(self, collection: Any) -> None:
        """Write journal entries left by a write-behind store that ended before its writer
        caught up (see :mod:`recipe_chain.write_behind`)."""
        if self.path is None or not (self.path / JOURNAL_FILE).is_file():
            return
        if self.read_only:
            logger.info("Read-only store %s leaves any journal entries to the next writer", self.identity)
            return
        lock = None
        if self._writer_lock is None:  # else this store is the namespace's writer
            lock = WriterLock(lock_path(self.path, self._name))
            if not lock.acquire():
                logger.info("A live write-behind store holds %s; its journal entries are its to write", self.identity)
                return
        journal = EditJournal(self.path / JOURNAL_FILE, self._name)
        try:
            entries = journal.entries()
            if entries:
                batch = merged(entries)
                logger.warning(
                    "Writing %d journaled record(s) of %s to Chroma: the store that wrote them closed before "
                    "they were written", len(batch), self.identity,
                )
                for start in range(0, len(batch), _PAGE):
                    collection.upsert(
                        ids=batch.ids[start : start + _PAGE],
                        embeddings=batch.embeddings[start : start + _PAGE],
                        metadatas=batch.metadatas[start : start + _PAGE],
                        documents=batch.documents[start : start + _PAGE],
                    )
                journal.remove_through(entries[-1][0])
        finally:
            journal.close()
            if lock is not None:
                lock.release()

    def _recover_swap(self) -> Any | None:
        """Finish a dimension-changing reindex that was interrupted between delete and rename."""
        copy = self._get_collection(self._name + _REINDEX_SUFFIX)
        if copy is None or not (copy.metadata or {}).get(_C_REINDEX_COMPLETE):
            return None
        logger.warning("Completing an interrupted reindex of %s", self.identity)
        self._swap_in(copy)
        return self._collection

    def _mismatch_message(self, stored: str, current: str, pending: object = None) -> str:
        how = (
            "Open it with the editor that wrote it, or re-encode every edit for the new editor:\n"
            "    store = RecipeKnowledgeStore.open_for_reindex(new_editor, ...)  # same path/client/namespace\n"
            "    store.reindex(new_editor)"
        )
        if pending:
            return (
                f"The knowledge store {self.identity} is in the middle of a reindex to encoder fingerprint "
                f"{pending!r} (its keys were written with fingerprint {stored!r}); the editor has fingerprint "
                f"{current!r}. Finish it with the new editor:\n"
                "    store = RecipeKnowledgeStore.open_for_reindex(new_editor, ...)\n"
                "    store.reindex(new_editor)"
            )
        return (
            f"The knowledge store {self.identity} was written with encoder fingerprint {stored!r}, but the "
            f"editor has fingerprint {current!r}. {how}"
        )

    # ------------------------------------------------------------------ properties
    @property
    def stored_fingerprint(self) -> str:
        """The encoder fingerprint the stored keys were written with."""
        return self._fingerprint

    @property
    def needs_reindex(self) -> bool:
        """Whether the store was opened with :meth:`open_for_reindex` and is not reindexed yet."""
        return self._stale

    @property
    def collection_name(self) -> str:
        """The Chroma collection holding this namespace."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def namespaces(self) -> list[str]:
        """Namespaces with the same ``collection_prefix`` in this store's Chroma, sorted."""
        self._check_open()
        head = f"{self.collection_prefix}__"
        names: list[str] = []
        for item in self._client.list_collections():
            name = item if isinstance(item, str) else item.name
            rest = name[len(head) :] if name.startswith(head) else ""
            if rest and "__" not in rest and _NAME_RE.match(rest):
                names.append(rest)
        return sorted(names)

    # ------------------------------------------------------------------ checks
    def _check_open(self) -> None:
        if self._closed:
            raise RecipeChainError(f"The knowledge store {self.identity} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyStoreError(
                f"The knowledge store {self.identity} was opened with read_only=True; open it without read_only "
                "to add, update or delete edits"
            )

    def _check_encoder(self) -> None:
        """Raise unless the stored keys were written by ``self.editor`` as it is now."""
        self._check_open()
        if self._stale:
            raise EncoderMismatchError(self._mismatch_message(self._fingerprint, self.editor.fingerprint))
        current = self.editor.fingerprint
        if current != self._fingerprint:
            raise EncoderMismatchError(
                self._mismatch_message(self._fingerprint, current)
                + "\n(The editor's weights changed after the store was opened.)"
            )

    def _verify_collection(self) -> None:
        """Before a write: re-read the collection and check nobody reindexed it meanwhile."""
        fresh = self._get_collection(self._name)
        if fresh is None:
            raise NamespaceNotFoundError(
                f"Namespace {self.namespace!r} of {self.identity.split('#')[0]} was deleted while this store was "
                "open (by another client or process). Open a new store to start it afresh."
            )
        meta = fresh.metadata or {}
        stored, pending = meta.get(_C_FINGERPRINT), meta.get(_C_REINDEX_TARGET)
        if stored != self._fingerprint or pending:
            raise EncoderMismatchError(
                f"The knowledge store {self.identity} was reindexed (or is being reindexed) since this store object "
                f"opened it: its keys now come from encoder {pending or stored!r}, this store uses "
                f"{self._fingerprint!r}. Reopen it with the matching editor."
            )
        self._collection = fresh

    # ------------------------------------------------------------------ validation
    def _prepare(
        self,
        prompt: object,
        target_new: object,
        subject: object = None,
        metadata: object = None,
        edit_id: object = None,
    ) -> _Pending:
        prompt = _check_text(prompt, "prompt")
        target_new = _check_text(target_new, "target_new")
        if subject is not None:
            subject = _check_text(subject, "subject")
        user = _check_metadata(metadata)
        explicit = edit_id is not None
        edit_id = _check_edit_id(edit_id) if explicit else uuid.uuid4().hex
        return _Pending(
            edit_id=edit_id,
            explicit=explicit,
            prompt=prompt,
            target_new=target_new,
            subject=subject,  # type: ignore[arg-type]
            metadata=user,
            statement=statement_of(prompt, target_new),
            prompt_norm=normalize_prompt(prompt),
        )

    def _prepare_record(self, index: int, record: object) -> _Pending:
        try:
            if isinstance(record, EditLike) and not isinstance(record, Mapping):
                meta: dict[str, ScalarMeta] = {}
                if record.case_id is not None:
                    meta["case_id"] = record.case_id
                return self._prepare(record.prompt, record.target_new, record.subject, meta)
            if isinstance(record, Mapping):
                unknown = set(record) - _EDIT_KEYS
                if unknown:
                    raise ValueError(
                        f"unknown keys {sorted(map(str, unknown))}; an edit mapping may have {sorted(_EDIT_KEYS)}"
                    )
                if "prompt" not in record or "target_new" not in record:
                    raise ValueError("an edit mapping needs 'prompt' and 'target_new'")
                return self._prepare(
                    record["prompt"],
                    record["target_new"],
                    record.get("subject"),
                    record.get("metadata"),
                    record.get("edit_id"),
                )
            raise TypeError(f"expected a mapping or an EditExample, got {type(record).__name__}")
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):
                raise  # e.g. DuplicateEditError: its own message is clear
            raise type(exc)(f"Edit record {index}: {exc}") from exc

    def _check_targets(self, targets: Sequence[str]) -> None:
        """Refuse a target the knowledge encoder mostly cannot read (see :mod:`recipe_chain.edit_text`)."""
        with self._encode_lock:  # a fast tokenizer must not be used by two threads at once
            check_targets_visible(self.editor.encoder.tokenizer, targets)

    def _check_lengths(self, statements: Sequence[str], editor: RecipeEditor | None = None) -> None:
        """Raise ``ValueError`` naming the first statement the encoder would reject as too long."""
        editor = editor or self.editor
        tokenizer = editor.encoder.tokenizer
        limit = editor.config.max_length
        for start in range(0, len(statements), 1024):
            chunk = list(statements[start : start + 1024])
            with self._encode_lock:  # a fast tokenizer must not be used by two threads at once
                lengths = [len(ids) for ids in tokenizer(chunk, truncation=False)["input_ids"]]
            for offset, n in enumerate(lengths):
                if n > limit:
                    raise ValueError(
                        f"Edit record {start + offset}: the statement has {n} tokens; the knowledge encoder accepts "
                        f"at most {limit}. Shorten it (a statement is '<prompt> <target_new>'): "
                        f"{chunk[offset][:80]!r}"
                    )

    # ------------------------------------------------------------------ reading records
    def _record(self, edit_id: str, meta: Mapping[str, Any], document: str | None) -> EditRecord:
        user = {k[len(USER_METADATA_PREFIX) :]: v for k, v in meta.items() if k.startswith(USER_METADATA_PREFIX)}
        prompt = str(meta.get(_PROMPT, ""))
        target = str(meta.get(_TARGET, ""))
        return EditRecord(
            edit_id=edit_id,
            namespace=str(meta.get(_NAMESPACE, self.namespace)),
            prompt=prompt,
            target_new=target,
            subject=meta.get(_SUBJECT),
            statement=document if document is not None else statement_of(prompt, target),
            created_at=str(meta.get(_CREATED, "")),
            metadata=user,
            active=bool(meta.get(_ACTIVE, True)),
            superseded_by=meta.get(_SUPERSEDED_BY),
            previous_targets=json.loads(meta.get(_PREVIOUS) or "[]"),
            encoder_fingerprint=str(meta.get(_FINGERPRINT, "")),
            key_precision=str(meta.get(_KEY_PRECISION, "float32")),
        )

    def _fetch(self, ids: Sequence[str], *, keys: bool = False) -> dict[str, _Stored]:
        if not ids:
            return {}
        overlay = self._overlay()
        out = self._fetch_chroma(ids, keys=keys)
        for edit_id in ids:
            pending = overlay.get(edit_id)
            if pending is not None:
                out[edit_id] = _from_pending(edit_id, pending)
        return out

    def _fetch_chroma(self, ids: Sequence[str], *, keys: bool = False) -> dict[str, _Stored]:
        include = ["metadatas", "documents"] + (["embeddings"] if keys else [])
        got = self._collection.get(ids=list(ids), include=include)
        out: dict[str, _Stored] = {}
        embeddings = got.get("embeddings") if keys else None
        for i, edit_id in enumerate(got["ids"]):
            key = torch.from_numpy(np.asarray(embeddings[i], dtype=np.float32)) if keys else None
            out[edit_id] = _Stored(edit_id, dict(got["metadatas"][i] or {}), got["documents"][i], key)
        return out

    def _fetch_one(self, edit_id: object, *, keys: bool = False) -> _Stored:
        edit_id = _check_edit_id(edit_id)
        found = self._fetch([edit_id], keys=keys).get(edit_id)
        if found is None:
            raise EditNotFoundError(f"No edit {edit_id!r} in namespace {self.namespace!r} of {self.identity}")
        return found

    # ------------------------------------------------------------------ writing
    def add_edit(
        self,
        prompt: str,
        target_new: str,
        *,
        subject: str | None = None,
        metadata: dict[str, ScalarMeta] | None = None,
        edit_id: str | None = None,
    ) -> EditRecord:
        """Add one edit (superseding an active edit of the same prompt, see the module docs).

        Args:
            prompt: The edit prompt, e.g. ``"The mother tongue of Danielle Darrieux is"``.
            target_new: The new target, e.g. ``"English"``.
            subject: The edited subject, if known.
            metadata: Your own scalar metadata (str, int, float, bool values).
            edit_id: An explicit id; by default a generated one (32 hex digits, see
                "Generated ids" in the module docs).

        Returns:
            The stored record.

        Raises:
            TypeError: For non-string text, a non-mapping or non-scalar metadata.
            ValueError: For empty text, or a statement longer than the encoder accepts.
            DuplicateEditError: If ``edit_id`` is already used in this namespace.
            EncoderMismatchError: If the store needs a reindex.
            ReadOnlyStoreError: If the store was opened with ``read_only=True``.
        """
        self._check_writable()
        self._check_encoder()
        item = self._prepare(prompt, target_new, subject, metadata, edit_id)
        self._check_targets([item.target_new])
        keys = self._encode_statements(self.editor, [item.statement])  # (1, d); raises ValueError if too long
        return self._write_batch([item], keys)[0]

    def add_edits(
        self,
        records: Iterable[Mapping[str, Any] | EditLike],
        batch_size: int = 256,
        progress: bool | None = None,
    ) -> list[EditRecord]:
        """Add many edits, in batches.

        Every record is validated first (types, blank text, metadata, duplicate ids,
        statement length), so bad input writes nothing. Then each batch of ``batch_size``
        edits is encoded and written with one Chroma call: a crash leaves whole batches.
        Later records supersede earlier ones of the same fact, also within one call.

        Args:
            records: Mappings with ``prompt``, ``target_new`` and optionally ``subject``,
                ``metadata``, ``edit_id``; or :class:`~recipe_chain.data.EditExample`
                objects (their ``case_id``, when present, is kept as metadata).
            batch_size: Edits per encoder pass and Chroma write.
            progress: Show a tqdm bar; ``None`` shows one for 1,000 edits or more.

        Returns:
            The stored records, in input order, as they are after the call (an edit
            superseded by a later one of the same call has ``active=False``).

        Raises:
            TypeError, ValueError, DuplicateEditError, EncoderMismatchError: As
                :meth:`add_edit`; the message names the record's index.
        """
        self._check_writable()
        if isinstance(records, (str, bytes, Mapping)):
            raise TypeError("records must be an iterable of edit mappings or EditExample objects")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._check_encoder()
        items = [self._prepare_record(i, r) for i, r in enumerate(records)]
        if not items:
            return []
        self._check_ids_free(items)
        self._check_lengths([it.statement for it in items])
        self._check_targets([it.target_new for it in items])
        from tqdm.auto import tqdm

        show = len(items) >= _PROGRESS_THRESHOLD if progress is None else bool(progress)
        written: list[EditRecord] = []
        position: dict[str, int] = {}
        with tqdm(total=len(items), desc="Adding edits", unit="edit", disable=not show) as bar:
            for number, start in enumerate(range(0, len(items), batch_size), start=1):
                batch = items[start : start + batch_size]
                keys = self._encode_statements(self.editor, [it.statement for it in batch], batch_size)  # (B, d)
                new, superseded = self._write(batch, keys)
                for record in superseded:  # an edit of an earlier batch of this call, now superseded
                    if record.edit_id in position:
                        written[position[record.edit_id]] = record
                for record in new:
                    position[record.edit_id] = len(written)
                    written.append(record)
                bar.update(len(batch))
                logger.debug("add_edits: wrote batch %d (%d/%d edits)", number, len(written), len(items))
        return written

    def _check_ids_free(self, items: Sequence[_Pending]) -> None:
        seen: set[str] = set()
        for it in items:
            if it.explicit:
                if it.edit_id in seen:
                    raise DuplicateEditError(f"edit_id {it.edit_id!r} appears twice in one call")
                seen.add(it.edit_id)
        taken = self._existing_ids(sorted(seen))
        if taken:
            raise DuplicateEditError(
                f"edit_id {taken[0]!r} is already used in namespace {self.namespace!r} of {self.identity}"
            )


    def _existing_ids(self, ids: Sequence[str]) -> list[str]:
        overlay = self._overlay()
        found: list[str] = [i for i in ids if i in overlay]
        for start in range(0, len(ids), _PAGE):
            chunk = list(ids[start : start + _PAGE])
            if chunk:
                found += [i for i in self._collection.get(ids=chunk, include=[])["ids"] if i not in overlay]
        return found

    def _active_heads(self, norms: Sequence[str]) -> dict[str, list[_Stored]]:
        """Active stored edits per normalised prompt, found with a metadata filter (a scan)."""
        overlay = self._overlay()
        heads: dict[str, list[_Stored]] = {}
        for start in range(0, len(norms), 256):
            chunk = list(norms[start : start + 256])
            where = {_PROMPT_NORM: chunk[0]} if len(chunk) == 1 else {_PROMPT_NORM: {"$in": chunk}}
            got = self._collection.get(where=where, include=["metadatas", "documents", "embeddings"])
            for i, edit_id in enumerate(got["ids"]):
                meta = dict(got["metadatas"][i] or {})
                if meta.get(_ACTIVE, True) and edit_id not in overlay:
                    key = torch.from_numpy(np.asarray(got["embeddings"][i], dtype=np.float32))
                    heads.setdefault(meta[_PROMPT_NORM], []).append(
                        _Stored(edit_id, meta, got["documents"][i], key)
                    )
        wanted = set(norms)
        for edit_id, pending in overlay.items():
            if pending.meta.get(_PROMPT_NORM) in wanted and pending.meta.get(_ACTIVE, True):
                heads.setdefault(pending.meta[_PROMPT_NORM], []).append(_from_pending(edit_id, pending))
        return _oldest_first(heads)

    def _stored_heads(self, norms: Sequence[str]) -> tuple[dict[str, list[_Stored]], dict[str, int] | None]:
        """The supersession lookup of a write: active stored edits per normalised prompt, and
        each fact's next free version where generated ids are fact-version ids (else ``None``)."""
        if self._fact_version_ids():
            return self._versions(norms)
        return self._active_heads(norms), None

    def _versions(self, norms: Sequence[str]) -> tuple[dict[str, list[_Stored]], dict[str, int]]:
        """Active stored edits per normalised prompt, found by their fact-version ids, and
        each fact's next free version number.

        Each round fetches the next :data:`_VERSION_WINDOW` ids of every fact whose last
        window held a stored record (one Chroma ``get`` by ids per round).
        """
        heads: dict[str, list[_Stored]] = {}
        next_free = dict.fromkeys(norms, 0)
        probe = dict.fromkeys(norms, 0)  # fact -> first version of its next window
        while probe:
            windows = {norm: [fact_version_id(norm, v) for v in range(first, first + _VERSION_WINDOW)]
                       for norm, first in probe.items()}
            ids = [i for window in windows.values() for i in window]
            got: dict[str, _Stored] = {}
            for start in range(0, len(ids), _MAX_HITS_PER_QUERY_CALL):
                got.update(self._fetch(ids[start : start + _MAX_HITS_PER_QUERY_CALL], keys=True))
            deleted = self._deleted_ids.among(ids)
            further: dict[str, int] = {}
            for norm, first in probe.items():
                for v, edit_id in enumerate(windows[norm], start=first):
                    stored = got.get(edit_id)
                    if stored is None:
                        if edit_id in deleted:  # a deleted version still holds its number
                            next_free[norm] = v + 1
                            further[norm] = first + _VERSION_WINDOW
                        continue
                    next_free[norm] = v + 1
                    further[norm] = first + _VERSION_WINDOW
                    # a different prompt here would be a hash collision: its id is taken, it is no version
                    if stored.meta.get(_PROMPT_NORM) == norm and stored.meta.get(_ACTIVE, True):
                        heads.setdefault(norm, []).append(stored)
            probe = further
        return _oldest_first(heads), next_free

    def _write_batch(self, items: Sequence[_Pending], keys: torch.Tensor) -> list[EditRecord]:
        """Write validated edits with their ``(N, d)`` keys in one Chroma call.

        This is the store's internal batch writer; the benchmarks use it to insert keys
        computed in bulk. It checks explicit ids and resolves supersessions under the
        write lock.
        """
        return self._write(items, keys)[0]

    def _write(self, items: Sequence[_Pending], keys: torch.Tensor) -> tuple[list[EditRecord], list[EditRecord]]:
        """:meth:`_write_batch`, also returning the stored edits the batch superseded (as updated)."""
        if keys.shape != (len(items), self.editor.config.rep_dim):
            raise ValueError(f"Expected keys of shape ({len(items)}, {self.editor.config.rep_dim}), got {tuple(keys.shape)}")
        keys = keys.detach().to("cpu", torch.float32).contiguous()
        self._check_writable()
        with self._lock:
            self._check_encoder()
            self._verify_collection()
            self._check_ids_free(items)
            norms = sorted({it.prompt_norm for it in items})
            if any(it.explicit for it in items) and self._fact_version_ids():
                # from now on this namespace holds an edit no fact-version id points to
                meta = dict(self._collection.metadata or {})
                self._collection.modify(metadata={**meta, _C_EXPLICIT_IDS: True})
                self._verify_collection()
            heads, next_free = self._stored_heads(norms)
            if next_free is not None:
                for it in items:  # none is explicit here
                    it.edit_id = fact_version_id(it.prompt_norm, next_free[it.prompt_norm])
                    next_free[it.prompt_norm] += 1
            now = _utc_now()
            fingerprint = self._fingerprint
            precision = self.editor.statement_precision()
            superseded: dict[str, _Stored] = {}  # stored edits this batch deactivates
            # The active edits of each fact, oldest first (normally at most one).
            current: dict[str, list[_Pending | _Stored]] = {norm: list(group) for norm, group in heads.items()}
            for it in items:
                previous: list[str] = []
                for n, prev in enumerate(current.get(it.prompt_norm, [])):
                    prev_meta = prev.chroma_meta if isinstance(prev, _Pending) else prev.meta
                    if n == 0:
                        previous = json.loads(prev_meta.get(_PREVIOUS) or "[]")
                    previous.append(str(prev_meta[_TARGET]))
                    prev_meta[_ACTIVE] = False
                    prev_meta[_SUPERSEDED_BY] = it.edit_id
                    if isinstance(prev, _Stored):
                        superseded[prev.edit_id] = prev
                meta: dict[str, Any] = {
                    _EDIT_ID: it.edit_id,
                    _NAMESPACE: self.namespace,
                    _PROMPT: it.prompt,
                    _PROMPT_NORM: it.prompt_norm,
                    _TARGET: it.target_new,
                    _CREATED: now,
                    _ACTIVE: True,
                    _PREVIOUS: json.dumps(previous),
                    _FINGERPRINT: fingerprint,
                    _KEY_PRECISION: precision,
                }
                if it.subject is not None:
                    meta[_SUBJECT] = it.subject
                meta.update({USER_METADATA_PREFIX + k: v for k, v in it.metadata.items()})
                it.chroma_meta = meta
                current[it.prompt_norm] = [it]
            old = list(superseded.values())
            ids = [it.edit_id for it in items] + [s.edit_id for s in old]
            embeddings = np.concatenate(
                [keys.numpy()] + ([torch.stack([s.key for s in old]).numpy()] if old else [])  # type: ignore[misc]
            )
            self._upsert(
                UpsertBatch(
                    ids=ids,
                    embeddings=embeddings,
                    metadatas=[it.chroma_meta for it in items] + [s.meta for s in old],
                    documents=[it.statement for it in items] + [s.document for s in old],
                )
            )
            if old:
                logger.info("Superseded %d edit(s) in %s", len(old), self.identity)
        new = [self._record(it.edit_id, it.chroma_meta, it.statement) for it in items]
        return new, [self._record(s.edit_id, s.meta, s.document) for s in old]

    def _upsert(self, batch: UpsertBatch) -> None:
        """Write ``batch``: to the write-behind journal, or to Chroma directly."""
        if self._queue is not None:
            self._queue.append(batch)
        else:
            self._upsert_now(batch)

    def _upsert_now(self, batch: UpsertBatch) -> None:
        self._collection.upsert(
            ids=batch.ids, embeddings=batch.embeddings, metadatas=batch.metadatas, documents=batch.documents
        )

    def flush(self) -> None:
        """Write every pending write-behind edit to Chroma before returning (a no-op
        without ``write_behind``).

        Raises:
            Exception: What the Chroma write raised; the edits stay journaled, visible to
                this store's gate, and are written by a later flush or a reopen.
        """
        self._check_open()
        if self._queue is not None:
            self._queue.drain()

    @property
    def pending_writes(self) -> int:
        """Write-behind records journaled but not yet in Chroma (0 without ``write_behind``)."""
        return self._queue.pending if self._queue is not None else 0

    def _settle(self) -> None:
        """Before reading or changing records in Chroma directly: write what is pending."""
        if self._queue is not None:
            self._queue.drain()

    def _overlay(self) -> dict[str, PendingRecord]:
        """Pending write-behind records by id; take it *before* reading Chroma, so that a
        record the writer moves meanwhile is seen in one place or the other."""
        return self._queue.overlay() if self._queue is not None else {}

    def update_edit(self, edit_id: str, *, target_new: str) -> EditRecord:
        """Change an active edit's target in place.

        The id stays; the statement and key are re-encoded and the old target is appended
        to ``previous_targets``. Updating to the current target changes nothing.

        Raises:
            EditNotFoundError: If no edit has this id.
            ValueError: If ``target_new`` is blank, the statement is too long, or the
                edit was superseded (update the active edit instead).
            TypeError: If ``target_new`` is not a str.
        """
        self._check_writable()
        self._check_encoder()
        target_new = _check_text(target_new, "target_new")
        with self._lock:
            self._settle()
            self._check_encoder()
            self._verify_collection()
            stored = self._fetch_one(edit_id)
            meta = stored.meta
            if not meta.get(_ACTIVE, True):
                raise ValueError(
                    f"Edit {edit_id!r} was superseded by {meta.get(_SUPERSEDED_BY)!r}; update the active edit instead"
                )
            if meta.get(_TARGET) == target_new:
                return self._record(stored.edit_id, meta, stored.document)
            self._check_targets([target_new])
            statement = statement_of(str(meta[_PROMPT]), target_new)
            keys = self._encode_statements(self.editor, [statement])  # (1, d)
            changes = {
                _TARGET: target_new,
                _PREVIOUS: json.dumps(json.loads(meta.get(_PREVIOUS) or "[]") + [str(meta[_TARGET])]),
                _FINGERPRINT: self._fingerprint,
                _KEY_PRECISION: self.editor.statement_precision(),
            }
            self._collection.update(
                ids=[stored.edit_id], embeddings=keys.numpy(), documents=[statement], metadatas=[changes]
            )
            meta.update(changes)
            return self._record(stored.edit_id, meta, statement)

    def delete_edit(self, edit_id: str) -> EditRecord:
        """Delete an edit (undo) and return it.

        Deleting the active edit of a fact re-activates the edit it superseded, so the
        previous target applies again. Deleting a superseded edit relinks the chain.

        Raises:
            EditNotFoundError: If no edit has this id.
        """
        return self.delete_edits([edit_id])[0]

    def delete_edits(self, edit_ids: Sequence[str]) -> list[EditRecord]:
        """Delete several edits (in the given order) and return them as they were when deleted.

        All ids are checked first: if one is unknown, nothing is deleted. Deleting several
        versions of one fact leaves the newest remaining version active.

        Raises:
            EditNotFoundError: If an id is unknown.
            TypeError: If ``edit_ids`` is a str or holds non-strings.
        """
        self._check_writable()
        if isinstance(edit_ids, (str, bytes)):
            raise TypeError("edit_ids must be a sequence of ids, not a single str")
        ids = list(dict.fromkeys(_check_edit_id(i) for i in edit_ids))
        with self._lock:
            self._settle()
            found = self._fetch(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                gone = " (it was deleted before)" if self._deleted_ids.among(missing[:1]) else ""
                raise EditNotFoundError(
                    f"No edit {missing[0]!r} in namespace {self.namespace!r} of {self.identity}{gone}"
                    + (f" (and {len(missing) - 1} more unknown ids)" if len(missing) > 1 else "")
                    + "; nothing was deleted"
                )
            records = {i: self._record(i, found[i].meta, found[i].document) for i in ids}
            self._deleted_ids.remember(ids)

            def linked(record: EditRecord) -> bool:  # superseded others, or was superseded
                return bool(record.previous_targets) or not record.active

            simple = [i for i in ids if not linked(records[i])]  # no edit points at these, nor they at one
            for start in range(0, len(simple), _PAGE):
                self._collection.delete(ids=simple[start : start + _PAGE])
            for edit_id in ids:
                if linked(records[edit_id]):
                    # Re-read it: deleting an earlier id of this call may have re-activated or relinked it.
                    now = self._fetch([edit_id])[edit_id]
                    records[edit_id] = self._record(edit_id, now.meta, now.document)
                    self._delete_linked(records[edit_id])
        logger.info("Deleted %d edit(s) from %s", len(ids), self.identity)
        return [records[i] for i in ids]

    def _delete_linked(self, record: EditRecord) -> None:
        """Delete an edit that may have superseded others, fixing their links first."""
        got = self._collection.get(where={_SUPERSEDED_BY: record.edit_id}, include=[])
        predecessors = list(got["ids"])
        if predecessors:
            if record.active:
                # Undo: the edits this one superseded become active again (before the delete,
                # so a crash in between leaves both active, and repeating the delete finishes it).
                changes: dict[str, Any] = {_ACTIVE: True, _SUPERSEDED_BY: None}
            else:
                changes = {_SUPERSEDED_BY: record.superseded_by}
            self._collection.update(ids=predecessors, metadatas=[dict(changes) for _ in predecessors])
        if not record.active:
            self._drop_from_successors(record)
        self._collection.delete(ids=[record.edit_id])

    def _drop_from_successors(self, record: EditRecord) -> None:
        """Remove a deleted, superseded edit's target from the ``previous_targets`` of the
        versions after it (its target sits at position ``len(record.previous_targets)``)."""
        position, successor, seen = len(record.previous_targets), record.superseded_by, set()
        while successor and successor not in seen:
            seen.add(successor)
            stored = self._fetch([successor]).get(successor)
            if stored is None:
                break
            previous = json.loads(stored.meta.get(_PREVIOUS) or "[]")
            if position < len(previous) and previous[position] == record.target_new:
                del previous[position]
                self._collection.update(ids=[successor], metadatas=[{_PREVIOUS: json.dumps(previous)}])
            successor = stored.meta.get(_SUPERSEDED_BY)

    def clear(self) -> None:
        """Delete every edit of this namespace (the collection and its settings stay)."""
        self._check_writable()
        with self._lock:
            self._settle()
            while True:
                ids = self._collection.get(include=[], limit=_PAGE)["ids"]
                if not ids:
                    break
                self._deleted_ids.remember(ids)
                self._collection.delete(ids=ids)
        logger.info("Cleared %s", self.identity)

    # ------------------------------------------------------------------ reading
    def get_edit(self, edit_id: str) -> EditRecord:
        """The edit with this id.

        Raises:
            EditNotFoundError: If there is none in this namespace.
        """
        self._check_open()
        stored = self._fetch_one(edit_id)
        return self._record(stored.edit_id, stored.meta, stored.document)

    def list_edits(
        self,
        where: dict[str, Any] | None = None,
        limit: int | None = 100,
        offset: int = 0,
        include_inactive: bool = False,
    ) -> list[EditRecord]:
        """Stored edits, in Chroma's storage order.

        Args:
            where: A Chroma-style filter on record fields (``edit_id``, ``prompt``,
                ``prompt_norm``, ``target_new``, ``subject``, ``created_at``, ``active``,
                ``superseded_by``, ``encoder_fingerprint``) or on your metadata as
                ``"metadata.<key>"``; operators such as ``$eq``, ``$in``, ``$gt`` and
                ``$and``/``$or`` work as in Chroma.
                Example: ``{"metadata.source": "cf"}``.
            limit: At most this many (``None``: all).
            offset: Skip this many first.
            include_inactive: Also list superseded edits.

        Raises:
            ValueError: For an unknown field or a bad limit/offset.
        """
        self._check_open()
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        if limit == 0:
            return []
        self._settle()
        clauses = [] if where is None else [_translate_where(where)]
        if not include_inactive:
            clauses.append({_ACTIVE: True})
        chroma_where = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        got = self._collection.get(
            where=chroma_where, limit=limit, offset=offset or None, include=["metadatas", "documents"]
        )
        return [
            self._record(edit_id, got["metadatas"][i] or {}, got["documents"][i]) for i, edit_id in enumerate(got["ids"])
        ]

    def count(self, include_inactive: bool = False) -> int:
        """Number of edits: active ones, or all with ``include_inactive``."""
        self._check_open()
        self._settle()
        total = self._collection.count()
        if include_inactive or total == 0:
            return total
        inactive = self._collection.get(where={_ACTIVE: False}, include=[])["ids"]
        return total - len(inactive)

    def prompt_vectors(self, edit_id: str) -> torch.Tensor:
        """``(P, D)`` continuous prompt vectors of an edit, derived from its stored key.

        With target slots (``prompt_target_slots``) ``P`` grows by the new target's
        token count, up to that cap (:meth:`RecipeEditor.prefix_vectors`).

        Raises:
            EditNotFoundError: If no edit has this id.
            EncoderMismatchError: If the store needs a reindex.
        """
        self._check_encoder()
        stored = self._fetch_one(edit_id, keys=True)
        assert stored.key is not None
        return self._prompt_vectors(stored.key, str(stored.meta.get(_TARGET, "")))

    def _vector_source(self, key: torch.Tensor, target: str) -> Callable[[], torch.Tensor]:
        """A function computing the prompt vectors of ``key`` (and ``target``) with the editor of now, on first call."""
        editor, fingerprint = self.editor, self._fingerprint

        def compute() -> torch.Tensor:
            if editor.fingerprint != fingerprint:
                raise EncoderMismatchError(
                    f"The editor's weights changed after this gate result was made from {self.identity}"
                )
            return self._prompt_vectors(key, target)

        return compute

    def _prompt_vectors(self, key: torch.Tensor, target: str) -> torch.Tensor:
        with self._encode_lock:
            return self.editor.prefix_vectors(key[None], [target])[0].cpu()  # (P, D)

    def stored_key(self, edit_id: str) -> torch.Tensor:
        """``(d,)`` float32: the key stored for an edit (exactly as Chroma holds it).

        Raises:
            EditNotFoundError: If no edit has this id.
        """
        self._check_open()
        stored = self._fetch_one(edit_id, keys=True)
        assert stored.key is not None
        return stored.key

    # ------------------------------------------------------------------ search and gate
    def _sentinel_key(self) -> torch.Tensor:
        fingerprint = self.editor.fingerprint
        cached = self._sentinel_cache
        if cached is None or cached[0] != fingerprint:
            with self._encode_lock:
                key = self.editor.sentinel_key().detach().to("cpu", torch.float32)  # (d,)
            cached = (fingerprint, key)
            self._sentinel_cache = cached
        return cached[1]

    def _encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        with self._encode_lock:
            return self.editor.encode_queries(list(texts)).detach().to("cpu", torch.float32)  # (Q, d)

    def _encode_statements(self, editor: RecipeEditor, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        with self._encode_lock:
            return editor.encode_statements(list(texts), batch_size=batch_size).detach().to("cpu", torch.float32)

    def _search(self, reps: torch.Tensor, n: int) -> list[list[_Stored]]:
        """Approximate top-``n`` *active* edits for each ``(Q, d)`` query, from Chroma.

        Chroma is queried without a metadata filter (a filter makes HNSW search much
        slower); superseded edits are dropped here, and a query that lost candidates to
        them is asked again for more (after a few rounds, with an ``active`` filter).
        """
        overlay = self._overlay()
        out: list[list[_Stored]] = [[] for _ in range(reps.shape[0])]
        pending = list(range(reps.shape[0]))
        fetch = n
        rounds = 0
        include = ["embeddings", "metadatas"]  # the document is statement_of(prompt, target_new)
        while pending:
            filtered = rounds >= _SEARCH_WIDEN_ROUNDS
            n_results = n if filtered else fetch
            # Chroma fetches the records of all Q x n_results hits in one SQL statement;
            # chunk the queries so that it stays under SQLite's variable limit.
            chunk = max(1, _MAX_HITS_PER_QUERY_CALL // n_results)
            hits: dict[int, tuple[list[str], list[Any], Any]] = {}  # query -> (ids, metadatas, embeddings)
            for c in range(0, len(pending), chunk):
                part = pending[c : c + chunk]
                try:
                    res = self._collection.query(
                        query_embeddings=reps[part].numpy(),
                        n_results=n_results,
                        where={_ACTIVE: True} if filtered else None,
                        include=include,
                    )
                except Exception as exc:  # noqa: BLE001 - only Chroma's index-behind errors are translated
                    if not any(sign in str(exc) for sign in _STALE_INDEX_ERRORS):
                        raise
                    raise StoreBusyError(
                        f"Chroma's vector index of {self.identity} is behind its records: another process is "
                        "writing the store, and this process cannot search it until that one closes it. Gate "
                        "from the writing process, or retry once it has closed the store."
                    ) from exc
                for j, qi in enumerate(part):
                    hits[qi] = (res["ids"][j], res["metadatas"][j], res["embeddings"][j])
            retry: list[int] = []
            for qi in pending:
                ids, metas, embeddings = hits[qi]
                self._check_candidate_fingerprints(metas)
                found = [
                    _Stored(
                        edit_id,
                        dict(metas[i] or {}),
                        statement_of(str(metas[i].get(_PROMPT, "")), str(metas[i].get(_TARGET, ""))),
                        torch.from_numpy(np.asarray(embeddings[i], dtype=np.float32)),
                    )
                    for i, edit_id in enumerate(ids)
                    if (metas[i] or {}).get(_ACTIVE, True)
                ]
                exhausted = len(ids) < fetch  # Chroma returned every record it has
                if not filtered and len(found) < n and len(found) < len(ids) and not exhausted:
                    retry.append(qi)  # superseded edits crowded out active ones: ask for more
                else:
                    out[qi] = found[:n]
            pending = retry
            rounds += 1
            fetch *= 4
        return _merge_pending(reps, out, overlay, n) if overlay else out

    def _check_candidate_fingerprints(self, metas: Sequence[Mapping[str, Any] | None]) -> None:
        for meta in metas:
            written = (meta or {}).get(_FINGERPRINT)
            if written != self._fingerprint:
                raise EncoderMismatchError(
                    f"The knowledge store {self.identity} holds keys of encoder {written!r}, but this store object "
                    f"uses {self._fingerprint!r}: it was reindexed since this object opened it (or a reindex is "
                    "unfinished). Reopen it with the matching editor, or finish the reindex with "
                    "RecipeKnowledgeStore.open_for_reindex(new_editor, ...).reindex(new_editor)."
                )

    def _scored(self, rep: torch.Tensor, found: list[_Stored]) -> tuple[list[GateCandidate], list[torch.Tensor]]:
        if not found:
            return [], []
        keys = torch.stack([s.key for s in found])  # (K, d)
        sims = rescore(rep, keys)  # (K,)
        order = rank(sims)
        candidates = [
            GateCandidate(record=self._record(found[i].edit_id, found[i].meta, found[i].document), similarity=float(sims[i]))
            for i in order
        ]
        return candidates, [found[i].key for i in order]  # type: ignore[misc]

    def query(self, text: str, k: int = 4) -> list[GateCandidate]:
        """The ``k`` active edits most similar to ``text``, exactly re-scored, best first.

        Chroma is asked for ``max(k, candidate_k)`` approximate candidates; the exact
        ``q·k/√d`` then orders them. No gate is applied.

        Raises:
            TypeError, ValueError: For a non-string or empty text, or a bad ``k``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        text = _check_text(text, "query text")
        self._check_encoder()
        rep = self._encode_queries([text])  # (1, d)
        found = self._search(rep, max(k, self.candidate_k))[0]
        return self._scored(rep[0], found)[0][:k]

    def gate(self, text: str) -> GateResult:
        """The Knowledge Sentinel's decision for one query (see the module docs).

        Raises:
            TypeError, ValueError: For a non-string or empty text, or one too long.
            EncoderMismatchError: If the store needs a reindex.
        """
        return self.gate_batch([text])[0]

    def gate_batch(self, texts: Sequence[str]) -> list[GateResult]:
        """Gate many queries with one encoder pass and one Chroma query.

        Results equal :meth:`gate`'s up to float rounding (batched encoding pads).

        Raises:
            TypeError, ValueError: As :meth:`gate`, for any text.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("gate_batch takes a sequence of texts, not a single str; use gate()")
        texts = [_check_text(t, f"query text {i}") for i, t in enumerate(texts)]
        if not texts:
            return []
        self._check_encoder()
        reps = self._encode_queries(texts)  # (Q, d)
        sentinel = self._sentinel_key()  # (d,)
        found = self._search(reps, self.candidate_k)
        scored = [self._scored(reps[i], found[i]) for i in range(len(texts))]
        sents = [sentinel_similarity(reps[i], sentinel) for i in range(len(texts))]
        verifier = self.verifier if self.use_gate else None
        probabilities = self._verify(texts, scored, sents) if verifier is not None else None
        results: list[GateResult] = []
        for i, text in enumerate(texts):
            candidates, keys = scored[i]
            best = candidates[0].similarity if candidates else None
            if probabilities is not None:
                candidates = [c.model_copy(update={"verifier_probability": p}) for c, p in zip(candidates, probabilities[i])]
                pick = verified_choice(probabilities[i], verifier.config.threshold)  # type: ignore[union-attr]
            else:
                pick = 0 if admits(best, sents[i], margin=self.gate_margin, use_gate=self.use_gate) else None
            hit = candidates[pick].record if pick is not None else None
            results.append(
                GateResult(
                    query=text,
                    hit=hit,
                    hit_similarity=best,
                    sentinel_similarity=sents[i],
                    margin=self.gate_margin,
                    gated=self.use_gate,
                    candidates=candidates,
                    verifier_threshold=verifier.config.threshold if verifier is not None else None,
                    prefilter_margin=verifier.config.prefilter_margin if verifier is not None else None,
                ).bind_prompt_vectors(
                    self._vector_source(keys[pick], candidates[pick].record.target_new) if pick is not None else None
                )
            )
        return results

    def _verify(
        self, texts: Sequence[str], scored: list[tuple[list[GateCandidate], list[torch.Tensor]]], sents: list[float]
    ) -> list[list[float | None]]:
        """The verifier's probabilities of each query's shortlisted candidates (``None``: not shortlisted)."""
        verifier = self.verifier
        assert verifier is not None
        config = verifier.config
        out: list[list[float | None]] = [[None] * len(candidates) for candidates, _ in scored]
        jobs: list[tuple[int, int]] = []
        for i, (candidates, _) in enumerate(scored):
            sims = [c.similarity for c in candidates]
            jobs += [(i, j) for j in shortlist(sims, sents[i], margin=config.prefilter_margin + self.gate_margin,
                                               k=config.candidate_k)]
        if jobs:
            with self._encode_lock:
                probs = verifier.probabilities([texts[i] for i, _ in jobs],
                                               [scored[i][0][j].record.statement for i, j in jobs]).tolist()
            for (i, j), p in zip(jobs, probs):
                out[i][j] = float(p)
        return out

    # ------------------------------------------------------------------ maintenance
    def reindex(self, new_editor: RecipeEditor, batch_size: int = 256) -> None:
        """Re-encode every statement with ``new_editor`` and make it the store's editor.

        With the same key width the keys are rewritten in place, batch by batch; an
        interrupted reindex leaves a marker that makes the store refuse normal opening,
        and running it again resumes (edits already re-encoded are skipped). With a new
        key width the edits are copied into a fresh collection that then replaces the
        old one. Other store objects open on this namespace must be reopened afterwards.

        Raises:
            ValueError: If a statement is too long for the new encoder (nothing changes).
            TypeError: If ``new_editor`` is not a RecipeEditor.
        """
        self._check_writable()
        if not isinstance(new_editor, RecipeEditor):
            raise TypeError(f"new_editor must be a RecipeEditor, got {type(new_editor).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._check_open()
        with self._lock:
            self._settle()
            target = new_editor.fingerprint
            ids = self._all_ids()
            statements: list[str] = []
            for start in range(0, len(ids), _PAGE):
                got = self._fetch(ids[start : start + _PAGE])
                statements += [statement_of(str(got[i].meta[_PROMPT]), str(got[i].meta[_TARGET])) for i in got]
            self._check_lengths(statements, new_editor)
            new_dim = new_editor.config.rep_dim
            old_dim = (self._collection.metadata or {}).get(_C_REP_DIM, self.editor.config.rep_dim)
            if new_dim == old_dim:
                self._reindex_in_place(new_editor, ids, batch_size)
            else:
                self._reindex_by_copy(new_editor, ids, batch_size)
            self.editor = new_editor
            self._fingerprint = target
            self._stale = False
            self._sentinel_cache = None
        logger.info("Reindexed %d edit(s) of %s for encoder %s", len(ids), self.identity, target)

    def _all_ids(self) -> list[str]:
        return list(self._collection.get(include=[])["ids"])

    def _reindex_in_place(self, new_editor: RecipeEditor, ids: list[str], batch_size: int) -> None:
        target = new_editor.fingerprint
        meta = dict(self._collection.metadata or {})
        if meta.get(_C_FINGERPRINT) != target:
            self._collection.modify(metadata={**meta, _C_REINDEX_TARGET: target})
        precision = new_editor.statement_precision()
        from tqdm.auto import tqdm

        with tqdm(total=len(ids), desc="Reindexing", unit="edit", disable=len(ids) < _PROGRESS_THRESHOLD) as bar:
            for start in range(0, len(ids), batch_size):
                got = self._fetch(ids[start : start + batch_size])
                todo = [i for i in got if got[i].meta.get(_FINGERPRINT) != target]
                if todo:
                    statements = [statement_of(str(got[i].meta[_PROMPT]), str(got[i].meta[_TARGET])) for i in todo]
                    keys = self._encode_statements(new_editor, statements, batch_size)  # (B, d)
                    self._collection.update(
                        ids=todo,
                        embeddings=keys.numpy(),
                        documents=statements,
                        metadatas=[{_FINGERPRINT: target, _KEY_PRECISION: precision} for _ in todo],
                    )
                bar.update(len(got))
        self._collection.modify(metadata=self._collection_metadata(target, new_editor.config.rep_dim, meta))
        self._collection = self._client.get_collection(self._name, embedding_function=None)

    def _reindex_by_copy(self, new_editor: RecipeEditor, ids: list[str], batch_size: int) -> None:
        target = new_editor.fingerprint
        copy_name = self._name + _REINDEX_SUFFIX
        if self._get_collection(copy_name) is not None:
            self._client.delete_collection(copy_name)  # a leftover of an interrupted attempt
        source = dict(self._collection.metadata or {})
        copy = self._create_collection(
            copy_name, self._collection_metadata(target, new_editor.config.rep_dim, source)
        )
        precision = new_editor.statement_precision()
        for start in range(0, len(ids), batch_size):
            got = self._fetch(ids[start : start + batch_size])
            chunk = list(got)
            statements = [statement_of(str(got[i].meta[_PROMPT]), str(got[i].meta[_TARGET])) for i in chunk]
            keys = self._encode_statements(new_editor, statements, batch_size)  # (B, d)
            copy.add(
                ids=chunk,
                embeddings=keys.numpy(),
                documents=statements,
                metadatas=[{**got[i].meta, _FINGERPRINT: target, _KEY_PRECISION: precision} for i in chunk],
            )
        final_meta = self._collection_metadata(target, new_editor.config.rep_dim, source)
        copy.modify(metadata={**final_meta, _C_REINDEX_COMPLETE: True})
        self._swap_in(copy)

    def _swap_in(self, copy: Any) -> None:
        """Replace the namespace's collection by a completed reindex copy.

        A crash between the delete and the rename is repaired the next time the store
        opens (:meth:`_recover_swap`).
        """
        if self._get_collection(self._name) is not None:
            self._client.delete_collection(self._name)
        meta = {k: v for k, v in (copy.metadata or {}).items() if k != _C_REINDEX_COMPLETE}
        copy.modify(name=self._name, metadata=meta)
        self._collection = self._client.get_collection(self._name, embedding_function=None)

    def as_retriever(self, **kwargs: Any) -> RecipeKnowledgeRetriever:
        """A LangChain retriever over this store (see :mod:`recipe_chain.retrievers`)."""
        from recipe_chain.retrievers import RecipeKnowledgeRetriever

        return RecipeKnowledgeRetriever(store=self, **kwargs)

    def close(self) -> None:
        """Write what is pending (``write_behind``), release the store and the Chroma client
        it created. Idempotent.

        A pending write that fails here stays in the journal, and the next store opened
        on the path writes it (a warning says so).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._own_queue is not None:
                assert self._path_lock is not None
                self._own_queue.close()
                self._path_lock.queues.pop(self._name, None)
                self._own_queue = None
            self._release_client()

    def _release_client(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None
        if self._path_lock is not None:
            self._path_lock.release()
            self._path_lock = None
        if self._owns_client:
            closer = getattr(self._client, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # pragma: no cover - best effort
                    logger.debug("Closing the Chroma client failed", exc_info=True)

    @property
    def _queue(self) -> WriteBehindQueue | None:
        """The write-behind queue of this namespace in this process (this store's or another
        store object's on the same path): writes go through it, reads see its overlay."""
        if self.path is None:
            return None
        return shared_queue(self.path, self._name)

    @property
    def _collection(self) -> Any:
        return self._guarded

    @_collection.setter
    def _collection(self, collection: Any) -> None:
        self._guarded = GuardedCollection(collection, self.namespace, getattr(self, "identity", self._name))

    def __enter__(self) -> RecipeKnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("needs reindex" if self._stale else "open")
        return f"RecipeKnowledgeStore({self.identity!r}, {state})"


def _translate_where(where: object) -> dict[str, Any]:
    """Map a ``list_edits`` filter on record fields to Chroma metadata keys."""
    if not isinstance(where, Mapping) or not where:
        raise ValueError(f"where must be a non-empty dict, got {where!r}")
    out: dict[str, Any] = {}
    for key, value in where.items():
        if key in _WHERE_LOGICAL:
            if not isinstance(value, (list, tuple)) or len(value) < 2:
                raise ValueError(f"{key} needs a list of at least two filters")
            out[key] = [_translate_where(v) for v in value]
        elif isinstance(key, str) and key.startswith("metadata.") and len(key) > len("metadata."):
            out[USER_METADATA_PREFIX + key[len("metadata.") :]] = value
        elif key in _WHERE_FIELDS:
            out[_WHERE_FIELDS[key]] = value
        else:
            raise ValueError(
                f"Unknown filter field {key!r}: use one of {sorted(_WHERE_FIELDS)}, 'metadata.<key>', '$and', '$or'"
            )
    if len(out) > 1:
        return {"$and": [{k: v} for k, v in out.items()]}
    return out


def _client_identity(client: Any, name: str) -> str:
    namespace_part = name.replace("__", "/", 1)
    prefix, _, namespace = namespace_part.partition("/")
    suffix = namespace if prefix == "recipe" else f"{prefix}/{namespace}"
    try:
        settings = client.get_settings()
    except Exception:  # pragma: no cover - exotic clients
        return f"chroma:{type(client).__name__}#{suffix}"
    host = getattr(settings, "chroma_server_host", None)
    if host:
        scheme = "https" if getattr(settings, "chroma_server_ssl_enabled", False) else "http"
        return f"chroma:{scheme}://{host}:{settings.chroma_server_http_port}#{suffix}"
    if getattr(settings, "is_persistent", False):
        return f"chroma:persistent:{Path(settings.persist_directory).resolve()}#{suffix}"
    return f"chroma:ephemeral#{suffix}"


def _from_pending(edit_id: str, pending: PendingRecord) -> _Stored:
    """A pending write-behind record as a :class:`_Stored` (its own copies: callers mutate)."""
    return _Stored(edit_id, dict(pending.meta), pending.document, torch.from_numpy(pending.key.copy()))


def _merge_pending(
    reps: torch.Tensor, found: list[list[_Stored]], overlay: Mapping[str, PendingRecord], n: int
) -> list[list[_Stored]]:
    """Chroma's candidates per query, with pending write-behind records applied: a pending
    version replaces Chroma's (and drops it if inactive), and the pending active records
    compete for the ``n`` places by cosine similarity, the candidate index's measure."""
    active = [(i, p) for i, p in overlay.items() if p.meta.get(_ACTIVE, True)]
    out: list[list[_Stored]] = []
    for qi, candidates in enumerate(found):
        merged_: dict[str, _Stored] = {}
        for stored in candidates:
            pending = overlay.get(stored.edit_id)
            if pending is None:
                merged_[stored.edit_id] = stored
            elif pending.meta.get(_ACTIVE, True):
                merged_[stored.edit_id] = _from_pending(stored.edit_id, pending)
        for edit_id, pending in active:
            if edit_id not in merged_:
                merged_[edit_id] = _from_pending(edit_id, pending)
        pool = list(merged_.values())
        if len(pool) > n:
            keys = torch.stack([s.key for s in pool])  # type: ignore[misc]  # (K, d)
            cosine = torch.nn.functional.cosine_similarity(keys, reps[qi][None], dim=-1)  # (K,)
            pool = [pool[i] for i in torch.argsort(cosine, descending=True, stable=True)[:n].tolist()]
        out.append(pool)
    return out
