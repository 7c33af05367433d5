"""LCEL building blocks of RECIPE: the Knowledge Sentinel gate and a prefix-injected LLM.

RECIPE answers a query in two steps, and each is a LangChain ``Runnable`` here:

1. :class:`KnowledgeSentinelGate` encodes the query, retrieves the nearest edit from a
   :class:`~recipe_chain.store.RecipeKnowledgeStore` and admits it only if it beats the
   Knowledge Sentinel. It returns a typed :class:`GateOutput` holding the hit (or none)
   and the hit's continuous prompt vectors ("prefix embeddings").
2. :class:`PrefixedLLMRunnable` prefixes those vectors to a frozen causal LM's input
   embeddings and generates.

They compose in LCEL::

    chain = KnowledgeSentinelGate(store=store) | PrefixedLLMRunnable(llm=model, tokenizer=tok)
    chain.invoke("What is the mother tongue of Danielle Darrieux?")

:class:`~recipe_chain.llms.RecipeEditedLLM` and
:class:`~recipe_chain.chat_models.RecipeEditedChatModel` reuse both pieces.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from langchain_core.messages import BaseMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain.gate import admits, shortlist, verified_choice
from recipe_chain.prefix_lm import Prefix, PrefixedCausalLM
from recipe_chain.records import GateResult

__all__ = [
    "GateOutput",
    "GatingStore",
    "KnowledgeSentinelGate",
    "PrefixedLLMRunnable",
    "GenerationOptions",
    "apply_gate_overrides",
    "generate_with_prefixes",
]

logger = logging.getLogger(__name__)

#: Per-call keyword arguments the generating components accept (``max_tokens`` is an alias).
GENERATION_KWARGS = ("max_new_tokens", "max_tokens", "temperature", "top_p", "seed")


@runtime_checkable
class GatingStore(Protocol):
    """What the gate needs from a knowledge store (:class:`~recipe_chain.store.RecipeKnowledgeStore`)."""

    editor: Any
    identity: str

    def gate_batch(self, texts: Sequence[str]) -> list[GateResult]: ...

    def prompt_vectors(self, edit_id: str) -> torch.Tensor: ...


class GateOutput(BaseModel):
    """What :class:`KnowledgeSentinelGate` returns for one input.

    Attributes:
        text: The query that was gated.
        result: The store's full gate decision (hit, similarities, candidates).
        prefix_embeddings: ``(P, D)`` prompt vectors of the admitted edit
            (``result.prompt_vectors``), or ``None`` when no edit was admitted.

    Example:
        >>> out = gate.invoke("What is the mother tongue of Danielle Darrieux?")  # doctest: +SKIP
        >>> out.fired, out.edit_id, out.prefix_embeddings.shape  # doctest: +SKIP
        (True, 'a1b2c3', torch.Size([4, 576]))
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    text: str
    result: GateResult
    prefix_embeddings: torch.Tensor | None = None

    @property
    def fired(self) -> bool:
        """Whether an edit was admitted."""
        return self.result.hit is not None

    @property
    def edit_id(self) -> str | None:
        """Id of the admitted edit, if any."""
        return self.result.hit.edit_id if self.result.hit is not None else None


def apply_gate_overrides(
    result: GateResult, store: GatingStore, *, use_gate: bool | None = None, margin: float | None = None
) -> GateResult:
    """Re-decide a store's gate result under another gate setting or margin.

    The store reports its re-scored candidates (best first) and the exact sentinel
    similarity, so the decision can be re-taken on the client: with the gate on, the
    best candidate is admitted iff ``similarity > sentinel_similarity + margin``; with
    it off (ablation), the best candidate is always admitted.

    Args:
        result: The store's decision.
        store: The store, to fetch prompt vectors of a newly admitted edit.
        use_gate: ``None`` keeps the store's setting.
        margin: ``None`` keeps the store's margin.

    Returns:
        ``result`` itself when nothing changes, else an updated copy.
    """
    gated = result.gated if use_gate is None else bool(use_gate)
    new_margin = result.margin if margin is None else float(margin)
    if gated == result.gated and new_margin == result.margin:
        return result
    best = result.candidates[0] if result.candidates else None
    if gated and result.verifier_threshold is not None and result.prefilter_margin is not None:
        # Two-stage gate: re-shortlist under the new margin; a candidate the store did not
        # shortlist has no verifier probability and stays rejected.
        sims = [c.similarity for c in result.candidates]
        listed = set(shortlist(sims, result.sentinel_similarity, margin=result.prefilter_margin + new_margin, k=len(sims)))
        probs = [c.verifier_probability if i in listed else None for i, c in enumerate(result.candidates)]
        pick = verified_choice(probs, result.verifier_threshold)
        hit = result.candidates[pick].record if pick is not None else None
    else:
        admitted = best is not None and admits(
            best.similarity, result.sentinel_similarity, margin=new_margin, use_gate=gated
        )
        hit = best.record if admitted else None
    updated = result.model_copy(update={"hit": hit, "margin": new_margin, "gated": gated})
    if hit is None or (result.hit is not None and result.hit.edit_id == hit.edit_id):
        return updated  # the same hit keeps its (possibly not yet computed) prompt vectors
    edit_id = hit.edit_id
    return updated.bind_prompt_vectors(lambda: store.prompt_vectors(edit_id))


def edit_info(result: GateResult | None) -> dict[str, Any]:
    """The ``generation_info`` that explains why a model answered as it did.

    Keys: ``edit_fired``, ``edit_id``, ``statement``, ``hit_similarity`` (best
    candidate, even if rejected), ``sentinel_similarity``, ``margin`` (the extra margin
    the gate applied), ``gated`` (False when the gate was off or edits were not used),
    and the second stage's ``verifier_probability`` and ``verifier_threshold`` (``None``
    without a verifier, or when no candidate was shortlisted).
    """
    if result is None:
        return {
            "edit_fired": False,
            "edit_id": None,
            "statement": None,
            "hit_similarity": None,
            "sentinel_similarity": None,
            "margin": None,
            "gated": False,
            "verifier_probability": None,
            "verifier_threshold": None,
        }
    hit = result.hit
    return {
        "edit_fired": hit is not None,
        "edit_id": hit.edit_id if hit is not None else None,
        "statement": hit.statement if hit is not None else None,
        "hit_similarity": result.hit_similarity,
        "sentinel_similarity": result.sentinel_similarity,
        "margin": result.margin,
        "gated": result.gated,
        "verifier_probability": result.verifier_probability,
        "verifier_threshold": result.verifier_threshold,
    }


def _text_of(value: Any, input_key: str) -> str:
    """The query text of one gate input: a str, a mapping, a prompt value or a message."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if input_key not in value:
            raise KeyError(f"Gate input has no key {input_key!r} (keys: {sorted(map(str, value))}); set input_key=")
        value = value[input_key]
        if not isinstance(value, str):
            raise TypeError(f"Gate input[{input_key!r}] is {type(value).__name__}, expected str")
        return value
    if isinstance(value, PromptValue):
        return value.to_string()
    if isinstance(value, BaseMessage):
        return value.text
    raise TypeError(f"Gate input is {type(value).__name__}; expected str, a dict with the input key, or a PromptValue")


def _no_options(kwargs: Mapping[str, Any]) -> None:
    if kwargs:
        raise TypeError(f"KnowledgeSentinelGate takes no call options, got {sorted(kwargs)}")


class KnowledgeSentinelGate(RunnableSerializable[str | dict, GateOutput]):
    """The RECIPE gate as a Runnable: query -> admitted edit (or none) + prefix embeddings.

    Args:
        store: A :class:`~recipe_chain.store.RecipeKnowledgeStore`.
        input_key: Key of the query when the input is a dict.
        use_gate: Override the store's gate setting (``False``: always take the top-1
            edit, the ablation); ``None`` keeps the store's setting.
        margin: Override the store's extra margin over the sentinel; ``None`` keeps it.

    ``batch`` gates all inputs with one ``store.gate_batch`` call (one encoder pass and
    one Chroma query); config and callbacks are carried as for any Runnable.

    Example:
        >>> from langchain_core.runnables import RunnablePassthrough
        >>> gate = KnowledgeSentinelGate(store=store, input_key="q")  # doctest: +SKIP
        >>> chain = {"q": RunnablePassthrough()} | gate  # doctest: +SKIP
        >>> chain.invoke("What is the mother tongue of Danielle Darrieux?").fired  # doctest: +SKIP
        True
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    store: GatingStore = Field(repr=False)
    input_key: str = "question"
    use_gate: bool | None = None
    margin: float | None = None

    # ------------------------------------------------------------------ core
    def gate_texts(self, texts: Sequence[str]) -> list[GateResult]:
        """Gate query strings with one store call (no callbacks); applies the overrides."""
        texts = list(texts)
        if not texts:
            return []
        results = list(self.store.gate_batch(texts))
        if len(results) != len(texts):
            raise RuntimeError(f"The store returned {len(results)} gate results for {len(texts)} queries")
        return [apply_gate_overrides(r, self.store, use_gate=self.use_gate, margin=self.margin) for r in results]

    def _gate_inputs(self, inputs: list[Any]) -> list[GateOutput | Exception]:
        """Gate inputs with one store call; an unreadable input gets its exception in its slot."""
        texts: dict[int, str] = {}
        errors: dict[int, Exception] = {}
        for i, value in enumerate(inputs):
            try:
                texts[i] = _text_of(value, self.input_key)
            except (KeyError, TypeError) as exc:
                errors[i] = exc
        results = dict(zip(texts, self.gate_texts(list(texts.values()))))
        return [
            errors[i] if i in errors
            else GateOutput(text=texts[i], result=results[i], prefix_embeddings=results[i].prompt_vectors)
            for i in range(len(inputs))
        ]

    def _gate_one(self, value: Any) -> GateOutput:
        (out,) = self._gate_inputs([value])
        if isinstance(out, Exception):
            raise out
        return out

    # ------------------------------------------------------------------ Runnable API
    def invoke(self, input: str | dict, config: RunnableConfig | None = None, **kwargs: Any) -> GateOutput:  # noqa: A002
        """Gate one query (a str, or a dict holding it under ``input_key``)."""
        _no_options(kwargs)
        return self._call_with_config(self._gate_one, input, config)

    def batch(
        self,
        inputs: list[str | dict],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[GateOutput]:
        """Gate many queries with one store call; one chain run per input in the callbacks."""
        _no_options(kwargs)
        return self._batch_with_config(self._gate_inputs, list(inputs), config, return_exceptions=return_exceptions)

    async def ainvoke(self, input: str | dict, config: RunnableConfig | None = None, **kwargs: Any) -> GateOutput:  # noqa: A002
        """Async :meth:`invoke` (runs in the config's executor)."""
        return await run_in_executor(config, self.invoke, input, config, **kwargs)

    async def abatch(
        self,
        inputs: list[str | dict],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[GateOutput]:
        """Async :meth:`batch`: still one store call for all inputs."""
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(
            first, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs  # type: ignore[arg-type]
        )


# ---------------------------------------------------------------------- generation
class GenerationOptions(BaseModel):
    """Resolved options of one generation call.

    ``temperature == 0`` means greedy decoding; otherwise tokens are sampled with
    ``temperature`` and ``top_p`` (seeded by ``seed`` when given).

    Example:
        >>> GenerationOptions(max_new_tokens=8, temperature=0.0, top_p=1.0).decode_kwargs()["do_sample"]
        False
    """

    model_config = ConfigDict(frozen=True)

    max_new_tokens: int = Field(ge=0)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    seed: int | None = None
    stop: list[str] | None = None

    def decode_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`PrefixedCausalLM.generate`/``stream``."""
        sample = self.temperature > 0
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sample,
            "temperature": self.temperature if sample else 1.0,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
        }


def as_prefix(lm: PrefixedCausalLM, vectors: torch.Tensor | None) -> Prefix:
    """Cast ``(P, D)`` prompt vectors to the LLM's device and dtype (``None`` passes through)."""
    if vectors is None:
        return None
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"Prefix embeddings must be a torch.Tensor of shape (P, D), got {type(vectors).__name__}")
    return vectors.detach().to(device=lm.device, dtype=lm.dtype)


def generate_with_prefixes(
    lm: PrefixedCausalLM,
    texts: Sequence[str],
    prefixes: Sequence[torch.Tensor | None],
    options: GenerationOptions,
    *,
    batch_size: int,
    add_special_tokens: bool = True,
) -> list[str]:
    """Generate for many texts, each with its own prefix (or none), ``batch_size`` rows at a time.

    Args:
        lm: The prefix-injecting LM.
        texts: Prompts (already templated for chat models).
        prefixes: Per text, ``(P, D)`` prompt vectors or ``None``.
        options: Decoding options.
        batch_size: Rows per decoding batch.
        add_special_tokens: Let the tokenizer add BOS etc. (off for chat-templated text).

    Returns:
        One continuation per text, never echoing the prompt.
    """
    texts = list(texts)
    if len(prefixes) != len(texts):
        raise ValueError(f"{len(prefixes)} prefixes for {len(texts)} texts")
    rows = [as_prefix(lm, p) for p in prefixes]
    starts = range(0, len(texts), batch_size)
    outputs: list[str] = []
    kwargs = options.decode_kwargs()
    for start in tqdm(starts, desc="generating", unit="batch", disable=len(starts) < 2, leave=False):
        chunk = slice(start, start + batch_size)
        outputs.extend(lm.generate(texts[chunk], rows[chunk], add_special_tokens=add_special_tokens, **kwargs))
    return outputs


class GenerationSettings(BaseModel):
    """Fields shared by the components that run a frozen HF causal LM with prefixes.

    Attributes:
        llm: A Hugging Face causal LM (e.g. from :func:`recipe_chain.load_default_llm`).
        tokenizer: Its tokenizer.
        max_new_tokens: Generated-token budget (``max_tokens`` is accepted as an alias).
        temperature: ``0`` decodes greedily; above ``0`` samples.
        top_p: Nucleus mass when sampling.
        seed: Seed for sampling (each decoding batch is seeded with it).
        stop: Default stop strings (they may span tokens); a per-call ``stop`` replaces them.
        batch_size: Rows per decoding batch.

    Example:
        >>> runner = PrefixedLLMRunnable(llm=model, tokenizer=tok, max_tokens=8)  # doctest: +SKIP
        >>> runner.max_new_tokens, runner.resolve_options(None, {"temperature": 0.7}).temperature  # doctest: +SKIP
        (8, 0.7)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    llm: PreTrainedModel = Field(repr=False)
    tokenizer: PreTrainedTokenizerBase = Field(repr=False)
    max_new_tokens: int = Field(default=32, ge=0, alias="max_tokens")
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: list[str] | None = None
    batch_size: int = Field(default=8, gt=0)

    _lm: PrefixedCausalLM = PrivateAttr()
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._lm = PrefixedCausalLM(self.llm, self.tokenizer)

    @property
    def prefixed_lm(self) -> PrefixedCausalLM:
        """The :class:`PrefixedCausalLM` wrapping ``llm``."""
        return self._lm

    def resolve_options(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> GenerationOptions:
        """Merge per-call ``stop`` and keyword overrides with the fields.

        Raises:
            TypeError: On an unknown keyword or a non-list ``stop``.
            ValueError: On out-of-range values.
        """
        kwargs = {k: v for k, v in kwargs.items() if k != "stream"}  # LangChain's own streaming switch
        unknown = sorted(set(kwargs) - set(GENERATION_KWARGS))
        if unknown:
            raise TypeError(f"Unsupported generation option(s) {unknown}; supported: {list(GENERATION_KWARGS)}")
        if "max_tokens" in kwargs and "max_new_tokens" in kwargs:
            raise TypeError("Pass max_new_tokens or its alias max_tokens, not both")
        stop = self.stop if stop is None else stop
        if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) for s in stop)):
            raise TypeError(f"stop must be a list of strings, got {stop!r}")
        return GenerationOptions(
            max_new_tokens=kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            seed=kwargs.get("seed", self.seed),
            stop=list(stop) if stop else None,
        )

    def generation_params(self) -> dict[str, Any]:
        """The generation settings, for ``_identifying_params`` and tracing."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
        }


class PrefixedLLMRunnable(GenerationSettings, RunnableSerializable[GateOutput | str, str]):
    """Generate with a frozen HF causal LM, prefixing a :class:`GateOutput`'s prompt vectors.

    Input: a :class:`GateOutput` (its ``text`` is the prompt, its ``prefix_embeddings``
    the prefix) or a plain string (no prefix). Output: the continuation, never echoing
    the prompt. ``batch`` decodes ``batch_size`` rows at a time, each with its own prefix.

    Args:
        add_special_tokens: Let the tokenizer add BOS etc. to the prompt.
        (other fields: see :class:`GenerationSettings`)

    Example:
        >>> chain = KnowledgeSentinelGate(store=store) | PrefixedLLMRunnable(llm=model, tokenizer=tok)  # doctest: +SKIP
        >>> chain.invoke("The mother tongue of Danielle Darrieux is")  # doctest: +SKIP
        ' English.'
    """

    # LangChain's Serializable base ignores unknown fields; a typo here must raise instead.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    add_special_tokens: bool = True

    def _generate_many(self, inputs: list[Any], **kwargs: Any) -> list[str | Exception]:
        """Generate for all readable inputs at once; an unreadable input gets its exception in its slot."""
        options = self.resolve_options(kwargs.pop("stop", None), kwargs)
        rows: dict[int, tuple[str, torch.Tensor | None]] = {}
        errors: dict[int, Exception] = {}
        for i, value in enumerate(inputs):
            if isinstance(value, GateOutput):
                rows[i] = (value.text, value.prefix_embeddings)
            elif isinstance(value, str):
                rows[i] = (value, None)
            else:
                errors[i] = TypeError(f"Expected a GateOutput or str, got {type(value).__name__}")
        generated: dict[int, str] = {}
        if rows:
            with self._lock:
                texts = generate_with_prefixes(
                    self._lm, [t for t, _ in rows.values()], [p for _, p in rows.values()], options,
                    batch_size=self.batch_size, add_special_tokens=self.add_special_tokens,
                )
            generated = dict(zip(rows, texts))
        return [errors[i] if i in errors else generated[i] for i in range(len(inputs))]

    def _generate_one(self, value: Any, **kwargs: Any) -> str:
        (out,) = self._generate_many([value], **kwargs)
        if isinstance(out, Exception):
            raise out
        return out

    def invoke(self, input: GateOutput | str, config: RunnableConfig | None = None, **kwargs: Any) -> str:  # noqa: A002
        """Generate for one :class:`GateOutput` (or string). ``kwargs``: ``stop`` and generation overrides."""
        return self._call_with_config(lambda value: self._generate_one(value, **kwargs), input, config)

    def batch(
        self,
        inputs: list[GateOutput | str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Generate for many inputs, ``batch_size`` rows per decoding batch."""
        return self._batch_with_config(
            lambda values: self._generate_many(values, **kwargs), list(inputs), config,
            return_exceptions=return_exceptions,
        )

    async def ainvoke(self, input: GateOutput | str, config: RunnableConfig | None = None, **kwargs: Any) -> str:  # noqa: A002
        """Async :meth:`invoke` (runs in the config's executor)."""
        return await run_in_executor(config, self.invoke, input, config, **kwargs)

    async def abatch(
        self,
        inputs: list[GateOutput | str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Async :meth:`batch`."""
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(
            first, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs  # type: ignore[arg-type]
        )
