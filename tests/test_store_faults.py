"""Faults and load for recipe_chain.store: new processes, SIGKILL, threads, interrupted reindexes.

* A store reopened in a **new process** gives bit-identical gate results and prompt vectors.
* A child process **SIGKILLed** during ``add_edits`` of 5,000 edits leaves a prefix of whole
  batches, every visible edit fully usable.
* **4 writer threads and 4 gate threads** run together for ``RECIPE_CHAIN_STRESS_SECONDS``
  seconds (default 5 to keep the suite fast; the issue's full run is
  ``RECIPE_CHAIN_STRESS_SECONDS=10``).
* An interrupted **reindex** is refused on normal opening and can be resumed; an
  interrupted collection swap is repaired on opening.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from recipe_chain.editor import RecipeEditor, statement_of
from recipe_chain.errors import EncoderMismatchError
from recipe_chain.store import RecipeKnowledgeStore
from tiny import mirror_editor, tiny_editor
from tiny_store import QUERIES

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
STRESS_SECONDS = float(os.environ.get("RECIPE_CHAIN_STRESS_SECONDS", "5"))


def _run_child(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _gate_summary(store: RecipeKnowledgeStore, texts: list[str]) -> list[dict[str, Any]]:
    out = []
    for result in store.gate_batch(texts):
        out.append(
            {
                "hit": None if result.hit is None else result.hit.model_dump(),
                "hit_similarity": result.hit_similarity,
                "sentinel_similarity": result.sentinel_similarity,
                "candidates": [(c.record.edit_id, c.similarity) for c in result.candidates],
                "prompt_vectors": result.prompt_vectors,
            }
        )
    return out


# ---------------------------------------------------------------------------- a new process
REOPEN_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from recipe_chain.editor import RecipeEditor
    from recipe_chain.store import RecipeKnowledgeStore
    from test_store_faults import _gate_summary

    checkpoint, store_path, texts_file, out_file = sys.argv[1:]
    texts = json.loads(open(texts_file).read())
    store = RecipeKnowledgeStore(RecipeEditor.from_pretrained(checkpoint), path=store_path, namespace="persist")
    vectors = {r.edit_id: store.prompt_vectors(r.edit_id) for r in store.list_edits(limit=None, include_inactive=True)}
    torch.save({"gates": _gate_summary(store, texts), "vectors": vectors, "count": store.count()}, out_file)
    store.close()
    """
)


def test_reopen_in_a_new_process_is_bit_identical(checkpoint: Path, tmp_path: Path) -> None:
    editor = RecipeEditor.from_pretrained(checkpoint)
    store = RecipeKnowledgeStore(editor, path=tmp_path / "store", namespace="persist")
    records = store.add_edits(
        [
            {"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English"},
            {"prompt": "The official religion of Edwin of Northumbria is", "target_new": "Islam"},
            {"prompt": "The capital of France is", "target_new": "Rome"},
            {"prompt": "The capital of France is", "target_new": "Lyon"},
        ]
        + [{"prompt": f"Filler fact {i} is", "target_new": f"f{i}"} for i in range(20)]
    )
    texts = QUERIES + [r.statement for r in records[:4]]
    before = _gate_summary(store, texts)
    vectors = {r.edit_id: store.prompt_vectors(r.edit_id) for r in records}
    count = store.count()
    store.close()
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    out_file = tmp_path / "child.pt"
    done = _run_child(REOPEN_CHILD, str(checkpoint), str(tmp_path / "store"), str(texts_file), str(out_file))
    assert done.returncode == 0, done.stderr[-3000:]
    child = torch.load(out_file, weights_only=False)
    assert child["count"] == count == 23
    assert child["vectors"].keys() == vectors.keys()
    for edit_id, v in vectors.items():
        assert torch.equal(child["vectors"][edit_id], v), edit_id
    assert any(b["hit"] is not None for b in before)
    for mine, theirs in zip(before, child["gates"]):
        for key in ("hit", "hit_similarity", "sentinel_similarity", "candidates"):
            assert mine[key] == theirs[key], key
        assert (mine["prompt_vectors"] is None) == (theirs["prompt_vectors"] is None)
        if mine["prompt_vectors"] is not None:
            assert torch.equal(mine["prompt_vectors"], theirs["prompt_vectors"])


# ---------------------------------------------------------------------------- SIGKILL
CRASH_CHILD = textwrap.dedent(
    """
    import logging, sys
    from recipe_chain.editor import RecipeEditor
    from recipe_chain.store import RecipeKnowledgeStore

    checkpoint, store_path, progress_file, total, batch = sys.argv[1:]

    class Progress(logging.Handler):
        def emit(self, record):
            with open(progress_file, "a") as handle:
                handle.write(record.getMessage() + "\\n")

    log = logging.getLogger("recipe_chain.store")
    log.setLevel(logging.DEBUG)
    log.addHandler(Progress())
    store = RecipeKnowledgeStore(RecipeEditor.from_pretrained(checkpoint), path=store_path, namespace="crash")
    edits = [
        {"prompt": f"Crash fact number {i} is", "target_new": f"value {i}", "edit_id": f"e{i:05d}",
         "metadata": {"i": i}}
        for i in range(int(total))
    ]
    store.add_edits(edits, batch_size=int(batch), progress=False)
    print("finished", flush=True)
    """
)


def _crash_edits(total: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"Crash fact number {i} is", "target_new": f"value {i}", "edit_id": f"e{i:05d}", "metadata": {"i": i}}
        for i in range(total)
    ]


def test_sigkill_during_add_edits_leaves_a_consistent_prefix(checkpoint: Path, tmp_path: Path) -> None:
    total, batch, kill_after = 5000, 100, 1000
    progress = tmp_path / "progress.log"
    store_path = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(checkpoint), str(store_path), str(progress), str(total), str(batch)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    written = 0
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if progress.exists():
                counts = re.findall(r"\((\d+)/\d+ edits\)", progress.read_text())
                written = int(counts[-1]) if counts else 0
                if written >= kill_after:
                    break
            time.sleep(0.01)
        assert child.poll() is None, f"the child ended before it was killed:\n{child.communicate()[1][-3000:]}"
        assert written >= kill_after, "the child made no progress in time"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL

    editor = RecipeEditor.from_pretrained(checkpoint)
    store = RecipeKnowledgeStore(editor, path=store_path, namespace="crash")
    count = store.count(include_inactive=True)
    assert kill_after <= count < total, count
    assert count % batch == 0, f"{count} edits visible: a batch was half-written"
    records = store.list_edits(limit=None)
    assert sorted(r.edit_id for r in records) == [f"e{i:05d}" for i in range(count)]  # a prefix, in order
    edits = _crash_edits(total)
    last_batch = [e["edit_id"] for e in edits[count - batch : count]]
    expected_keys = editor.encode_statements(
        [statement_of(e["prompt"], e["target_new"]) for e in edits[count - batch : count]], batch_size=batch
    )
    for record in records:
        i = int(record.edit_id[1:])
        assert record.prompt == edits[i]["prompt"] and record.target_new == edits[i]["target_new"]
        assert record.statement == statement_of(record.prompt, record.target_new) and record.metadata == {"i": i}
    for j, edit_id in enumerate(last_batch):  # the newest batch is the one a crash could have torn
        key = store.stored_key(edit_id)
        torch.testing.assert_close(key, expected_keys[j], rtol=1e-5, atol=1e-6, msg=edit_id)
        vectors = store.prompt_vectors(edit_id)
        assert vectors.shape == (editor.config.prompt_len, editor.config.llm_hidden_size) and torch.isfinite(vectors).all()
    for record in random.Random(0).sample(records, 50):
        assert torch.isfinite(store.stored_key(record.edit_id)).all()
        assert torch.isfinite(store.prompt_vectors(record.edit_id)).all()
    assert store.gate(records[0].statement).candidates
    # The store keeps working: the rest of the import goes in.
    store.add_edits(edits[count:], batch_size=500, progress=False)
    assert store.count() == total
    store.close()


# ---------------------------------------------------------------------------- threads
@pytest.mark.parametrize("write_behind", [False, True], ids=["direct", "write-behind"])
def test_concurrent_writers_and_gates(llm, backbone_dir: Path, tmp_path: Path, write_behind: bool) -> None:  # noqa: ANN001
    """4 threads add edits while 4 threads gate, for STRESS_SECONDS.

    Every gate of an added edit's statement must return that edit, also while a
    write-behind store has not written it to Chroma yet.

    An untrained encoder does not map a prompt near its own statement's key, so the
    editor here is the "mirror" editor (query head = knowledge head, equal key norms):
    gating an edit's statement must return exactly that edit. Looking edits up by their
    own prompt is checked through the metadata (``list_edits(where={"prompt": ...})``).
    """
    editor = mirror_editor(llm, backbone_dir, seed=0)
    store = RecipeKnowledgeStore(
        editor, path=tmp_path / "store", namespace="stress", candidate_k=8, write_behind=write_behind
    )
    added: list[Any] = []
    added_lock = threading.Lock()
    errors: list[BaseException] = []
    gates = [0]
    stop = time.monotonic() + STRESS_SECONDS

    def writer(w: int) -> None:
        try:
            i = 0
            while time.monotonic() < stop:
                if i % 5 == 4:  # a small batch now and then
                    new = store.add_edits(
                        [{"prompt": f"Writer {w} batch fact {i}-{j} is", "target_new": f"b{w}.{i}.{j}"} for j in range(3)]
                    )
                else:
                    new = [store.add_edit(f"Writer {w} fact {i} is", f"value {w}.{i}", metadata={"w": w})]
                with added_lock:
                    added.extend(new)
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def gater(g: int) -> None:
        rng = random.Random(g)
        try:
            while time.monotonic() < stop:
                with added_lock:
                    pick = rng.choice(added) if added else None
                text = pick.statement if pick is not None else "Is anything stored yet?"
                result = store.gate(text) if rng.random() < 0.5 else store.gate_batch([text, "Who wrote Hamlet?"])[0]
                assert result.query == text
                if pick is not None:
                    assert result.hit is not None and result.hit.edit_id == pick.edit_id, text
                gates[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=gater, args=(g,)) for g in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=STRESS_SECONDS + 240)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, repr(errors[:3])
    assert len(added) >= 20 and gates[0] >= 20, (len(added), gates[0])
    assert len({r.edit_id for r in added}) == len(added)
    assert store.count() == len(added) == store.count(include_inactive=True)
    by_statement = {r.statement: r.edit_id for r in added}
    statements = list(by_statement)
    for start in range(0, len(statements), 64):
        chunk = statements[start : start + 64]
        for text, result in zip(chunk, store.gate_batch(chunk)):
            assert result.hit is not None and result.hit.edit_id == by_statement[text], text
    for record in added:
        (found,) = store.list_edits(where={"prompt": record.prompt})
        assert found == record
    store.close()


# ---------------------------------------------------------------------------- interrupted reindex
def test_interrupted_reindex_is_refused_then_resumed(
    llm, backbone_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    old, new = tiny_editor(llm, backbone_dir, seed=0), tiny_editor(llm, backbone_dir, seed=5)
    path = tmp_path / "store"
    store = RecipeKnowledgeStore(old, path=path, namespace="kb")
    records = store.add_edits([{"prompt": f"Reindex fact {i} is", "target_new": f"v{i}"} for i in range(30)])
    store.close()

    calls = []
    original = RecipeKnowledgeStore._encode_statements

    def failing(self, editor, texts, batch_size=64):  # noqa: ANN001, ANN202
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return original(self, editor, texts, batch_size)

    monkeypatch.setattr(RecipeKnowledgeStore, "_encode_statements", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        RecipeKnowledgeStore.open_for_reindex(new, path=path, namespace="kb").reindex(new, batch_size=10)
    monkeypatch.setattr(RecipeKnowledgeStore, "_encode_statements", original)

    for editor in (old, new):
        with pytest.raises(EncoderMismatchError, match="middle of a reindex"):
            RecipeKnowledgeStore(editor, path=path, namespace="kb")
    resumed = RecipeKnowledgeStore.open_for_reindex(new, path=path, namespace="kb")
    assert resumed.needs_reindex
    encoded: list[int] = []
    monkeypatch.setattr(
        RecipeKnowledgeStore, "_encode_statements",
        lambda self, editor, texts, batch_size=64: encoded.append(len(texts)) or original(self, editor, texts, batch_size),
    )
    resumed.reindex(new, batch_size=10)
    assert sum(encoded) == 10  # the 20 edits re-encoded before the failure were skipped
    resumed.close()
    reopened = RecipeKnowledgeStore(new, path=path, namespace="kb")
    assert reopened.count() == 30
    for record in records:
        got = reopened.get_edit(record.edit_id)
        assert got.encoder_fingerprint == new.fingerprint
        expected = new.encode_statements([record.statement])[0]
        assert torch.allclose(reopened.stored_key(record.edit_id), expected, rtol=1e-5, atol=1e-6)
    reopened.close()


def test_interrupted_collection_swap_is_repaired_on_open(
    llm, backbone_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    old, wide = tiny_editor(llm, backbone_dir, seed=0), tiny_editor(llm, backbone_dir, seed=6, rep_dim=40)
    path = tmp_path / "store"
    store = RecipeKnowledgeStore(old, path=path, namespace="kb")
    records = store.add_edits([{"prompt": f"Swap fact {i} is", "target_new": f"v{i}"} for i in range(12)])

    def crash_after_delete(self, copy):  # noqa: ANN001, ANN202
        self._client.delete_collection(self._name)
        raise RuntimeError("killed between delete and rename")

    monkeypatch.setattr(RecipeKnowledgeStore, "_swap_in", crash_after_delete)
    with pytest.raises(RuntimeError, match="killed"):
        store.reindex(wide)
    monkeypatch.undo()
    store.close()
    repaired = RecipeKnowledgeStore(wide, path=path, namespace="kb")
    assert repaired.count() == 12 and repaired.collection_name == "recipe__kb"
    assert repaired.stored_key(records[0].edit_id).shape == (40,)
    assert repaired.get_edit(records[3].edit_id).target_new == "v3"
    assert repaired._get_collection("recipe__kb__reindex") is None
    repaired.close()
