"""The knowledge encoder: a transformer backbone with RECIPE pooling and two heads.

Statements ("<prompt> <target_new>") go through the *knowledge* head and become keys;
inputs go through the *query* head. Both share the backbone and its pooling
(first token ‖ mean ‖ max ‖ min over real tokens, as in RECIPE, plus by default the last
content token: the end of a statement is its new target, which the other four pools
dilute among the prompt's tokens).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ResidualMLPHead", "KnowledgeEncoder", "pool_features"]


def pool_features(hidden: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
    """RECIPE pooling of backbone states.

    Args:
        hidden: ``(B, T, H)`` last hidden states.
        mask: ``(B, T)`` attention mask, 1 for real tokens.
        last_index: ``(B,)`` position of each row's last content token, to append its
            state; ``None`` for the four RECIPE pools only.

    Returns:
        ``(B, 4H)``: first token, mean, max and min over real tokens, concatenated; with
        ``last_index``, ``(B, 5H)`` with the last content token's state appended.
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    first = hidden[:, 0]  # (B, H)
    mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H)
    big = torch.finfo(hidden.dtype).max
    maxed = hidden.masked_fill(m == 0, -big).amax(1)  # (B, H)
    mined = hidden.masked_fill(m == 0, big).amin(1)  # (B, H)
    pools = [first, mean, maxed, mined]
    if last_index is not None:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pools.append(hidden[rows, last_index.to(hidden.device)])  # (B, H)
    return torch.cat(pools, dim=-1)  # (B, 4H or 5H)


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
        pool_last_token: Also pool the last content (non-special) token's state.
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
        pool_last_token: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pool_last_token = pool_last_token
        self._special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        feat = (5 if pool_last_token else 4) * backbone.config.hidden_size
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
        """``(B, 4H)`` or ``(B, 5H)`` pooled backbone features of a tokenized batch."""
        out = self.backbone(**batch)
        last = self._last_content_index(batch) if self.pool_last_token else None
        return pool_features(out.last_hidden_state, batch["attention_mask"], last)

    def _last_content_index(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B,)``: position of each row's last real, non-special token (``[SEP]`` and padding skipped)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, T), (B, T)
        content = mask.bool() & ~torch.isin(ids, self._special_ids.to(ids.device))  # (B, T)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # (B, T)
        last = torch.where(content, positions, -1).amax(1)  # (B,)
        # a row of special tokens only (no content) falls back to its last real token
        return torch.where(last >= 0, last, mask.sum(1) - 1)

    def features_from_embeds(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Features of raw backbone input embeddings ``(B, T, H)`` (all tokens real, the last is content)."""
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        out = self.backbone(inputs_embeds=inputs_embeds, attention_mask=mask)
        last = torch.full((inputs_embeds.shape[0],), inputs_embeds.shape[1] - 1, device=inputs_embeds.device)
        return pool_features(out.last_hidden_state, mask, last if self.pool_last_token else None)

    def encode_statement_batch(self, texts: list[str]) -> torch.Tensor:
        """``(B, rep_dim)`` keys of statements, with gradients."""
        return self.knowledge_head(self.features(self.tokenize(texts)))

    def encode_query_batch(self, texts: list[str]) -> torch.Tensor:
        """``(B, rep_dim)`` query representations, with gradients."""
        return self.query_head(self.features(self.tokenize(texts)))
