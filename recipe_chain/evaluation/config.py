"""What a lifelong-editing evaluation run does: the compared methods and :class:`EvalConfig`."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Method", "METHODS", "FIRING_METHODS", "NEEDS_DEV", "EvalConfig"]

Method = Literal[
    "no-edit", "recipe", "recipe-no-gate", "text-rag", "text-rag-top1", "text-rag-recipe-sim", "text-rag-oracle"
]
"""Names of the compared methods."""

METHODS: tuple[str, ...] = get_args(Method)
"""All methods, in report order."""

FIRING_METHODS = ("recipe", "recipe-no-gate", "text-rag", "text-rag-top1", "text-rag-recipe-sim", "text-rag-oracle")
"""Methods that may put an edit in front of a query (no-edit never does)."""
NEEDS_DEV = ("text-rag", "text-rag-recipe-sim")
"""Methods whose similarity threshold is tuned on a dev split."""


class EvalConfig(BaseModel):
    """Settings of one lifelong-editing evaluation run.

    Attributes:
        edits: ``T``, the number of sequential edits (and of evaluated examples).
        seed: Seed of the shuffle, the dev split and every sample drawn.
        methods: The methods to report (``no-edit`` is always computed internally: it is
            the locality reference).
        dev_size: Dev examples for tuning the text-RAG threshold (0 only without text-rag).
        general_n: Questions used for the false-fire rate on general questions.
        t_grid: Store sizes at which metrics are measured (values above ``edits`` are
            dropped; ``edits`` itself is always measured).
        checkpoint_sample: Most examples measured at an intermediate checkpoint.
        final_sample: Most examples measured at the final ``T`` (a seeded subsample of the
            ``T`` edits, all of which are in the store). ``None``: all of them.
        gen_sample: Most examples whose greedy generations are measured per checkpoint
            (the user-visible metrics; a seeded subsample). ``None``: all. Teacher-forced
            metrics and gate statistics always cover every measured example.
        latency_samples: Queries timed per method at the end (batch size 1).
        gate_latency_samples: Gate calls timed per store-size probe.
        gen_tokens: New tokens of every greedy generation.
        batch_size: Rows per teacher-forced scoring batch.
        gen_batch_size: Rows per generation batch.
        gate_batch_size: Texts per ``gate_batch`` call.
        gate_margin: Extra margin of the store's gate (recorded; the store applies it).
        candidate_k: Candidates the store re-scores per query (recorded; the store applies it).
        duplicate_facts: ``"skip"`` examples repeating an already taken prompt, or take
            them too and let them ``"supersede"`` the earlier edit (see :func:`select_examples`).
        dev_general_n: General questions (after the ``general_n`` measured ones) used as
            dev negatives when tuning text-rag's threshold.
        text_rag_format: Prompt format of the text-RAG methods: ``"plain"`` (the statement
            in front of the query), ``"chat"`` (the LLM's chat template, statement in the
            system message, query as the user turn) or ``"auto"``: the better on dev.
        format_dev_sample: Dev examples whose generations choose the format (``"auto"``).
        general_answer_n: General questions whose greedy answers are scored against their
            reference answers at the final ``T`` (general ability; 0: none).
        chat_path: At the final ``T``, also ask each generated example's prompt and
            paraphrases as the user turn of the LLM's chat template, as
            :class:`~recipe_chain.chat_models.RecipeEditedChatModel` does (gate on the user's
            text, prompt vectors in front of the templated input; text-RAG methods in their
            chat format), and score the answers (``chat_answer_accuracy``).

    Example:
        >>> EvalConfig(edits=100).checkpoints()
        [1, 10, 100]
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    edits: int = Field(gt=0)
    seed: int = 0
    methods: tuple[Method, ...] = METHODS  # type: ignore[assignment]
    dev_size: int = Field(default=200, ge=0)
    general_n: int = Field(default=1000, ge=0)
    t_grid: tuple[int, ...] = (1, 10, 100, 1000, 10000)
    checkpoint_sample: int = Field(default=1000, gt=0)
    final_sample: int | None = Field(default=None, gt=0)
    gen_sample: int | None = Field(default=None, gt=0)
    latency_samples: int = Field(default=50, ge=0)
    gate_latency_samples: int = Field(default=20, ge=0)
    gen_tokens: int = Field(default=16, gt=0)
    batch_size: int = Field(default=16, gt=0)
    gen_batch_size: int = Field(default=16, gt=0)
    gate_batch_size: int = Field(default=256, gt=0)
    gate_margin: float = 0.0
    candidate_k: int = Field(default=8, gt=0)
    duplicate_facts: Literal["skip", "supersede"] = "skip"
    dev_general_n: int = Field(default=200, ge=0)
    text_rag_format: Literal["auto", "plain", "chat"] = "auto"
    format_dev_sample: int = Field(default=100, gt=0)
    general_answer_n: int = Field(default=0, ge=0)
    chat_path: bool = False

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one method is required")
        if len(set(value)) != len(value):
            raise ValueError(f"methods repeat: {list(value)}")
        return tuple(m for m in METHODS if m in value)  # canonical order

    @field_validator("t_grid")
    @classmethod
    def _positive_grid(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(t < 1 for t in value):
            raise ValueError(f"t_grid values must be >= 1, got {list(value)}")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _dev_needed(self) -> "EvalConfig":
        needing = [m for m in NEEDS_DEV if m in self.methods]
        if needing and self.dev_size < 1:
            raise ValueError(f"{', '.join(needing)} needs dev_size >= 1 to tune its similarity threshold")
        return self

    def checkpoints(self) -> list[int]:
        """Store sizes at which metrics are measured, ascending, ending at ``edits``."""
        return sorted({t for t in self.t_grid if t < self.edits} | {self.edits})

    def gate_probes(self) -> list[int]:
        """Store sizes at which gate latency is timed: checkpoints plus a 1-2-5 series."""
        sizes = set(self.checkpoints())
        base = 1
        while base <= self.edits:
            sizes.update(s for s in (base, 2 * base, 5 * base) if s <= self.edits)
            base *= 10
        return sorted(sizes)
