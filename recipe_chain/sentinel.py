"""The Knowledge Sentinel (KS): a learned 'no relevant knowledge' representation.

A few learnable backbone input embeddings go through the same backbone and the
knowledge head as a statement does. For a query ``q`` the best retrieved key ``k`` is
used only if ``sim(q, k) > sim(q, sentinel)``: the sentinel is a per-query threshold.
"""

from __future__ import annotations

import torch
from torch import nn

from recipe_chain.encoder import KnowledgeEncoder

__all__ = ["KnowledgeSentinel"]


class KnowledgeSentinel(nn.Module):
    """Learnable token embeddings ``(sentinel_len, H_backbone)``.

    Args:
        init_embeddings: Initial embeddings, e.g. the backbone's own embeddings of a
            short neutral text, so training starts from an in-distribution input.
    """

    def __init__(self, init_embeddings: torch.Tensor) -> None:
        super().__init__()
        self.token_embeddings = nn.Parameter(init_embeddings.detach().clone())  # (S, H)

    @classmethod
    def from_text(cls, encoder: KnowledgeEncoder, text: str, length: int) -> "KnowledgeSentinel":
        """Initialise from the backbone word embeddings of ``text``, cut or tiled to ``length``."""
        ids = encoder.tokenizer(text, return_tensors="pt")["input_ids"][0]  # (T,)
        ids = ids.repeat((length + len(ids) - 1) // len(ids))[:length]
        with torch.no_grad():
            emb = encoder.backbone.get_input_embeddings()(ids.to(encoder.device))  # (S, H)
        return cls(emb)

    def forward(self, encoder: KnowledgeEncoder) -> torch.Tensor:
        """``(rep_dim,)``: the sentinel representation, encoded like a statement."""
        feats = encoder.features_from_embeds(self.token_embeddings.unsqueeze(0))  # (1, 4H)
        return encoder.keys_from_features(feats)[0]  # its prompt code never meets a query's
