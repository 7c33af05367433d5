"""The prompt encoder: a key representation -> continuous prompt vectors for the LLM."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["PromptEncoder", "RunningStandardizer"]


class RunningStandardizer(nn.Module):
    """Per-feature standardisation of keys with running statistics (no learned parameters).

    Trained keys share a large common direction (every key must score against the
    sentinel and the queries on the same scale), so two keys differ in a few per cent of
    their norm. A per-vector ``LayerNorm`` keeps that common direction; subtracting the
    running per-feature mean and dividing by the running std removes it, so the prompt
    encoder sees what distinguishes one edit from another.

    In training mode each batch first updates the statistics (a cumulative average for
    the first ``1 / min_momentum`` batches, then an exponential moving average), then the
    batch is standardised with them, so training and inference apply the same function.
    The statistics are buffers: checkpoints store them, gradients do not flow into them.
    """

    def __init__(self, dim: int, *, min_momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.min_momentum = min_momentum
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, keys: torch.Tensor) -> None:
        flat = keys.reshape(-1, keys.shape[-1]).float()  # (N, R)
        if flat.shape[0] < 2:
            return
        momentum = max(1.0 / float(self.num_batches + 1), self.min_momentum)
        self.running_mean.lerp_(flat.mean(0), momentum)
        self.running_var.lerp_(flat.var(0), momentum)
        self.num_batches += 1

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._update(keys)
        return (keys - self.running_mean) / torch.sqrt(self.running_var + self.eps)  # (..., R)


class PromptEncoder(nn.Module):
    """Maps keys ``(N, rep_dim)`` to prompt vectors ``(N, prompt_len, llm_hidden_size)``.

    The vectors live in the LLM's input-embedding space (the output space of
    ``llm.get_input_embeddings()``, which already includes any scaling an architecture
    such as Gemma applies). The last layer starts at the scale of those embeddings.

    Args:
        rep_dim: Width of the keys.
        llm_hidden_size: Width of the LLM's input embeddings.
        prompt_len: Prompt vectors per key.
        hidden_dim: Width of the hidden layer.
        init_std: Std of the LLM's input embeddings.
        input_norm: ``"running"`` standardises keys with running per-feature statistics
            (:class:`RunningStandardizer`); ``"layer"`` applies a per-vector ``LayerNorm``
            (checkpoints written before the running statistics existed).
    """

    def __init__(
        self,
        rep_dim: int,
        llm_hidden_size: int,
        prompt_len: int,
        hidden_dim: int,
        init_std: float,
        input_norm: Literal["running", "layer"] = "running",
    ) -> None:
        super().__init__()
        self.prompt_len = prompt_len
        self.llm_hidden_size = llm_hidden_size
        norm: nn.Module = RunningStandardizer(rep_dim) if input_norm == "running" else nn.LayerNorm(rep_dim)
        self.net = nn.Sequential(
            norm,
            nn.Linear(rep_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, prompt_len * llm_hidden_size),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        # With standardised inputs and GELU the hidden activations have O(1) scale;
        # choose the weight std so the output std starts near the LLM embedding std.
        nn.init.normal_(last.weight, std=init_std / (hidden_dim**0.5) * 2.0)
        nn.init.zeros_(last.bias)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        out = self.net(keys)  # (N, prompt_len * D)
        return out.view(*keys.shape[:-1], self.prompt_len, self.llm_hidden_size)  # (N, P, D)
