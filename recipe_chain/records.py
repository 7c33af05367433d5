"""Public data types of the knowledge store: edits, scored candidates and gate decisions.

They are re-exported by :mod:`recipe_chain.store`; import them from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

__all__ = ["ScalarMeta", "EditLike", "EditRecord", "GateCandidate", "GateResult"]

ScalarMeta = str | int | float | bool
"""A user metadata value: Chroma stores scalars only."""


@runtime_checkable
class EditLike(Protocol):
    """Any object with an edit's fields, e.g. :class:`recipe_chain.data.EditExample`: the store
    reads these attributes, so it need not import the dataset loaders."""

    prompt: str
    target_new: str
    subject: str | None
    case_id: str | None


class EditRecord(BaseModel):
    """One stored edit, as the knowledge store returns it.

    Attributes:
        edit_id: The edit's id, unique within its namespace.
        namespace: The knowledge base the edit lives in.
        prompt: The edit prompt, e.g. ``"The mother tongue of Danielle Darrieux is"``.
        target_new: The new target, e.g. ``"English"``.
        subject: The edited subject, when known.
        statement: ``statement_of(prompt, target_new)``: the text the key encodes.
        created_at: When the edit was added, ISO-8601 in UTC.
        metadata: The user's own metadata (scalars only).
        active: ``False`` once a newer edit of the same fact superseded this one.
        superseded_by: The id of the edit that superseded this one.
        previous_targets: Older targets of the same fact, oldest first.
        encoder_fingerprint: Fingerprint of the editor that computed the stored key.
        key_precision: ``"float32"``, or ``"int8"`` for a key encoded with the editor's
            ``int8_statements`` on.

    Example:
        >>> record = store.add_edit("The mother tongue of Danielle Darrieux is", "English")  # doctest: +SKIP
        >>> record.statement  # doctest: +SKIP
        'The mother tongue of Danielle Darrieux is English'
    """

    model_config = ConfigDict(frozen=True)

    edit_id: str
    namespace: str
    prompt: str
    target_new: str
    subject: str | None = None
    statement: str
    created_at: str
    metadata: dict[str, ScalarMeta] = Field(default_factory=dict)
    active: bool = True
    superseded_by: str | None = None
    previous_targets: list[str] = Field(default_factory=list)
    encoder_fingerprint: str
    key_precision: str = "float32"


class GateCandidate(BaseModel):
    """A retrieved edit with its exact similarity to the query.

    Attributes:
        record: The edit.
        similarity: ``q·k/√d`` between the query representation and the edit's stored
            key, computed exactly on the client (not Chroma's approximate distance).
        verifier_probability: The gate verifier's ``P(statement answers query)`` for a
            shortlisted candidate; ``None`` when it was not read (no verifier, or the
            candidate was not shortlisted).

    Example:
        >>> best = store.query("What language does Danielle Darrieux speak?", k=1)[0]  # doctest: +SKIP
        >>> best.record.target_new, round(best.similarity, 3)  # doctest: +SKIP
        ('English', 4.217)
    """

    model_config = ConfigDict(frozen=True)

    record: EditRecord
    similarity: float
    verifier_probability: float | None = None


class GateResult(BaseModel):
    """The Knowledge Sentinel's decision for one query.

    Without a verifier, the best candidate is admitted iff ``hit_similarity >
    sentinel_similarity + margin`` (or unconditionally when ``gated`` is ``False``). With
    a verifier (:mod:`recipe_chain.verifier`) the top candidates within its prefilter
    margin of the sentinel are *shortlisted*, and the shortlisted candidate with the
    highest ``verifier_probability`` is admitted iff that exceeds ``verifier_threshold``.

    Attributes:
        query: The gated text.
        hit: The admitted edit, or ``None``: then the LLM runs untouched.
        hit_similarity: Exact similarity of the best candidate (the first of
            ``candidates``), also when it was rejected; ``None`` when the store holds no
            active edit.
        sentinel_similarity: Exact ``sim(query, sentinel)``.
        margin: The extra margin that was applied.
        gated: ``False`` when the gate was disabled (ablation: the top-1 is always used).
        candidates: The re-scored top candidates, best first, each with its verifier
            probability when it was shortlisted.
        verifier_threshold: The verifier's admission threshold; ``None`` when the gate
            ran without a verifier.
        prefilter_margin: The verifier's shortlist margin over the sentinel (before
            ``margin`` is added); ``None`` without a verifier.
        prompt_vectors: ``(P, D)`` prompt vectors of ``hit``, ``None`` without a hit.
            Computed on first access, then kept: the decision does not need them, and
            a ``"vocab"`` prompt encoder reads the whole LLM embedding matrix to make
            them (tens of ms on a CPU), which only a caller that runs the LLM should pay.

    Example:
        >>> result = store.gate("What is the mother tongue of Danielle Darrieux?")  # doctest: +SKIP
        >>> result.fired, result.hit.target_new  # doctest: +SKIP
        (True, 'English')
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    query: str
    hit: EditRecord | None
    hit_similarity: float | None
    sentinel_similarity: float
    margin: float
    gated: bool
    candidates: list[GateCandidate]
    verifier_threshold: float | None = None
    prefilter_margin: float | None = None
    _prompt_vectors: torch.Tensor | None = PrivateAttr(default=None)
    _vector_source: Callable[[], torch.Tensor] | None = PrivateAttr(default=None)

    def bind_prompt_vectors(self, source: torch.Tensor | Callable[[], torch.Tensor] | None) -> GateResult:
        """Attach the hit's prompt vectors, or a function that computes them on first access.

        Stores call this when they build a result; it returns ``self``.

        Args:
            source: A ``(P, D)`` tensor, a zero-argument callable returning one, or ``None``.
        """
        if callable(source) and not isinstance(source, torch.Tensor):
            self._prompt_vectors, self._vector_source = None, source
        else:
            self._prompt_vectors, self._vector_source = source, None
        return self

    @property
    def prompt_vectors(self) -> torch.Tensor | None:
        """``(P, D)`` prompt vectors of ``hit`` (``None`` without a hit); see the class docs."""
        if self.hit is None:
            return None
        source = self._vector_source
        if self._prompt_vectors is None and source is not None:
            self._prompt_vectors = source()
            self._vector_source = None
        return self._prompt_vectors

    @property
    def verifier_probability(self) -> float | None:
        """The verifier's probability for the hit, else the highest among the shortlisted; ``None`` if none was read."""
        if self.hit is not None:
            for cand in self.candidates:
                if cand.record.edit_id == self.hit.edit_id:
                    return cand.verifier_probability
        read = [c.verifier_probability for c in self.candidates if c.verifier_probability is not None]
        return max(read) if read else None

    @property
    def fired(self) -> bool:
        """Whether an edit was admitted."""
        return self.hit is not None
