"""Tests for recipe_chain.chat_models.RecipeEditedChatModel (tiny random models).

The tiny tokenizer has no chat template; a copy gets a ChatML-style template so both the
templated path and the documented fallback are covered.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from recipe_chain.chat_models import RecipeEditedChatModel, render_messages
from recipe_chain.llms import RecipeEditedLLM
from recipe_chain.prefix_lm import PrefixedCausalLM
from tiny_store import make_store, shared_models

EDITED = "What is the mother tongue of Danielle Darrieux?"
UNRELATED = "Hello, my name is Alex. Where do I live?"
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def models():
    return shared_models()


@pytest.fixture(scope="module")
def templated_tokenizer(models):
    tokenizer = copy.deepcopy(models.tokenizer)
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module")
def admit_store(models):
    return make_store(models.editor, n_edits=1, gate_margin=-1e9)


@pytest.fixture(scope="module")
def lm(models, templated_tokenizer) -> PrefixedCausalLM:
    return PrefixedCausalLM(models.llm, templated_tokenizer)


def make_chat(models, tokenizer, store, **kwargs: Any) -> RecipeEditedChatModel:
    kwargs.setdefault("max_new_tokens", 8)
    return RecipeEditedChatModel(store=store, llm=models.llm, tokenizer=tokenizer, **kwargs)


@pytest.fixture()
def generate_spy(monkeypatch):
    calls: list[dict[str, Any]] = []
    original = PrefixedCausalLM.generate

    def spy(self, texts, prefixes=None, **kwargs):
        calls.append({"texts": list(texts), "prefixes": list(prefixes), **kwargs})
        return original(self, texts, prefixes, **kwargs)

    monkeypatch.setattr(PrefixedCausalLM, "generate", spy)
    return calls


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


# ---------------------------------------------------------------------- rendering
def test_chat_template_is_applied_without_special_tokens(models, templated_tokenizer, admit_store, generate_spy):
    chat = make_chat(models, templated_tokenizer, admit_store)
    messages = [SystemMessage("Be brief."), HumanMessage(EDITED)]
    chat.invoke(messages)
    expected = templated_tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": EDITED}],
        add_generation_prompt=True, tokenize=False,
    )
    assert expected.endswith("<|im_start|>assistant\n")
    (call,) = generate_spy
    assert call["texts"] == [expected] and call["add_special_tokens"] is False


def test_fallback_format_without_template(models, admit_store, generate_spy):
    assert not getattr(models.tokenizer, "chat_template", None)
    chat = make_chat(models, models.tokenizer, admit_store)
    chat.invoke([SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage(EDITED)])
    (call,) = generate_spy
    assert call["texts"] == [f"system: Be brief.\nuser: Hi\nassistant: Hello!\nuser: {EDITED}\nassistant:"]
    assert call["add_special_tokens"] is True


def test_render_messages_errors(models, templated_tokenizer):
    with pytest.raises(ValueError, match="empty conversation"):
        render_messages([], templated_tokenizer)
    image = HumanMessage(content=[{"type": "text", "text": "Look"},
                                  {"type": "image", "base64": "AAAA", "mime_type": "image/png"}])
    with pytest.raises(ValueError, match="text only"):
        render_messages([image], templated_tokenizer)
    strict = copy.deepcopy(templated_tokenizer)
    strict.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ValueError, match="roles must alternate"):
        render_messages([HumanMessage("x")], strict)
    # text blocks are read as text
    blocks = HumanMessage(content=[{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}])
    text, _ = render_messages([blocks], templated_tokenizer)
    assert "Hello there" in text


# ---------------------------------------------------------------------- gating
def test_gates_on_the_last_human_message(models, templated_tokenizer, admit_store, monkeypatch):
    calls: list[list[str]] = []
    original = admit_store.gate_batch
    monkeypatch.setattr(admit_store, "gate_batch", lambda texts: calls.append(list(texts)) or original(texts))
    chat = make_chat(models, templated_tokenizer, admit_store)
    chat.invoke([SystemMessage("s"), HumanMessage(EDITED), AIMessage("French."), HumanMessage(UNRELATED)])
    chat.invoke([HumanMessage(EDITED), AIMessage("French.")])
    assert calls == [[UNRELATED], [EDITED]]
    # no human message: nothing to gate, the LLM runs untouched
    msg = chat.invoke([SystemMessage("You are terse.")])
    assert len(calls) == 2
    assert msg.response_metadata["edit_fired"] is False and msg.response_metadata["gated"] is False


def test_response_metadata_usage_and_prefix(models, templated_tokenizer, admit_store, lm, generate_spy):
    chat = make_chat(models, templated_tokenizer, admit_store)
    (record,) = admit_store.list_edits()
    msg = chat.invoke(EDITED)
    assert isinstance(msg, AIMessage)
    meta = msg.response_metadata
    assert meta["edit_fired"] is True and meta["edit_id"] == record.edit_id
    assert meta["statement"] == record.statement and meta["model_name"] == "tiny-llama"
    assert isinstance(meta["hit_similarity"], float) and isinstance(meta["sentinel_similarity"], float)
    (call,) = generate_spy
    prefix = admit_store.prompt_vectors(record.edit_id)
    torch.testing.assert_close(call["prefixes"][0], prefix)
    text = call["texts"][0]
    usage = msg.usage_metadata
    assert usage["input_tokens"] == len(lm.tokenize([text], add_special_tokens=False)[0])
    assert usage["output_tokens"] == len(templated_tokenizer(msg.content, add_special_tokens=False)["input_ids"])
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_output_equals_prefixed_generation(models, templated_tokenizer, admit_store, lm):
    chat = make_chat(models, templated_tokenizer, admit_store)
    (record,) = admit_store.list_edits()
    prefix = admit_store.prompt_vectors(record.edit_id)
    text, _ = render_messages([HumanMessage(EDITED)], templated_tokenizer)
    expected = lm.generate([text], [prefix], max_new_tokens=8, add_special_tokens=False)[0]
    assert chat.invoke(EDITED).content == expected
    unedited = make_chat(models, templated_tokenizer, admit_store, use_edits=False)
    assert unedited.invoke(EDITED).content == lm.generate([text], max_new_tokens=8, add_special_tokens=False)[0]
    assert not torch.allclose(lm.next_token_logits([text], [prefix]), lm.next_token_logits([text]))


# ---------------------------------------------------------------------- streaming and options
def test_stream_joins_to_invoke(models, templated_tokenizer, admit_store):
    chat = make_chat(models, templated_tokenizer, admit_store, max_new_tokens=10)
    recorder = TokenRecorder()
    chunks = list(chat.stream(EDITED, config={"callbacks": [recorder]}))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    invoked = chat.invoke(EDITED)
    assert full.content == invoked.content and len(chunks) > 2
    assert chunks[-1].chunk_position == "last"
    assert "".join(recorder.tokens) == invoked.content
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.usage_metadata == invoked.usage_metadata
    assert full.response_metadata["edit_id"] == invoked.response_metadata["edit_id"]
    assert full.response_metadata["model_name"] == "tiny-llama"
    # streaming=True: invoke streams internally and fires token callbacks
    recorder = TokenRecorder()
    streamed = make_chat(models, templated_tokenizer, admit_store, max_new_tokens=10, streaming=True)
    assert streamed.invoke(EDITED, config={"callbacks": [recorder]}).content == invoked.content
    assert "".join(recorder.tokens) == invoked.content


def test_stop_and_max_tokens(models, templated_tokenizer, admit_store):
    chat = make_chat(models, templated_tokenizer, admit_store, max_new_tokens=16)
    full = chat.invoke(UNRELATED).content
    stop = next(full[i : i + 4] for i in range(1, len(full) - 4)
                if len(templated_tokenizer(full[i : i + 4], add_special_tokens=False)["input_ids"]) > 1)
    assert chat.invoke(UNRELATED, stop=[stop]).content == full[: full.index(stop)]
    assert "".join(c.content for c in chat.stream(UNRELATED, stop=[stop])) == full[: full.index(stop)]
    assert make_chat(models, templated_tokenizer, admit_store, max_new_tokens=16, stop=[stop]).invoke(
        UNRELATED).content == full[: full.index(stop)]
    short = chat.invoke(UNRELATED, max_tokens=3).content
    assert full.startswith(short) and len(short) < len(full)


def test_lcel_batch_and_async(models, templated_tokenizer, admit_store):
    chat = make_chat(models, templated_tokenizer, admit_store)
    chain = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")]) | chat | StrOutputParser()
    outs = chain.batch([{"q": EDITED}, {"q": UNRELATED}])
    assert outs == [chain.invoke({"q": EDITED}), chain.invoke({"q": UNRELATED})]

    async def run():
        one = await chat.ainvoke(EDITED)
        many = await chat.abatch([EDITED, UNRELATED])
        pieces = [c.content async for c in chat.astream(EDITED)]
        return one, many, pieces

    one, many, pieces = asyncio.run(run())
    assert one.content == chat.invoke(EDITED).content
    assert [m.content for m in many] == [m.content for m in chat.batch([EDITED, UNRELATED])]
    assert "".join(pieces) == one.content


def test_shares_construction_with_the_llm(models, templated_tokenizer, admit_store):
    chat = make_chat(models, templated_tokenizer, admit_store, timeout=30, max_retries=1)
    llm = RecipeEditedLLM(store=admit_store, llm=models.llm, tokenizer=templated_tokenizer, max_new_tokens=8)
    assert chat._identifying_params == llm._identifying_params
    assert chat._llm_type == "recipe-edited-chat"
    params = chat._get_ls_params(stop=["x"])
    assert params["ls_provider"] == "recipe-chain" and params["ls_model_name"] == "tiny-llama"
    assert params["ls_max_tokens"] == 8 and params["ls_stop"] == ["x"] and params["ls_model_type"] == "chat"
    with pytest.raises(ValueError):
        make_chat(models, templated_tokenizer, admit_store, max_new_tokenz=3)
    with pytest.raises(TypeError, match="Unsupported generation option"):
        chat.invoke(EDITED, tools=[])


@pytest.mark.parametrize("tokenizer_adds_bos", [False, True])
def test_prefix_goes_at_the_very_start_of_the_templated_input(models, admit_store, tokenizer_adds_bos):
    """Like SmolLM2 (bos_token <|im_start|> never added, template starts with it) the prefix
    comes first; a BOS the tokenizer itself adds (Gemma) stays in front of the prefix."""
    from tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer(add_bos=tokenizer_adds_bos)
    if not tokenizer_adds_bos:
        tokenizer.bos_token = "<bos>"  # declared, but the tokenizer does not add it
    assert tokenizer.bos_token_id is not None
    assert (tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id) is tokenizer_adds_bos
    tokenizer.chat_template = "<bos>" + CHATML  # the template starts with the BOS token
    chat = make_chat(models, tokenizer, admit_store)
    text, add_special = render_messages([HumanMessage(EDITED)], tokenizer)
    assert text.startswith("<bos>") and add_special is False
    lm = chat.prefixed_lm
    ids = lm.tokenize([text], add_special_tokens=False)
    assert ids[0][0] == tokenizer.bos_token_id
    (record,) = admit_store.list_edits()
    prefix = admit_store.prompt_vectors(record.edit_id)
    embeds = lm.build_batch(ids, [prefix]).inputs_embeds[0]  # (T, D)
    start = 1 if tokenizer_adds_bos else 0
    torch.testing.assert_close(embeds[start : start + prefix.shape[0]], prefix)
