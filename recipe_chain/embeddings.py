"""``RecipeEmbeddings``: a RECIPE knowledge encoder as a LangChain ``Embeddings``.

The encoder is *asymmetric*, like sentence-transformers' ``encode_document`` /
``encode_query``: documents (knowledge statements such as
``"The mother tongue of Danielle Darrieux is English"``) go through the knowledge head,
queries through the query head. RECIPE compares them with the scaled dot product
``q·k/√d`` (:func:`recipe_chain.editor.scaled_dot`), not cosine similarity, so a vector
store fed with these embeddings should rank by inner product.
"""

from __future__ import annotations

import os

import torch
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel

from recipe_chain.editor import RecipeEditor

__all__ = ["RecipeEmbeddings"]


class RecipeEmbeddings(BaseModel, Embeddings):
    """LangChain embeddings from a (trained) :class:`~recipe_chain.editor.RecipeEditor`.

    Args:
        editor: The editor whose knowledge encoder embeds the texts.
        batch_size: Texts per backbone forward pass.

    Example:
        >>> from recipe_chain import RecipeEmbeddings
        >>> emb = RecipeEmbeddings(editor=editor)  # doctest: +SKIP
        >>> keys = emb.embed_documents(["The mother tongue of Danielle Darrieux is English"])  # doctest: +SKIP
        >>> q = emb.embed_query("What language does Danielle Darrieux speak?")  # doctest: +SKIP
        >>> len(q) == emb.dimension  # doctest: +SKIP
        True
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    editor: RecipeEditor
    batch_size: int = Field(default=64, ge=1)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, llm: PreTrainedModel | None = None, batch_size: int = 64
    ) -> RecipeEmbeddings:
        """Embeddings from a checkpoint directory (see :meth:`RecipeEditor.from_pretrained`).

        Args:
            path: Checkpoint directory.
            llm: Optional LLM to check the checkpoint against.
            batch_size: Texts per backbone forward pass.

        Raises:
            FileNotFoundError: If ``path`` holds no checkpoint.
        """
        return cls(editor=RecipeEditor.from_pretrained(path, llm=llm), batch_size=batch_size)

    @property
    def dimension(self) -> int:
        """Width of every embedding (the editor's ``rep_dim``)."""
        return self.editor.config.rep_dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed knowledge statements with the knowledge head.

        Args:
            texts: Statements; an empty list gives an empty list.

        Returns:
            One ``rep_dim``-long vector per text.

        Raises:
            TypeError: If an item is not a string.
            ValueError: If a text exceeds the encoder's token limit.
        """
        if isinstance(texts, str):
            raise TypeError("embed_documents expects a list of strings, got a single str")
        texts = list(texts)
        if not texts:
            return []
        keys = self.editor.encode_statements(texts, batch_size=self.batch_size)  # (N, rep)
        return _to_lists(keys)

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (an input the LLM will be asked) with the query head.

        A query over the encoder's token limit is cut to its last sentence, as the gate
        reads it (:mod:`recipe_chain.query_window`).

        Raises:
            TypeError: If ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"embed_query expects a str, got {type(text).__name__}")
        return _to_lists(self.editor.encode_queries([text]))[0]  # (1, rep) -> (rep,)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents` (runs in the default executor)."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query` (runs in the default executor)."""
        return await run_in_executor(None, self.embed_query, text)


def _to_lists(matrix: torch.Tensor) -> list[list[float]]:
    """``(N, d)`` tensor -> N lists of Python floats."""
    return matrix.detach().to("cpu", torch.float64).tolist()
