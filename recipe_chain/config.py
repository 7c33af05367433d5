"""Pydantic configuration of the RECIPE networks and its checkpoint fingerprints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RecipeConfig", "CHECKPOINT_FORMAT_VERSION"]

CHECKPOINT_FORMAT_VERSION = 1


class RecipeConfig(BaseModel):
    """Shapes and fingerprints of a RECIPE editor (encoder, heads, sentinel, prompt encoder).

    The paper uses a fine-tuned RoBERTa-base, 4096-d representations and 3 prompt
    vectors; the defaults here are sized for all-MiniLM-L6-v2 and a 135M LLM on a CPU.

    Example:
        >>> cfg = RecipeConfig(backbone_id="sentence-transformers/all-MiniLM-L6-v2",
        ...     backbone_hidden_size=384, llm_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ...     llm_hidden_size=576)
        >>> cfg.prompt_len, cfg.prompt_encoder
        (3, 'mlp')
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = CHECKPOINT_FORMAT_VERSION
    # Fingerprints: which backbone and which LLM this editor was built for.
    backbone_id: str = Field(description="Hub-style id or local path of the retriever backbone.")
    backbone_hidden_size: int = Field(gt=0)
    llm_id: str = Field(description="Identity of the frozen LLM the prompt vectors were trained for.")
    llm_hidden_size: int = Field(gt=0, description="Width of the LLM's input embeddings.")
    # Representation and heads.
    rep_dim: int = Field(default=512, gt=0, description="Width of key/query/sentinel representations.")
    head_hidden_dim: int = Field(default=768, gt=0)
    head_blocks: int = Field(default=1, ge=0, description="Residual MLP blocks per head.")
    max_length: int = Field(default=64, gt=0, description="Backbone token limit; longer text raises.")
    pool_last_token: bool = Field(
        default=True,
        description="Pool the last content token's state too (the new target ends a statement); False in "
        "checkpoints written before this field existed.",
    )
    # Knowledge Sentinel: learnable token embeddings run through backbone + knowledge head.
    sentinel_len: int = Field(default=4, gt=0)
    # Prompt encoder.
    prompt_len: int = Field(
        default=3,
        gt=0,
        description="Continuous prompt vectors per edit (the paper's 3; with the 'vocab' encoder on SmolLM2-135M, "
        "4 = 2 context vectors + 2 token slots beat 3 = 1 + 2).",
    )
    prompt_hidden_dim: int = Field(default=768, gt=0)
    prompt_code_dim: int = Field(
        default=0,
        ge=0,
        description="Width of a prompt code at the end of each key, from its own head; queries are zero there, "
        "so retrieval ignores it and the prompt encoder reads only it. 0: the prompt encoder reads the whole "
        "key (the paper's; every checkpoint written before this field existed).",
    )
    prompt_code_from_base: bool = Field(
        default=True,
        description="Compute the prompt code from the backbone without its LoRA adapters (retrieval training "
        "teaches them to ignore the new target). No effect without a prompt code or without adapters.",
    )
    prompt_encoder: Literal["mlp", "vocab"] = Field(
        default="mlp",
        description="'mlp': the paper's MLP (also what checkpoints written before this field existed use); "
        "'vocab': shared context vectors + token slots that mix the LLM's own token embeddings (see PromptEncoder).",
    )
    prompt_context_len: int = Field(
        default=None,  # type: ignore[assignment]  # resolved by _default_context_len
        ge=0,
        description="Context vectors in front of the token slots ('vocab' mode; < prompt_len). Default: "
        "min(2, prompt_len - 1).",
    )
    prompt_target_slots: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Token slots read from the edit's own new target ('vocab' mode): the input embeddings of its "
        "first N LLM tokens follow the key's vectors, so an answer of several tokens fits (docs/prompt-vectors.md). "
        "0: every token slot is decoded from the key.",
    )
    prompt_input_norm: Literal["running", "layer"] = Field(
        default="running",
        description="How the prompt encoder normalises keys: running per-feature statistics, or a per-vector "
        "LayerNorm (checkpoints written before this field existed).",
    )
    prompt_init_std: float = Field(
        default=0.02, gt=0, description="Std of the LLM's input embeddings; prompt vectors start at this scale."
    )
    # How the backbone is adapted during training.
    backbone_tuning: Literal["frozen", "lora", "full"] = "lora"
    lora_rank: int = Field(default=8, gt=0)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")

    @model_validator(mode="before")
    @classmethod
    def _default_context_len(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("prompt_context_len") is None:
            prompt_len = data.get("prompt_len", cls.model_fields["prompt_len"].default)
            if isinstance(prompt_len, int):
                data = {**data, "prompt_context_len": max(0, min(2, prompt_len - 1))}
        return data

    @property
    def prompt_input_dim(self) -> int:
        """Width of what the prompt encoder reads: the prompt code, or the whole key."""
        return self.prompt_code_dim or self.rep_dim

    @model_validator(mode="after")
    def _context_fits(self) -> "RecipeConfig":
        if self.prompt_code_dim >= self.rep_dim:
            raise ValueError(
                f"prompt_code_dim ({self.prompt_code_dim}) must be < rep_dim ({self.rep_dim}): a key needs a "
                "retrieval part"
            )
        if self.prompt_target_slots and self.prompt_encoder != "vocab":
            raise ValueError("prompt_target_slots needs prompt_encoder='vocab' (token slots are token embeddings)")
        if self.prompt_encoder == "vocab" and not self.prompt_target_slots and self.prompt_context_len >= self.prompt_len:
            raise ValueError(
                f"prompt_context_len ({self.prompt_context_len}) must be < prompt_len ({self.prompt_len}): "
                "the 'vocab' prompt encoder needs at least one token slot"
            )
        if self.prompt_context_len > self.prompt_len:
            raise ValueError(f"prompt_context_len ({self.prompt_context_len}) must be <= prompt_len ({self.prompt_len})")
        return self
