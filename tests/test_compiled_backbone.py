"""The compiled BERT forward equals Hugging Face's, and the encoder uses it only where it may."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertConfig, BertModel

from recipe_chain import compiled_backbone
from recipe_chain.compiled_backbone import CompiledBertBackbone, supports
from recipe_chain.encoder import KnowledgeEncoder
from recipe_chain.lora import apply_lora
from tiny_models import tiny_backbone

TEXTS = [
    "The mother tongue of Danielle Darrieux is English",
    "a",
    "Where is the Eiffel Tower? It is in the centre of Paris, on the left bank of the Seine",
    "Who wrote Hamlet?",
]


@pytest.fixture
def bert(tmp_path):
    model, tokenizer, _ = tiny_backbone(tmp_path / "bert")
    return model, tokenizer


def _with_trained_lora(model: BertModel) -> BertModel:
    apply_lora(model, ("query", "key", "value", "dense"), rank=4, alpha=8.0)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if name.endswith("lora_b"):
                param.normal_(std=0.1)  # a LoRA that changes the outputs
    return model.eval()


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS[1:2], TEXTS], ids=["one", "one-token", "padded-batch"])
def test_compiled_forward_equals_hugging_face(bert, texts) -> None:
    model, tokenizer = bert
    model = _with_trained_lora(model)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    compiled = CompiledBertBackbone(model)
    with torch.no_grad():
        expected = model(**batch).last_hidden_state  # (B, T, H)
    got = compiled(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert got.shape == expected.shape
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-5)  # padding rows are never read


def test_compiled_forward_is_a_snapshot(bert) -> None:
    model, tokenizer = bert
    batch = tokenizer(TEXTS[:1], return_tensors="pt")
    compiled = CompiledBertBackbone(model)
    before = compiled(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight.mul_(2.0)
    torch.testing.assert_close(compiled(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]), before)


def _encoder(model, tokenizer) -> KnowledgeEncoder:
    return KnowledgeEncoder(model, tokenizer, rep_dim=16, head_hidden_dim=16, head_blocks=1, max_length=64).eval()


def _hf_features(encoder: KnowledgeEncoder, texts: list[str]) -> torch.Tensor:
    encoder.compiled_inference = False
    try:
        with torch.no_grad():
            return encoder.features(encoder.tokenize(texts))
    finally:
        encoder.compiled_inference = True


def test_encoder_uses_the_compiled_forward_only_for_inference(bert, monkeypatch) -> None:
    model, tokenizer = bert
    encoder = _encoder(_with_trained_lora(model), tokenizer)
    calls: list[int] = []
    original = CompiledBertBackbone.__call__
    monkeypatch.setattr(CompiledBertBackbone, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    with torch.no_grad():
        got = encoder.features(encoder.tokenize(TEXTS))
    assert calls == [1]
    torch.testing.assert_close(got, _hf_features(encoder, TEXTS), rtol=1e-4, atol=1e-5)
    encoder.features(encoder.tokenize(TEXTS))  # gradients on: the Hugging Face forward
    encoder.train()
    with torch.no_grad():
        encoder.features(encoder.tokenize(TEXTS))  # training mode (dropout): the Hugging Face forward
    assert calls == [1]


def test_encoder_recompiles_after_a_weight_changes(bert) -> None:
    model, tokenizer = bert
    encoder = _encoder(_with_trained_lora(model), tokenizer)
    with torch.no_grad():
        before = encoder.features(encoder.tokenize(TEXTS))
        first = encoder._compiled[("adapters", False, False)][1]
        lora_b = next(p for n, p in encoder.backbone.named_parameters() if n.endswith("lora_b"))
        lora_b.add_(0.5)  # as an optimizer step would
        after = encoder.features(encoder.tokenize(TEXTS))
    assert encoder._compiled[("adapters", False, False)][1] is not first
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _hf_features(encoder, TEXTS), rtol=1e-4, atol=1e-5)


def test_unsupported_backbones_run_the_hugging_face_forward(tmp_path, bert) -> None:
    _, tokenizer = bert
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, hidden_act="relu")
    relu = BertModel(cfg).eval()
    assert not supports(relu)
    with pytest.raises(ValueError, match="BertModel only"):
        CompiledBertBackbone(relu)
    encoder = _encoder(relu, tokenizer)
    with torch.no_grad():
        encoder.features(encoder.tokenize(TEXTS))
    assert not encoder._compiled


def test_a_failed_compile_falls_back_with_a_warning(bert, monkeypatch, caplog) -> None:
    model, tokenizer = bert
    encoder = _encoder(model, tokenizer)

    def broken(self, backbone, **options):  # noqa: ANN001, ANN003
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(compiled_backbone.CompiledBertBackbone, "__init__", broken)
    with caplog.at_level(logging.WARNING, logger="recipe_chain.encoder"), torch.no_grad():
        got = encoder.features(encoder.tokenize(TEXTS))
    assert "Compiling the backbone failed" in caplog.text
    torch.testing.assert_close(got, _hf_features(encoder, TEXTS), rtol=0, atol=0)


def test_compiled_forward_without_adapters_equals_the_base_model(bert) -> None:
    from recipe_chain.lora import adapters_disabled

    model, tokenizer = bert
    model = _with_trained_lora(model)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad(), adapters_disabled(model):
        expected = model(**batch).last_hidden_state  # (B, T, H)
    with torch.no_grad():
        adapted = model(**batch).last_hidden_state
    got = CompiledBertBackbone(model, adapters=False)(batch["input_ids"], batch["token_type_ids"],
                                                      batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(adapted[real], expected[real], atol=1e-3)  # the adapters do matter here


def _hugging_face_states(model: BertModel, batch) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """``(B, T, H)`` last hidden states of Hugging Face's forward, with the adapters and without."""
    from recipe_chain.lora import adapters_disabled

    with torch.no_grad():
        adapted = model(**batch).last_hidden_state
        with adapters_disabled(model):
            base = model(**batch).last_hidden_state
    return adapted, base


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS], ids=["one", "padded-batch"])
def test_paired_forward_equals_the_adapted_and_the_base_model(bert, texts) -> None:
    model, tokenizer = bert
    model = _with_trained_lora(model)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    adapted, base = _hugging_face_states(model, batch)
    got = CompiledBertBackbone(model, paired=True)(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    b, real = len(texts), batch["attention_mask"].bool()
    assert got.shape == (2 * b, *adapted.shape[1:])
    torch.testing.assert_close(got[:b][real], adapted[real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[b:][real], base[real], rtol=1e-4, atol=1e-5)


def test_paired_forward_of_a_backbone_without_adapters_returns_the_same_states_twice(bert) -> None:
    model, tokenizer = bert
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    got = CompiledBertBackbone(model.eval(), paired=True)(batch["input_ids"], batch["token_type_ids"],
                                                          batch["attention_mask"])
    # Same inputs in both halves, but not always bit-identical outputs: a CPU GEMM may round
    # rows differently by where they fall in the kernel's row blocks (seen on an AVX-512 host:
    # 4.8e-7 at most). A wrong mask, position or adapter term in one half differs by far more.
    torch.testing.assert_close(got[: len(TEXTS)], got[len(TEXTS) :], rtol=1e-5, atol=1e-6)


def test_statement_keys_come_from_one_paired_pass_and_equal_two_hugging_face_passes(bert, monkeypatch) -> None:
    model, tokenizer = bert
    encoder = KnowledgeEncoder(_with_trained_lora(model), tokenizer, rep_dim=16, head_hidden_dim=16, head_blocks=1,
                               max_length=64, prompt_code_dim=6).eval()
    assert encoder.code_reads_base_features
    calls: list[bool] = []
    original = CompiledBertBackbone.__call__
    monkeypatch.setattr(CompiledBertBackbone, "__call__",
                        lambda self, *a: calls.append(self.paired) or original(self, *a))
    with torch.no_grad():
        got = encoder.encode_statement_batch(TEXTS)
    assert calls == [True]  # one pass, the paired graph
    encoder.compiled_inference = False
    with torch.no_grad():
        expected = encoder.encode_statement_batch(TEXTS)  # adapted pass + base pass, Hugging Face
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS, ["", "  spaced   out  ", "Ünïcödé and émojis 🙂 mixed"]],
                         ids=["one", "padded-batch", "odd-text"])
def test_encoder_tokenizes_exactly_like_its_tokenizer(bert, texts) -> None:
    model, tokenizer = bert
    encoder = _encoder(model, tokenizer)
    assert encoder._backend is not None  # the fast path is what this test checks
    tokenizer(["warm the tokenizer's own backend up"], padding="max_length", max_length=40, truncation=True)
    expected = tokenizer(texts, padding=True, truncation=False, return_tensors="pt")
    got = encoder.tokenize(texts)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


@pytest.mark.parametrize("paired", [False, True], ids=["adapted", "paired"])
def test_int8_forward_stays_close_to_float32_but_is_not_it(bert, paired) -> None:
    model, tokenizer = bert
    model = _with_trained_lora(model)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    adapted, base = _hugging_face_states(model, batch)
    int8 = CompiledBertBackbone(model, paired=paired, int8=True)
    assert int8.int8
    got = int8(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # (B or 2B, T, H)
    real, b = batch["attention_mask"].bool(), len(TEXTS)
    expected = [adapted, base] if paired else [adapted]
    for rows, want in zip((got[:b], got[b:]), expected):
        err = _relative_error(rows[real], want[real])
        assert 1e-4 < err < 0.05, err  # quantised (not float32 up to rounding), yet close
    if paired:  # the adapter terms are kept in float32 and still tell the two halves apart
        assert _relative_error(got[:b][real], got[b:][real]) > 5 * _relative_error(got[:b][real], adapted[real])


def test_encoder_int8_features(bert, monkeypatch, caplog) -> None:
    model, tokenizer = bert
    encoder = _encoder(_with_trained_lora(model), tokenizer)
    with torch.no_grad():
        exact = encoder.features(encoder.tokenize(TEXTS))
        quantised = encoder.features(encoder.tokenize(TEXTS), int8=True)
    assert encoder._compiled[("adapters", True, False)][1].int8 and not encoder._compiled[("adapters", False, False)][1].int8
    assert 1e-4 < _relative_error(quantised, exact) < 0.05
    with torch.no_grad():  # activation scales per token: closer to float32 than one scale per call
        per_token = encoder.features(encoder.tokenize(TEXTS), int8=True, per_token=True)
    assert encoder._compiled[("adapters", True, True)][1].int8
    assert 1e-5 < _relative_error(per_token, exact) < _relative_error(quantised, exact)
    # int8 kernels missing: the float32 graph, with a warning, and no retry on every call
    encoder._compiled.clear()
    original = CompiledBertBackbone.__init__

    def no_int8(self, backbone, **options):  # noqa: ANN001, ANN003
        if options.get("int8"):
            raise RuntimeError("no quantized engine")
        original(self, backbone, **options)

    monkeypatch.setattr(CompiledBertBackbone, "__init__", no_int8)
    with caplog.at_level(logging.WARNING, logger="recipe_chain.encoder"), torch.no_grad():
        fallback = encoder.features(encoder.tokenize(TEXTS), int8=True)
        encoder.features(encoder.tokenize(TEXTS), int8=True)
    assert caplog.text.count("Compiling an int8 backbone failed") == 1
    torch.testing.assert_close(fallback, exact, rtol=0, atol=0)


def test_int8_linear_keeps_8_bit_activations_and_7_bit_weights() -> None:
    """The int8 layer spends its bits where a BERT's error comes from: the activations.

    PyTorch's dynamic ``Linear`` quantises activations to 7 bits (``reduce_range``); ours
    keeps all 8 and takes the bit from the per-channel weights instead, which cannot
    saturate fbgemm's int16 pair sums on CPUs without VNNI (2 * 255 * 63 < 2**15).
    """
    from torch.ao.nn.quantized.dynamic import Linear as TorchDynamicLinear

    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 64, generator=generator) * 0.1, torch.randn(96, generator=generator)
    x = torch.randn(12, 64, generator=generator)  # (T, in)
    x[:, 5] *= 25.0  # an outlier channel, as BERT's hidden states have
    exact = torch.nn.functional.linear(x, weight, bias)
    ours = compiled_backbone._int8_linear(weight, bias)
    qweight, _ = torch.ops.quantized.linear_unpack(ours.packed)
    assert qweight.int_repr().abs().max() <= 64
    torch_layer = TorchDynamicLinear(64, 96, dtype=torch.qint8)
    torch_layer.set_weight_bias(torch.quantize_per_tensor(weight, float(weight.abs().max()) / 127, 0, torch.qint8), bias)
    ours_err, torch_err = _relative_error(ours(x), exact), _relative_error(torch_layer(x), exact)
    assert ours_err < 0.6 * torch_err, (ours_err, torch_err)
    # all-positive inputs against all-positive weights at full scale: no int16 saturation
    extreme = torch.full((3, 64), 4.0)
    saturating = compiled_backbone._int8_linear(torch.full((8, 64), 0.5), torch.zeros(8))
    assert _relative_error(saturating(extreme), torch.full((3, 8), 128.0)) < 0.01
