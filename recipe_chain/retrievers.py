"""``RecipeKnowledgeRetriever``: the knowledge store as a LangChain ``BaseRetriever``.

The retriever returns the *statements* of stored edits as ``Document`` objects, with
the exact RECIPE similarities in their metadata, so the same knowledge can feed a
text-RAG chain (:mod:`recipe_chain.text_rag`), an agent, or an inspection tool.

Three modes decide which edits come back:

* ``"gate"`` (default): exactly what the store's Knowledge Sentinel gate admits, i.e.
  at most one document, the gate's hit (``sim(q, hit) > sim(q, KS) + margin``).
  This is the decision :class:`~recipe_chain.llms.RecipeEditedLLM` acts on.
* ``"threshold"``: of the top-``k`` candidates, those whose similarity clears a
  threshold: ``similarity >= score_threshold`` when ``score_threshold`` is set,
  otherwise the per-query Knowledge Sentinel threshold
  (``similarity > sentinel_similarity + margin``), i.e. the KS gate applied to each of
  the ``k`` best edits.
* ``"top_k"``: the ``k`` most similar edits, ungated (a plain vector-search baseline).

Every document's metadata holds ``edit_id``, ``prompt``, ``target_new``, ``subject``,
``similarity``, ``sentinel_similarity``, ``margin``, ``admitted`` (whether the gate
would admit that edit: with a verifier, whether it was shortlisted and its
``verifier_probability`` clears ``verifier_threshold``, both also in the metadata),
``rank``, ``namespace``, ``created_at``, ``mode`` and ``edit_metadata`` (the user's own
metadata of the edit). ``Document.id`` is the edit id.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # pragma: no cover
    from recipe_chain.records import GateCandidate, GateResult

__all__ = ["RecipeKnowledgeRetriever", "RetrievalMode", "KnowledgeStoreLike"]

logger = logging.getLogger(__name__)

RetrievalMode = Literal["gate", "threshold", "top_k"]
"""How :class:`RecipeKnowledgeRetriever` selects edits (see the module docstring)."""

_MODES: tuple[str, ...] = ("gate", "threshold", "top_k")


@runtime_checkable
class KnowledgeStoreLike(Protocol):
    """What the retriever needs from a store (:class:`recipe_chain.store.RecipeKnowledgeStore`)."""

    namespace: str

    def gate(self, text: str) -> GateResult: ...

    def query(self, text: str, k: int = 4) -> list[GateCandidate]: ...


class RecipeKnowledgeRetriever(BaseRetriever):
    """Retrieve stored edits (as statement ``Document`` objects) for a query.

    Usually built with ``store.as_retriever(...)``.

    Args:
        store: The :class:`~recipe_chain.store.RecipeKnowledgeStore` to search.
        k: How many candidates ``"threshold"`` and ``"top_k"`` consider (``"gate"``
            returns at most one document whatever ``k`` is). Can also be passed per call:
            ``retriever.invoke(query, k=3)``.
        mode: ``"gate"``, ``"threshold"`` or ``"top_k"`` (see the module docstring).
        score_threshold: Minimum exact similarity (``q·k/√d``) for ``"threshold"``;
            ``None`` uses the query's Knowledge Sentinel similarity instead. Not allowed
            with the other modes. Can also be passed per call.

    Raises:
        pydantic.ValidationError: On ``k < 1``, an unknown mode, or a ``score_threshold``
            given for a mode that ignores it.

    Example:
        >>> retriever = store.as_retriever(mode="top_k", k=3)  # doctest: +SKIP
        >>> docs = retriever.invoke("What language did Danielle Darrieux speak?")  # doctest: +SKIP
        >>> docs[0].page_content, docs[0].metadata["similarity"]  # doctest: +SKIP
        ('The mother tongue of Danielle Darrieux is English', 3.41)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: KnowledgeStoreLike
    k: int = Field(default=1, ge=1)
    mode: RetrievalMode = "gate"
    score_threshold: float | None = None

    @field_validator("score_threshold")
    @classmethod
    def _finite_threshold(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"score_threshold must be a finite number, got {value!r}")
        return value

    @model_validator(mode="after")
    def _threshold_only_with_threshold_mode(self) -> RecipeKnowledgeRetriever:
        if self.score_threshold is not None and self.mode != "threshold":
            raise ValueError(f"score_threshold only applies to mode='threshold', not mode={self.mode!r}")
        return self

    # ------------------------------------------------------------------ LangChain hooks
    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        score_threshold: float | None = None,
    ) -> list[Document]:
        return self.retrieve(query, k=k, score_threshold=score_threshold)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        score_threshold: float | None = None,
    ) -> list[Document]:
        return await run_in_executor(None, self.retrieve, query, k=k, score_threshold=score_threshold)

    def _get_ls_params(self, **kwargs: Any) -> Any:
        params = super()._get_ls_params(**kwargs)
        params["ls_retriever_name"] = "recipe_knowledge"
        return params

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, query: str, *, k: int | None = None, score_threshold: float | None = None) -> list[Document]:
        """The documents for ``query`` (what ``invoke`` returns, without callbacks).

        Args:
            query: The input text.
            k: Overrides :attr:`k` for this call.
            score_threshold: Overrides :attr:`score_threshold` for this call
                (``mode="threshold"`` only).

        Returns:
            Documents, most similar first.

        Raises:
            TypeError: If ``query`` is not a string.
            ValueError: On ``k < 1`` or a threshold given for another mode.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        k = self.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if score_threshold is not None and self.mode != "threshold":
            raise ValueError(f"score_threshold only applies to mode='threshold', not mode={self.mode!r}")
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)

        result = self.store.gate(query)
        if self.mode == "gate":
            if result.hit is None:
                return []
            hit_sim = result.hit_similarity if result.hit_similarity is not None else math.nan
            hit_cand = next((c for c in result.candidates if c.record.edit_id == result.hit.edit_id), None)
            sim = hit_cand.similarity if hit_cand is not None else hit_sim
            return [self._document(result.hit, sim, result, rank=0, admitted=True, candidate=hit_cand)]

        candidates: Sequence[GateCandidate] = result.candidates
        if k > len(candidates):
            candidates = self.store.query(query, k=k)
        candidates = list(candidates)[:k]
        docs = []
        for rank, cand in enumerate(candidates):
            if result.verifier_threshold is not None and result.gated:  # two-stage gate: the verifier decides
                admitted = cand.verifier_probability is not None and cand.verifier_probability > result.verifier_threshold
            else:
                admitted = cand.similarity > result.sentinel_similarity + result.margin
            if self.mode == "threshold":
                keep = admitted if threshold is None else cand.similarity >= threshold
                if not keep:
                    continue
            docs.append(self._document(cand.record, cand.similarity, result, rank=rank, admitted=admitted, candidate=cand))
        logger.debug("%s retrieval for %r: %d of %d candidates", self.mode, query[:60], len(docs), len(candidates))
        return docs

    def _document(
        self, record: Any, similarity: float, result: GateResult, *, rank: int, admitted: bool,
        candidate: GateCandidate | None = None,
    ) -> Document:
        metadata: dict[str, Any] = {
            "edit_id": record.edit_id,
            "prompt": record.prompt,
            "target_new": record.target_new,
            "subject": record.subject,
            "similarity": float(similarity),
            "sentinel_similarity": float(result.sentinel_similarity),
            "margin": float(result.margin),
            "admitted": bool(admitted),
            "verifier_probability": candidate.verifier_probability if candidate is not None else None,
            "verifier_threshold": result.verifier_threshold,
            "rank": rank,
            "namespace": record.namespace,
            "created_at": record.created_at,
            "mode": self.mode,
            "edit_metadata": dict(record.metadata),
        }
        return Document(page_content=record.statement, metadata=metadata, id=record.edit_id)
