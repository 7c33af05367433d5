"""Tests for recipe_chain.llms.RecipeEditedLLM (tiny random models; a few integration tests).

Gate decisions are forced with extreme store margins (``-1e9`` admits, ``+1e9`` rejects)
or chosen between two queries' reported similarity gaps, so they are deterministic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from pydantic import ValidationError

from recipe_chain.editor import RecipeEditor
from recipe_chain.errors import CheckpointMismatchError, EncoderMismatchError
from recipe_chain.llms import RecipeEditedLLM
from recipe_chain.prefix_lm import PrefixedCausalLM
from tiny_models import tiny_causal_lm
from tiny_store import EDITS, make_store, shared_models, tiny_models

EDITED = EDITS[0][0]  # "The mother tongue of Danielle Darrieux is"
UNRELATED = "Hello, my name is Alex and I live in"


@pytest.fixture(scope="module")
def models():
    return shared_models()


@pytest.fixture(scope="module")
def lm(models) -> PrefixedCausalLM:
    return PrefixedCausalLM(models.llm, models.tokenizer)


@pytest.fixture(scope="module")
def admit_store(models):
    return make_store(models.editor, n_edits=1, gate_margin=-1e9)


@pytest.fixture(scope="module")
def reject_store(models):
    return make_store(models.editor, n_edits=1, gate_margin=1e9)


def make_llm(models, store, **kwargs: Any) -> RecipeEditedLLM:
    kwargs.setdefault("max_new_tokens", 8)
    return RecipeEditedLLM(store=store, llm=models.llm, tokenizer=models.tokenizer, **kwargs)


def info_of(llm: RecipeEditedLLM, prompt: str) -> dict[str, Any]:
    return llm.generate([prompt]).generations[0][0].generation_info


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.chunks: list[Any] = []

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        self.tokens.append(token)
        self.chunks.append(chunk)


# ---------------------------------------------------------------------- construction
def test_construction_defaults_and_checks(models, admit_store):
    llm = make_llm(models, admit_store)
    assert llm.editor is admit_store.editor
    assert llm._llm_type == "recipe-edited-llm"
    params = llm._identifying_params
    assert params["llm_id"] == "tiny-llama"
    assert params["checkpoint_fingerprint"] == models.editor.fingerprint
    assert params["store_identity"] == admit_store.identity
    assert params["max_new_tokens"] == 8 and params["temperature"] == 0.0
    assert "max_new_tokens" in repr(llm) and "Linear" not in repr(llm)  # no module dumps in the repr
    # max_tokens is an alias of max_new_tokens
    assert RecipeEditedLLM(llm=models.llm, tokenizer=models.tokenizer, max_tokens=5).max_new_tokens == 5


def test_construction_rejects_bad_input(models, admit_store):
    with pytest.raises(ValidationError, match="max_new_token"):
        RecipeEditedLLM(llm=models.llm, tokenizer=models.tokenizer, max_new_token=5)  # typo
    with pytest.raises(ValidationError):
        RecipeEditedLLM(llm=models.llm, tokenizer=models.tokenizer, temperature=-1.0)
    with pytest.raises(ValidationError):
        RecipeEditedLLM(store=object(), llm=models.llm, tokenizer=models.tokenizer)
    other_llm, other_tok = tiny_causal_lm("llama", hidden=48)
    with pytest.raises(CheckpointMismatchError, match="hidden size"):
        RecipeEditedLLM(store=admit_store, llm=other_llm, tokenizer=other_tok)
    other_editor = tiny_models(seed=1).editor
    assert other_editor.fingerprint != models.editor.fingerprint
    with pytest.raises(EncoderMismatchError):
        RecipeEditedLLM(store=admit_store, editor=other_editor, llm=models.llm, tokenizer=models.tokenizer)


def test_without_store_or_edits_is_the_plain_llm(models, admit_store, lm):
    plain = lm.generate([EDITED, UNRELATED], max_new_tokens=8)
    for llm in (
        RecipeEditedLLM(llm=models.llm, tokenizer=models.tokenizer, max_new_tokens=8),
        make_llm(models, admit_store, use_edits=False),
    ):
        assert llm.batch([EDITED, UNRELATED]) == plain
        info = info_of(llm, EDITED)
        assert info == {"edit_fired": False, "edit_id": None, "statement": None, "hit_similarity": None,
                        "sentinel_similarity": None, "margin": None, "gated": False,
                        "verifier_probability": None, "verifier_threshold": None}


# ---------------------------------------------------------------------- edits
def test_generation_info_reports_the_edit_and_the_prefix_reaches_the_llm(models, admit_store, reject_store, lm,
                                                                          monkeypatch):
    (record,) = admit_store.list_edits()
    prefix = admit_store.prompt_vectors(record.edit_id)
    seen: list[Any] = []
    original = PrefixedCausalLM.generate

    def spy(self, texts, prefixes=None, **kwargs):
        seen.append(list(prefixes))
        return original(self, texts, prefixes, **kwargs)

    monkeypatch.setattr(PrefixedCausalLM, "generate", spy)
    llm = make_llm(models, admit_store)
    result = llm.generate([EDITED])
    info = result.generations[0][0].generation_info
    assert info["edit_fired"] is True and info["edit_id"] == record.edit_id
    assert info["statement"] == record.statement == "The mother tongue of Danielle Darrieux is English"
    assert info["gated"] is True and info["margin"] == -1e9
    assert isinstance(info["hit_similarity"], float) and isinstance(info["sentinel_similarity"], float)
    torch.testing.assert_close(seen[-1][0], prefix)
    assert result.generations[0][0].text == original(lm, [EDITED], [prefix], max_new_tokens=8)[0]
    # the prefix changes what the LLM sees
    assert not torch.allclose(lm.next_token_logits([EDITED], [prefix]), lm.next_token_logits([EDITED]))

    rejected = make_llm(models, reject_store)
    info = info_of(rejected, UNRELATED)
    assert info["edit_fired"] is False and info["edit_id"] is None and info["statement"] is None
    assert info["gated"] is True and info["hit_similarity"] is not None
    assert seen[-1] == [None]
    assert rejected.invoke(UNRELATED) == original(lm, [UNRELATED], max_new_tokens=8)[0]


def test_batch_gates_each_row_on_its_own(models, lm):
    """A margin between two queries' similarity gaps admits the edit for exactly one of them."""
    probe = make_store(models.editor, n_edits=1)
    gaps = {q: (r.hit_similarity - r.sentinel_similarity) for q, r in zip([EDITED, UNRELATED],
                                                                           probe.gate_batch([EDITED, UNRELATED]))}
    assert gaps[EDITED] != gaps[UNRELATED]
    store = make_store(models.editor, n_edits=1, gate_margin=(gaps[EDITED] + gaps[UNRELATED]) / 2)
    fires = max(gaps, key=gaps.get)
    llm = make_llm(models, store, batch_size=1)
    (record,) = store.list_edits()
    result = llm.generate([EDITED, UNRELATED, fires])
    infos = [g[0].generation_info for g in result.generations]
    assert [i["edit_id"] for i in infos] == [record.edit_id if q == fires else None for q in [EDITED, UNRELATED, fires]]
    prefix = store.prompt_vectors(record.edit_id)
    for q, gens in zip([EDITED, UNRELATED, fires], result.generations):
        expected = lm.generate([q], [prefix if q == fires else None], max_new_tokens=8)[0]
        assert gens[0].text == expected


def test_batch_equals_invoke_and_is_one_gate_call(models, admit_store, monkeypatch):
    llm = make_llm(models, admit_store, batch_size=2)
    prompts = [EDITED, UNRELATED, EDITS[3][0]]
    singles = [llm.invoke(p) for p in prompts]
    calls: list[list[str]] = []
    original = admit_store.gate_batch
    monkeypatch.setattr(admit_store, "gate_batch", lambda texts: calls.append(list(texts)) or original(texts))
    assert llm.batch(prompts) == singles
    assert calls == [prompts]


def test_lcel_prompt_llm_parser(models, admit_store):
    llm = make_llm(models, admit_store)
    prompt = PromptTemplate.from_template("The mother tongue of {name} is")
    chain = prompt | llm | StrOutputParser()
    out = chain.invoke({"name": "Danielle Darrieux"})
    assert isinstance(out, str) and out == llm.invoke(EDITED)
    assert chain.batch([{"name": "Danielle Darrieux"}]) == [out]


# ---------------------------------------------------------------------- streaming
def test_stream_joins_to_invoke_and_calls_back(models, admit_store):
    llm = make_llm(models, admit_store, max_new_tokens=12)
    recorder = TokenRecorder()
    chunks = list(llm.stream(EDITED, config={"callbacks": [recorder]}))
    assert len(chunks) > 1
    assert "".join(chunks) == llm.invoke(EDITED)
    assert recorder.tokens == chunks
    # the gate decision arrives with the first chunk, once
    infos = [c.generation_info for c in recorder.chunks if c.generation_info]
    assert len(infos) == 1 and infos[0]["edit_fired"] is True


def test_stream_with_stop_and_no_output(models, admit_store):
    llm = make_llm(models, admit_store, max_new_tokens=12)
    full = llm.invoke(UNRELATED)
    stop = full[3:6]
    assert "".join(llm.stream(UNRELATED, stop=[stop])) == full[: full.index(stop)]
    assert list(llm.stream(UNRELATED, max_new_tokens=0)) == [""]


# ---------------------------------------------------------------------- options
def _multi_token_window(text: str, tokenizer, width: int = 4) -> str:
    for start in range(1, len(text) - width):
        piece = text[start : start + width]
        if piece.strip() and len(tokenizer(piece, add_special_tokens=False)["input_ids"]) > 1:
            return piece
    raise AssertionError(f"no multi-token window in {text!r}")


def test_multi_token_stop_strings(models, admit_store):
    llm = make_llm(models, admit_store, max_new_tokens=16)
    full = llm.invoke(UNRELATED)
    stop = _multi_token_window(full, models.tokenizer)
    expected = full[: full.index(stop)]
    assert llm.invoke(UNRELATED, stop=[stop]) == expected
    assert llm.invoke(UNRELATED, stop=["never appears", stop]) == expected
    # a default stop on the model, replaced by a per-call stop
    with_default = make_llm(models, admit_store, max_new_tokens=16, stop=[stop])
    assert with_default.invoke(UNRELATED) == expected
    assert with_default.invoke(UNRELATED, stop=["never appears"]) == full


def test_max_new_tokens_and_no_echo(models, admit_store, lm):
    llm = make_llm(models, admit_store, max_new_tokens=12)
    full = llm.invoke(UNRELATED)
    short = llm.invoke(UNRELATED, max_new_tokens=3)
    assert full.startswith(short) and len(short) < len(full)
    assert llm.invoke(UNRELATED, max_tokens=3) == short
    assert llm.invoke(UNRELATED, max_new_tokens=0) == ""
    assert not full.startswith(UNRELATED) and UNRELATED not in full


def test_sampling_is_seeded(models, admit_store):
    llm = make_llm(models, admit_store, temperature=1.5, seed=7, max_new_tokens=10)
    assert llm.invoke(UNRELATED) == llm.invoke(UNRELATED)
    greedy = make_llm(models, admit_store, max_new_tokens=10).invoke(UNRELATED)
    draws = {llm.invoke(UNRELATED, seed=s) for s in range(4)}
    assert draws != {greedy}


def test_bad_call_input(models, admit_store):
    llm = make_llm(models, admit_store)
    with pytest.raises(ValueError, match="at least one prompt"):
        llm.generate([])
    with pytest.raises(TypeError, match="Prompt 1 is int"):
        llm.generate([EDITED, 5])
    with pytest.raises(ValueError):
        llm.invoke(5)
    with pytest.raises(ValueError, match="empty"):
        llm.invoke("")
    with pytest.raises(TypeError, match="Unsupported generation option"):
        llm.invoke(EDITED, num_beams=2)
    with pytest.raises(TypeError, match="stop must be a list"):
        llm.invoke(EDITED, stop=[3])
    assert llm.batch([]) == []


# ---------------------------------------------------------------------- async
def test_async_api(models, admit_store):
    llm = make_llm(models, admit_store)

    async def run():
        one = await llm.ainvoke(EDITED)
        many = await llm.abatch([EDITED, UNRELATED])
        streamed = [c async for c in llm.astream(EDITED)]
        return one, many, streamed

    one, many, streamed = asyncio.run(run())
    assert one == llm.invoke(EDITED)
    assert many == llm.batch([EDITED, UNRELATED])
    assert "".join(streamed) == one


# ---------------------------------------------------------------------- from_defaults
def test_from_defaults_wires_the_defaults(monkeypatch, tmp_path):
    from recipe_chain import defaults, loading
    from recipe_chain.store import RecipeKnowledgeStore

    fresh = tiny_models()
    monkeypatch.setattr(loading, "load_default_llm", lambda: (fresh.llm, fresh.tokenizer))
    monkeypatch.setattr(defaults, "load_default_editor", lambda llm: fresh.editor if llm is fresh.llm else None)
    llm = RecipeEditedLLM.from_defaults(tmp_path / "store", namespace="ns1", max_new_tokens=4)
    assert isinstance(llm.store, RecipeKnowledgeStore)
    assert llm.store.namespace == "ns1" and str(tmp_path / "store") in llm.store.identity
    assert llm.editor is fresh.editor and llm.max_new_tokens == 4
    llm.store.add_edit(EDITED, "English")
    assert info_of(llm, EDITED)["hit_similarity"] is not None
    llm.store.close()
    with pytest.raises(ValueError, match="not both"):
        RecipeEditedLLM.from_defaults(tmp_path / "x", ephemeral=True)
    fast = RecipeEditedLLM.from_defaults(tmp_path / "fast", write_behind=True)
    assert fast.store._queue is not None
    fast.store._queue.delay_s = 60.0  # the edit stays pending: the gate must read it from the overlay
    fast.store.add_edit(EDITED, "English")
    assert fast.store.pending_writes == 1 and fast.store._collection.count() == 0
    assert info_of(fast, EDITED)["hit_similarity"] is not None
    fast.store.close()
    with pytest.raises(ValueError, match="write_behind=True needs an embedded store"):
        RecipeEditedLLM.from_defaults(ephemeral=True, write_behind=True)


# ---------------------------------------------------------------------- real default LLM
@pytest.fixture(scope="module")
def real_llm():
    from recipe_chain.loading import load_default_llm
    from recipe_chain.store import RecipeKnowledgeStore

    model, tokenizer = load_default_llm()
    editor = RecipeEditor.from_backbone(model)  # untrained heads: fine for API tests
    store = RecipeKnowledgeStore(editor, ephemeral=True, namespace="test-llms-real", gate_margin=-1e9)
    store.clear()
    store.add_edit("The capital of France is", "Rome")
    return RecipeEditedLLM(store=store, llm=model, tokenizer=tokenizer, max_new_tokens=8)


@pytest.mark.integration
def test_real_default_llm_chain_batch_and_stream(real_llm):
    prompts = ["The capital of France is", "The largest planet in the solar system is"]
    result = real_llm.generate(prompts)
    texts = [g[0].text for g in result.generations]
    assert result.generations[0][0].generation_info["edit_fired"] is True
    assert all(t and not t.startswith(p) for t, p in zip(texts, prompts))
    chain = PromptTemplate.from_template("The capital of {country} is") | real_llm | StrOutputParser()
    assert chain.invoke({"country": "France"}) == texts[0]  # invoke == its batch row
    assert "".join(real_llm.stream(prompts[1])) == texts[1]
    plain = RecipeEditedLLM(llm=real_llm.llm, tokenizer=real_llm.tokenizer, max_new_tokens=4)
    assert "Paris" in plain.invoke(prompts[0])


def test_llm_cache_is_off_by_default(models, admit_store, monkeypatch):
    """Answers depend on the store's edits, which a prompt-keyed cache cannot see."""
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import get_llm_cache, set_llm_cache

    llm = make_llm(models, admit_store)
    assert llm.cache is False
    calls: list[list[str]] = []
    original = RecipeEditedLLM._generate
    monkeypatch.setattr(RecipeEditedLLM, "_generate",
                        lambda self, prompts, *a, **k: calls.append(prompts) or original(self, prompts, *a, **k))
    previous = get_llm_cache()
    set_llm_cache(InMemoryCache())
    try:
        assert llm.invoke(EDITED) == llm.invoke(EDITED)
        assert len(calls) == 2  # the global cache was not used
        cached = make_llm(models, admit_store, cache=True)  # an explicit opt-in still works
        cached.invoke(EDITED)
        cached.invoke(EDITED)
        assert len(calls) == 3
    finally:
        set_llm_cache(previous)
