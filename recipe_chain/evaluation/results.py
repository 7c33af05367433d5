"""What a lifelong-editing evaluation run measured (``results.json``), and where it ran."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from recipe_chain.evaluation.text_rag_baseline import TextRagTuning
from recipe_chain.evaluation.thresholds import THRESHOLD_PROCEDURE

__all__ = [
    "RESULTS_SCHEMA_VERSION",
    "GateStats",
    "AddedTokens",
    "MethodLatency",
    "MethodMetrics",
    "CheckpointResult",
    "GateLatencyPoint",
    "TextRagThreshold",
    "QuestionMetrics",
    "EvalResults",
    "machine_info",
    "peak_memory_mib",
]

RESULTS_SCHEMA_VERSION = 1


class GateStats(BaseModel):
    """Which edit a method used, as shares of queries (``None``: not applicable).

    Attributes:
        hit_rate: Edit prompts on which the method used some edit.
        correct_hit_prompt: Edit prompts on which it used the example's own edit.
        correct_hit_paraphrase: Paraphrases on which it used the example's own edit.
        false_fire_locality: Locality prompts on which it used any edit (prompts that
            ask a fact edited in the store are not counted: see ``fire_on_edited_fact``).
        false_fire_general: General questions on which it used any edit.
        fire_on_edited_fact: Locality prompts that ask a fact another stored edit
            changed (:mod:`recipe_chain.evaluation.edited_facts`) on which it used an edit;
            there firing is right.
    """

    model_config = ConfigDict(frozen=True)

    hit_rate: float | None = None
    correct_hit_prompt: float | None = None
    correct_hit_paraphrase: float | None = None
    false_fire_locality: float | None = None
    false_fire_general: float | None = None
    fire_on_edited_fact: float | None = None


class AddedTokens(BaseModel):
    """Input tokens a method adds per scored query (prompts, paraphrases, locality prompts).

    Attributes:
        llm_text: Mean extra text tokens in the LLM's tokenizer.
        cl100k: Mean extra text tokens in tiktoken ``cl100k_base`` (``None`` if unavailable).
        virtual: Mean continuous prompt vectors prefixed (RECIPE's prefix length per fire).
        llm_total: ``llm_text + virtual``: extra positions the LLM processes.
        fired_share: Share of scored queries on which the method added anything.
    """

    model_config = ConfigDict(frozen=True)

    llm_text: float | None = None
    cl100k: float | None = None
    virtual: float | None = None
    llm_total: float | None = None
    fired_share: float | None = None


class MethodLatency(BaseModel):
    """Per-query latency of one method (batch size 1), including its retrieval/gating.

    Attributes:
        score_s: ``{"n","mean","p50","p95"}`` seconds of one teacher-forced scoring.
        generate_s: The same for one greedy generation of ``gen_tokens`` new tokens.
        generated_tokens_mean: Mean tokens actually generated (EOS may stop early).
    """

    model_config = ConfigDict(frozen=True)

    score_s: dict[str, float | int | None]
    generate_s: dict[str, float | int | None]
    generated_tokens_mean: float | None = None


class MethodMetrics(BaseModel):
    """Every metric of one method at one checkpoint (values in ``[0, 1]`` or ``None``).

    Attributes:
        reliability: Teacher-forced token accuracy of ``target_new`` on edit prompts.
        generality: The same on paraphrases.
        locality: Share of the unedited model's argmax tokens kept on locality prompts,
            leaving out those that ask a fact edited in the store
            (:mod:`recipe_chain.evaluation.edited_facts`).
        locality_all_prompts: The same over every locality prompt, those included.
        em_prompt: Greedy-generation exact match of ``target_new`` on edit prompts.
        em_paraphrase: The same on paraphrases.
        locality_unchanged: Share of locality prompts whose greedy output is unchanged.
        answer_accuracy: Edit prompts whose greedy answer reads as the new target
            (:func:`recipe_chain.evaluation.answers.answer_correct`: its first sentence
            names the new target and not the old answer).
        answer_accuracy_paraphrase: The same on paraphrases.
        locality_kept: Locality prompts whose first sentence reads as the unedited
            model's (:func:`recipe_chain.evaluation.answers.locality_kept`).
        general_answer_accuracy: General questions whose greedy answer names a reference
            answer (final ``T`` only, ``general_answer_n`` questions).
        general_answer_delta: ``general_answer_accuracy`` minus the unedited model's, on
            the same questions (an empty store never fires, so this is the change the
            ``T`` edits make to general ability).
        general_answer_delta_ci95: Half-width of the 95 % normal interval of that paired
            difference: a delta inside it is noise.
        gate: :class:`GateStats`.
        added_tokens: :class:`AddedTokens`.
        conditional: Diagnostics: ``reliability_given_correct_hit``,
            ``generality_given_correct_hit``, ``locality_given_fire``,
            ``locality_given_no_fire``.
        latency: :class:`MethodLatency` (final measurement only).
    """

    model_config = ConfigDict(frozen=True)

    reliability: float | None = None
    generality: float | None = None
    locality: float | None = None
    locality_all_prompts: float | None = None
    em_prompt: float | None = None
    em_paraphrase: float | None = None
    locality_unchanged: float | None = None
    answer_accuracy: float | None = None
    answer_accuracy_paraphrase: float | None = None
    locality_kept: float | None = None
    general_answer_accuracy: float | None = None
    general_answer_delta: float | None = None
    general_answer_delta_ci95: float | None = None
    chat_answer_accuracy: float | None = None
    chat_answer_accuracy_paraphrase: float | None = None
    gate: GateStats = Field(default_factory=GateStats)
    added_tokens: AddedTokens = Field(default_factory=AddedTokens)
    conditional: dict[str, float | None] = Field(default_factory=dict)
    latency: MethodLatency | None = None


class CheckpointResult(BaseModel):
    """The measurement after the first ``t`` sequential edits.

    Attributes:
        t: Store size (edits made so far).
        n_measured: Examples measured (``t`` unless subsampled or superseded).
        subsampled: Whether a random subsample of the ``t`` examples was measured.
        n_superseded_excluded: Measured examples left out because the store marked their
            edit superseded.
        counts: Query rows per kind (``prompt``, ``paraphrase``, ``locality``,
            ``locality_scored``, ``locality_edited_fact`` (left out of ``locality``),
            ``general``).
        methods: :class:`MethodMetrics` per reported method.
        diagnostics: Store-level figures for attributing errors: top-1 retrieval accuracy,
            how often the gate admits a correct top-1, similarity summaries.
        gate_batch_s: Wall time of gating every query once.
        wall_s: Wall time of the whole measurement.
    """

    model_config = ConfigDict(frozen=True)

    t: int
    n_measured: int
    subsampled: bool
    n_superseded_excluded: int = 0
    counts: dict[str, int]
    methods: dict[str, MethodMetrics]
    diagnostics: dict[str, float | None] = Field(default_factory=dict)
    gate_batch_s: float
    wall_s: float


class GateLatencyPoint(BaseModel):
    """Latency of one ``store.gate(text)`` call (batch size 1) at a store size."""

    model_config = ConfigDict(frozen=True)

    store_size: int
    n: int
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None


class TextRagThreshold(BaseModel):
    """The tuned text-RAG similarity threshold and how it was obtained."""

    model_config = ConfigDict(frozen=True)

    value: float
    procedure: str = THRESHOLD_PROCEDURE
    dev_size: int
    dev_source: str
    dev_rows: dict[str, int]
    dev_objective: float
    dev_hit_accuracy: float | None
    dev_non_fire: float | None


class QuestionMetrics(BaseModel):
    """One method's answers to questions asked after a set of edits (portability).

    Attributes:
        n: Questions asked.
        answer_accuracy: Share whose greedy answer names an accepted answer.
        fired: Share on which the method used an edit.
    """

    model_config = ConfigDict(frozen=True)

    n: int
    answer_accuracy: float | None
    fired: float | None


class EvalResults(BaseModel):
    """Everything a run measured, plus its full configuration (``results.json``).

    Attributes:
        schema_version: Version of this layout.
        complete: False in ``results.partial.json`` while a run is in progress.
        config: The :class:`EvalConfig` plus run information (LLM id, checkpoint
            fingerprint, data file and hash, ...).
        machine: Python/torch versions, platform, CPU count, threads.
        selection: :meth:`Selection.summary`.
        text_rag_threshold: The RECIPE-similarity threshold of ``text-rag-recipe-sim``.
        text_rag_tuning: The fair text-RAG baseline's threshold and prompt format.
        edit_latency_s: ``{"n","mean","p50","p95"}`` of ``store.add_edit``.
        gate_latency: Gate latency against store size.
        checkpoints: Measurements at each ``t`` of the grid, ascending.
        final: The measurement at ``T`` (also the last checkpoint), with latencies.
        peak_memory_mib: Peak resident memory of the process.
        wall_time_s: Wall time of the run (all sessions of a resumed run).
        phase_times_s: Wall time per phase.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: int = RESULTS_SCHEMA_VERSION
    complete: bool
    config: dict[str, Any]
    machine: dict[str, Any]
    selection: dict[str, Any]
    text_rag_threshold: TextRagThreshold | None = None
    text_rag_tuning: TextRagTuning | None = None
    edit_latency_s: dict[str, float | int | None]
    gate_latency: list[GateLatencyPoint]
    checkpoints: list[CheckpointResult]
    final: CheckpointResult | None = None
    peak_memory_mib: float | None = None
    wall_time_s: float
    phase_times_s: dict[str, float]


def peak_memory_mib() -> float | None:
    """Peak resident set size of this process in MiB (``None`` where unsupported)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def machine_info() -> dict[str, Any]:
    """Versions and hardware of this machine, for the results file."""
    import transformers

    try:
        import chromadb

        chroma_version = chromadb.__version__
    except Exception:  # pragma: no cover - chromadb is a dependency
        chroma_version = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "chromadb": chroma_version,
        "cuda": torch.cuda.is_available(),
    }
