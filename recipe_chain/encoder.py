"""The knowledge encoder: a transformer backbone with RECIPE pooling and two heads.

Statements ("<prompt> <target_new>") go through the *knowledge* head and become keys;
inputs go through the *query* head. Both share the backbone and its pooling
(first token ‖ mean ‖ max ‖ min over real tokens), as in RECIPE.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ResidualMLPHead", "KnowledgeEncoder", "pool_features"]


def pool_features(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RECIPE pooling of backbone states.

    Args:
        hidden: ``(B, T, H)`` last hidden states.
        mask: ``(B, T)`` attention mask, 1 for real tokens.

    Returns:
        ``(B, 4H)``: first token, mean, max and min over real tokens, concatenated.
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    first = hidden[:, 0]  # (B, H)
    mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H)
    big = torch.finfo(hidden.dtype).max
    maxed = hidden.masked_fill(m == 0, -big).amax(1)  # (B, H)
    mined = hidden.masked_fill(m == 0, big).amin(1)  # (B, H)
    return torch.cat([first, mean, maxed, mined], dim=-1)  # (B, 4H)


class ResidualMLPHead(nn.Module):
    """``(B, in_dim) -> (B, out_dim)``: a projection followed by pre-norm residual MLP blocks."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, blocks: int) -> None:
        super().__init__()
        self.in_norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(out_dim),
                nn.Linear(out_dim, hidden_dim),
                nn.GELU(),
                nn.Linear(hidden_dim, out_dim),
            )
            for _ in range(blocks)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.in_norm(features))  # (B, out)
        for block in self.blocks:
            x = x + block(x)
        return x


class KnowledgeEncoder(nn.Module):
    """Backbone + pooling + knowledge head + query head.

    Args:
        backbone: A Hugging Face encoder (BERT-like ``AutoModel``).
        tokenizer: Its tokenizer.
        rep_dim: Output width of both heads.
        head_hidden_dim: Width of the residual MLP blocks.
        head_blocks: Number of residual blocks per head.
        max_length: Token limit; longer inputs raise ``ValueError`` instead of being
            silently truncated (a truncated statement would drop its new target).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        rep_dim: int,
        head_hidden_dim: int,
        head_blocks: int,
        max_length: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        feat = 4 * backbone.config.hidden_size
        self.knowledge_head = ResidualMLPHead(feat, rep_dim, head_hidden_dim, head_blocks)
        self.query_head = ResidualMLPHead(feat, rep_dim, head_hidden_dim, head_blocks)

    @property
    def device(self) -> torch.device:
        return next(self.knowledge_head.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize with padding; raise if any text exceeds ``max_length`` tokens."""
        batch = self.tokenizer(texts, padding=True, truncation=False, return_tensors="pt")
        lengths = batch["attention_mask"].sum(1)
        too_long = (lengths > self.max_length).nonzero().flatten().tolist()
        if too_long:
            i = too_long[0]
            raise ValueError(
                f"Text {i} has {int(lengths[i])} tokens; the knowledge encoder accepts at most "
                f"{self.max_length}. Shorten it (a statement is '<prompt> <target_new>'). Text: {texts[i][:80]!r}"
            )
        return {k: v.to(self.device) for k, v in batch.items()}

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, 4H)`` pooled backbone features of a tokenized batch."""
        out = self.backbone(**batch)
        return pool_features(out.last_hidden_state, batch["attention_mask"])

    def features_from_embeds(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, 4H)`` features of raw backbone input embeddings ``(B, T, H)`` (all tokens real)."""
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        out = self.backbone(inputs_embeds=inputs_embeds, attention_mask=mask)
        return pool_features(out.last_hidden_state, mask)

    def encode_statement_batch(self, texts: list[str]) -> torch.Tensor:
        """``(B, rep_dim)`` keys of statements, with gradients."""
        return self.knowledge_head(self.features(self.tokenize(texts)))

    def encode_query_batch(self, texts: list[str]) -> torch.Tensor:
        """``(B, rep_dim)`` query representations, with gradients."""
        return self.query_head(self.features(self.tokenize(texts)))
