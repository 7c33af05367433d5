"""Tests for recipe_chain.runnables: the Knowledge Sentinel gate and the prefixed-LLM Runnable.

Tiny random models (``tiny_store``) keep these fast. Random networks give arbitrary
similarities, so gate decisions are forced with extreme margins (``-1e9`` admits the
best candidate, ``+1e9`` rejects it) or computed from the reported similarities.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.runnables import (
    GateOutput,
    GenerationOptions,
    KnowledgeSentinelGate,
    PrefixedLLMRunnable,
    apply_gate_overrides,
)
from recipe_chain.store import GateResult
from tiny_store import EDITS, make_store, shared_models

QUERY = EDITS[0][0]
OTHER = "Hello, my name is Alex and I live in"


@pytest.fixture(scope="module")
def models():
    return shared_models()


@pytest.fixture(scope="module")
def admit_store(models):
    """One edit; the gate admits it for any query."""
    return make_store(models.editor, n_edits=1, gate_margin=-1e9)


@pytest.fixture(scope="module")
def reject_store(models):
    """One edit; the gate rejects it for any query."""
    return make_store(models.editor, n_edits=1, gate_margin=1e9)


@pytest.fixture(scope="module")
def lm(models) -> PrefixedCausalLM:
    return PrefixedCausalLM(models.llm, models.tokenizer)


class Recorder(BaseCallbackHandler):
    """Records chain starts/ends (name, inputs, outputs) and their parent run ids."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.ends: list[Any] = []
        self.errors: list[BaseException] = []

    def on_chain_start(self, serialized, inputs, *, run_id: UUID, parent_run_id: UUID | None = None, **kw):  # noqa: ANN001
        self.starts.append({"inputs": inputs, "name": kw.get("name"), "tags": kw.get("tags"), "run_id": run_id,
                            "parent": parent_run_id})

    def on_chain_end(self, outputs, *, run_id: UUID, **kw):  # noqa: ANN001
        self.ends.append(outputs)

    def on_chain_error(self, error, *, run_id: UUID, **kw):  # noqa: ANN001
        self.errors.append(error)


# ---------------------------------------------------------------------- the gate
def test_gate_admits_and_returns_prefix_embeddings(admit_store, models):
    gate = KnowledgeSentinelGate(store=admit_store)
    out = gate.invoke(QUERY)
    assert isinstance(out, GateOutput)
    assert isinstance(out.result, GateResult)
    (record,) = admit_store.list_edits()
    assert out.text == QUERY
    assert out.fired and out.edit_id == record.edit_id
    cfg = models.editor.config
    assert out.prefix_embeddings is not None
    assert out.prefix_embeddings.shape == (cfg.prompt_len, cfg.llm_hidden_size)
    torch.testing.assert_close(out.prefix_embeddings, admit_store.prompt_vectors(record.edit_id))


def test_gate_rejects_without_prefix(reject_store):
    out = KnowledgeSentinelGate(store=reject_store).invoke(QUERY)
    assert not out.fired and out.edit_id is None and out.prefix_embeddings is None
    assert out.result.hit_similarity is not None  # the rejected candidate is still reported
    assert out.result.gated


def test_gate_overrides(admit_store, reject_store):
    # Overriding the margin flips the store's own decision, both ways.
    assert KnowledgeSentinelGate(store=reject_store, margin=-1e9).invoke(QUERY).fired
    assert not KnowledgeSentinelGate(store=admit_store, margin=1e9).invoke(QUERY).fired
    # With the gate off (ablation) the top-1 candidate is always used.
    off = KnowledgeSentinelGate(store=reject_store, use_gate=False).invoke(QUERY)
    assert off.fired and not off.result.gated
    torch.testing.assert_close(off.prefix_embeddings, reject_store.prompt_vectors(off.edit_id))
    # No override: the store's result object is passed through unchanged.
    base = reject_store.gate(QUERY)
    assert apply_gate_overrides(base, reject_store) is base


def test_gate_override_margin_is_exact(models):
    store = make_store(models.editor, n_edits=1)  # margin 0
    result = store.gate(QUERY)
    diff = result.hit_similarity - result.sentinel_similarity
    assert KnowledgeSentinelGate(store=store, margin=diff - 1e-4).invoke(QUERY).fired
    assert not KnowledgeSentinelGate(store=store, margin=diff + 1e-4).invoke(QUERY).fired


def test_gate_dict_input_and_passthrough(admit_store):
    gate = KnowledgeSentinelGate(store=admit_store, input_key="q")
    assert gate.invoke({"q": QUERY}).text == QUERY
    chain = {"q": RunnablePassthrough()} | gate
    out = chain.invoke(QUERY)
    assert out.text == QUERY and out.fired
    # a prompt template's PromptValue is accepted too
    prompt_chain = PromptTemplate.from_template("{question}") | KnowledgeSentinelGate(store=admit_store)
    assert prompt_chain.invoke({"question": QUERY}).text == QUERY


def test_gate_bad_inputs(admit_store):
    gate = KnowledgeSentinelGate(store=admit_store)
    with pytest.raises(KeyError, match="question"):
        gate.invoke({"q": QUERY})
    with pytest.raises(TypeError, match="int"):
        gate.invoke(42)
    with pytest.raises(TypeError, match="expected str"):
        gate.invoke({"question": 3})
    with pytest.raises(TypeError, match="no call options"):
        gate.invoke(QUERY, foo=1)
    with pytest.raises(ValueError):
        KnowledgeSentinelGate(store="not a store")


def test_gate_batch_is_one_store_call_and_matches_invoke(admit_store, monkeypatch):
    gate = KnowledgeSentinelGate(store=admit_store)
    texts = [QUERY, OTHER, EDITS[3][0]]
    singles = [gate.invoke(t) for t in texts]
    calls: list[list[str]] = []
    original = admit_store.gate_batch

    def spy(batch):
        calls.append(list(batch))
        return original(batch)

    monkeypatch.setattr(admit_store, "gate_batch", spy)
    outs = gate.batch(texts)
    assert calls == [texts]
    for single, out in zip(singles, outs):
        assert out.text == single.text and out.edit_id == single.edit_id
        assert out.result.sentinel_similarity == pytest.approx(single.result.sentinel_similarity, abs=1e-5)
        torch.testing.assert_close(out.prefix_embeddings, single.prefix_embeddings)


def test_gate_batch_return_exceptions(admit_store):
    gate = KnowledgeSentinelGate(store=admit_store)
    outs = gate.batch([QUERY, 7, {"question": OTHER}], return_exceptions=True)
    assert isinstance(outs[0], GateOutput) and isinstance(outs[2], GateOutput)
    assert isinstance(outs[1], TypeError)
    with pytest.raises(TypeError):
        gate.batch([QUERY, 7])
    assert gate.batch([]) == []


def test_gate_carries_callbacks_and_config(admit_store):
    gate = KnowledgeSentinelGate(store=admit_store)
    recorder = Recorder()
    out = gate.invoke(QUERY, config={"callbacks": [recorder], "run_name": "ks-gate", "tags": ["t1"]})
    assert len(recorder.starts) == 1 and recorder.ends == [out]
    assert recorder.starts[0]["name"] == "ks-gate" and "t1" in recorder.starts[0]["tags"]

    recorder = Recorder()
    outs = gate.batch([QUERY, OTHER], config={"callbacks": [recorder]})
    assert len(recorder.starts) == 2 and recorder.ends == outs

    # Inside a sequence the gate's run is a child of the sequence's run.
    recorder = Recorder()
    (RunnableLambda(lambda x: x) | gate).invoke(QUERY, config={"callbacks": [recorder]})
    names = [s["name"] for s in recorder.starts]
    assert "KnowledgeSentinelGate" in names
    child = recorder.starts[names.index("KnowledgeSentinelGate")]
    assert child["parent"] == recorder.starts[0]["run_id"]

    recorder = Recorder()
    with pytest.raises(KeyError):
        gate.invoke({"x": 1}, config={"callbacks": [recorder]})
    assert len(recorder.errors) == 1


def test_gate_async(admit_store):
    gate = KnowledgeSentinelGate(store=admit_store)

    async def run():
        one = await gate.ainvoke(QUERY)
        many = await gate.abatch([QUERY, OTHER])
        return one, many

    one, many = asyncio.run(run())
    assert one.edit_id == gate.invoke(QUERY).edit_id
    assert [m.edit_id for m in many] == [o.edit_id for o in gate.batch([QUERY, OTHER])]


# ---------------------------------------------------------------------- the prefixed LLM
def test_gate_then_prefixed_llm_end_to_end(models, admit_store, lm):
    runner = PrefixedLLMRunnable(llm=models.llm, tokenizer=models.tokenizer, max_new_tokens=6)
    chain = KnowledgeSentinelGate(store=admit_store) | runner
    out = chain.invoke(QUERY)
    (record,) = admit_store.list_edits()
    prefix = admit_store.prompt_vectors(record.edit_id)
    assert out == lm.generate([QUERY], [prefix], max_new_tokens=6)[0]
    # The prefix really changes the LLM's input.
    with_prefix = lm.next_token_logits([QUERY], [prefix])
    without = lm.next_token_logits([QUERY])
    assert not torch.allclose(with_prefix, without)


def test_prefixed_llm_batch_matches_invoke(models, admit_store, reject_store):
    runner = PrefixedLLMRunnable(llm=models.llm, tokenizer=models.tokenizer, max_new_tokens=5, batch_size=2)
    inputs = [
        KnowledgeSentinelGate(store=admit_store).invoke(QUERY),
        KnowledgeSentinelGate(store=reject_store).invoke(OTHER),
        OTHER,  # a plain string: no prefix
    ]
    assert runner.batch(inputs) == [runner.invoke(x) for x in inputs]
    chain = KnowledgeSentinelGate(store=admit_store) | runner
    assert chain.batch([QUERY, OTHER]) == [chain.invoke(QUERY), chain.invoke(OTHER)]


def test_prefixed_llm_options_and_errors(models, lm):
    runner = PrefixedLLMRunnable(llm=models.llm, tokenizer=models.tokenizer, max_new_tokens=10)
    full = runner.invoke(OTHER)
    assert full == lm.generate([OTHER], max_new_tokens=10)[0]
    assert runner.invoke(OTHER, max_new_tokens=0) == ""
    assert full.startswith(runner.invoke(OTHER, max_new_tokens=3))
    stop = full[2:5]
    assert runner.invoke(OTHER, stop=[stop]) == full[: full.index(stop)]
    with pytest.raises(TypeError, match="GateOutput or str"):
        runner.invoke(3.5)
    with pytest.raises(TypeError, match="Unsupported generation option"):
        runner.invoke(OTHER, beam_width=3)
    outs = runner.batch([OTHER, None], return_exceptions=True)
    assert outs[0] == full and isinstance(outs[1], TypeError)


def test_prefixed_llm_async(models):
    runner = PrefixedLLMRunnable(llm=models.llm, tokenizer=models.tokenizer, max_new_tokens=4)

    async def run():
        return await runner.ainvoke(OTHER), await runner.abatch([OTHER, QUERY])

    one, many = asyncio.run(run())
    assert one == runner.invoke(OTHER) and many == runner.batch([OTHER, QUERY])


def test_generation_options():
    greedy = GenerationOptions(max_new_tokens=3, temperature=0.0, top_p=1.0)
    assert greedy.decode_kwargs()["do_sample"] is False
    sampled = GenerationOptions(max_new_tokens=3, temperature=0.7, top_p=0.9, seed=1).decode_kwargs()
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7 and sampled["seed"] == 1
    with pytest.raises(ValueError):
        GenerationOptions(max_new_tokens=-1, temperature=0.0, top_p=1.0)


def test_top_level_exports_are_lazy():
    import subprocess
    import sys

    code = (
        "import sys, recipe_chain\n"
        "eager = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'chromadb'))\n"
        "assert not eager, eager\n"
        "from recipe_chain import (GateOutput, KnowledgeSentinelGate, PrefixedLLMRunnable, RecipeEditedChatModel,\n"
        "    RecipeEditedLLM)\n"
        "assert RecipeEditedLLM.__module__ == 'recipe_chain.llms'\n"
        "assert 'KnowledgeSentinelGate' in dir(recipe_chain)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
