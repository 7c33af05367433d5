"""Text RAG over the RECIPE knowledge store: the baseline RECIPE is compared against.

Instead of prefixing continuous prompt vectors, text RAG puts the retrieved statements
into the prompt *as text* through a standard LangChain ``PromptTemplate``, and runs an
unedited LLM. Both read the same store, so a user or a benchmark swaps one for the
other in one line::

    from recipe_chain import build_text_rag_chain
    from recipe_chain.llms import RecipeEditedLLM

    edited = RecipeEditedLLM(store=store, llm=model, tokenizer=tok, editor=editor)
    plain = RecipeEditedLLM(store=store, llm=model, tokenizer=tok, editor=editor, use_edits=False)

    chain = edited                               # RECIPE: continuous prompts
    chain = build_text_rag_chain(store, plain)   # text RAG: statements in the prompt
    chain.invoke("The mother tongue of Danielle Darrieux is")

When nothing is retrieved the LLM receives the question alone, unchanged: exactly the
prompt an unedited model sees. :func:`format_text_rag_prompt` returns the very text the
chain sends, so benchmarks can score it teacher-forced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import StringPromptValue
from langchain_core.prompts import PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough

from recipe_chain.retrievers import RecipeKnowledgeRetriever, RetrievalMode

__all__ = [
    "DEFAULT_TEXT_RAG_TEMPLATE",
    "CONTEXT_SEPARATOR",
    "default_text_rag_prompt",
    "format_text_rag_prompt",
    "build_text_rag_chain",
]

logger = logging.getLogger(__name__)

DEFAULT_TEXT_RAG_TEMPLATE = "New fact: {context}\n{question}"
"""The default template; ``{context}`` is the retrieved statements, ``{question}`` the input."""

CONTEXT_SEPARATOR = "\n"
"""How several retrieved statements are joined into ``{context}``."""

_REQUIRED_VARIABLES = frozenset({"context", "question"})


def default_text_rag_prompt() -> PromptTemplate:
    """A fresh ``PromptTemplate`` of :data:`DEFAULT_TEXT_RAG_TEMPLATE`."""
    return PromptTemplate.from_template(DEFAULT_TEXT_RAG_TEMPLATE)


def _check_prompt(prompt: PromptTemplate | None) -> PromptTemplate:
    if prompt is None:
        return default_text_rag_prompt()
    if isinstance(prompt, str):
        prompt = PromptTemplate.from_template(prompt)
    if not isinstance(prompt, PromptTemplate):
        raise TypeError(f"prompt must be a langchain_core PromptTemplate or a template str, got {type(prompt).__name__}")
    variables = set(prompt.input_variables)
    if variables != _REQUIRED_VARIABLES:
        raise ValueError(
            f"The text-RAG prompt must use exactly the variables {{context}} and {{question}}; "
            f"it uses {sorted(variables)}"
        )
    return prompt


def format_text_rag_prompt(
    question: str, statements: Sequence[str], prompt: PromptTemplate | str | None = None
) -> str:
    """The exact text the text-RAG chain sends to the LLM.

    Args:
        question: The input, e.g. ``"The mother tongue of Danielle Darrieux is"``.
        statements: Retrieved statements, most relevant first (may be empty).
        prompt: A ``PromptTemplate`` (or template string) with ``{context}`` and
            ``{question}``; defaults to :data:`DEFAULT_TEXT_RAG_TEMPLATE`.

    Returns:
        ``question`` itself when ``statements`` is empty; otherwise the template filled
        with the statements joined by :data:`CONTEXT_SEPARATOR`.

    Raises:
        TypeError: If ``question`` is not a str or ``statements`` is a single str.
        ValueError: If the template does not use exactly ``{context}`` and ``{question}``.

    Example:
        >>> format_text_rag_prompt("The mother tongue of Danielle Darrieux is",
        ...                        ["The mother tongue of Danielle Darrieux is English"])
        'New fact: The mother tongue of Danielle Darrieux is English\\nThe mother tongue of Danielle Darrieux is'
        >>> format_text_rag_prompt("Who wrote Hamlet?", [])
        'Who wrote Hamlet?'
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if isinstance(statements, str):
        raise TypeError("statements must be a sequence of str, got a single str; wrap it in a list")
    template = _check_prompt(prompt)
    statements = list(statements)
    for i, s in enumerate(statements):
        if not isinstance(s, str):
            raise TypeError(f"statement {i} is {type(s).__name__}, expected str")
    if not statements:
        return question
    return template.format(context=CONTEXT_SEPARATOR.join(statements), question=question)


def build_text_rag_chain(
    store: Any,
    llm: BaseLanguageModel,
    *,
    prompt: PromptTemplate | str | None = None,
    k: int = 1,
    score_threshold: float | None = None,
    mode: RetrievalMode = "threshold",
    retriever: BaseRetriever | None = None,
) -> Runnable[str, str]:
    """An LCEL chain ``str -> str``: retrieve statements, put them in the prompt, run ``llm``.

    Args:
        store: The :class:`~recipe_chain.store.RecipeKnowledgeStore` to retrieve from
            (``None`` when ``retriever`` is given).
        llm: An *unedited* LangChain LLM or chat model, e.g.
            ``RecipeEditedLLM(..., use_edits=False)``.
        prompt: Template with ``{context}`` and ``{question}``; defaults to
            :data:`DEFAULT_TEXT_RAG_TEMPLATE`.
        k: Statements to consider (see :class:`RecipeKnowledgeRetriever`).
        score_threshold: For ``mode="threshold"``: minimum similarity; ``None`` uses the
            query's Knowledge Sentinel similarity, so with ``k=1`` text RAG is used on
            exactly the queries where RECIPE's gate fires.
        mode: Retrieval mode of the :class:`RecipeKnowledgeRetriever`.
        retriever: Any LangChain retriever to use instead of the store's, e.g. the plain
            sentence-embedding one of :class:`~recipe_chain.statement_index.StatementIndex`
            (``index.as_retriever(score_threshold=...)``), the baseline the evaluation
            compares RECIPE with.

    Returns:
        A ``Runnable`` taking the question string and returning the answer string; it
        supports ``invoke``/``batch``/``stream`` and their async forms.

    Raises:
        TypeError: If ``prompt`` is neither a ``PromptTemplate`` nor a str.
        ValueError: If the prompt's variables are not ``{context}`` and ``{question}``, or
            neither ``store`` nor ``retriever`` is given.

    Example:
        >>> chain = build_text_rag_chain(store, plain_llm)  # doctest: +SKIP
        >>> chain.invoke("The mother tongue of Danielle Darrieux is")  # doctest: +SKIP
        ' English.'
    """
    template = _check_prompt(prompt)
    if getattr(llm, "use_edits", False) is True:
        logger.warning(
            "build_text_rag_chain got an LLM with use_edits=True: it will apply RECIPE prompts *and* "
            "text RAG. Pass an unedited LLM (use_edits=False) to get the text-RAG baseline."
        )
    if retriever is None:
        if store is None:
            raise ValueError("build_text_rag_chain needs a store or a retriever")
        retriever = RecipeKnowledgeRetriever(store=store, k=k, mode=mode, score_threshold=score_threshold)

    def to_prompt(inputs: dict[str, Any]) -> StringPromptValue:
        docs: list[Document] = inputs["docs"]
        text = format_text_rag_prompt(inputs["question"], [d.page_content for d in docs], template)
        return StringPromptValue(text=text)

    chain = (
        RunnableParallel(question=RunnablePassthrough(), docs=retriever)
        | RunnableLambda(to_prompt, name="format_text_rag_prompt")
        | llm
        | StrOutputParser()
    )
    return chain.with_types(input_type=str, output_type=str).with_config(run_name="RecipeTextRAG")
