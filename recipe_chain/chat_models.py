"""``RecipeEditedChatModel``: a LangChain chat model whose answers follow the edits in a RECIPE store.

The conversation is rendered with the tokenizer's chat template (SmolLM2-Instruct ships
one) and the RECIPE gate runs on the *last human message*. An admitted edit's prompt
vectors are prefixed at the very start of the templated input (after a BOS token the
tokenizer itself would add, if any), as in RECIPE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from recipe_chain.llms import RecipeEditedModelBase
from recipe_chain.runnables import as_prefix, edit_info, generate_with_prefixes

__all__ = ["RecipeEditedChatModel", "render_messages"]

logger = logging.getLogger(__name__)


def _message_role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, FunctionMessage):
        return "function"
    if isinstance(message, ChatMessage):
        return message.role
    raise TypeError(f"Unsupported message type {type(message).__name__}")


def _message_text(message: BaseMessage) -> str:
    """The text of a message; non-text content blocks are rejected (the model reads text only)."""
    content = message.content
    if isinstance(content, str):
        return content
    for block in content:
        if isinstance(block, str):
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in ("text", "reasoning", "thinking"):
            raise ValueError(
                f"RecipeEditedChatModel reads text only; a {type(message).__name__} holds a {kind!r} content block"
            )
    return message.text


def render_messages(messages: Sequence[BaseMessage], tokenizer: Any) -> tuple[str, bool]:
    """Render a conversation as the LLM's input text.

    With a chat template the text comes from
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)`` and
    must be tokenized *without* adding special tokens (the template has them). A tokenizer
    without a template gets a plain fallback, one ``"role: content"`` line per message
    followed by ``"assistant:"``, tokenized *with* special tokens.

    Args:
        messages: The conversation (system, human, AI, tool or chat-role messages).
        tokenizer: The LLM's tokenizer.

    Returns:
        ``(text, add_special_tokens)``.

    Raises:
        ValueError: On an empty conversation, non-text content, or a conversation the
            chat template rejects.
    """
    if not messages:
        raise ValueError("Expected at least one message, got an empty conversation")
    turns = [{"role": _message_role(m), "content": _message_text(m)} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja2 TemplateError and friends: the template rejected the turns
            raise ValueError(f"The tokenizer's chat template rejected this conversation: {exc}") from exc
        return str(text), False
    lines = [f"{turn['role']}: {turn['content']}" for turn in turns]
    return "\n".join([*lines, "assistant:"]), True


def _gate_query(messages: Sequence[BaseMessage]) -> str | None:
    """The content of the last human message (what RECIPE gates on), or None."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage) or (isinstance(message, ChatMessage) and message.role == "user"):
            text = _message_text(message)
            return text if text.strip() else None
    return None


class RecipeEditedChatModel(RecipeEditedModelBase, BaseChatModel):
    """A frozen local chat LLM edited by RECIPE, as a LangChain ``BaseChatModel``.

    Construction is the same as :class:`~recipe_chain.llms.RecipeEditedLLM`
    (``store=``, ``llm=``, ``tokenizer=``, ``editor=`` or :meth:`from_defaults`). The
    conversation is rendered with the tokenizer's chat template (see
    :func:`render_messages` for the fallback without one); the gate runs on the last
    human message, and an admitted edit's prompt vectors are prefixed to the input.

    The returned :class:`~langchain_core.messages.AIMessage` carries the gate decision in
    ``response_metadata`` (``edit_fired``, ``edit_id``, ``statement``, ``hit_similarity``,
    ``sentinel_similarity``, ``margin``, ``gated``, plus ``model_name``) and token counts in
    ``usage_metadata`` (input: templated prompt tokens, without the prefix vectors;
    output: tokens of the returned text).

    Tool calling and structured output are not supported.

    Attributes:
        streaming: Make ``invoke`` stream internally (token callbacks fire).
        timeout: Accepted for drop-in compatibility with hosted chat models; a local
            in-process model has no request to time out, so it has no effect.
        max_retries: Likewise accepted for compatibility; nothing is retried.

    Example:
        >>> from recipe_chain import RecipeEditedChatModel
        >>> chat = RecipeEditedChatModel.from_defaults(store_path="./recipe-store")  # doctest: +SKIP
        >>> msg = chat.invoke("What is the mother tongue of Danielle Darrieux?")  # doctest: +SKIP
        >>> msg.response_metadata["edit_fired"], msg.usage_metadata["output_tokens"]  # doctest: +SKIP
        (True, 7)
    """

    # LangChain's Serializable base ignores unknown fields; a typo here must raise instead.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    streaming: bool = False
    timeout: float | None = Field(default=None, description="No effect on a local model (API compatibility).")
    max_retries: int | None = Field(default=None, description="No effect on a local model (API compatibility).")

    @property
    def _llm_type(self) -> str:
        return "recipe-edited-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.recipe_params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="recipe-chain",
            ls_model_name=model if isinstance(model, str) else self.llm_id,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)),
        )
        stop = stop if stop is not None else self.stop
        if stop:
            params["ls_stop"] = list(stop)
        return params

    # ------------------------------------------------------------------ helpers
    def _prepare(self, messages: list[BaseMessage]) -> tuple[str, bool, Any]:
        """Templated text, its add_special_tokens flag and the gate result of the last human message."""
        text, add_special = render_messages(messages, self.tokenizer)
        query = _gate_query(messages)
        gate = self.gate_queries([query])[0] if query is not None else None
        return text, add_special, gate

    def _usage(self, text: str, add_special: bool, output: str) -> UsageMetadata:
        n_in = len(self._lm.tokenize([text], add_special_tokens=add_special)[0])
        n_out = len(self.tokenizer(output, add_special_tokens=False)["input_ids"]) if output else 0
        return UsageMetadata(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out)

    # ------------------------------------------------------------------ BaseChatModel
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self.resolve_options(stop, kwargs)
        with self._lock:
            text, add_special, gate = self._prepare(messages)
            prefix = gate.prompt_vectors if gate is not None and gate.hit is not None else None
            (output,) = generate_with_prefixes(
                self._lm, [text], [prefix], options, batch_size=1, add_special_tokens=add_special
            )
            usage = self._usage(text, add_special, output)
        message = AIMessage(content=output, usage_metadata=usage, response_metadata={"model_name": self.llm_id})
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=edit_info(gate))],
            llm_output={"model_name": self.llm_id},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        options = self.resolve_options(stop, kwargs)
        with self._lock:
            text, add_special, gate = self._prepare(messages)
        prefix = gate.prompt_vectors if gate is not None and gate.hit is not None else None
        deltas = self._lm.stream(
            text, as_prefix(self._lm, prefix), add_special_tokens=add_special, **options.decode_kwargs()
        )
        pieces: list[str] = []
        while True:
            with self._lock:
                delta = next(deltas, None)
            if delta is None:
                break
            pieces.append(delta)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager is not None:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        # The last chunk carries everything that must appear exactly once.
        with self._lock:
            usage = self._usage(text, add_special, "".join(pieces))
        last = AIMessageChunk(
            content="",
            usage_metadata=usage,
            response_metadata={"model_name": self.llm_id},
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last, generation_info=edit_info(gate))
