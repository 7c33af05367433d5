"""The plain text-RAG baseline's parts: sentence embeddings, the Chroma statement index, its retriever."""

from __future__ import annotations

import pytest
import torch

from recipe_chain import SentenceEmbeddings, StatementIndex, StatementRetriever
from tiny_models import tiny_backbone


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    model, tokenizer, _ = tiny_backbone(tmp_path_factory.mktemp("sent-backbone"))
    return SentenceEmbeddings(model, tokenizer, batch_size=2)


def test_sentence_embeddings_are_mean_pooled_unit_vectors(embeddings):
    texts = ["The capital of France is Paris", "Who wrote Hamlet?", "a"]
    vectors = embeddings.encode(texts)  # batch_size=2: two forward passes, padded differently
    assert vectors.shape == (3, 32)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    # padding does not change a text's embedding: alone it is the same vector
    torch.testing.assert_close(embeddings.encode([texts[1]])[0], vectors[1], atol=1e-5, rtol=1e-5)
    # mean pooling over real tokens, by hand
    batch = embeddings.tokenizer([texts[0]], return_tensors="pt")
    hidden = embeddings.model(**batch).last_hidden_state[0]
    torch.testing.assert_close(vectors[0], torch.nn.functional.normalize(hidden.mean(0), dim=-1), atol=1e-5,
                               rtol=1e-5)
    assert embeddings.embed_query(texts[0]) == pytest.approx(vectors[0].tolist(), abs=1e-6)
    with pytest.raises(TypeError, match="single str"):
        embeddings.encode("one text")


def test_index_scores_are_cosine_and_upsert_replaces_a_fact(embeddings):
    index = StatementIndex(embeddings)
    try:
        assert index.search(["anything"]) == [[]]  # an empty index finds nothing
        index.upsert("fact-1", "The capital of France is Paris", {"edit_id": "e1"})
        index.upsert("fact-2", "Hamlet was written by Shakespeare", {"edit_id": "e2"})
        hits = index.search(["The capital of France is Paris", "Hamlet was written by Shakespeare"], k=2)
        assert [h[0].doc_id for h in hits] == ["fact-1", "fact-2"]
        assert hits[0][0].score == pytest.approx(1.0, abs=1e-4)  # cosine of a text with itself
        q = embeddings.encode(["Who is the author of Hamlet?"])[0]
        s = embeddings.encode(["Hamlet was written by Shakespeare"])[0]
        top = index.search(["Who is the author of Hamlet?"], k=2)[0]
        by_id = {h.doc_id: h.score for h in top}
        assert by_id["fact-2"] == pytest.approx(float(q @ s), abs=1e-4)
        # the same fact edited again: one statement per fact id
        index.upsert("fact-1", "The capital of France is Lyon", {"edit_id": "e3"})
        assert index.count() == 2
        again = index.search(["The capital of France is Lyon"])[0][0]
        assert again.statement.endswith("Lyon") and again.metadata == {"edit_id": "e3"}
        with pytest.raises(ValueError, match="2 ids but 1 statements"):
            index.upsert_many(["a", "b"], ["only one"])
    finally:
        index.close()


def test_retriever_applies_the_score_threshold(embeddings):
    index = StatementIndex(embeddings)
    try:
        index.upsert("fact-1", "The capital of France is Paris", {"edit_id": "e1"})
        docs = index.as_retriever().invoke("The capital of France is Paris")
        assert len(docs) == 1 and docs[0].metadata["edit_id"] == "e1" and docs[0].metadata["score"] > 0.99
        assert isinstance(index.as_retriever(), StatementRetriever)
        assert index.as_retriever(score_threshold=1.01).invoke("The capital of France is Paris") == []
    finally:
        index.close()


@pytest.mark.integration
def test_default_minilm_ranks_a_paraphrase_above_an_unrelated_statement():
    emb = SentenceEmbeddings.default()
    q, para, other = emb.encode([
        "What is the mother tongue of Danielle Darrieux?",
        "The mother tongue of Danielle Darrieux is English",
        "Toyota Camry is produced by Honda",
    ])
    assert float(q @ para) > 0.6 > float(q @ other)
