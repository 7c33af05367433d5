"""Tests of write-behind stores (recipe_chain.write_behind): edits journaled but not yet in
Chroma are gated, fetched and superseded like stored ones; a failed Chroma write loses
nothing; a process killed before its writer caught up loses nothing.

The background writer is held back with an event, so the pending state is observed for
sure rather than by timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe_chain.editor import RecipeEditor
from recipe_chain.errors import RecipeChainError
from recipe_chain.store import RecipeKnowledgeStore
from recipe_chain.write_behind import JOURNAL_FILE, EditJournal, UpsertBatch, merged
from tiny import tiny_editor
from tiny_store import EDITS, QUERIES

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def editor(llm, backbone_dir: Path) -> RecipeEditor:  # noqa: ANN001
    return tiny_editor(llm, backbone_dir, seed=0)


class HeldWriter:
    """Replaces a write-behind store's Chroma write by one that waits for :meth:`release`."""

    def __init__(self, store: RecipeKnowledgeStore) -> None:
        assert store._queue is not None
        self.queue = store._queue
        self.real = self.queue._write
        self.released = threading.Event()
        self.fail: Exception | None = None
        self.calls = 0
        self.queue._write = self._write

    def _write(self, batch: UpsertBatch) -> None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        assert self.released.wait(60), "the test never released the writer"
        self.real(batch)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def held(editor: RecipeEditor, tmp_path: Path) -> Iterator[tuple[RecipeKnowledgeStore, HeldWriter]]:
    store = RecipeKnowledgeStore(editor, path=tmp_path / "store", write_behind=True)
    writer = HeldWriter(store)
    yield store, writer
    writer.release()
    store.close()


def _summary(results) -> list[tuple[str | None, str | None, float | None, float]]:  # noqa: ANN001
    return [
        (r.hit.edit_id if r.hit else None, r.hit.target_new if r.hit else None, r.hit_similarity, r.sentinel_similarity)
        for r in results
    ]


def _assert_same_gate(a, b) -> None:  # noqa: ANN001
    for (id_a, t_a, s_a, k_a), (id_b, t_b, s_b, k_b) in zip(_summary(a), _summary(b), strict=True):
        assert (id_a, t_a) == (id_b, t_b)
        assert (s_a is None) == (s_b is None)
        if s_a is not None:
            assert s_a == pytest.approx(s_b, rel=1e-5, abs=1e-5)  # Chroma rounds a key's last bits
        assert k_a == k_b


def test_pending_edits_are_gated_fetched_and_superseded(held, editor: RecipeEditor, tmp_path: Path) -> None:  # noqa: ANN001
    store, writer = held
    reference = RecipeKnowledgeStore(editor, path=tmp_path / "reference")
    records = [store.add_edit(prompt, target, subject=subject) for prompt, target, subject in EDITS]
    for record, (prompt, target, subject) in zip(records, EDITS, strict=True):
        assert reference.add_edit(prompt, target, subject=subject).edit_id == record.edit_id
    assert store.pending_writes == len(EDITS)
    assert store._collection.count() == 0  # nothing reached Chroma yet
    _assert_same_gate(store.gate_batch(QUERIES), reference.gate_batch(QUERIES))
    first = store.query(EDITS[0][0], k=2)
    assert [c.record.edit_id for c in first] == [c.record.edit_id for c in reference.query(EDITS[0][0], k=2)]
    fetched = store.get_edit(first[0].record.edit_id)
    assert fetched == reference.get_edit(fetched.edit_id).model_copy(update={"created_at": fetched.created_at})
    pending_key = store.stored_key(fetched.edit_id)
    torch.testing.assert_close(pending_key, editor.encode_statements([fetched.statement])[0], rtol=0, atol=0)

    # A correction of a pending edit supersedes it while both are pending.
    prompt, old_target, _ = EDITS[0]
    old_id = records[0].edit_id
    new = store.add_edit(prompt, "a corrected target")
    ref_new = reference.add_edit(prompt, "a corrected target")
    assert new.edit_id == ref_new.edit_id and new.previous_targets == [old_target]
    assert store.get_edit(old_id).active is False and store.get_edit(old_id).superseded_by == new.edit_id
    _assert_same_gate(store.gate_batch(QUERIES), reference.gate_batch(QUERIES))
    assert store._collection.count() == 0

    writer.release()
    store.flush()
    assert store.pending_writes == 0
    assert store._collection.count() == len(EDITS) + 1
    _assert_same_gate(store.gate_batch(QUERIES), reference.gate_batch(QUERIES))
    assert store.count() == reference.count() and store.count(include_inactive=True) == len(EDITS) + 1
    assert not EditJournal(tmp_path / "store" / JOURNAL_FILE, store.collection_name).entries()
    reference.close()


def test_reads_of_many_records_write_what_is_pending_first(held) -> None:  # noqa: ANN001
    store, writer = held
    store.add_edit(EDITS[0][0], EDITS[0][1])
    threading.Timer(0.2, writer.release).start()
    assert store.count() == 1  # waits for the write, then counts
    assert store.pending_writes == 0 and store._collection.count() == 1


def test_a_failed_chroma_write_keeps_the_edit_and_is_retried(held) -> None:  # noqa: ANN001
    store, writer = held
    writer.fail = RuntimeError("chroma is down")
    record = store.add_edit(EDITS[0][0], EDITS[0][1])
    with pytest.raises(RuntimeError, match="chroma is down"):
        store.flush()
    assert store.pending_writes == 1
    assert store.get_edit(record.edit_id) == record  # still visible
    assert store.gate(EDITS[0][0]).candidates[0].record.edit_id == record.edit_id
    writer.fail = None
    writer.release()
    store.flush()
    assert store.pending_writes == 0 and store._collection.count() == 1


def test_the_writer_commits_in_groups(editor: RecipeEditor, tmp_path: Path) -> None:
    store = RecipeKnowledgeStore(editor, path=tmp_path / "store", write_behind=True)
    queue = store._queue
    assert queue is not None
    sizes: list[int] = []
    real = queue._write

    def counting(batch: UpsertBatch) -> None:
        sizes.append(len(batch))
        real(batch)

    queue._write = counting
    queue.delay_s, queue.group_records = 60.0, 5  # only a full group starts a write
    for i in range(5):
        store.add_edit(f"Grouped fact {i} is", f"value {i}")
    deadline = time.monotonic() + 30
    while store.pending_writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sizes == [5] and store.pending_writes == 0  # one upsert for the group, without a flush
    queue.delay_s = 0.2  # a lone edit waits at most delay_s
    store.add_edit("A lone fact is", "alone")
    while store.pending_writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sizes == [5, 1]
    store.close()


def test_large_imports_apply_back_pressure(editor: RecipeEditor, tmp_path: Path) -> None:
    store = RecipeKnowledgeStore(editor, path=tmp_path / "store", write_behind=True)
    assert store._queue is not None
    store._queue.max_pending = 10
    edits = [{"prompt": f"Fact {i} is", "target_new": f"value {i}"} for i in range(25)]
    store.add_edits(edits, batch_size=4, progress=False)
    assert store.pending_writes <= 10 + 4
    assert store.count() == 25
    store.close()


def test_one_writer_per_namespace_and_readers_leave_its_journal_alone(held, editor: RecipeEditor, tmp_path: Path) -> None:  # noqa: ANN001
    store, writer = held
    record = store.add_edit(EDITS[0][0], EDITS[0][1])
    with pytest.raises(RecipeChainError, match="Another write-behind store"):
        RecipeKnowledgeStore(editor, path=tmp_path / "store", write_behind=True)
    other_namespace = RecipeKnowledgeStore(editor, path=tmp_path / "store", namespace="other", write_behind=True)
    other_namespace.close()
    # Another store object of the namespace in this process shares the writer's queue: it
    # sees the pending edit at once, and leaves the journal to the writer.
    for reader in (RecipeKnowledgeStore(editor, path=tmp_path / "store"),
                   RecipeKnowledgeStore(editor, path=tmp_path / "store", read_only=True)):
        assert reader._queue is writer.queue
        assert reader.get_edit(record.edit_id) == record
        assert len(EditJournal(tmp_path / "store" / JOURNAL_FILE, store.collection_name).entries()) == 1
        assert store._collection.count() == 0  # not written to Chroma yet
        reader.close()
    writer.release()
    store.flush()
    assert store._collection.count() == 1 and store.get_edit(record.edit_id) == record


def test_write_behind_needs_an_embedded_store(editor: RecipeEditor) -> None:
    with pytest.raises(ValueError, match="write_behind=True needs an embedded store"):
        RecipeKnowledgeStore(editor, ephemeral=True, write_behind=True)
    with pytest.raises(TypeError, match="write_behind must be a bool"):
        RecipeKnowledgeStore(editor, ephemeral=True, write_behind="yes")  # type: ignore[arg-type]


def test_merged_applies_entries_in_order() -> None:
    def batch(ids: list[str], value: float) -> UpsertBatch:
        return UpsertBatch(ids, np.full((len(ids), 2), value, np.float32), [{"v": value} for _ in ids], ids)

    out = merged([(1, batch(["a", "b"], 1.0)), (2, batch(["b", "c"], 2.0)), (3, batch(["a"], 3.0))])
    assert out.ids == ["b", "c", "a"]
    assert out.embeddings.tolist() == [[2.0, 2.0], [2.0, 2.0], [3.0, 3.0]]
    assert [m["v"] for m in out.metadatas] == [2.0, 2.0, 3.0]


KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    from recipe_chain.editor import RecipeEditor
    from recipe_chain.store import RecipeKnowledgeStore

    checkpoint, path = sys.argv[1:3]
    store = RecipeKnowledgeStore(RecipeEditor.from_pretrained(checkpoint), path=path, write_behind=True)
    never = threading.Event()
    store._queue._write = lambda batch: never.wait()  # the writer never reaches Chroma
    first = store.add_edit("The mother tongue of Danielle Darrieux is", "French")
    second = store.add_edit("The mother tongue of Danielle Darrieux is", "English")
    store.add_edits([{"prompt": f"Fact {i} is", "target_new": f"value {i}"} for i in range(20)], batch_size=8)
    print(first.edit_id, second.edit_id, store.pending_writes, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_process_loses_no_journaled_edit(editor: RecipeEditor, tmp_path: Path) -> None:
    checkpoint = tmp_path / "editor"
    editor.save_pretrained(checkpoint)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, str(checkpoint), str(tmp_path / "store")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    first_id, second_id, pending = child.stdout.split()
    assert int(pending) == 2 + 1 + 20  # the second edit also rewrote the first (superseded)

    store = RecipeKnowledgeStore(RecipeEditor.from_pretrained(checkpoint), path=tmp_path / "store")
    assert store.count(include_inactive=True) == 22 and store.count() == 21
    assert store.get_edit(first_id).superseded_by == second_id
    second = store.get_edit(second_id)
    assert second.active and second.target_new == "English" and second.previous_targets == ["French"]
    found = [c.record.edit_id for c in store.query("The mother tongue of Danielle Darrieux is", k=21)]
    assert second_id in found and first_id not in found  # the correction is searchable, the old edit is not
    assert not EditJournal(tmp_path / "store" / JOURNAL_FILE, store.collection_name).entries()
    store.close()
