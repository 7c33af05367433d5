"""The prompt encoder: a key representation -> continuous prompt vectors for the LLM."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PromptEncoder"]


class PromptEncoder(nn.Module):
    """Maps keys ``(N, rep_dim)`` to prompt vectors ``(N, prompt_len, llm_hidden_size)``.

    The vectors live in the LLM's input-embedding space (the output space of
    ``llm.get_input_embeddings()``, which already includes any scaling an architecture
    such as Gemma applies). The last layer starts at the scale of those embeddings.
    """

    def __init__(
        self, rep_dim: int, llm_hidden_size: int, prompt_len: int, hidden_dim: int, init_std: float
    ) -> None:
        super().__init__()
        self.prompt_len = prompt_len
        self.llm_hidden_size = llm_hidden_size
        self.net = nn.Sequential(
            nn.LayerNorm(rep_dim),
            nn.Linear(rep_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, prompt_len * llm_hidden_size),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        # With LayerNorm'd inputs and GELU the hidden activations have O(1) scale;
        # choose the weight std so the output std starts near the LLM embedding std.
        nn.init.normal_(last.weight, std=init_std / (hidden_dim**0.5) * 2.0)
        nn.init.zeros_(last.bias)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        out = self.net(keys)  # (N, prompt_len * D)
        return out.view(*keys.shape[:-1], self.prompt_len, self.llm_hidden_size)  # (N, P, D)
