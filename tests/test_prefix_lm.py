"""Prefix-injected scoring and generation on tiny random LMs of several architectures."""

from __future__ import annotations

import pytest
import torch

from recipe_chain import PrefixedCausalLM
from tiny_models import ARCHITECTURES, tiny_causal_lm

TEXTS = ["The capital of France is", "Hello, my name", "The mother tongue of Danielle Darrieux is"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def lm(request) -> PrefixedCausalLM:
    return PrefixedCausalLM(*tiny_causal_lm(request.param))


def _prefix(lm: PrefixedCausalLM, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, lm.hidden_size, generator=g) * 0.5


def _plain_logits(lm: PrefixedCausalLM, text: str) -> torch.Tensor:
    ids = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return lm.model(**ids).logits[0, -1].float()


def test_no_prefix_row_alone_is_exactly_the_plain_model(lm: PrefixedCausalLM) -> None:
    for text in TEXTS:
        assert torch.equal(lm.next_token_logits([text])[0], _plain_logits(lm, text))


def test_no_prefix_row_in_mixed_batch_matches_plain_model(lm: PrefixedCausalLM) -> None:
    prefixes = [_prefix(lm, 3, 0), None, _prefix(lm, 5, 1)]  # mixed lengths and a bare row
    logits = lm.next_token_logits(TEXTS, prefixes)
    plain = _plain_logits(lm, TEXTS[1])
    torch.testing.assert_close(logits[1], plain, atol=1e-5, rtol=1e-5)
    assert logits[1].argmax() == plain.argmax()
    # and the prefixed rows really differ from their plain versions
    assert not torch.allclose(logits[0], _plain_logits(lm, TEXTS[0]), atol=1e-4)


def test_batched_greedy_equals_one_by_one(lm: PrefixedCausalLM) -> None:
    prefixes = [_prefix(lm, 3, 0), None, _prefix(lm, 2, 2)]
    batched = lm.generate(TEXTS, prefixes, max_new_tokens=6)
    single = [lm.generate([t], [p], max_new_tokens=6)[0] for t, p in zip(TEXTS, prefixes)]
    assert batched == single


def test_generate_without_prefix_matches_hf_greedy(lm: PrefixedCausalLM) -> None:
    ids = lm.tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        out = lm.model.generate(**ids, max_new_tokens=5, do_sample=False, min_new_tokens=5,
                                pad_token_id=lm.pad_token_id)
    expected = lm.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    lm.eos_token_ids = set()  # HF was forced to ignore EOS above; do the same
    try:
        assert lm.generate([TEXTS[0]], max_new_tokens=5)[0] == expected
    finally:
        lm.eos_token_ids = {lm.tokenizer.eos_token_id}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # without and with a BOS token
def test_prefix_of_own_embeddings_equals_text_in_front(arch: str) -> None:
    lm = PrefixedCausalLM(*tiny_causal_lm(arch))
    front, text = "New fact: Paris.", " The capital of France is"
    front_ids = lm.tokenizer(front, add_special_tokens=False)["input_ids"]
    text_ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [lm.tokenizer.bos_token_id] if lm.tokenizer.bos_token_id is not None else []
    with torch.no_grad():
        prefix = lm.embedding(torch.tensor(front_ids))  # (P, D), includes any embedding scale
        reference = lm.model(input_ids=torch.tensor([bos + front_ids + text_ids])).logits[0, -1]
    # the prefixed path tokenizes the text itself; it must see the same ids as the reference
    assert lm.tokenize([text])[0] == bos + text_ids
    got = lm.next_token_logits([text], [prefix])[0]
    torch.testing.assert_close(got, reference.float(), atol=1e-4, rtol=1e-4)


def test_prefix_in_padded_batch_equals_text_in_front() -> None:
    lm = PrefixedCausalLM(*tiny_causal_lm("llama"))
    front_ids = lm.tokenizer("New fact: Paris.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        prefix = lm.embedding(torch.tensor(front_ids))
    texts = ["The capital of France is", "Hello, my name is Alex and I live in London"]
    got = lm.next_token_logits(texts, [prefix, None])[0]
    ids = front_ids + lm.tokenizer(texts[0])["input_ids"]
    with torch.no_grad():
        reference = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)


def test_score_targets_matches_full_forward(lm: PrefixedCausalLM) -> None:
    prompts, targets = [TEXTS[0], TEXTS[2]], ["Paris", "French people"]
    prefix = _prefix(lm, 3, 5)
    scores = lm.score_targets(prompts, targets, [prefix, None])
    for (p, t, pre), score in zip([(prompts[0], targets[0], prefix), (prompts[1], targets[1], None)], scores):
        p_ids = lm.tokenize([p])[0]
        t_ids = lm.tokenize_targets([t])[0]
        batch = lm.build_batch([p_ids + t_ids], [pre])
        with torch.no_grad():
            logits = lm.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        n = len(t_ids)
        positions = range(logits.shape[0] - n - 1, logits.shape[0] - 1)
        assert score.target_ids == t_ids
        assert score.argmax_ids == [int(logits[i].argmax()) for i in positions]
        torch.testing.assert_close(
            torch.tensor(score.logprobs), torch.stack([logp[i, tok] for i, tok in zip(positions, t_ids)]),
            atol=1e-4, rtol=1e-4,
        )
        assert 0.0 <= score.token_accuracy <= 1.0



def test_target_logits_backpropagates_into_prefix() -> None:
    lm = PrefixedCausalLM(*tiny_causal_lm("qwen2"))
    prefix = _prefix(lm, 3, 0).requires_grad_(True)
    logits, targets, mask = lm.target_logits(lm.tokenize(TEXTS[:2]), lm.tokenize_targets(["Paris", "Alex"]), [prefix, None])
    loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    loss.backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_stop_strings_spanning_tokens_and_stream_join() -> None:
    lm = PrefixedCausalLM(*tiny_causal_lm("gpt2"))
    lm.eos_token_ids = set()
    full = lm.generate([TEXTS[0]], max_new_tokens=12)[0]
    assert len(full) > 4
    stop = full[2:5]  # a stop string that very likely spans a token boundary
    cut = lm.generate([TEXTS[0]], max_new_tokens=12, stop=[stop])[0]
    assert cut == full[: full.find(stop)]
    streamed = "".join(lm.stream(TEXTS[0], max_new_tokens=12, stop=[stop]))
    assert streamed == cut
    assert "".join(lm.stream(TEXTS[0], max_new_tokens=12)) == full


def test_sampling_is_seeded() -> None:
    lm = PrefixedCausalLM(*tiny_causal_lm("llama"))
    a = lm.generate(TEXTS, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    b = lm.generate(TEXTS, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    greedy = lm.generate(TEXTS, max_new_tokens=8)
    assert a == b
    assert a != greedy


def test_output_never_echoes_prompt() -> None:
    lm = PrefixedCausalLM(*tiny_causal_lm("llama"))
    out = lm.generate(["The capital of France is"], max_new_tokens=3)[0]
    assert not out.startswith("The capital of France is")
    assert lm.generate(["x"], max_new_tokens=0) == [""]


@pytest.fixture(scope="module")
def llama_lm() -> PrefixedCausalLM:
    return PrefixedCausalLM(*tiny_causal_lm("llama"))


class TestBadInput:
    @pytest.fixture
    def lm(self, llama_lm: PrefixedCausalLM) -> PrefixedCausalLM:
        return llama_lm

    def test_empty_batch(self, lm: PrefixedCausalLM) -> None:
        with pytest.raises(ValueError, match="empty batch"):
            lm.generate([])
        with pytest.raises(ValueError, match="empty batch"):
            lm.score_targets([], [])

    def test_non_string_text(self, lm: PrefixedCausalLM) -> None:
        with pytest.raises(TypeError, match="expected str"):
            lm.generate(["ok", 3])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="single str"):
            lm.generate("not a list")  # type: ignore[arg-type]

    def test_prefix_wrong_hidden_size(self, lm: PrefixedCausalLM) -> None:
        with pytest.raises(ValueError, match="hidden size"):
            lm.generate(["a"], [torch.zeros(3, lm.hidden_size + 1)])

    def test_prefix_wrong_rank(self, lm: PrefixedCausalLM) -> None:
        with pytest.raises(ValueError, match="rank 2"):
            lm.generate(["a"], [torch.zeros(1, 3, lm.hidden_size)])

    def test_prefix_wrong_dtype(self, lm: PrefixedCausalLM) -> None:
        with pytest.raises(TypeError, match="dtype"):
            lm.generate(["a"], [torch.zeros(3, lm.hidden_size, dtype=torch.float64)])
        with pytest.raises(TypeError, match="floating"):
            lm.generate(["a"], [torch.zeros(3, lm.hidden_size, dtype=torch.long)])

    def test_prefix_wrong_device(self, lm: PrefixedCausalLM) -> None:
        with pytest.raises(TypeError, match="device|on meta"):
            lm.generate(["a"], [torch.zeros(3, lm.hidden_size, device="meta")])

    def test_prefix_count_mismatch(self, lm: PrefixedCausalLM) -> None:
        with pytest.raises(ValueError, match="2 prefixes for 1"):
            lm.generate(["a"], [None, None])

    def test_prefix_not_a_tensor(self, lm: PrefixedCausalLM) -> None:
        with pytest.raises(TypeError, match="torch.Tensor"):
            lm.generate(["a"], [[0.0] * lm.hidden_size])  # type: ignore[list-item]
