"""A compiled, inference-only forward pass of a BERT backbone, for fast CPU encoding.

Encoding one query with Hugging Face's ``BertModel`` costs roughly twice the matrix
products it runs: mask building, module dispatch and three separate Q/K/V projections
per layer add up for a 10-20-token input. :class:`CompiledBertBackbone` copies the
backbone's weights (with any LoRA adapters merged) into a flat, branch-free forward pass
(fused Q/K/V projection, PyTorch's ``scaled_dot_product_attention``), traces it with
TorchScript, then freezes and optimises the graph for inference (prepacked oneDNN
weights on CPU). The result equals the Hugging Face forward up to float rounding.

With ``paired=True`` every input runs twice in the same pass, with the LoRA adapters and
without them: the base weights are shared and each adapter is added as its low-rank
product to the adapted rows only. A statement's key (adapted backbone) and its prompt
code (base backbone) then cost one pass at twice the rows: on a CPU, where a 10-30-token
pass mostly reads weights, about 80 % of the time of two passes.

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
    return tuple(stamp for param in params for stamp in (param._version, param.data_ptr()))


def _low_rank_factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A (r, in), B (out, r))`` with the LoRA scaling folded into ``B``; ``None`` for a plain linear."""
    if getattr(layer, "base", None) is None:
        return None
    return layer.lora_a.detach().clone(), (layer.lora_b * layer.scaling).detach().clone()


class _LowRank(nn.Module):
    """``(N, in) -> (N, out)``: ``x @ A^T @ B^T``, an adapter's contribution to its linear layer."""

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor] | None], widths: list[int]) -> None:
        super().__init__()
        in_features = next(a.shape[1] for a, _ in filter(None, parts))
        # layers without an adapter contribute an (out, 0) block: zero
        a = torch.cat([p[0] if p else torch.zeros(0, in_features) for p in parts])  # (R, in)
        b = torch.block_diag(*[p[1] if p else torch.zeros(w, 0) for p, w in zip(parts, widths)])  # (out, R)
        self.a = nn.Parameter(a, requires_grad=False)
        self.b = nn.Parameter(b, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.a), self.b)


def _low_rank(layers: list[nn.Module]) -> nn.Module:
    """The adapters of ``layers`` (whose outputs are concatenated) as one :class:`_LowRank`;
    ``nn.Identity()`` as a placeholder when none of them has one."""
    parts = [_low_rank_factors(layer) for layer in layers]
    if not any(parts):
        return nn.Identity()
    widths = [(layer.base if getattr(layer, "base", None) is not None else layer).out_features for layer in layers]
    return _LowRank(parts, widths)


def _linear_weights(layer: nn.Module, adapters: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight (out, in), bias (out,))`` of an ``nn.Linear``, or of a LoRA-wrapped one
    (merged with its adapter when ``adapters``, else the base layer's)."""
    base = getattr(layer, "base", None)
    if base is not None:
        weight = layer.merged_weight() if adapters else base.weight
        return weight.detach().clone(), base.bias.detach().clone()
    return layer.weight.detach().clone(), layer.bias.detach().clone()


class _FlatBert(nn.Module):
    """Branch-free BERT forward: ``(input_ids (B, T), token_type_ids (B, T), mask (B, T)) -> (B, T, H)``.

    With ``paired``: ``-> (2B, T, H)``, rows ``[:B]`` with the adapters, ``[B:]`` without.
    """

    def __init__(
        self, backbone: BertModel, adapters: bool, paired: bool = False, int8: bool = False, per_token: bool = False
    ) -> None:
        super().__init__()
        self.paired = paired
        merged = adapters and not paired  # paired: base weights here, adapters in self.adapter
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
        self.adapter = nn.ModuleDict()  # paired only: "<projection>_<layer>" -> _LowRank
        for i, layer in enumerate(backbone.encoder.layer):
            attention = layer.attention
            projections = {
                "qkv": [getattr(attention.self, n) for n in ("query", "key", "value")],
                "attn_out": [attention.output.dense],
                "ffn_in": [layer.intermediate.dense],
                "ffn_out": [layer.output.dense],
            }
            for name, layers in projections.items():
                parts = [_linear_weights(linear, merged) for linear in layers]
                getattr(self, name).append(
                    _frozen_linear(torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts]), int8, per_token)
                )
                if paired:
                    self.adapter[f"{name}_{i}"] = _low_rank(layers)
            self.attn_norm.append(_copy_norm(attention.output.LayerNorm))
            self.ffn_norm.append(_copy_norm(layer.output.LayerNorm))

    def _project(self, name: str, i: int, x: torch.Tensor, adapted_rows: int) -> torch.Tensor:
        """``(N, T, in) -> (N, T, out)`` through projection ``name`` of layer ``i``; when paired,
        the first ``adapted_rows`` rows also get the adapter's low-rank term."""
        y = getattr(self, name)[i](x)
        delta = self.adapter[f"{name}_{i}"] if self.paired else None
        if isinstance(delta, _LowRank):
            y = torch.cat([y[:adapted_rows] + delta(x[:adapted_rows]), y[adapted_rows:]])
        return y

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        h, nh = self.hidden, self.heads
        positions = torch.arange(t, device=input_ids.device)  # (T,)
        x = F.embedding(input_ids, self.word) + F.embedding(token_type_ids, self.token_type)  # (B, T, H)
        x = self.embed_norm(x + F.embedding(positions, self.position))
        # additive mask: 0 for real keys, the dtype's minimum for padding
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
        rows = b
        if self.paired:  # rows [:b] run with the adapters, rows [b:] without
            x, bias, rows = torch.cat([x, x]), torch.cat([bias, bias]), 2 * b  # (2B, T, H), (2B, 1, 1, T)
        for i, (attn_norm, ffn_norm) in enumerate(zip(self.attn_norm, self.ffn_norm)):
            qkv = self._project("qkv", i, x, b)  # (R, T, 3H)
            q, k, v = qkv.view(rows, t, 3, nh, h // nh).permute(2, 0, 3, 1, 4)  # 3 x (R, nh, T, hd)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (R, nh, T, hd)
            x = attn_norm(self._project("attn_out", i, attended.transpose(1, 2).reshape(rows, t, h), b) + x)
            x = ffn_norm(self._project("ffn_out", i, F.gelu(self._project("ffn_in", i, x, b)), b) + x)  # (R, T, H)
        return x


def _frozen_linear(weight: torch.Tensor, bias: torch.Tensor, int8: bool = False, per_token: bool = False) -> nn.Module:
    """An inference-only linear layer; with ``int8``, one with int8 weights (see :func:`_int8_linear`)."""
    if int8:
        return _int8_linear(weight, bias, per_token)
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.requires_grad_(False)


# Weights use 7 of their 8 bits (|w| <= 63) so that activations can use all 8 (0..255):
# on x86 CPUs without VNNI, fbgemm sums pairs of uint8 x int8 products in int16, and
# 2 * 255 * 63 < 2**15 cannot saturate. PyTorch's own dynamic ``Linear`` does the
# opposite (7-bit activations, ``reduce_range=True``), which on the shipped MiniLM nearly
# doubles the error of a query representation (mean relative error 0.166 vs 0.092 against
# float32, benchmarks/results/int8_queries.md).
_INT8_WEIGHT_LEVELS = 63.5


class _Int8DynamicLinear(nn.Module):
    """``(..., in) -> (..., out)`` with symmetric per-output-channel int8 weights.

    Each call quantises its input to 8 bits with a scale and zero point taken from that
    input (dynamic quantisation) and runs an integer matrix product (fbgemm on x86,
    qnnpack on ARM); the result is dequantised to float32. The weights are a quarter of
    the bytes, which is what a 10-30-token pass on a CPU mostly spends its time reading.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

        out_features, in_features = weight.shape
        scales = (weight.abs().amax(dim=1) / _INT8_WEIGHT_LEVELS).clamp_min(1e-12).double()  # (out,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated, the kernels are not gone
            qweight = torch.quantize_per_channel(
                weight.float(), scales, torch.zeros(out_features, dtype=torch.long), 0, torch.qint8
            )
            packer = DynamicInt8Linear(in_features, out_features, dtype=torch.qint8)
            packer.set_weight_bias(qweight, bias.float())
        self.packed = packer._packed_params._packed_params  # the backend's prepacked weights and bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # full 8-bit activations: see _INT8_WEIGHT_LEVELS
        return torch.ops.quantized.linear_dynamic(x, self.packed, False)


class _Int8TokenLinear(nn.Module):
    """``(..., in) -> (..., out)``: int8 weights per output channel and int8 activations
    with one scale per token (row), multiplied exactly in int32.

    Half the error of one scale per call on the shipped MiniLM's query representations
    (mean relative error 0.045 vs 0.086 against float32), because a token with a large
    outlier no longer coarsens every other token's steps; about 2 ms slower per query.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (out,)
        qweight = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
        self.register_buffer("qweight_t", qweight.t().contiguous())  # (in, out)
        self.register_buffer("weight_scale", (scales / 127.0).float())  # (out,): also undoes the activations' 127
        self.register_buffer("bias", bias.detach().float().clone())  # (out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (N, in)
        peak = torch.linalg.vector_norm(rows, ord=float("inf"), dim=1, keepdim=True).clamp_min(1e-12)  # (N, 1)
        quantised = (rows * (127.0 / peak)).round_().to(torch.int8)  # (N, in)
        product = torch._int_mm(quantised, self.qweight_t)  # (N, out), int32, exact
        out = torch.addcmul(self.bias, product.float(), peak * self.weight_scale)  # (N, out)
        return out.view(*x.shape[:-1], out.shape[-1])


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor, per_token: bool = False) -> nn.Module:
    """An int8 layer of ``weight (out, in)`` and ``bias (out,)``: activation scales per
    token (:class:`_Int8TokenLinear`) or per call (:class:`_Int8DynamicLinear`)."""
    return _Int8TokenLinear(weight, bias) if per_token else _Int8DynamicLinear(weight, bias)


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
        paired: Run every input both ways in one pass: the call then returns
            ``(2B, T, H)``, rows ``[:B]`` with the adapters and ``[B:]`` without
            (``adapters`` is ignored).
        int8: Store the backbone's projection weights (Q/K/V, attention output, both
            feed-forward layers) as per-channel 7-bit integers in int8 and quantise each
            call's activations to 8 bits on the fly. About 60 % of the time of a float32
            pass for one query on a small CPU, at a small cost in fidelity (hidden states
            are no longer equal to Hugging Face's up to rounding; see
            ``benchmarks/results/int8_queries.md``). Embeddings, layer norms and LoRA
            adapter terms stay float32.
        per_token: With ``int8``, quantise activations with one scale per token instead
            of one per call: half the error, about 2 ms more per query on a small CPU.

    Raises:
        ValueError: For an unsupported backbone or one not on the CPU.

    Example:
        >>> compiled = CompiledBertBackbone(backbone)  # doctest: +SKIP
        >>> hidden = compiled(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        *,
        adapters: bool = True,
        paired: bool = False,
        int8: bool = False,
        per_token: bool = False,
    ) -> None:
        if not supports(backbone):
            raise ValueError(f"CompiledBertBackbone reproduces BertModel only; got {type(backbone).__name__}")
        if backbone.device.type != "cpu":
            raise ValueError(f"CompiledBertBackbone runs on the CPU; the backbone is on {backbone.device}")
        flat = _FlatBert(backbone, adapters, paired, int8, per_token).eval()
        self.paired = paired
        self.int8 = int8
        example = (torch.tensor([[101, 2023, 102]]), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            traced = torch.jit.trace(flat, example, check_trace=False)
            self._graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        logger.debug("Compiled a %d-layer BERT backbone for CPU inference", len(flat.qkv))

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` ids, token types and mask -> ``(B, T, H)`` last hidden states (paired: ``(2B, T, H)``).

        An int8 graph quantises activations with one scale per call, so a text batched
        with others would come out slightly different from the same text alone (up to 0.19
        relative error on a query representation). Int8 rows therefore run one at a time,
        each cut to its own length: a batch gives what single calls give, and a batched
        gate decides as one query at a time does. Padding positions come back as zeros.
        """
        b, t = input_ids.shape
        lengths = attention_mask.sum(1)  # (B,)
        right_padded = bool((attention_mask == (torch.arange(t, device=lengths.device) < lengths[:, None])).all())
        if not self.int8 or b == 1 or not right_padded:
            return self._graph(input_ids, token_type_ids, attention_mask)
        copies = 2 if self.paired else 1
        hidden: torch.Tensor | None = None
        for i, n in enumerate(lengths.tolist()):
            row = self._graph(input_ids[i : i + 1, :n], token_type_ids[i : i + 1, :n], attention_mask[i : i + 1, :n])
            if hidden is None:
                hidden = row.new_zeros(copies * b, t, row.shape[-1])  # (copies * B, T, H)
            hidden[i::b][:, :n] = row  # rows i (and B + i when paired) <- (copies, n, H)
        assert hidden is not None
        return hidden
