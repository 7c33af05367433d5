"""A compiled, inference-only forward pass of a BERT backbone, for fast CPU encoding.

Encoding one query with Hugging Face's ``BertModel`` costs roughly twice the matrix
products it runs: mask building, module dispatch and three separate Q/K/V projections
per layer add up for a 10-20-token input. :class:`CompiledBertBackbone` copies the
backbone's weights (with any LoRA adapters merged) into a flat, branch-free forward pass
(fused Q/K/V projection, PyTorch's ``scaled_dot_product_attention``), traces it with
TorchScript, then freezes and optimises the graph for inference (prepacked oneDNN
weights on CPU). The result equals the Hugging Face forward up to float rounding.

It is a snapshot: :class:`~recipe_chain.encoder.KnowledgeEncoder` rebuilds it when a
weight changes (training, ``load_state_dict``) and uses it only outside training, on a
CPU, for the architectures :func:`supports` accepts; everything else runs the Hugging
Face forward.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel

__all__ = ["CompiledBertBackbone", "supports", "weights_stamp"]

logger = logging.getLogger(__name__)


def supports(backbone: PreTrainedModel) -> bool:
    """Whether ``backbone`` is a BERT encoder this module reproduces exactly.

    That is a :class:`transformers.BertModel` (all-MiniLM-L6-v2 is one) with absolute
    position embeddings, exact GELU and no cross-attention.
    """
    config = backbone.config
    return (
        isinstance(backbone, BertModel)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and config.hidden_act == "gelu"
        and not getattr(config, "is_decoder", False)
        and not getattr(config, "add_cross_attention", False)
    )


def weights_stamp(params: nn.Module | Iterable[torch.Tensor]) -> tuple[int, ...]:
    """Changes whenever any of these parameters (or a module's) is written in place or re-bound."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    stamp: list[int] = []
    for param in params:
        stamp += (param._version, param.data_ptr())
    return tuple(stamp)


def _linear_weights(layer: nn.Module, adapters: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight (out, in), bias (out,))`` of an ``nn.Linear``, or of a LoRA-wrapped one
    (merged with its adapter when ``adapters``, else the base layer's)."""
    base = getattr(layer, "base", None)
    if base is not None:
        weight = layer.merged_weight() if adapters else base.weight
        return weight.detach().clone(), base.bias.detach().clone()
    return layer.weight.detach().clone(), layer.bias.detach().clone()


class _FlatBert(nn.Module):
    """Branch-free BERT forward: ``(input_ids (B, T), token_type_ids (B, T), mask (B, T)) -> (B, T, H)``."""

    def __init__(self, backbone: BertModel, adapters: bool) -> None:
        super().__init__()
        emb = backbone.embeddings
        self.hidden = backbone.config.hidden_size
        self.heads = backbone.config.num_attention_heads
        self.eps = float(emb.LayerNorm.eps)
        self.word = nn.Parameter(emb.word_embeddings.weight.detach().clone(), requires_grad=False)  # (V, H)
        self.position = nn.Parameter(emb.position_embeddings.weight.detach().clone(), requires_grad=False)  # (P, H)
        self.token_type = nn.Parameter(emb.token_type_embeddings.weight.detach().clone(), requires_grad=False)
        self.embed_norm = _copy_norm(emb.LayerNorm)
        self.qkv = nn.ModuleList()
        self.attn_out = nn.ModuleList()
        self.attn_norm = nn.ModuleList()
        self.ffn_in = nn.ModuleList()
        self.ffn_out = nn.ModuleList()
        self.ffn_norm = nn.ModuleList()
        for layer in backbone.encoder.layer:
            attention = layer.attention
            parts = [_linear_weights(getattr(attention.self, n), adapters) for n in ("query", "key", "value")]
            self.qkv.append(_frozen_linear(torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts])))
            self.attn_out.append(_frozen_linear(*_linear_weights(attention.output.dense, adapters)))
            self.attn_norm.append(_copy_norm(attention.output.LayerNorm))
            self.ffn_in.append(_frozen_linear(*_linear_weights(layer.intermediate.dense, adapters)))
            self.ffn_out.append(_frozen_linear(*_linear_weights(layer.output.dense, adapters)))
            self.ffn_norm.append(_copy_norm(layer.output.LayerNorm))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        h, nh = self.hidden, self.heads
        positions = torch.arange(t, device=input_ids.device)  # (T,)
        x = F.embedding(input_ids, self.word) + F.embedding(token_type_ids, self.token_type)  # (B, T, H)
        x = self.embed_norm(x + F.embedding(positions, self.position))
        # additive mask: 0 for real keys, the dtype's minimum for padding
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
        for qkv, attn_out, attn_norm, ffn_in, ffn_out, ffn_norm in zip(
            self.qkv, self.attn_out, self.attn_norm, self.ffn_in, self.ffn_out, self.ffn_norm
        ):
            q, k, v = qkv(x).view(b, t, 3, nh, h // nh).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hd)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nh, T, hd)
            x = attn_norm(attn_out(attended.transpose(1, 2).reshape(b, t, h)) + x)  # (B, T, H)
            x = ffn_norm(ffn_out(F.gelu(ffn_in(x))) + x)  # (B, T, H)
        return x


def _frozen_linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.requires_grad_(False)


def _copy_norm(norm: nn.LayerNorm) -> nn.LayerNorm:
    copy = nn.LayerNorm(norm.normalized_shape, eps=norm.eps)
    copy.load_state_dict(norm.state_dict())
    return copy.requires_grad_(False)


class CompiledBertBackbone:
    """A frozen TorchScript graph of a BERT backbone's forward, for CPU inference.

    Args:
        backbone: A backbone :func:`supports` accepts, on the CPU. Its current weights
            are copied; later changes to it are not seen.
        adapters: Merge its LoRA adapters into the weights (``False``: the base model,
            as under :func:`~recipe_chain.lora.adapters_disabled`).

    Raises:
        ValueError: For an unsupported backbone or one not on the CPU.

    Example:
        >>> compiled = CompiledBertBackbone(backbone)  # doctest: +SKIP
        >>> hidden = compiled(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # doctest: +SKIP
    """

    def __init__(self, backbone: PreTrainedModel, *, adapters: bool = True) -> None:
        if not supports(backbone):
            raise ValueError(f"CompiledBertBackbone reproduces BertModel only; got {type(backbone).__name__}")
        if backbone.device.type != "cpu":
            raise ValueError(f"CompiledBertBackbone runs on the CPU; the backbone is on {backbone.device}")
        flat = _FlatBert(backbone, adapters).eval()
        example = (torch.tensor([[101, 2023, 102]]), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            traced = torch.jit.trace(flat, example, check_trace=False)
            self._graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        logger.debug("Compiled a %d-layer BERT backbone for CPU inference", len(flat.qkv))

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` ids, token types and mask -> ``(B, T, H)`` last hidden states."""
        return self._graph(input_ids, token_type_ids, attention_mask)
