"""Tests of recipe_chain.store: records, the Knowledge Sentinel gate, corrections, namespaces,
bad input and encoder fingerprints, on the embedded, ephemeral and Chroma-server backends.

The editors are tiny random networks (tests/tiny.py): the store must not depend on
training. Every store gets a unique namespace, so tests sharing the server (or the
process-wide ephemeral Chroma) never see each other's edits.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from recipe_chain import store as store_module
from recipe_chain.data import EditExample
from recipe_chain.editor import RecipeEditor, scaled_dot
from recipe_chain.errors import DuplicateEditError, EditNotFoundError, EncoderMismatchError, RecipeChainError
from recipe_chain.gate import admits, rank, rescore
from recipe_chain.store import (
    EditRecord,
    GateResult,
    RecipeKnowledgeStore,
    collection_name,
    normalize_prompt,
)
from tiny import mirror_editor, tiny_editor
from tiny_store import EDITS as FACTS, QUERIES

pytestmark = pytest.mark.timeout(300)

# "write-behind": embedded, with write_behind=True (journaled writes, Chroma written by a thread)
BACKENDS = ["embedded", "write-behind", "ephemeral", pytest.param("server", marks=pytest.mark.server)]
DURABLE_BACKENDS = ["embedded", pytest.param("server", marks=pytest.mark.server)]  # outlive their client
# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def editor(llm, backbone_dir: Path) -> RecipeEditor:
    return tiny_editor(llm, backbone_dir, seed=0)


@pytest.fixture(scope="module")
def other_editor(llm, backbone_dir: Path) -> RecipeEditor:
    return tiny_editor(llm, backbone_dir, seed=1)


@pytest.fixture(scope="module")
def mirror(llm, backbone_dir: Path) -> RecipeEditor:
    return mirror_editor(llm, backbone_dir, seed=0)


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from recipe_chain.integrations.chroma_server import ChromaServer

    server = ChromaServer(tmp_path_factory.mktemp("chroma-server"), startup_timeout=90)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


StoreFactory = Callable[..., RecipeKnowledgeStore]


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Open stores on the test's backend; the same ``namespace`` reopens the same knowledge base."""
    opened: list[RecipeKnowledgeStore] = []
    tag = uuid.uuid4().hex[:10]

    def factory(editor: RecipeEditor, namespace: str = "main", **kwargs: Any) -> RecipeKnowledgeStore:
        ns = f"t{tag}-{namespace}"
        if backend == "embedded":
            store = RecipeKnowledgeStore(editor, path=tmp_path / "store", namespace=ns, **kwargs)
        elif backend == "write-behind":
            # One write-behind store per namespace: a second one (a reopen) is a plain store,
            # and sees the first one's edits once they are flushed.
            writers = [s for s in opened if not s.closed and s.namespace == ns and s._queue is not None]
            for writer in writers:
                writer.flush()
            kwargs.setdefault("write_behind", not writers)
            store = RecipeKnowledgeStore(editor, path=tmp_path / "store", namespace=ns, **kwargs)
        elif backend == "ephemeral":
            store = RecipeKnowledgeStore(editor, ephemeral=True, namespace=ns, **kwargs)
        else:
            server = request.getfixturevalue("chroma_server")
            store = RecipeKnowledgeStore(editor, client=server.client(), namespace=ns, **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        if not store.closed:
            try:
                store.clear()
            finally:
                store.close()


def add_facts(store: RecipeKnowledgeStore, facts=FACTS) -> list[EditRecord]:  # noqa: ANN001
    return [store.add_edit(p, t, subject=s) for p, t, s in facts]


def snapshot(store: RecipeKnowledgeStore) -> tuple[int, list[dict[str, Any]], list[list[float]]]:
    """Everything a failed call must leave unchanged: records (all fields) and stored keys."""
    records = sorted(
        (r.model_dump() for r in store.list_edits(limit=None, include_inactive=True)), key=lambda r: r["edit_id"]
    )
    keys = [store.stored_key(r["edit_id"]).tolist() for r in records]
    return store.count(include_inactive=True), records, keys


def chroma_record(store: RecipeKnowledgeStore, edit_id: str) -> dict[str, Any]:
    store.flush()  # a write-behind store may not have written it yet
    got = store._collection.get(ids=[edit_id], include=["metadatas", "documents", "embeddings"])
    return {"metadata": got["metadatas"][0], "document": got["documents"][0], "embedding": got["embeddings"][0]}


# ---------------------------------------------------------------------------- pure helpers
def test_normalize_prompt_and_collection_names() -> None:
    assert normalize_prompt("  The  Capital\tof FRANCE is \n") == "the capital of france is"
    assert normalize_prompt("Straße") == normalize_prompt("STRASSE")
    assert collection_name("default") == "recipe__default"
    assert collection_name("kb-1.v2", "acme_x") == "acme_x__kb-1.v2"
    for bad in ["", "a__b", "a b", "-a", "a-", "a..b", "../x", "x/y", "é", "a" * 64]:
        with pytest.raises(ValueError, match="Invalid namespace"):
            collection_name(bad)
    with pytest.raises(ValueError, match="Invalid collection_prefix"):
        collection_name("ok", "re__cipe")
    with pytest.raises(TypeError):
        collection_name(3)  # type: ignore[arg-type]


def test_gate_math() -> None:
    query = torch.tensor([1.0, 0.0, 0.0, 0.0])
    keys = torch.tensor([[0.5, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    sims = rescore(query, keys)
    assert sims.tolist() == [0.25, 1.0, 1.0]  # q·k/√4
    assert rank(sims) == [1, 2, 0]  # ties keep retrieval order
    assert rescore(query, torch.zeros(0, 4)).shape == (0,)
    with pytest.raises(ValueError):
        rescore(query, torch.zeros(2, 3))
    assert admits(1.0, 0.5) and not admits(1.0, 1.0) and not admits(1.0, 0.5, margin=0.5)
    assert admits(0.1, 5.0, use_gate=False) and not admits(None, 0.0, use_gate=False)
    assert not admits(math.nan, 0.0)


def test_constructor_validation(editor: RecipeEditor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most one"):
        RecipeKnowledgeStore(editor, path=tmp_path, ephemeral=True)
    with pytest.raises(ValueError, match="Invalid namespace"):
        RecipeKnowledgeStore(editor, ephemeral=True, namespace="bad name")
    with pytest.raises(ValueError, match="candidate_k"):
        RecipeKnowledgeStore(editor, ephemeral=True, candidate_k=0)
    with pytest.raises(ValueError, match="gate_margin"):
        RecipeKnowledgeStore(editor, ephemeral=True, gate_margin=math.inf)
    with pytest.raises(TypeError, match="RecipeEditor"):
        RecipeKnowledgeStore("not an editor", ephemeral=True)  # type: ignore[arg-type]


def test_default_path_and_identity(editor: RecipeEditor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with RecipeKnowledgeStore(editor, namespace="kb") as store:
        assert store.path == (tmp_path / "recipe-store").resolve()
        assert store.identity == f"chroma:persistent:{(tmp_path / 'recipe-store').resolve()}#kb"
        assert store.collection_name == "recipe__kb"
    assert store.closed
    with pytest.raises(RecipeChainError, match="closed"):
        store.count()
    store.close()  # idempotent
    eph = RecipeKnowledgeStore(editor, ephemeral=True, namespace=f"n{uuid.uuid4().hex[:8]}", collection_prefix="p1")
    assert eph.identity == f"chroma:ephemeral#p1/{eph.namespace}"
    eph.close()


# ---------------------------------------------------------------------------- records
def test_add_get_and_chroma_layout(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    record = store.add_edit(
        "The mother tongue of Danielle Darrieux is",
        "English",
        subject="Danielle Darrieux",
        metadata={"source": "cf", "case": 7, "weight": 0.5, "checked": True},
    )
    assert record.statement == "The mother tongue of Danielle Darrieux is English"
    assert record.namespace == store.namespace
    assert record.active and record.superseded_by is None and record.previous_targets == []
    assert record.metadata == {"source": "cf", "case": 7, "weight": 0.5, "checked": True}
    assert record.encoder_fingerprint == editor.fingerprint == store.stored_fingerprint
    created = datetime.fromisoformat(record.created_at)
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    assert len(record.edit_id) == 32
    assert store.get_edit(record.edit_id) == record
    assert store.count() == 1

    raw = chroma_record(store, record.edit_id)
    assert raw["document"] == record.statement
    meta = raw["metadata"]
    assert meta["edit_id"] == record.edit_id and meta["namespace"] == store.namespace
    assert meta["prompt"] == record.prompt and meta["target_new"] == "English"
    assert meta["subject"] == "Danielle Darrieux" and meta["active"] is True
    assert meta["previous_targets"] == "[]" and meta["encoder_fingerprint"] == editor.fingerprint
    assert meta["user.source"] == "cf" and meta["user.case"] == 7 and meta["user.checked"] is True
    assert "superseded_by" not in meta
    key = editor.encode_statements([record.statement])[0]
    # Chroma's cosine index keeps the vector up to float rounding; prompt vectors are
    # always derived from what Chroma returns, so they are identical across reopens.
    torch.testing.assert_close(torch.tensor(raw["embedding"], dtype=torch.float32), key, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(store.stored_key(record.edit_id), key, rtol=1e-5, atol=1e-6)
    collection = store._collection
    assert collection.name == f"recipe__{store.namespace}"
    assert collection.configuration_json["hnsw"]["space"] == "cosine"  # candidates; exact q·k re-score on the client
    assert collection.configuration_json["hnsw"]["sync_threshold"] == 100  # see store._HNSW_SYNC_THRESHOLD
    assert collection.metadata["recipe_chain.encoder_fingerprint"] == editor.fingerprint

    without_subject = store.add_edit("The capital of France is", "Rome", edit_id="my-edit.1")
    assert without_subject.edit_id == "my-edit.1" and without_subject.subject is None
    assert "subject" not in chroma_record(store, "my-edit.1")["metadata"]


def test_list_count_filters_and_pagination(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    records = store.add_edits(
        [
            {"prompt": f"Fact {i} is", "target_new": f"v{i}", "subject": "even" if i % 2 == 0 else "odd",
             "metadata": {"rank": i, "group": "a" if i < 5 else "b"}}
            for i in range(10)
        ]
    )
    assert [r.target_new for r in records] == [f"v{i}" for i in range(10)]
    assert store.count() == 10
    listed = store.list_edits(limit=None)
    assert sorted(r.edit_id for r in listed) == sorted(r.edit_id for r in records)
    assert len(store.list_edits()) == 10
    pages = store.list_edits(limit=4) + store.list_edits(limit=4, offset=4) + store.list_edits(limit=4, offset=8)
    assert [r.edit_id for r in pages] == [r.edit_id for r in listed]
    assert store.list_edits(limit=0) == []
    assert {r.target_new for r in store.list_edits(where={"subject": "even"})} == {"v0", "v2", "v4", "v6", "v8"}
    assert {r.target_new for r in store.list_edits(where={"metadata.group": "a", "subject": "odd"})} == {"v1", "v3"}
    high = store.list_edits(where={"$or": [{"metadata.rank": {"$gte": 8}}, {"target_new": "v0"}]})
    assert {r.target_new for r in high} == {"v0", "v8", "v9"}
    with pytest.raises(ValueError, match="Unknown filter field"):
        store.list_edits(where={"colour": "red"})
    with pytest.raises(ValueError):
        store.list_edits(limit=-1)
    with pytest.raises(ValueError):
        store.list_edits(offset=-2)


def test_add_edits_accepts_edit_examples_and_shows_progress(
    make_store: StoreFactory, editor: RecipeEditor, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store(editor)
    example = EditExample(
        prompt="The official religion of Edwin of Northumbria is", target_new="Islam",
        subject="Edwin of Northumbria", case_id="1", source_format="counterfact",
    )
    (record,) = store.add_edits([example], progress=True)
    assert record.subject == "Edwin of Northumbria" and record.metadata == {"case_id": "1"}
    assert "Adding edits" in capsys.readouterr().err
    store.add_edits([{"prompt": "Quiet fact is", "target_new": "x"}])  # auto: no bar for a small import
    assert "Adding edits" not in capsys.readouterr().err
    assert store.add_edits([]) == []
    assert store.count() == 2


# ---------------------------------------------------------------------------- the gate
def test_gate_is_exact_and_follows_the_sentinel_rule(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor, candidate_k=8)
    records = add_facts(store)
    keys = {r.edit_id: editor.encode_statements([r.statement])[0] for r in records}
    sentinel = editor.sentinel_key()
    for text in QUERIES:
        result = store.gate(text)
        assert isinstance(result, GateResult) and result.query == text and result.gated
        q = editor.encode_queries([text])  # (1, d)
        expected = {i: float(scaled_dot(q, k[None])[0, 0]) for i, k in keys.items()}
        assert len(result.candidates) == len(records)
        got = {c.record.edit_id: c.similarity for c in result.candidates}
        assert got.keys() == expected.keys()
        assert all(got[i] == pytest.approx(expected[i], rel=1e-6, abs=1e-7) for i in got)
        sims = [c.similarity for c in result.candidates]
        assert sims == sorted(sims, reverse=True)
        assert result.sentinel_similarity == float(scaled_dot(q, sentinel[None])[0, 0])
        assert result.hit_similarity == sims[0]
        should_fire = sims[0] > result.sentinel_similarity
        assert result.fired is should_fire
        if result.fired:
            assert result.hit == result.candidates[0].record
            expected_vectors = editor.prompt_vectors(keys[result.hit.edit_id][None])[0]
            torch.testing.assert_close(result.prompt_vectors, expected_vectors, rtol=1e-5, atol=1e-6)
            assert result.prompt_vectors.shape == (editor.config.prompt_len, editor.config.llm_hidden_size)
        else:
            assert result.hit is None and result.prompt_vectors is None

    # The margin moves the threshold; the ablation switch ignores it.
    text = QUERIES[0]
    base = store.gate(text)
    gap = base.hit_similarity - base.sentinel_similarity
    above = make_store(editor, namespace="main", gate_margin=gap - 1e-3).gate(text)
    below = make_store(editor, namespace="main", gate_margin=gap + 1e-3).gate(text)
    assert above.fired and above.margin == pytest.approx(gap - 1e-3)
    # (approx: a write-behind store gated `base` with the editor's exact keys, Chroma rounds their last bits)
    assert not below.fired and below.hit_similarity == pytest.approx(base.hit_similarity, rel=1e-6)
    assert below.prompt_vectors is None
    ungated = make_store(editor, namespace="main", use_gate=False, gate_margin=1e6).gate(text)
    assert ungated.fired and not ungated.gated and ungated.hit == base.candidates[0].record


def test_gate_on_empty_store_and_query(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    empty = store.gate("Anything at all?")
    assert empty.hit is None and empty.hit_similarity is None and empty.candidates == []
    assert math.isfinite(empty.sentinel_similarity)
    assert store.query("Anything?", k=3) == []
    records = add_facts(store)
    top = store.query(QUERIES[0], k=2)
    assert len(top) == 2 and top[0].similarity >= top[1].similarity
    assert [c.record.edit_id for c in top] == [c.record.edit_id for c in store.gate(QUERIES[0]).candidates[:2]]
    assert len(store.query(QUERIES[0], k=50)) == len(records)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            store.query(QUERIES[0], k=bad_k)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.gate("   ")
    long_query = store.gate("Who is " + "very " * 80 + "tall?")  # cut to its asking part, never an error
    assert long_query.query.startswith("Who is very") and math.isfinite(long_query.sentinel_similarity)
    with pytest.raises(TypeError):
        store.gate(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.gate_batch("a single string")


class _CallCounter:
    """Wraps a Chroma collection and counts its query calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.queries = 0

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return self.inner.query(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_gate_batch_uses_one_encoder_pass_and_one_chroma_query(
    make_store: StoreFactory, editor: RecipeEditor, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(editor)
    add_facts(store)
    singles = [store.gate(t) for t in QUERIES]
    counter = _CallCounter(store._collection)
    monkeypatch.setattr(store, "_collection", counter)
    passes: list[int] = []
    original = editor.encode_queries
    monkeypatch.setattr(editor, "encode_queries", lambda texts, *a, **k: passes.append(len(texts)) or original(texts, *a, **k))
    batch = store.gate_batch(QUERIES)
    assert passes == [len(QUERIES)] and counter.queries == 1
    assert store.gate_batch([]) == []
    for one, many in zip(singles, batch):
        assert many.query == one.query
        assert [c.record.edit_id for c in many.candidates] == [c.record.edit_id for c in one.candidates]
        assert many.sentinel_similarity == pytest.approx(one.sentinel_similarity, abs=1e-5)
        assert many.hit_similarity == pytest.approx(one.hit_similarity, abs=1e-5)
        assert (many.hit is None) == (one.hit is None)


def test_gate_batch_chunks_chroma_queries_under_the_sql_variable_limit(
    make_store: StoreFactory, editor: RecipeEditor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,100 queries x 32 candidates once made Chroma fail with "too many SQL variables"."""
    store = make_store(editor, candidate_k=32)
    store.add_edits([{"prompt": f"Fact number {i} is", "target_new": f"value {i}"} for i in range(40)])
    texts = [QUERIES[i % len(QUERIES)] + f" ({i})" for i in range(1100)]
    counter = _CallCounter(store._collection)
    monkeypatch.setattr(store, "_collection", counter)
    batch = store.gate_batch(texts)
    assert len(batch) == 1100 and all(len(r.candidates) == 32 for r in batch)
    assert counter.queries == -(-1100 // (store_module._MAX_HITS_PER_QUERY_CALL // 32))
    for i in (0, 517, 1099):  # chunking changes nothing a query sees
        one = store.gate(texts[i])
        assert [c.record.edit_id for c in batch[i].candidates] == [c.record.edit_id for c in one.candidates]


def test_prompt_vectors_are_derived_from_the_stored_key(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    (record,) = add_facts(store, FACTS[:1])
    store.flush()  # write-behind: Chroma's cosine index rounds a key's last bits when it takes it in
    vectors = store.prompt_vectors(record.edit_id)
    key = store.stored_key(record.edit_id)
    assert torch.equal(vectors, editor.prompt_vectors(key[None])[0])
    assert vectors.shape == (editor.config.prompt_len, editor.config.llm_hidden_size) and vectors.dtype == torch.float32
    with pytest.raises(EditNotFoundError):
        store.prompt_vectors("missing")


def test_keys_with_a_prompt_code_gate_on_their_retrieval_part_and_reopen_the_same(
    make_store: StoreFactory, llm, backbone_dir: Path  # noqa: ANN001
) -> None:
    """An editor whose keys end in a prompt code (queries are zero there): the store needs nothing special."""
    editor = tiny_editor(llm, backbone_dir, seed=2, rep_dim=24, prompt_code_dim=8, prompt_encoder="vocab",
                         prompt_len=3)
    store = make_store(editor, namespace="code", candidate_k=8)
    records = add_facts(store)
    keys = {r.edit_id: editor.encode_statements([r.statement])[0] for r in records}
    for r in records:
        torch.testing.assert_close(store.stored_key(r.edit_id), keys[r.edit_id])  # all 24 entries, code included
    for text in QUERIES:
        result = store.gate(text)
        q = editor.encode_queries([text])  # (1, 24), zero on the code
        expected = {i: float(scaled_dot(q[:, :16], k[None, :16])[0, 0]) * math.sqrt(16 / 24) for i, k in keys.items()}
        got = {c.record.edit_id: c.similarity for c in result.candidates}
        assert all(got[i] == pytest.approx(expected[i], rel=1e-5, abs=1e-6) for i in got)
        if result.fired:
            torch.testing.assert_close(result.prompt_vectors, editor.prompt_vectors(keys[result.hit.edit_id][None])[0])
    reopened = make_store(editor, namespace="code", candidate_k=8)
    for r in records:
        assert torch.equal(reopened.prompt_vectors(r.edit_id), store.prompt_vectors(r.edit_id))


def test_target_slots_give_each_hit_its_own_target_tokens(make_store: StoreFactory, llm, backbone_dir: Path) -> None:  # noqa: ANN001
    """With target slots the prefix is the key's vectors, then the stored target's first tokens."""
    from tiny import minilm_tokenizer

    editor = tiny_editor(llm, backbone_dir, seed=3, prompt_encoder="vocab", prompt_len=2, prompt_context_len=2,
                         prompt_target_slots=3)
    tokenizer = minilm_tokenizer()
    editor.attach_llm(llm, tokenizer)
    store = make_store(editor, namespace="slots", use_gate=False)  # always a hit
    short, long = store.add_edits([{"prompt": "The capital of France is", "target_new": "Rome"},
                                   {"prompt": "Toko Yasuda plays the", "target_new": "grand piano of old Vienna"}])
    store.flush()
    emb = llm.get_input_embeddings().weight
    for record in (short, long):
        ids = tokenizer(" " + record.target_new, add_special_tokens=False)["input_ids"][:3]
        vectors = store.prompt_vectors(record.edit_id)
        assert vectors.shape == (2 + len(ids), llm.config.hidden_size)
        torch.testing.assert_close(vectors[2:], emb[ids], rtol=0, atol=0)
        result = store.gate(record.prompt)
        assert result.hit.edit_id == record.edit_id and torch.equal(result.prompt_vectors, vectors)
    assert store.prompt_vectors(long.edit_id).shape[0] == 2 + 3  # capped


def test_gate_computes_prompt_vectors_only_when_asked(
    make_store: StoreFactory, editor: RecipeEditor, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(editor, use_gate=False)  # always a hit
    (record,) = add_facts(store, FACTS[:1])
    calls: list[int] = []
    original = editor.prompt_vectors
    monkeypatch.setattr(editor, "prompt_vectors", lambda keys: calls.append(1) or original(keys))
    result = store.gate(FACTS[0][0])
    assert result.fired and calls == []  # the decision alone runs no prompt encoder
    first = result.prompt_vectors
    assert calls == [1] and result.prompt_vectors is first and calls == [1]  # computed once, then kept
    assert torch.equal(first, store.prompt_vectors(record.edit_id))


# ---------------------------------------------------------------------------- namespaces
def test_namespaces_are_isolated(make_store: StoreFactory, editor: RecipeEditor) -> None:
    alpha = make_store(editor, namespace="alpha")
    beta = make_store(editor, namespace="beta")
    secret = alpha.add_edit("The launch code of project Alpha is", "4711", edit_id="shared-id")
    assert beta.count() == 0 and beta.list_edits(include_inactive=True) == []
    assert beta.gate("The launch code of project Alpha is").candidates == []
    assert beta.query(secret.statement, k=10) == []
    for call in (beta.get_edit, beta.delete_edit, beta.prompt_vectors):
        with pytest.raises(EditNotFoundError):
            call("shared-id")
    # The same id and the same prompt may exist in another namespace independently.
    public = beta.add_edit("The launch code of project Alpha is", "0000", edit_id="shared-id")
    beta.add_edits([{"prompt": f"Beta fact {i} is", "target_new": "b"} for i in range(5)])
    for result in beta.gate_batch([secret.statement, secret.prompt, "launch code"]):
        assert all(c.record.namespace == beta.namespace for c in result.candidates)
        assert all(c.record.target_new != "4711" for c in result.candidates)
    assert alpha.get_edit("shared-id") == secret and alpha.get_edit("shared-id").active
    assert public.previous_targets == []  # no supersession across namespaces
    beta.clear()
    assert beta.count(include_inactive=True) == 0 and alpha.count() == 1
    assert {alpha.namespace, beta.namespace} <= set(alpha.namespaces())


# ---------------------------------------------------------------------------- corrections
def test_corrections_supersede_and_undo_reactivates(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    other = store.add_edit("The capital of France is", "Rome")
    first = store.add_edit("The mother tongue of Danielle Darrieux is", "English", subject="Danielle Darrieux")
    second = store.add_edit("the mother tongue of   Danielle Darrieux is ", "German")
    third = store.add_edit("THE MOTHER TONGUE OF DANIELLE DARRIEUX IS", "Swedish", metadata={"by": "me"})
    assert third.previous_targets == ["English", "German"] and second.previous_targets == ["English"]
    old_first, old_second = store.get_edit(first.edit_id), store.get_edit(second.edit_id)
    assert not old_first.active and old_first.superseded_by == second.edit_id
    assert not old_second.active and old_second.superseded_by == third.edit_id
    assert store.count() == 2 and store.count(include_inactive=True) == 4
    assert {r.edit_id for r in store.list_edits()} == {other.edit_id, third.edit_id}
    assert len(store.list_edits(include_inactive=True)) == 4
    assert store.list_edits(where={"active": False}, include_inactive=True)[0].active is False
    # Only the newest version of a fact is ever a candidate.
    for result in store.gate_batch([first.statement, second.statement, third.statement, QUERIES[0]]):
        ids = {c.record.edit_id for c in result.candidates}
        assert ids == {other.edit_id, third.edit_id}

    # Undo the newest: the one it superseded is active again.
    deleted = store.delete_edit(third.edit_id)
    assert deleted == third
    restored = store.get_edit(second.edit_id)
    assert restored.active and restored.superseded_by is None
    assert store.count() == 2
    assert {c.record.edit_id for c in store.gate(QUERIES[0]).candidates} == {other.edit_id, second.edit_id}
    # Deleting a superseded edit relinks the chain; undoing the head then restores the oldest left.
    fourth = store.add_edit(first.prompt, "Japanese")
    store.delete_edit(second.edit_id)
    assert store.get_edit(first.edit_id).superseded_by == fourth.edit_id
    store.delete_edit(fourth.edit_id)
    assert store.get_edit(first.edit_id).active
    assert store.count(include_inactive=True) == 2


@pytest.fixture
def metadata_scans(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every Chroma ``get`` with a metadata filter, from any collection object."""
    from chromadb.api.models.Collection import Collection

    calls: list[dict[str, Any]] = []
    original = Collection.get

    def get(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN001
        if kwargs.get("where") is not None:
            calls.append(kwargs["where"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "get", get)
    return calls


def test_generated_ids_are_fact_versions_and_supersession_needs_no_metadata_scan(
    make_store: StoreFactory, editor: RecipeEditor, metadata_scans: list[dict[str, Any]]
) -> None:
    store = make_store(editor)
    norm = normalize_prompt("The capital of France is")
    rome = store.add_edit("The capital of France is", "Rome")
    other = store.add_edit("Toko Yasuda, the", "piano")
    lyon = store.add_edit("THE capital of France is", "Lyon")
    batch = store.add_edits([{"prompt": "the capital of france is", "target_new": t} for t in ("Nice", "Metz")])
    assert [r.edit_id for r in [rome, lyon, *batch]] == [store_module.fact_version_id(norm, v) for v in range(4)]
    assert other.edit_id == store_module.fact_version_id("toko yasuda, the", 0)
    assert len(rome.edit_id) == 32 and int(rome.edit_id, 16) >= 0
    assert metadata_scans == []  # found by id, not by a where-filter on prompt_norm
    assert store.get_edit(batch[0].edit_id).superseded_by == batch[1].edit_id
    head = store.get_edit(batch[1].edit_id)
    assert head.active and head.previous_targets == ["Rome", "Lyon", "Nice"]
    # Versions past a probe window, and holes left by deletions, are still found.
    many = store.add_edits([{"prompt": "The capital of France is", "target_new": f"T{i}"} for i in range(20)])
    assert many[-1].edit_id == store_module.fact_version_id(norm, 23)
    store.delete_edits([r.edit_id for r in many[2:12]])
    newest = store.add_edit("The capital of France is", "Paris")
    assert newest.edit_id == store_module.fact_version_id(norm, 24)
    assert newest.previous_targets[-1] == "T19" and store.get_edit(many[-1].edit_id).superseded_by == newest.edit_id
    # the deleted versions' targets left the history of the versions after them
    assert newest.previous_targets == ["Rome", "Lyon", "Nice", "Metz", "T0", "T1"] + [f"T{i}" for i in range(12, 20)]
    assert store.count() == 2
    # Undoing the newest edit keeps its id used: the next edit of the fact gets a new one,
    # and a stale delete of the old id cannot hit it.
    store.delete_edit(newest.edit_id)
    assert store.get_edit(many[-1].edit_id).active
    lille = store.add_edit("The capital of France is", "Lille")
    assert lille.edit_id == store_module.fact_version_id(norm, 25)
    with pytest.raises(EditNotFoundError, match="deleted before"):
        store.delete_edit(newest.edit_id)
    assert store.get_edit(lille.edit_id).active and store.count() == 2


def test_an_explicit_id_switches_the_namespace_to_metadata_lookups(
    make_store: StoreFactory, editor: RecipeEditor, metadata_scans: list[dict[str, Any]]
) -> None:
    store = make_store(editor, namespace="explicit")
    generated = store.add_edit("The capital of France is", "Rome")
    mine = store.add_edit("the capital of France is", "Lyon", edit_id="mine")
    assert store.get_edit(generated.edit_id).superseded_by == "mine" and mine.previous_targets == ["Rome"]
    assert store._collection.metadata["recipe_chain.explicit_ids"] is True
    scans = len(metadata_scans)
    assert scans >= 1
    later = store.add_edit("The capital of France is", "Nice")  # must find the explicit-id edit
    assert len(metadata_scans) > scans
    assert later.edit_id != store_module.fact_version_id(normalize_prompt(later.prompt), 1)  # a random id now
    assert store.get_edit("mine").superseded_by == later.edit_id and later.previous_targets == ["Rome", "Lyon"]
    reopened = make_store(editor, namespace="explicit")  # a second store object on the same collection
    assert not reopened._fact_version_ids()
    assert reopened.add_edit("The capital of France is", "Metz").previous_targets == ["Rome", "Lyon", "Nice"]


def test_stores_without_the_id_scheme_keep_random_ids_and_metadata_lookups(
    make_store: StoreFactory, editor: RecipeEditor, other_editor: RecipeEditor
) -> None:
    store = make_store(editor, namespace="legacy")
    meta = {k: v for k, v in store._collection.metadata.items() if k != "recipe_chain.generated_ids"}
    store._collection.modify(metadata=meta)  # as written by recipe-chain before fact-version ids
    legacy = make_store(editor, namespace="legacy")
    first = legacy.add_edit("The capital of France is", "Rome")
    second = legacy.add_edit("The capital of France is", "Lyon")
    assert first.edit_id != store_module.fact_version_id("the capital of france is", 0)
    assert legacy.get_edit(first.edit_id).superseded_by == second.edit_id
    legacy.reindex(other_editor)  # the reindexed collection keeps the random-id scheme
    assert "recipe_chain.generated_ids" not in legacy._collection.metadata and not legacy._fact_version_ids()


@pytest.mark.parametrize("order", ["newest first", "oldest first"])
def test_deleting_several_versions_at_once(make_store: StoreFactory, editor: RecipeEditor, order: str) -> None:
    store = make_store(editor)
    a, b, c = (store.add_edit("The capital of France is", t) for t in ("Rome", "Lyon", "Nice"))
    ids = [c.edit_id, b.edit_id] if order == "newest first" else [b.edit_id, c.edit_id]
    deleted = store.delete_edits(ids)
    assert [r.edit_id for r in deleted] == ids
    left = store.get_edit(a.edit_id)
    assert left.active and left.superseded_by is None
    assert store.count() == 1 and store.count(include_inactive=True) == 1
    assert [x.record.edit_id for x in store.query("The capital of France is", k=3)] == [a.edit_id]


def test_corrections_within_one_batch(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    records = store.add_edits(
        [
            {"prompt": "The capital of France is", "target_new": "Rome"},
            {"prompt": "Toko Yasuda, the", "target_new": "piano"},
            {"prompt": "the capital of france is", "target_new": "Lyon"},
            {"prompt": "The capital of France is", "target_new": "Nice"},
        ],
        batch_size=2,
    )
    rome, _, lyon, nice = records
    assert not rome.active and rome.superseded_by == lyon.edit_id
    assert not lyon.active and lyon.superseded_by == nice.edit_id
    assert nice.active and nice.previous_targets == ["Rome", "Lyon"]
    assert store.count() == 2 and store.count(include_inactive=True) == 4
    for record in records:
        assert store.get_edit(record.edit_id) == record


def test_update_edit_in_place(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    record = store.add_edit("The capital of France is", "Rome", subject="France", metadata={"k": 1})
    updated = store.update_edit(record.edit_id, target_new="Paris")
    assert updated.edit_id == record.edit_id and updated.target_new == "Paris"
    assert updated.statement == "The capital of France is Paris" and updated.previous_targets == ["Rome"]
    assert updated.metadata == {"k": 1} and updated.subject == "France" and updated.created_at == record.created_at
    assert store.get_edit(record.edit_id) == updated
    torch.testing.assert_close(store.stored_key(record.edit_id), editor.encode_statements([updated.statement])[0], rtol=1e-5, atol=1e-6)
    assert store.update_edit(record.edit_id, target_new="Paris") == updated  # no-op
    newer = store.add_edit("The capital of France is", "Lyon")
    assert newer.previous_targets == ["Rome", "Paris"]
    before = snapshot(store)
    with pytest.raises(ValueError, match="superseded"):
        store.update_edit(record.edit_id, target_new="Marseille")
    assert snapshot(store) == before


# ---------------------------------------------------------------------------- bad input
LONG = "The " + "very " * 80 + "long prompt is"

BAD_CALLS: list[tuple[str, Callable[[RecipeKnowledgeStore], Any], type[BaseException], str]] = [
    ("empty prompt", lambda s: s.add_edit("", "x"), ValueError, "prompt"),
    ("blank prompt", lambda s: s.add_edit(" \t\n", "x"), ValueError, "prompt"),
    ("empty target", lambda s: s.add_edit("A prompt is", ""), ValueError, "target_new"),
    ("blank target", lambda s: s.add_edit("A prompt is", "   "), ValueError, "target_new"),
    ("prompt not str", lambda s: s.add_edit(None, "x"), TypeError, "prompt"),
    ("target not str", lambda s: s.add_edit("A prompt is", 42), TypeError, "target_new"),
    ("subject not str", lambda s: s.add_edit("A prompt is", "x", subject=3), TypeError, "subject"),
    ("too long prompt", lambda s: s.add_edit(LONG, "x"), ValueError, "at most 64"),
    ("too long target", lambda s: s.add_edit("A prompt is", LONG), ValueError, "at most 64"),
    ("list metadata", lambda s: s.add_edit("A prompt is", "x", metadata={"a": [1, 2]}), TypeError, "metadata"),
    ("dict metadata", lambda s: s.add_edit("A prompt is", "x", metadata={"a": {"b": 1}}), TypeError, "metadata"),
    ("None metadata value", lambda s: s.add_edit("A prompt is", "x", metadata={"a": None}), TypeError, "metadata"),
    ("non-str metadata key", lambda s: s.add_edit("A prompt is", "x", metadata={1: "a"}), TypeError, "keys"),
    ("metadata not a mapping", lambda s: s.add_edit("A prompt is", "x", metadata=["a"]), TypeError, "mapping"),
    ("nan metadata", lambda s: s.add_edit("A prompt is", "x", metadata={"a": math.nan}), ValueError, "finite"),
    ("duplicate edit_id", lambda s: s.add_edit("Another prompt is", "x", edit_id="fixed-id"), DuplicateEditError, "fixed-id"),
    ("blank edit_id", lambda s: s.add_edit("A prompt is", "x", edit_id=" "), ValueError, "edit_id"),
    ("edit_id not str", lambda s: s.add_edit("A prompt is", "x", edit_id=7), TypeError, "edit_id"),
    ("get unknown", lambda s: s.get_edit("no-such-id"), EditNotFoundError, "no-such-id"),
    ("update unknown", lambda s: s.update_edit("no-such-id", target_new="x"), EditNotFoundError, "no-such-id"),
    ("delete unknown", lambda s: s.delete_edit("no-such-id"), EditNotFoundError, "no-such-id"),
    ("delete some unknown", lambda s: s.delete_edits(["fixed-id", "no-such-id"]), EditNotFoundError, "nothing was deleted"),
    ("update to blank", lambda s: s.update_edit("fixed-id", target_new=" "), ValueError, "target_new"),
    ("update too long", lambda s: s.update_edit("fixed-id", target_new=LONG), ValueError, "at most 64"),
    ("batch: bad record late", lambda s: s.add_edits(
        [{"prompt": f"Batch fact {i} is", "target_new": "y"} for i in range(250)] + [{"prompt": "Bad is", "target_new": ""}],
        batch_size=100), ValueError, "Edit record 250"),
    ("batch: too long late", lambda s: s.add_edits(
        [{"prompt": f"Batch fact {i} is", "target_new": "y"} for i in range(250)] + [{"prompt": LONG, "target_new": "z"}],
        batch_size=100), ValueError, "Edit record 250"),
    ("batch: duplicate ids", lambda s: s.add_edits(
        [{"prompt": "P1 is", "target_new": "a", "edit_id": "dup"}, {"prompt": "P2 is", "target_new": "b", "edit_id": "dup"}]),
        DuplicateEditError, "dup"),
    ("batch: id already used", lambda s: s.add_edits(
        [{"prompt": "P1 is", "target_new": "a"}, {"prompt": "P2 is", "target_new": "b", "edit_id": "fixed-id"}]),
        DuplicateEditError, "fixed-id"),
    ("batch: unknown key", lambda s: s.add_edits([{"prompt": "P1 is", "target_new": "a", "colour": "red"}]),
        ValueError, "unknown keys"),
    ("batch: not a record", lambda s: s.add_edits(["The capital of France is Rome"]), TypeError, "mapping"),
    ("batch: a single str", lambda s: s.add_edits("The capital of France is Rome"), TypeError, "iterable"),
]


def test_bad_input_raises_and_leaves_the_store_unchanged(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    add_facts(store, FACTS[:3])
    store.add_edit("The capital of France is", "Rome", edit_id="fixed-id", metadata={"n": 1})
    store.add_edit(FACTS[1][0], "Buddhism")  # supersedes FACTS[1]: an inactive edit is part of the state too
    before = snapshot(store)
    assert before[0] == 5
    failures = []
    for name, call, error, message in BAD_CALLS:
        try:
            call(store)
        except error as exc:
            if message not in str(exc):
                failures.append(f"{name}: message {str(exc)!r} lacks {message!r}")
        except Exception as exc:  # noqa: BLE001 - report every case at once
            failures.append(f"{name}: raised {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{name}: did not raise")
        if snapshot(store) != before:
            failures.append(f"{name}: changed the store")
            before = snapshot(store)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------- persistence and encoders
@pytest.mark.parametrize("backend", DURABLE_BACKENDS, indirect=True)
def test_reopen_gives_identical_results(make_store: StoreFactory, editor: RecipeEditor) -> None:
    store = make_store(editor)
    records = add_facts(store)
    before = store.gate_batch(QUERIES)
    vectors = {r.edit_id: store.prompt_vectors(r.edit_id) for r in records}
    store.close()
    reopened = make_store(editor)
    assert reopened.count() == len(records)
    after = reopened.gate_batch(QUERIES)
    for a, b in zip(before, after):
        assert [(c.record, c.similarity) for c in a.candidates] == [(c.record, c.similarity) for c in b.candidates]
        assert a.sentinel_similarity == b.sentinel_similarity and a.hit == b.hit
        assert (a.prompt_vectors is None and b.prompt_vectors is None) or torch.equal(a.prompt_vectors, b.prompt_vectors)
    for edit_id, v in vectors.items():
        assert torch.equal(reopened.prompt_vectors(edit_id), v)


def test_encoder_mismatch_and_reindex(
    make_store: StoreFactory, editor: RecipeEditor, other_editor: RecipeEditor
) -> None:
    store = make_store(editor)
    records = add_facts(store)
    superseded = store.add_edit(FACTS[0][0], "Klingon")
    with pytest.raises(EncoderMismatchError) as excinfo:
        make_store(other_editor)
    message = str(excinfo.value)
    assert editor.fingerprint in message and other_editor.fingerprint in message
    assert "open_for_reindex" in message and "store.reindex(new_editor)" in message

    stale = make_store(other_editor, allow_reindex=True)
    assert stale.needs_reindex and stale.stored_fingerprint == editor.fingerprint
    assert stale.count() == len(records) and stale.get_edit(records[1].edit_id) == records[1]
    for call in (lambda: stale.gate("x?"), lambda: stale.query("x?"), lambda: stale.add_edit("P is", "v"),
                 lambda: stale.prompt_vectors(records[1].edit_id)):
        with pytest.raises(EncoderMismatchError):
            call()
    stale.reindex(other_editor, batch_size=2)
    assert not stale.needs_reindex and stale.stored_fingerprint == other_editor.fingerprint
    assert stale._fact_version_ids()  # the id scheme survives an in-place reindex
    for record in records[1:] + [superseded]:
        got = stale.get_edit(record.edit_id)
        assert got.encoder_fingerprint == other_editor.fingerprint
        assert got.model_dump(exclude={"encoder_fingerprint"}) == record.model_dump(exclude={"encoder_fingerprint"})
        expected = other_editor.encode_statements([record.statement])[0]  # batched encoding pads: tiny rounding
        assert torch.allclose(stale.stored_key(record.edit_id), expected, rtol=1e-5, atol=1e-6)
    assert not stale.get_edit(records[0].edit_id).active  # supersession survives a reindex
    result = stale.gate(QUERIES[1])
    assert result.sentinel_similarity == float(
        scaled_dot(other_editor.encode_queries([QUERIES[1]]), other_editor.sentinel_key()[None])[0, 0]
    )
    stale.close()
    assert make_store(other_editor).count() == len(records)
    with pytest.raises(EncoderMismatchError):
        make_store(editor)
    # A store object opened before the reindex notices it, for reads and for writes.
    with pytest.raises(EncoderMismatchError, match="reindexed"):
        store.gate("x?")
    with pytest.raises(EncoderMismatchError, match="reindexed"):
        store.add_edit("P is", "v")


def test_reindex_to_another_key_width(make_store: StoreFactory, editor: RecipeEditor, llm, backbone_dir: Path) -> None:  # noqa: ANN001
    wide = tiny_editor(llm, backbone_dir, seed=2, rep_dim=48)
    store = make_store(editor)
    records = add_facts(store)
    store.reindex(wide)
    assert store.stored_key(records[0].edit_id).shape == (48,)
    assert store._fact_version_ids()  # and a reindex by copy
    assert store.editor is wide and store.count() == len(records)
    assert store.gate(QUERIES[0]).candidates
    assert not any(n.endswith("__reindex") for n in store.namespaces())
    assert store._get_collection(store.collection_name + "__reindex") is None


def test_empty_store_adopts_a_new_encoder(make_store: StoreFactory, editor: RecipeEditor, other_editor: RecipeEditor) -> None:
    store = make_store(editor)
    store.add_edit("The capital of France is", "Rome")
    store.clear()
    store.close()
    adopted = make_store(other_editor)
    assert adopted.stored_fingerprint == other_editor.fingerprint and not adopted.needs_reindex
    adopted.add_edit("The capital of France is", "Rome")
    assert adopted.count() == 1


def test_changing_the_editor_weights_is_detected(make_store: StoreFactory, llm, backbone_dir: Path) -> None:  # noqa: ANN001
    editor = tiny_editor(llm, backbone_dir, seed=3)
    store = make_store(editor)
    add_facts(store, FACTS[:2])
    with torch.no_grad():
        editor.prompt_encoder.net[-1].bias.add_(1.0)
    editor.invalidate_fingerprint()
    with pytest.raises(EncoderMismatchError, match="changed after the store was opened"):
        store.gate(QUERIES[0])
    with pytest.raises(EncoderMismatchError):
        store.add_edit("P is", "v")


def test_search_skips_superseded_edits(make_store: StoreFactory, mirror: RecipeEditor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many superseded near-duplicates must not crowd the newest version out of the candidates."""
    store = make_store(mirror, candidate_k=1)
    store.add_edits([{"prompt": f"Unrelated fact number {i} is", "target_new": f"u{i}"} for i in range(20)])
    prompt = "The mother tongue of Danielle Darrieux is"
    versions = store.add_edits([{"prompt": prompt, "target_new": f"language {i}"} for i in range(30)], batch_size=7)
    newest = versions[-1]
    assert newest.active and newest.previous_targets == [f"language {i}" for i in range(29)]
    result = store.gate(newest.statement)
    assert result.hit is not None and result.hit.edit_id == newest.edit_id
    assert [c.record.edit_id for c in result.candidates] == [newest.edit_id]
    store.flush()  # write-behind: what follows tests Chroma's search
    counter = _CallCounter(store._collection)
    monkeypatch.setattr(store, "_collection", counter)
    widened = [store.query(version.statement, k=3) for version in versions[:-1]]
    assert counter.queries > len(versions) - 1  # superseded neighbours made some searches ask for more
    # The last resort (an `active` filter in Chroma) finds the same candidates.
    monkeypatch.setattr("recipe_chain.store._SEARCH_WIDEN_ROUNDS", 0)
    filtered = [store.query(version.statement, k=3) for version in versions[:-1]]
    for found, again in zip(widened, filtered):
        assert len(found) == 3 and all(c.record.active for c in found)
        assert newest.edit_id in {c.record.edit_id for c in found}
        assert [c.record.edit_id for c in found] == [c.record.edit_id for c in again]


def test_as_retriever(make_store: StoreFactory, editor: RecipeEditor) -> None:
    from recipe_chain.retrievers import RecipeKnowledgeRetriever

    store = make_store(editor, use_gate=False)
    add_facts(store)
    retriever = store.as_retriever(mode="top_k", k=2)
    assert isinstance(retriever, RecipeKnowledgeRetriever) and retriever.store is store
    docs = retriever.invoke(QUERIES[0])
    assert [d.metadata["edit_id"] for d in docs] == [c.record.edit_id for c in store.query(QUERIES[0], k=2)]
