"""Text-RAG helper: exact prompt text, the unedited prompt when nothing is retrieved, LCEL use."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import LLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.prompts import PromptTemplate

from recipe_chain.text_rag import DEFAULT_TEXT_RAG_TEMPLATE, build_text_rag_chain, format_text_rag_prompt
from tiny_store import EDITS, make_store, shared_models

QUESTION = "The mother tongue of Danielle Darrieux is"


class EchoLLM(LLM):
    """Returns its prompt, so a chain's output is exactly the text the LLM received."""

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _call(self, prompt: str, stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> str:
        return prompt


@pytest.fixture(scope="module")
def store():
    return make_store(shared_models().editor)


def test_format_defaults() -> None:
    assert DEFAULT_TEXT_RAG_TEMPLATE == "New fact: {context}\n{question}"
    statement = "The mother tongue of Danielle Darrieux is English"
    assert format_text_rag_prompt(QUESTION, [statement]) == f"New fact: {statement}\n{QUESTION}"
    assert format_text_rag_prompt(QUESTION, ["A b", "C d"]) == f"New fact: A b\nC d\n{QUESTION}"


@pytest.mark.parametrize("question", [QUESTION, "  odd {spacing} and braces?  ", "", "Q:\nmulti-line"])
def test_nothing_retrieved_is_exactly_the_question(question) -> None:
    assert format_text_rag_prompt(question, []) == question
    assert format_text_rag_prompt(question, [], PromptTemplate.from_template("Ctx {context} Q {question}")) == question


def test_custom_template_and_braces_in_values() -> None:
    prompt = PromptTemplate.from_template("Facts:\n{context}\n\nQ: {question}\nA:")
    assert format_text_rag_prompt("who {x}?", ["s {y}"], prompt) == "Facts:\ns {y}\n\nQ: who {x}?\nA:"
    assert format_text_rag_prompt("q", ["s"], "[{context}] {question}") == "[s] q"


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="context"):
        format_text_rag_prompt("q", ["s"], PromptTemplate.from_template("{question} only"))
    with pytest.raises(ValueError, match="context"):
        format_text_rag_prompt("q", ["s"], "{context} {question} {extra}")
    with pytest.raises(TypeError):
        format_text_rag_prompt("q", "a single statement")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_text_rag_prompt(None, ["s"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_text_rag_prompt("q", ["s"], 42)  # type: ignore[arg-type]


def test_chain_sends_the_formatted_prompt(store) -> None:
    chain = build_text_rag_chain(store, EchoLLM(), mode="top_k", k=2)
    docs = store.as_retriever(mode="top_k", k=2).invoke(QUESTION)
    expected = format_text_rag_prompt(QUESTION, [d.page_content for d in docs])
    assert chain.invoke(QUESTION) == expected
    assert expected.startswith("New fact: ") and expected.endswith("\n" + QUESTION)


def test_chain_without_retrieval_sends_the_question_unchanged(store) -> None:
    chain = build_text_rag_chain(store, EchoLLM(), score_threshold=1e9)  # threshold nobody clears
    for q in [QUESTION, EDITS[3][0], "An unrelated question?"]:
        assert chain.invoke(q) == q
    empty = make_store(shared_models().editor, n_edits=0)
    assert build_text_rag_chain(empty, EchoLLM(), mode="top_k").invoke(QUESTION) == QUESTION


def test_default_mode_follows_the_knowledge_sentinel(store) -> None:
    chain = build_text_rag_chain(store, EchoLLM())  # threshold mode, KS threshold, k=1
    for prompt, _, _ in EDITS:
        hit = store.gate(prompt).hit
        expected = format_text_rag_prompt(prompt, [hit.statement] if hit else [])
        assert chain.invoke(prompt) == expected


def test_batch_stream_and_chat_models(store) -> None:
    chain = build_text_rag_chain(store, EchoLLM(), mode="top_k")
    questions = [QUESTION, "Who leads Edwin of Northumbria?"]
    assert chain.batch(questions) == [chain.invoke(q) for q in questions]
    assert "".join(chain.stream(QUESTION)) == chain.invoke(QUESTION)
    chat_chain = build_text_rag_chain(store, FakeListChatModel(responses=["English"]), mode="top_k")
    assert chat_chain.invoke(QUESTION) == "English"


@pytest.mark.anyio
async def test_async(store) -> None:
    chain = build_text_rag_chain(store, EchoLLM(), mode="top_k")
    assert await chain.ainvoke(QUESTION) == chain.invoke(QUESTION)


def test_chain_rejects_bad_prompt_and_input(store) -> None:
    with pytest.raises(ValueError):
        build_text_rag_chain(store, EchoLLM(), prompt="{question}")
    with pytest.raises(ValueError):
        build_text_rag_chain(store, EchoLLM(), k=0)
    with pytest.raises(TypeError):
        build_text_rag_chain(store, EchoLLM(), mode="top_k").invoke(123)  # type: ignore[arg-type]


def test_chain_over_a_plain_statement_index(tmp_path) -> None:
    """The evaluation's baseline as a chain: sentence-embedding retrieval with a score threshold."""
    from recipe_chain.statement_index import SentenceEmbeddings, StatementIndex
    from tiny_models import tiny_backbone

    model, tokenizer, _ = tiny_backbone(tmp_path / "backbone")
    index = StatementIndex(SentenceEmbeddings(model, tokenizer))
    try:
        statement = "The mother tongue of Danielle Darrieux is English"
        index.upsert("fact-1", statement)
        chain = build_text_rag_chain(None, EchoLLM(), retriever=index.as_retriever(score_threshold=0.0))
        assert chain.invoke(QUESTION) == format_text_rag_prompt(QUESTION, [statement])
        quiet = build_text_rag_chain(None, EchoLLM(), retriever=index.as_retriever(score_threshold=1.5))
        assert quiet.invoke(QUESTION) == QUESTION  # below the threshold: the question alone
    finally:
        index.close()
    with pytest.raises(ValueError, match="a store or a retriever"):
        build_text_rag_chain(None, EchoLLM())
