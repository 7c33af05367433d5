"""RecipeKnowledgeRetriever: the three modes, exact scores in metadata, per-call k, validation."""

from __future__ import annotations

import math

import pytest
from langchain_core.documents import Document
from pydantic import ValidationError

from recipe_chain.retrievers import RecipeKnowledgeRetriever
from tiny_store import EDITS, make_store, shared_models

QUERY = "What language did Danielle Darrieux grow up speaking?"


@pytest.fixture(scope="module")
def editor():
    return shared_models().editor


@pytest.fixture(scope="module")
def store(editor):
    return make_store(editor)


def exact_scores(editor, query: str) -> tuple[list[tuple[str, float]], float]:
    """Statements ranked by exact q·k/√d, and the sentinel similarity, computed independently."""
    statements = [f"{p} {t}" for p, t, _ in EDITS]
    q = editor.encode_queries([query])  # (1, rep)
    sims = editor.similarity(q, editor.encode_statements(statements))[0]  # (N,)
    sentinel = float(editor.similarity(q, editor.sentinel_key()[None])[0, 0])
    ranked = sorted(zip(statements, sims.tolist()), key=lambda x: -x[1])
    return ranked, sentinel


def test_top_k_returns_k_best_with_exact_scores(store, editor) -> None:
    docs = RecipeKnowledgeRetriever(store=store, mode="top_k", k=3).invoke(QUERY)
    ranked, sentinel = exact_scores(editor, QUERY)
    assert [d.page_content for d in docs] == [s for s, _ in ranked[:3]]
    for rank, (doc, (_, sim)) in enumerate(zip(docs, ranked)):
        assert isinstance(doc, Document)
        md = doc.metadata
        assert doc.id == md["edit_id"] == store.get_edit(md["edit_id"]).edit_id
        assert md["similarity"] == pytest.approx(sim, abs=1e-5)
        assert md["sentinel_similarity"] == pytest.approx(sentinel, abs=1e-5)
        assert md["admitted"] == (md["similarity"] > md["sentinel_similarity"] + md["margin"])
        assert md["rank"] == rank and md["mode"] == "top_k" and md["namespace"] == store.namespace
        record = store.get_edit(doc.id)
        assert (md["prompt"], md["target_new"], md["subject"]) == (record.prompt, record.target_new, record.subject)
        assert doc.page_content == record.statement


def test_k_per_call_overrides_constructor(store) -> None:
    retriever = RecipeKnowledgeRetriever(store=store, mode="top_k", k=1)
    assert len(retriever.invoke(QUERY)) == 1
    assert len(retriever.invoke(QUERY, k=4)) == 4
    # more than the gate's candidate list: falls back to a wider store query
    assert len(retriever.invoke(QUERY, k=50)) == len(EDITS)


def test_threshold_mode_filters_by_score(store, editor) -> None:
    ranked, _ = exact_scores(editor, QUERY)
    cut = (ranked[1][1] + ranked[2][1]) / 2  # between the 2nd and 3rd best
    docs = RecipeKnowledgeRetriever(store=store, mode="threshold", k=4, score_threshold=cut).invoke(QUERY)
    assert [d.page_content for d in docs] == [ranked[0][0], ranked[1][0]]
    assert all(d.metadata["similarity"] >= cut for d in docs)
    # a per-call threshold
    retriever = RecipeKnowledgeRetriever(store=store, mode="threshold", k=4, score_threshold=-1e6)
    assert len(retriever.invoke(QUERY)) == 4
    assert retriever.invoke(QUERY, score_threshold=1e6) == []


def test_threshold_mode_defaults_to_the_sentinel(editor) -> None:
    # margin -inf-like: every candidate clears the KS; margin +huge: none does
    low = make_store(editor, gate_margin=-1e6)
    high = make_store(editor, gate_margin=1e6)
    assert len(RecipeKnowledgeRetriever(store=low, mode="threshold", k=3).invoke(QUERY)) == 3
    assert RecipeKnowledgeRetriever(store=high, mode="threshold", k=3).invoke(QUERY) == []
    # with no margin, exactly the candidates above the sentinel similarity
    store = make_store(editor)
    ranked, sentinel = exact_scores(editor, QUERY)
    expected = [s for s, sim in ranked if sim > sentinel]
    docs = RecipeKnowledgeRetriever(store=store, mode="threshold", k=len(EDITS)).invoke(QUERY)
    assert [d.page_content for d in docs] == expected


def test_gate_mode_is_exactly_the_store_gate(editor, store) -> None:
    always = make_store(editor, gate_margin=-1e6)
    never = make_store(editor, gate_margin=1e6)
    docs = RecipeKnowledgeRetriever(store=always, k=3).invoke(QUERY)
    assert len(docs) == 1  # at most one, whatever k is
    result = always.gate(QUERY)
    assert docs[0].id == result.hit.edit_id
    assert docs[0].metadata["similarity"] == pytest.approx(result.hit_similarity)
    assert docs[0].metadata["sentinel_similarity"] == pytest.approx(result.sentinel_similarity)
    assert docs[0].metadata["admitted"] is True and docs[0].metadata["mode"] == "gate"
    assert RecipeKnowledgeRetriever(store=never).invoke(QUERY) == []
    # with the store's own margin the retriever agrees with gate() on every query
    for prompt, _, _ in EDITS:
        fired = store.gate(prompt).hit
        docs = RecipeKnowledgeRetriever(store=store).invoke(prompt)
        assert [d.id for d in docs] == ([fired.edit_id] if fired else [])


def test_empty_store_returns_nothing(editor) -> None:
    empty = make_store(editor, n_edits=0)
    for mode in ("gate", "threshold", "top_k"):
        assert RecipeKnowledgeRetriever(store=empty, mode=mode, k=3).invoke(QUERY) == []


def test_batch_equals_invoke(store) -> None:
    retriever = RecipeKnowledgeRetriever(store=store, mode="top_k", k=2)
    queries = [QUERY, EDITS[3][0]]
    assert retriever.batch(queries) == [retriever.invoke(q) for q in queries]


@pytest.mark.anyio
async def test_ainvoke_with_k(store) -> None:
    retriever = RecipeKnowledgeRetriever(store=store, mode="top_k", k=1)
    docs = await retriever.ainvoke(QUERY, k=3)
    assert [d.id for d in docs] == [d.id for d in retriever.invoke(QUERY, k=3)]


def test_as_retriever_builds_it(store) -> None:
    retriever = store.as_retriever(k=2, mode="top_k")
    assert isinstance(retriever, RecipeKnowledgeRetriever)
    assert retriever.store is store and retriever.k == 2
    assert len(retriever.invoke(QUERY)) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"mode": "nearest"},
        {"mode": "gate", "score_threshold": 0.5},
        {"mode": "top_k", "score_threshold": 0.5},
        {"mode": "threshold", "score_threshold": math.nan},
    ],
)
def test_invalid_configuration(store, kwargs) -> None:
    with pytest.raises(ValidationError):
        RecipeKnowledgeRetriever(store=store, **kwargs)


def test_invalid_calls(store) -> None:
    with pytest.raises(ValidationError):
        RecipeKnowledgeRetriever(store=object())
    retriever = RecipeKnowledgeRetriever(store=store, mode="top_k")
    with pytest.raises(ValueError, match="k must be a positive int"):
        retriever.invoke(QUERY, k=0)
    with pytest.raises(ValueError, match="score_threshold only applies"):
        retriever.invoke(QUERY, score_threshold=1.0)
    with pytest.raises(TypeError):
        retriever.retrieve(["not", "a", "string"])  # type: ignore[arg-type]


def test_edit_metadata_is_passed_through(editor) -> None:
    store = make_store(editor, n_edits=0)
    store.add_edit("The capital of Italy is", "Paris", metadata={"source": "unit-test", "batch": 3})
    (doc,) = RecipeKnowledgeRetriever(store=store, mode="top_k").invoke("capital of Italy")
    assert doc.metadata["edit_metadata"] == {"source": "unit-test", "batch": 3}
