"""RecipeEmbeddings: asymmetric heads, exact agreement with the editor, input checks."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from recipe_chain.embeddings import RecipeEmbeddings
from tiny_store import EDITS, shared_models

STATEMENTS = [f"{p} {t}" for p, t, _ in EDITS]


@pytest.fixture(scope="module")
def editor():
    return shared_models().editor


@pytest.fixture(scope="module")
def emb(editor):
    return RecipeEmbeddings(editor=editor, batch_size=2)


def test_documents_use_the_knowledge_head(emb, editor) -> None:
    vectors = emb.embed_documents(STATEMENTS)  # batch_size=2: three forward passes
    expected = editor.encode_statements(STATEMENTS)
    assert len(vectors) == len(STATEMENTS) and all(len(v) == emb.dimension == 16 for v in vectors)
    torch.testing.assert_close(torch.tensor(vectors, dtype=torch.float32), expected, atol=1e-5, rtol=1e-5)


def test_queries_use_the_query_head(emb, editor) -> None:
    text = STATEMENTS[0]
    q = emb.embed_query(text)
    torch.testing.assert_close(torch.tensor([q], dtype=torch.float32), editor.encode_queries([text]), atol=1e-5, rtol=1e-5)
    # asymmetric: the same text embeds differently as a document and as a query
    d = emb.embed_documents([text])[0]
    assert max(abs(a - b) for a, b in zip(q, d)) > 1e-3


def test_scores_reproduce_recipe_similarity(emb, editor) -> None:
    q = torch.tensor([emb.embed_query("Who speaks English?")])
    k = torch.tensor(emb.embed_documents(STATEMENTS))
    expected = editor.similarity(editor.encode_queries(["Who speaks English?"]), editor.encode_statements(STATEMENTS))
    torch.testing.assert_close((q @ k.T / 16**0.5).float(), expected, atol=1e-5, rtol=1e-5)


def test_deterministic_and_plain_floats(emb) -> None:
    a, b = emb.embed_query("same text"), emb.embed_query("same text")
    assert a == b and all(type(x) is float for x in a)


def test_empty_and_bad_inputs(emb) -> None:
    assert emb.embed_documents([]) == []
    with pytest.raises(TypeError):
        emb.embed_documents("a single string")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emb.embed_query(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emb.embed_documents(["ok", 5])  # type: ignore[list-item]
    # a long query is cut to its last sentence (what the gate reads); a long statement still raises
    assert emb.embed_query("word " * 200 + ". Who runs Acme?") == emb.embed_query("Who runs Acme?")
    with pytest.raises(ValueError, match="tokens"):
        emb.embed_documents(["word " * 200])
    with pytest.raises(ValidationError):
        RecipeEmbeddings(editor="not an editor")
    with pytest.raises(ValidationError):
        RecipeEmbeddings(editor=emb.editor, batch_size=0)


@pytest.mark.anyio
async def test_async_matches_sync(emb) -> None:
    assert await emb.aembed_query("x y") == emb.embed_query("x y")
    assert await emb.aembed_documents(STATEMENTS[:2]) == emb.embed_documents(STATEMENTS[:2])


def test_from_pretrained_roundtrip(editor, tmp_path) -> None:
    editor.save_pretrained(tmp_path / "ckpt")
    loaded = RecipeEmbeddings.from_pretrained(tmp_path / "ckpt")
    assert loaded.editor.fingerprint == editor.fingerprint
    assert loaded.embed_query("x y") == pytest.approx(RecipeEmbeddings(editor=editor).embed_query("x y"), abs=1e-5)
    with pytest.raises(FileNotFoundError):
        RecipeEmbeddings.from_pretrained(tmp_path / "missing")
