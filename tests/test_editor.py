"""RECIPE networks and their checkpoint format, on tiny random models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from recipe_chain import CheckpointMismatchError, RecipeConfig, RecipeEditor, statement_of
from recipe_chain.encoder import pool_features
from recipe_chain.prompt_encoder import PromptEncoder, RunningStandardizer
from tiny_models import tiny_backbone, tiny_causal_lm


@pytest.fixture(scope="module")
def llm():
    return tiny_causal_lm("llama")[0]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("backbone"))


def make_editor(llm, backbone, **kwargs) -> RecipeEditor:
    model, tokenizer, path = backbone
    # a fresh copy of the backbone per editor: LoRA wraps layers in place
    fresh = type(model).from_pretrained(path)
    return RecipeEditor.from_backbone(llm, fresh, tokenizer, backbone_id=str(path), rep_dim=16,
                                      head_hidden_dim=32, prompt_hidden_dim=32, **kwargs)


def test_shapes_and_similarity(llm, backbone) -> None:
    editor = make_editor(llm, backbone)
    keys = editor.encode_statements(["The capital of France is Rome", "a b c"])
    queries = editor.encode_queries(["What is the capital of France?"])
    assert keys.shape == (2, 16) and queries.shape == (1, 16)
    assert editor.sentinel_key().shape == (16,)
    vectors = editor.prompt_vectors(keys)
    assert vectors.shape == (2, 3, llm.config.hidden_size)
    sim = editor.similarity(queries, keys)
    torch.testing.assert_close(sim, queries @ keys.T / math.sqrt(16))
    # knowledge and query heads are different functions of the same text
    assert not torch.allclose(editor.encode_statements(["x y"]), editor.encode_queries(["x y"]))


def test_prompt_vectors_start_at_llm_embedding_scale(llm, backbone) -> None:
    editor = make_editor(llm, backbone)
    keys = editor.encode_statements([f"statement number {i}" for i in range(8)])
    std = float(editor.prompt_vectors(keys).std())
    target = editor.config.prompt_init_std
    assert target / 4 < std < target * 4


def test_last_content_token_pooling(llm, backbone) -> None:
    hidden = torch.tensor([[[1.0], [3.0], [7.0], [100.0]]])  # (1, 4, 1)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert pool_features(hidden, mask, torch.tensor([1])).tolist() == [[1.0, pytest.approx(11 / 3), 7.0, 1.0, 3.0]]
    editor = make_editor(llm, backbone)
    enc = editor.encoder
    batch = enc.tokenize(["The mother tongue of Danielle Darrieux is English", "a b"])
    last = enc._last_content_index(batch)
    ids = batch["input_ids"]
    # [CLS] ... English [SEP] [PAD]...: the last content token is the target's, not [SEP] or padding
    assert [int(ids[i, last[i]]) for i in range(2)] == [enc.tokenizer.convert_tokens_to_ids(t) for t in ("english", "b")]
    assert enc.features(batch).shape == (2, 5 * enc.backbone.config.hidden_size)
    # a different target changes the pooled last-token state, not only one of many mean terms
    other = enc.tokenize(["The mother tongue of Danielle Darrieux is French", "a b"])
    h = enc.backbone.config.hidden_size
    with torch.no_grad():
        diff = (enc.features(batch) - enc.features(other))[0]
    assert diff[4 * h:].abs().mean() > diff[h:2 * h].abs().mean()
    legacy = make_editor(llm, backbone, pool_last_token=False)
    assert legacy.encoder.features(legacy.encoder.tokenize(["a b"])).shape == (1, 4 * h)


def test_running_standardizer_removes_a_shared_direction() -> None:
    torch.manual_seed(0)
    norm = RunningStandardizer(8)
    shared = torch.full((8,), 500.0)  # trained keys share a large common direction
    batches = [shared + 0.1 * torch.randn(16, 8) for _ in range(200)]
    norm.train()
    for batch in batches:
        out = norm(batch)
    data = torch.cat(batches)
    torch.testing.assert_close(norm.running_mean, data.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(norm.running_var.sqrt(), data.std(0), atol=0.02, rtol=0.1)
    assert out.abs().mean() < 2.0  # standardised, not ~500
    norm.eval()
    before = norm.running_mean.clone(), int(norm.num_batches)
    a, b = shared + 0.1 * torch.randn(2, 8)
    za, zb = norm(torch.stack([a, b]))
    assert torch.equal(norm.running_mean, before[0]) and int(norm.num_batches) == before[1]  # eval: frozen
    # raw keys are nearly parallel; standardised ones are not
    assert torch.cosine_similarity(a, b, dim=0) > 0.9999
    assert torch.cosine_similarity(za, zb, dim=0) < 0.9


def test_prompt_encoder_statistics_are_saved(llm, backbone, tmp_path) -> None:
    editor = make_editor(llm, backbone)
    editor.train()
    editor.prompt_vectors(editor.encode_statements([f"statement number {i}" for i in range(8)]))
    editor.eval()
    state = editor.trainable_state_dict()
    assert int(state["prompt_encoder.net.0.num_batches"]) == 1
    editor.save_pretrained(tmp_path / "ckpt")
    loaded = RecipeEditor.from_pretrained(tmp_path / "ckpt", llm=llm)
    keys = editor.encode_statements(["a fact"])
    torch.testing.assert_close(loaded.prompt_vectors(keys), editor.prompt_vectors(keys), rtol=0, atol=0)


@pytest.mark.parametrize(
    "old_fields",
    [
        {"prompt_encoder": "mlp"},  # before the vocab prompt encoder
        {"prompt_encoder": "mlp", "prompt_input_norm": "layer", "pool_last_token": False},  # and running statistics
    ],
)
def test_checkpoints_from_before_the_new_fields_load_as_they_were(llm, backbone, tmp_path, old_fields) -> None:
    """Older checkpoints lack newer config fields: absent means the behaviour of then."""
    editor = make_editor(llm, backbone, **old_fields)
    editor.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    for name in old_fields:
        del cfg[name]
    cfg.pop("prompt_context_len")
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded = RecipeEditor.from_pretrained(tmp_path / "old", llm=llm)
    for name, value in old_fields.items():
        assert getattr(loaded.config, name) == value
    assert loaded.fingerprint == editor.fingerprint  # stores written with the old checkpoint stay valid
    keys = editor.encode_statements(["a fact"])
    torch.testing.assert_close(loaded.prompt_vectors(keys), editor.prompt_vectors(keys), rtol=0, atol=0)


def test_pool_features_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])  # (1, 3, 1), last token is padding
    mask = torch.tensor([[1, 1, 0]])
    feats = pool_features(hidden, mask)
    assert feats.tolist() == [[1.0, 2.0, 3.0, 1.0]]  # first, mean, max, min


def test_checkpoint_round_trip_is_bit_exact(llm, backbone, tmp_path) -> None:
    editor = make_editor(llm, backbone, seed=7)
    with torch.no_grad():  # make the LoRA deltas non-zero so they are really saved and restored
        for name, p in editor.named_parameters():
            if name.endswith("lora_b"):
                p.normal_(std=0.1)
    editor.invalidate_fingerprint()
    editor.save_pretrained(tmp_path / "ckpt")
    loaded = RecipeEditor.from_pretrained(tmp_path / "ckpt", llm=llm)
    assert loaded.config == editor.config
    for name, tensor in editor.trainable_state_dict().items():
        assert torch.equal(tensor, loaded.trainable_state_dict()[name]), name
    texts = ["The capital of France is Rome"]
    assert torch.equal(editor.encode_statements(texts), loaded.encode_statements(texts))
    assert torch.equal(editor.sentinel_key(), loaded.sentinel_key())
    assert loaded.fingerprint == editor.fingerprint
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    for key in ("backbone_id", "llm_id", "llm_hidden_size", "prompt_len", "format_version", "fingerprint"):
        assert key in config
    # only trained tensors are stored: no frozen backbone base weights
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any(k.startswith("encoder.backbone.") and "lora" not in k for k in stored)
    assert any("lora_a" in k for k in stored)


def test_full_backbone_tuning_saves_backbone(llm, backbone, tmp_path) -> None:
    editor = make_editor(llm, backbone, backbone_tuning="full")
    editor.save_pretrained(tmp_path / "full")
    assert (tmp_path / "full" / "backbone" / "config.json").is_file()
    loaded = RecipeEditor.from_pretrained(tmp_path / "full")
    assert torch.equal(editor.encode_queries(["q"]), loaded.encode_queries(["q"]))


def test_fingerprint_tracks_weights(llm, backbone) -> None:
    editor = make_editor(llm, backbone)
    before = editor.fingerprint
    with torch.no_grad():
        editor.prompt_encoder.net[-1].bias.add_(1.0)
    assert editor.fingerprint == before  # cached until invalidated
    editor.invalidate_fingerprint()
    assert editor.fingerprint != before


def test_int8_queries_change_queries_slightly_and_never_keys(llm, backbone) -> None:
    editor = make_editor(llm, backbone)
    assert editor.int8_queries is True  # the default
    editor.int8_queries = False
    texts = ["The capital of France is Rome", "Who wrote Hamlet?"]
    fingerprint = editor.fingerprint
    exact_keys, exact_queries = editor.encode_statements(texts), editor.encode_queries(texts)
    editor.int8_queries = True
    assert editor.encoder.int8_queries is True
    queries = editor.encode_queries(texts)
    assert not torch.equal(queries, exact_queries)
    assert float(torch.nn.functional.cosine_similarity(queries, exact_queries).min()) > 0.95
    torch.testing.assert_close(editor.encode_statements(texts), exact_keys, rtol=0, atol=0)  # keys stay float32
    assert editor.fingerprint == fingerprint
    editor.int8_queries = False
    torch.testing.assert_close(editor.encode_queries(texts), exact_queries, rtol=0, atol=0)
    with pytest.raises(TypeError, match="bool"):
        editor.int8_queries = "yes"  # type: ignore[assignment]


def test_int8_queries_batched_equal_one_at_a_time(llm, backbone) -> None:
    """An int8 pass quantises activations per call, so batch rows must run alone (gate_batch == gate)."""
    editor = make_editor(llm, backbone)
    assert editor.int8_queries is True
    texts = ["Who wrote Hamlet?", "The capital of France is", "In which year did the Berlin Wall fall, and why?"]
    batched = editor.encode_queries(texts)
    alone = torch.cat([editor.encode_queries([t]) for t in texts])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)
    editor.int8_statements = True
    torch.testing.assert_close(
        editor.encode_statements(texts), torch.cat([editor.encode_statements([t]) for t in texts]), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("prompt_code_dim", [0, 6])  # 6: keys come from the paired (adapters + base) pass
def test_int8_statements_change_keys_slightly_and_never_queries(llm, backbone, prompt_code_dim) -> None:
    editor = make_editor(llm, backbone, prompt_code_dim=prompt_code_dim)
    assert editor.int8_statements is False and editor.statement_precision() == "float32"
    texts = ["The capital of France is Rome", "Danielle Darrieux speaks English"]
    exact_keys, exact_queries = editor.encode_statements(texts), editor.encode_queries(texts)
    editor.int8_statements = True
    assert editor.statement_precision() == "int8"
    keys = editor.encode_statements(texts)
    assert not torch.equal(keys, exact_keys)
    assert float(torch.nn.functional.cosine_similarity(keys, exact_keys).min()) > 0.95
    torch.testing.assert_close(editor.encode_queries(texts), exact_queries, rtol=0, atol=0)  # queries stay float32
    editor.encoder.compiled_inference = False  # no compiled graph: float32, and precision says so
    assert editor.statement_precision() == "float32"
    torch.testing.assert_close(editor.encode_statements(texts), exact_keys, rtol=1e-4, atol=1e-5)
    editor.encoder.compiled_inference = True
    editor.int8_statements = False
    torch.testing.assert_close(editor.encode_statements(texts), exact_keys, rtol=0, atol=0)
    with pytest.raises(TypeError, match="bool"):
        editor.int8_statements = 1  # type: ignore[assignment]


def test_mismatched_llm_raises_naming_both(llm, backbone, tmp_path) -> None:
    editor = make_editor(llm, backbone)
    editor.save_pretrained(tmp_path / "ckpt")
    other_width = tiny_causal_lm("llama", hidden=48)[0]
    other_width.config.recipe_chain_llm_id = llm.config.recipe_chain_llm_id
    with pytest.raises(CheckpointMismatchError, match="hidden size 32.*hidden size 48"):
        RecipeEditor.from_pretrained(tmp_path / "ckpt", llm=other_width)
    other_id = tiny_causal_lm("qwen2")[0]
    with pytest.raises(CheckpointMismatchError, match="tiny-llama.*tiny-qwen2"):
        RecipeEditor.from_pretrained(tmp_path / "ckpt", llm=other_id)


def test_missing_checkpoint_and_unknown_format(llm, backbone, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="No RECIPE checkpoint"):
        RecipeEditor.from_pretrained(tmp_path / "nothing")
    editor = make_editor(llm, backbone)
    editor.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="format 99"):
        RecipeEditor.from_pretrained(tmp_path / "ckpt")


def test_save_is_atomic_on_failure(llm, backbone, tmp_path, monkeypatch) -> None:
    editor = make_editor(llm, backbone)
    editor.save_pretrained(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    import recipe_chain.editor as editor_module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(editor_module, "save_file", boom)
    with pytest.raises(OSError):
        editor.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_text_input(llm, backbone) -> None:
    editor = make_editor(llm, backbone, max_length=8)
    with pytest.raises(ValueError, match="at most 8"):
        editor.encode_statements(["one two three four five six seven eight nine ten"])
    with pytest.raises(ValueError, match="empty batch"):
        editor.encode_queries([])
    with pytest.raises(TypeError, match="expected str"):
        editor.encode_queries([1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        editor.prompt_vectors(torch.zeros(3))


def test_statement_of() -> None:
    assert statement_of("The mother tongue of X is ", " English") == "The mother tongue of X is English"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        RecipeConfig(backbone_id="b", backbone_hidden_size=0, llm_id="l", llm_hidden_size=8)


def test_lora_inference_uses_a_merged_weight_that_follows_updates() -> None:
    from recipe_chain.lora import LoRALinear

    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(6, 5), rank=2, alpha=4.0)
    x = torch.randn(3, 6)

    def unmerged() -> torch.Tensor:
        return layer.base(x) + (x @ layer.lora_a.T @ layer.lora_b.T) * layer.scaling

    with torch.no_grad():
        layer.lora_b.normal_()
        layer.eval()
        torch.testing.assert_close(layer(x), unmerged(), rtol=1e-5, atol=1e-6)
        first = layer.merged_weight()
        assert layer.merged_weight() is first  # cached
        layer.lora_b.add_(1.0)  # an optimizer step or load_state_dict writes in place
        torch.testing.assert_close(layer(x), unmerged(), rtol=1e-5, atol=1e-6)
        layer.load_state_dict({k: torch.zeros_like(v) for k, v in layer.state_dict().items()})
        assert torch.count_nonzero(layer(x)) == 0
    layer.train()  # training keeps the factored form so gradients reach A and B
    out = layer(x).sum()
    out.backward()
    assert layer.lora_a.grad is not None and layer.base.weight.grad is None


def test_vocab_prompt_encoder_needs_its_llm(llm, backbone, tmp_path) -> None:
    editor = make_editor(llm, backbone, prompt_encoder="vocab", prompt_len=3, prompt_context_len=1)
    editor.save_pretrained(tmp_path / "ckpt")
    model, tokenizer, _ = backbone
    keys = editor.encode_statements(["a fact"])
    detached = RecipeEditor.from_pretrained(tmp_path / "ckpt", backbone=type(model).from_pretrained(backbone[2]),
                                            tokenizer=tokenizer)
    with pytest.raises(RuntimeError, match="attach_llm"):
        detached.prompt_vectors(keys)
    detached.attach_llm(llm)
    torch.testing.assert_close(detached.prompt_vectors(keys), editor.prompt_vectors(keys), rtol=0, atol=0)
    assert editor.prompt_vectors(keys).shape == (1, 3, llm.config.hidden_size)
    # the embedding matrix is the LLM's, not part of the checkpoint
    assert not any(v.shape[0] == llm.config.vocab_size for v in editor.trainable_state_dict().values() if v.dim())


def test_vocab_token_slot_reproduces_the_chosen_token_embedding() -> None:
    emb = torch.nn.Embedding(10, 4)
    with torch.no_grad():  # unit rows, seeded: a row's dot product is largest with itself
        emb.weight.copy_(torch.nn.functional.normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(0))))
    enc = PromptEncoder(rep_dim=6, llm_hidden_size=4, prompt_len=3, hidden_dim=8, init_std=0.02, mode="vocab",
                        context_len=1)
    enc.attach_vocabulary(emb)
    chosen = [7, 2]
    with torch.no_grad():
        enc.token_query.weight.zero_()
        enc.token_query.bias.copy_(torch.cat([emb.weight[t] for t in chosen]) * 200.0)  # (S * D,)
    enc.eval()
    vectors, logits = enc.forward_with_token_logits(torch.randn(5, 6))  # (5, 3, 4), (5, 2, 10)
    assert vectors.shape == (5, 3, 4) and logits.shape == (5, 2, 10)
    assert logits.argmax(-1).tolist() == [chosen] * 5
    torch.testing.assert_close(vectors[:, 1:], emb.weight[chosen].expand(5, 2, 4).detach(), atol=1e-3, rtol=0)
    torch.testing.assert_close(vectors[:, 0], enc.context[0].expand(5, 4).detach())


def test_vocab_slot_logits_are_each_keys_own_query_against_every_token() -> None:
    """The logits are computed as ``vocab @ query^T`` (faster on CPU); they must equal
    ``query @ vocab^T`` key by key and slot by slot, for one key, a batch, and with gradients."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(11, 4)
    enc = PromptEncoder(rep_dim=6, llm_hidden_size=4, prompt_len=4, hidden_dim=8, init_std=0.5, mode="vocab",
                        context_len=1)
    enc.attach_vocabulary(emb)
    enc.eval()
    keys = torch.randn(3, 6, requires_grad=True)
    vectors, logits = enc.forward_with_token_logits(keys)  # (3, 4, 4), (3, 3, 11)
    query = enc.token_query(enc.net[0](keys)).view(3, 3, 4)  # (N, S, D)
    expected = torch.einsum("nsd,vd->nsv", query, emb.weight) * enc.log_temperature.exp()
    torch.testing.assert_close(logits, expected)
    assert len({tuple(row.argmax(-1).tolist()) for row in logits}) > 1  # the keys do differ
    torch.testing.assert_close(enc(keys[1:2]), vectors[1:2])
    vectors.sum().backward()
    assert keys.grad is not None and keys.grad.abs().sum() > 0


def test_vocab_slots_follow_a_scaled_embedding() -> None:
    """Gemma-style embeddings scale the looked-up rows; the mixture must live in that output space."""

    class Scaled(torch.nn.Embedding):
        def forward(self, ids):  # noqa: ANN001, ANN202
            return super().forward(ids) * 3.0

    emb = Scaled(10, 4)
    with torch.no_grad():  # unit rows, seeded: a row's dot product is largest with itself
        emb.weight.copy_(torch.nn.functional.normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(0))))
    enc = PromptEncoder(rep_dim=6, llm_hidden_size=4, prompt_len=2, hidden_dim=8, init_std=0.02, mode="vocab",
                        context_len=0)
    enc.attach_vocabulary(emb)
    with torch.no_grad():
        enc.token_query.weight.zero_()
        enc.token_query.bias.copy_(emb.weight[[4, 5]].reshape(-1) * 200.0)
    vectors = enc.eval()(torch.randn(1, 6))
    torch.testing.assert_close(vectors[0], emb(torch.tensor([4, 5])).detach(), atol=1e-3, rtol=0)


def test_vocab_prompt_encoder_config_needs_a_token_slot() -> None:
    with pytest.raises(ValueError, match="token slot"):
        RecipeConfig(backbone_id="b", backbone_hidden_size=8, llm_id="l", llm_hidden_size=8, prompt_len=2,
                     prompt_context_len=2, prompt_encoder="vocab")
    RecipeConfig(backbone_id="b", backbone_hidden_size=8, llm_id="l", llm_hidden_size=8, prompt_len=2,
                 prompt_context_len=2, prompt_encoder="mlp")


def test_half_precision_checkpoint_loads_into_float32(llm, backbone, tmp_path) -> None:
    editor = make_editor(llm, backbone)
    full = editor.save_pretrained(tmp_path / "full")
    half = editor.save_pretrained(tmp_path / "half", dtype="float16")
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert size(half) < 0.6 * size(full)
    stored = load_file(str(half / "model.safetensors"))
    assert stored["prompt_encoder.net.1.weight"].dtype == torch.float16
    assert stored["prompt_encoder.net.0.running_var"].dtype == torch.float32  # statistics keep full precision
    loaded = RecipeEditor.from_pretrained(half, llm=llm)
    assert next(loaded.prompt_encoder.parameters()).dtype == torch.float32
    assert loaded.fingerprint == json.loads((half / "config.json").read_text())["fingerprint"] != editor.fingerprint
    keys = editor.encode_statements(["a fact"])
    torch.testing.assert_close(loaded.prompt_vectors(keys), editor.prompt_vectors(keys), rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="dtype"):
        editor.save_pretrained(tmp_path / "bad", dtype="int8")


def test_replace_prompt_encoder_keeps_the_retriever(llm, backbone) -> None:
    editor = make_editor(llm, backbone, prompt_encoder="mlp", prompt_len=3)
    keys = editor.encode_statements(["a fact", "another fact"])
    queries = editor.encode_queries(["a question"])
    sentinel = editor.sentinel_key()
    before = editor.fingerprint
    editor.replace_prompt_encoder(llm, prompt_encoder="vocab", prompt_len=4)
    assert (editor.config.prompt_encoder, editor.config.prompt_len, editor.config.prompt_context_len) == ("vocab", 4, 2)
    torch.testing.assert_close(editor.encode_statements(["a fact", "another fact"]), keys, rtol=0, atol=0)
    torch.testing.assert_close(editor.encode_queries(["a question"]), queries, rtol=0, atol=0)
    torch.testing.assert_close(editor.sentinel_key(), sentinel, rtol=0, atol=0)
    assert editor.prompt_vectors(keys).shape == (2, 4, llm.config.hidden_size)
    assert editor.fingerprint != before
    with pytest.raises(ValueError, match="rep_dim"):
        editor.replace_prompt_encoder(llm, rep_dim=8)


def test_prompt_code_is_invisible_to_retrieval_and_all_the_prompt_encoder_reads(llm, backbone) -> None:
    editor = make_editor(llm, backbone, prompt_code_dim=6)
    keys = editor.encode_statements(["The capital of France is Rome", "a b c"])
    queries = editor.encode_queries(["What is the capital of France?"])
    assert keys.shape == (2, 16) and queries.shape == (1, 16)
    assert torch.equal(queries[:, -6:], torch.zeros(1, 6))  # queries are zero on the code
    # the code is LayerNorm'd: every key carries it at the same norm
    torch.testing.assert_close(keys[:, -6:].norm(dim=-1), torch.full((2,), math.sqrt(6)), rtol=1e-3, atol=1e-3)
    scrambled = keys.clone()
    scrambled[:, -6:] = torch.randn(2, 6)
    # retrieval (and the sentinel gate) read only the first 10 entries ...
    torch.testing.assert_close(editor.similarity(queries, scrambled), editor.similarity(queries, keys))
    assert editor.sentinel_key().shape == (16,)
    # ... and the prompt encoder only the last 6
    moved = keys.clone()
    moved[:, :10] += 5.0
    torch.testing.assert_close(editor.prompt_vectors(moved), editor.prompt_vectors(keys))
    assert not torch.allclose(editor.prompt_vectors(scrambled), editor.prompt_vectors(keys))


def test_prompt_code_must_leave_a_retrieval_part() -> None:
    with pytest.raises(ValueError, match="prompt_code_dim"):
        RecipeConfig(backbone_id="b", backbone_hidden_size=8, llm_id="l", llm_hidden_size=8, rep_dim=16,
                     prompt_code_dim=16)


def test_replace_prompt_encoder_adds_a_prompt_code_that_round_trips(llm, backbone, tmp_path) -> None:
    editor = make_editor(llm, backbone)
    keys = editor.encode_statements(["a fact", "another fact"])
    queries = editor.encode_queries(["a question"])
    editor.replace_prompt_encoder(llm, prompt_encoder="vocab", prompt_len=4, prompt_code_dim=8)
    assert (editor.config.rep_dim, editor.config.prompt_code_dim) == (24, 8)
    new_keys = editor.encode_statements(["a fact", "another fact"])
    # the retrieval part of every key, every query and their similarities stay exactly as they were
    torch.testing.assert_close(new_keys[:, :16], keys, rtol=0, atol=0)
    torch.testing.assert_close(editor.encode_queries(["a question"])[:, :16], queries, rtol=0, atol=0)
    torch.testing.assert_close(editor.similarity(editor.encode_queries(["a question"]), new_keys),
                               RecipeEditor.similarity(queries, keys) * math.sqrt(16 / 24))
    editor.save_pretrained(tmp_path / "ckpt")
    loaded = RecipeEditor.from_pretrained(tmp_path / "ckpt", llm=llm, backbone=type(editor.encoder.backbone)
                                          .from_pretrained(backbone[2]), tokenizer=backbone[1])
    assert loaded.fingerprint == editor.fingerprint
    torch.testing.assert_close(loaded.encode_statements(["a fact", "another fact"]), new_keys, rtol=0, atol=0)
    torch.testing.assert_close(loaded.prompt_vectors(new_keys), editor.prompt_vectors(new_keys), rtol=0, atol=0)


def test_the_packaged_checkpoint_still_has_the_fingerprint_it_was_written_with() -> None:
    """Config fields added since it was written must not change its fingerprint (stores record it)."""
    from recipe_chain.defaults import default_checkpoint_path

    path = default_checkpoint_path()
    written = json.loads((path / "config.json").read_text())["fingerprint"]
    assert RecipeEditor.from_pretrained(path).fingerprint == written


def test_prompt_code_reads_the_backbone_without_its_adapters(llm, backbone) -> None:
    editor = make_editor(llm, backbone, prompt_code_dim=6, backbone_tuning="lora")
    texts = ["The capital of France is Rome", "a b c"]
    keys = editor.encode_statements(texts)
    with torch.no_grad():
        for name, param in editor.encoder.backbone.named_parameters():
            if name.endswith("lora_b"):
                param.normal_(std=0.5)  # as retrieval training would move the adapters
    moved = editor.encode_statements(texts)
    torch.testing.assert_close(moved[:, -6:], keys[:, -6:], rtol=0, atol=1e-5)  # the code did not move
    assert not torch.allclose(moved[:, :-6], keys[:, :-6], atol=1e-3)  # the retrieval part did
    editor.replace_prompt_encoder(llm, prompt_code_dim=6, prompt_code_from_base=False)
    assert not editor.encoder.code_reads_base_features


def test_encoding_restores_each_modules_own_mode(llm, backbone) -> None:
    editor = make_editor(llm, backbone)
    editor.train()
    editor.encoder.backbone.eval()  # as the trainer keeps a frozen retriever's backbone
    seen: list[bool] = []
    hook = editor.encoder.query_head.register_forward_hook(lambda module, args, out: seen.append(module.training))
    editor.encode_queries(["a question"])
    editor.sentinel_key()
    hook.remove()
    assert seen == [False]  # encoded in eval mode ...
    assert editor.training and editor.encoder.query_head.training  # ... and every mode is back as it was
    assert not editor.encoder.backbone.training


def test_target_slots_carry_each_target_whole_batched_with_masks_and_positions(llm, backbone, tmp_path) -> None:
    """A 1-token and a 7-token target get 1 and 7 token slots behind the key's vectors, batched together."""
    from recipe_chain import PrefixedCausalLM

    model, tok = tiny_causal_lm("llama")
    editor = make_editor(model, backbone, prompt_encoder="vocab", prompt_len=2, prompt_context_len=2,
                         prompt_target_slots=8)
    with pytest.raises(RuntimeError, match="tokenizer"):
        editor.prefix_vectors(editor.encode_statements(["x"]), ["Paris"])
    editor.attach_llm(model, tok)
    lm = PrefixedCausalLM(model, tok)
    targets = ["the", "capital of the capital of the capital", "The capital of France is Paris and Rome too"]
    ids = lm.tokenize_targets(targets)
    assert [len(i) for i in ids][:2] == [1, 7] and len(ids[2]) > 8
    keys = editor.encode_statements([f"A fact is {t}" for t in targets])
    prefixes = editor.prefix_vectors(keys, targets)
    assert [p.shape[0] for p in prefixes] == [2 + 1, 2 + 7, 2 + 8]  # the cap: 8 slots
    emb = model.get_input_embeddings().weight
    for prefix, row in zip(prefixes, ids):
        torch.testing.assert_close(prefix[2:], emb[row[:8]], rtol=0, atol=0)
    torch.testing.assert_close(prefixes[0][:2], editor.prompt_vectors(keys)[0], rtol=0, atol=0)
    # batched: left padding, masks over the real positions, positions counted from each row's start
    prompts = lm.tokenize(["The capital of France is", "Paris", "Rome"])
    batch = lm.build_batch(prompts, prefixes)
    lengths = [len(p) + q.shape[0] for p, q in zip(prompts, prefixes)]
    assert batch.attention_mask.sum(-1).tolist() == lengths
    for row, n in zip(batch.position_ids, lengths):
        assert row[-n:].tolist() == list(range(n))
    # the prefix length follows the target, not prompt_len, and the checkpoint carries the LLM tokenizer
    editor.save_pretrained(tmp_path / "ckpt")
    fresh = type(backbone[0]).from_pretrained(backbone[2])
    loaded = RecipeEditor.from_pretrained(tmp_path / "ckpt", llm=model, backbone=fresh, tokenizer=backbone[1])
    assert loaded.fingerprint == editor.fingerprint
    for a, b in zip(loaded.prefix_vectors(keys, targets), prefixes):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_target_slots_need_the_vocab_encoder_and_leave_old_fingerprints_alone(llm, backbone) -> None:
    with pytest.raises(ValueError, match="vocab"):
        RecipeConfig(backbone_id="b", backbone_hidden_size=8, llm_id="l", llm_hidden_size=8, prompt_target_slots=4)
    RecipeConfig(backbone_id="b", backbone_hidden_size=8, llm_id="l", llm_hidden_size=8, prompt_len=2,
                 prompt_context_len=2, prompt_encoder="vocab", prompt_target_slots=4)
    editor = make_editor(llm, backbone, prompt_encoder="vocab", prompt_len=3, prompt_context_len=1)
    before = editor.fingerprint
    assert "prompt_target_slots" not in editor.config.model_dump_json(exclude={"prompt_target_slots"})
    editor.invalidate_fingerprint()
    assert editor.fingerprint == before  # the default (0) is not hashed: existing stores stay valid
    keys = editor.encode_statements(["a fact"])
    assert [p.shape for p in editor.prefix_vectors(keys, ["Paris"])] == [editor.prompt_vectors(keys)[0].shape]
