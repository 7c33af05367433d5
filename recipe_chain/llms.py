"""``RecipeEditedLLM``: a LangChain ``BaseLLM`` whose answers follow the edits in a RECIPE store.

Every prompt goes through the Knowledge Sentinel gate
(:class:`~recipe_chain.runnables.KnowledgeSentinelGate`); when an edit is admitted, its
continuous prompt vectors are prefixed to the frozen LLM's input embeddings. Each
generation's ``generation_info`` says whether an edit fired and why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict, Field, PrivateAttr
from typing_extensions import Self

from recipe_chain.editor import RecipeEditor, check_llm_matches
from recipe_chain.errors import EncoderMismatchError
from recipe_chain.loading import llm_id_of
from recipe_chain.runnables import (
    GatingStore,
    GenerationSettings,
    KnowledgeSentinelGate,
    as_prefix,
    edit_info,
    generate_with_prefixes,
)
from recipe_chain.records import GateResult

__all__ = ["RecipeEditedLLM", "RecipeEditedModelBase"]

logger = logging.getLogger(__name__)

class RecipeEditedModelBase(GenerationSettings):
    """Construction options and gating shared by :class:`RecipeEditedLLM` and the chat model.

    Attributes:
        store: The knowledge store; ``None`` gives the plain, unedited LLM.
        editor: The RECIPE editor; defaults to ``store.editor``. Checked against ``llm``.
        use_edits: ``False`` bypasses the store (the unedited baseline).
        (generation fields: see :class:`~recipe_chain.runnables.GenerationSettings`)

    Example:
        >>> llm = RecipeEditedLLM(store=store, llm=model, tokenizer=tokenizer)  # doctest: +SKIP
        >>> llm.editor is store.editor, llm.gate_queries(["Who wrote Hamlet?"])[0].fired  # doctest: +SKIP
        (True, False)
    """

    store: GatingStore | None = Field(default=None, repr=False)
    editor: RecipeEditor | None = Field(default=None, repr=False)
    use_edits: bool = True
    cache: BaseCache | bool | None = Field(default=False, exclude=True)
    """Off by default: answers depend on the store's current edits, which LangChain's
    prompt-keyed LLM cache cannot see (an edit made after a cached call would be ignored)."""

    _gate: KnowledgeSentinelGate | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Checked after validation so the library's own exception types reach the caller.
        if self.store is not None:
            if self.editor is None:
                self.editor = self.store.editor
            elif self.editor is not self.store.editor and self.editor.fingerprint != self.store.editor.fingerprint:
                raise EncoderMismatchError(
                    f"editor (fingerprint {self.editor.fingerprint}) is not the store's editor "
                    f"(fingerprint {self.store.editor.fingerprint}); pass the store's editor or none"
                )
            self._gate = KnowledgeSentinelGate(store=self.store)
        if self.editor is not None:
            check_llm_matches(self.editor.config, self.llm, where="editor")

    @classmethod
    def from_defaults(
        cls,
        store_path: str | os.PathLike[str] | None = None,
        *,
        namespace: str = "default",
        ephemeral: bool = False,
        write_behind: bool = False,
        **kwargs: Any,
    ) -> Self:
        """The default LLM, the shipped checkpoint and an embedded Chroma store.

        Args:
            store_path: Directory of the persistent store (the store's default, ``./recipe-store``).
            namespace: Store namespace.
            ephemeral: Keep the store in memory instead (``store_path`` must be None).
            write_behind: Open the persistent store with ``write_behind=True`` (journaled
                edits, Chroma written in the background; see
                :class:`~recipe_chain.store.RecipeKnowledgeStore`).
            **kwargs: Other fields, e.g. ``max_new_tokens=16``.

        Raises:
            FileNotFoundError: If this build ships no trained checkpoint.
            MissingModelPackageError: If a model package is not installed.
        """
        from recipe_chain import defaults, loading  # noqa: PLC0415 - heavy, only when asked
        from recipe_chain.store import RecipeKnowledgeStore  # noqa: PLC0415

        if ephemeral and store_path is not None:
            raise ValueError("Pass store_path or ephemeral=True, not both")
        llm, tokenizer = loading.load_default_llm()
        editor = defaults.load_default_editor(llm)
        store = RecipeKnowledgeStore(
            editor, path=store_path, namespace=namespace, ephemeral=ephemeral, write_behind=write_behind
        )
        return cls(store=store, llm=llm, tokenizer=tokenizer, editor=editor, **kwargs)

    @property
    def llm_id(self) -> str:
        """Identity of the frozen LLM."""
        return llm_id_of(self.llm)

    @property
    def edits_active(self) -> bool:
        """Whether prompts are gated against the store."""
        return self.use_edits and self._gate is not None

    def gate_queries(self, queries: Sequence[str]) -> list[GateResult | None]:
        """Gate queries with the shared :class:`KnowledgeSentinelGate` (one store call); ``None`` rows when edits are off.

        The decisions are reported in each generation's ``generation_info``.
        """
        if not self.edits_active:
            return [None] * len(queries)
        return self._gate.gate_texts(queries)  # type: ignore[union-attr]

    def recipe_params(self) -> dict[str, Any]:
        """LLM id, checkpoint fingerprint, store identity and generation settings."""
        return {
            "llm_id": self.llm_id,
            "checkpoint_fingerprint": self.editor.fingerprint if self.editor is not None else None,
            "store_identity": self.store.identity if self.store is not None else None,
            "use_edits": self.use_edits,
            **self.generation_params(),
        }


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("Expected a list of prompts, got a single str")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("Expected at least one prompt, got an empty list")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"Prompt {i} is {type(prompt).__name__}, expected str")
        if not prompt:
            raise ValueError(f"Prompt {i} is empty")
    return prompts


class RecipeEditedLLM(RecipeEditedModelBase, BaseLLM):
    """A frozen local LLM edited by RECIPE, as a LangChain ``BaseLLM``.

    ``batch`` is really batched: all prompts are gated with one store call and decoded
    ``batch_size`` rows at a time, each row with its own edit's prefix (or none).

    Per-call options (``invoke(..., stop=[...], max_new_tokens=..., temperature=...,
    top_p=..., seed=...)``) override the fields for that call.

    ``generation_info`` of each generation::

        {"edit_fired": bool, "edit_id": str | None, "statement": str | None,
         "hit_similarity": float | None, "sentinel_similarity": float | None,
         "margin": float | None, "gated": bool}

    Example:
        >>> from recipe_chain import RecipeEditedLLM
        >>> llm = RecipeEditedLLM.from_defaults(store_path="./recipe-store")  # doctest: +SKIP
        >>> llm.store.add_edit("The mother tongue of Danielle Darrieux is", "English")  # doctest: +SKIP
        >>> llm.invoke("The mother tongue of Danielle Darrieux is")  # doctest: +SKIP
        ' English'
        >>> llm.generate(["The mother tongue of Danielle Darrieux is"]).generations[0][0].generation_info  # doctest: +SKIP
        {'edit_fired': True, 'edit_id': '...', 'statement': '...', ...}
    """

    # LangChain's Serializable base ignores unknown fields; a typo here must raise instead.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    @property
    def _llm_type(self) -> str:
        return "recipe-edited-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.recipe_params()

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        prompts = _check_prompts(prompts)
        options = self.resolve_options(stop, kwargs)
        with self._lock:
            gates = self.gate_queries(prompts)
            prefixes = [g.prompt_vectors if g is not None and g.hit is not None else None for g in gates]
            texts = generate_with_prefixes(self._lm, prompts, prefixes, options, batch_size=self.batch_size)
        generations = [[Generation(text=text, generation_info=edit_info(g))] for text, g in zip(texts, gates)]
        logger.debug("generated %d continuations, %d with an edit", len(texts), sum(p is not None for p in prefixes))
        return LLMResult(generations=generations, llm_output={"model_name": self.llm_id})

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        (prompt,) = _check_prompts([prompt])
        options = self.resolve_options(stop, kwargs)
        with self._lock:
            (gate,) = self.gate_queries([prompt])
        prefix = gate.prompt_vectors if gate is not None and gate.hit is not None else None
        info: dict[str, Any] | None = edit_info(gate)  # sent once, with the first chunk
        deltas = self._lm.stream(prompt, as_prefix(self._lm, prefix), **options.decode_kwargs())
        while True:
            with self._lock:
                delta = next(deltas, None)
            if delta is None:
                break
            chunk = GenerationChunk(text=delta, generation_info=info)
            info = None
            if run_manager is not None:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        if info is not None:  # nothing generated: still report the gate decision
            yield GenerationChunk(text="", generation_info=info)
