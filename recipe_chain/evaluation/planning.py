"""What each compared method gives the LLM for one query: the gate decisions and the plans.

An edit's prompt vectors depend only on its statement (for one editor and LLM), so they are
cached by statement and every store of a run shares the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from recipe_chain.evaluation.llm_outputs import progress_bar
from recipe_chain.evaluation.measurement import Gate, Plan, Row
from recipe_chain.evaluation.text_rag_baseline import TextRagBaseline
from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.statement_index import StatementHit
from recipe_chain.text_rag import format_text_rag_prompt

__all__ = ["MethodPlanner"]


class MethodPlanner:
    """Gates queries through a store and plans each method's LLM input.

    Args:
        lm: The prefix-capable LLM (prompt vectors are cast to its device and dtype).
        text_rag: The text-RAG baseline (its prompt formats and admission rule).
        gate_batch_size: Texts per ``store.gate_batch`` call.
        progress: Progress bars (``None``: on a terminal only).

    Attributes:
        prefixes: Statement -> ``(P, D)`` prompt vectors.
        edit_of: Statement -> an edit id with it (to ask the store for its vectors).
        recipe_sim_threshold: ``text-rag-recipe-sim``'s threshold, once tuned.
    """

    def __init__(
        self, lm: PrefixedCausalLM, text_rag: TextRagBaseline, gate_batch_size: int, progress: bool | None = None
    ) -> None:
        self.lm = lm
        self.text_rag = text_rag
        self.gate_batch_size = gate_batch_size
        self.progress = progress
        self.prefixes: dict[str, torch.Tensor] = {}
        self.edit_of: dict[str, str] = {}
        self.recipe_sim_threshold: float | None = None

    def clear(self) -> None:
        """Forget the cached prompt vectors and edit ids (a new run)."""
        self.prefixes.clear()
        self.edit_of.clear()

    def gate_all(self, store: Any, texts: Sequence[str], desc: str) -> dict[str, Gate]:
        """Gate every unique text once, in batches; keep what the plans need."""
        unique = list(dict.fromkeys(texts))
        out: dict[str, Gate] = {}
        size = self.gate_batch_size
        for start in progress_bar(range(0, len(unique), size), self.progress, desc=desc, unit="batch", leave=False):
            chunk = unique[start : start + size]
            results = store.gate_batch(chunk)
            if len(results) != len(chunk):
                raise RuntimeError(f"gate_batch returned {len(results)} results for {len(chunk)} texts")
            for text, g in zip(chunk, results):
                out[text] = self._keep_gate(g)
        return out

    def _keep_gate(self, g: Any) -> Gate:
        hit_id = g.hit.edit_id if g.hit is not None else None
        hit_statement = g.hit.statement if g.hit is not None else None
        if hit_statement is not None:
            self.edit_of[hit_statement] = hit_id  # the latest store gated wins
            if g.prompt_vectors is not None and hit_statement not in self.prefixes:
                self.prefixes[hit_statement] = self.as_prefix(g.prompt_vectors)
        top = g.candidates[0] if g.candidates else None
        if top is not None:
            self.edit_of[top.record.statement] = top.record.edit_id
        return Gate(
            hit_id=hit_id,
            hit_statement=hit_statement,
            top_id=top.record.edit_id if top is not None else None,
            top_sim=float(top.similarity) if top is not None else None,
            top_statement=top.record.statement if top is not None else None,
            sentinel_sim=float(g.sentinel_similarity),
        )

    def as_prefix(self, vectors: torch.Tensor) -> torch.Tensor:
        """Prompt vectors as the LLM takes them."""
        if vectors.dim() != 2:
            raise ValueError(f"prompt vectors must be (P, D); got {tuple(vectors.shape)}")
        return vectors.detach().to(self.lm.device, self.lm.dtype)  # (P, D)

    def prefix(self, store: Any, statement: str | None) -> torch.Tensor | None:
        """The prompt vectors of the edit with this statement (cached; ``None`` for none)."""
        if statement is None:
            return None
        if statement not in self.prefixes:
            self.prefixes[statement] = self.as_prefix(store.prompt_vectors(self.edit_of[statement]))
        return self.prefixes[statement]

    def plan(
        self,
        method: str,
        row: Row,
        gate: Gate,
        edit_ids: Sequence[str],
        statements: dict[str, str],
        hit: StatementHit | None = None,
    ) -> Plan:
        """What ``method`` gives the LLM for ``row`` (text, and which edit\'s vectors go in front)."""
        own = edit_ids[row.example] if row.example is not None else None
        plain = self.text_rag.chat_text(row.text) if row.chat else row.text  # the LLM input without an edit
        rag_format = "chat" if row.chat else None
        if method == "no-edit":
            return Plan(None, plain, None)
        if method == "recipe":
            return Plan(gate.hit_id, plain, gate.hit_statement)
        if method == "recipe-no-gate":
            return Plan(gate.top_id, plain, gate.top_statement)
        if method in ("text-rag", "text-rag-top1"):
            if hit is None or not self.text_rag.admits(hit, thresholded=method == "text-rag"):
                return Plan(None, plain, None)
            text = self.text_rag.text(row.text, hit.statement, rag_format)
            return Plan(str(hit.metadata.get("edit_id")), text, None)
        if method == "text-rag-recipe-sim":
            threshold = self.recipe_sim_threshold
            if threshold is None:
                raise ValueError("text-rag-recipe-sim's threshold is not tuned yet")
            if gate.top_id is not None and gate.top_sim is not None and gate.top_sim >= threshold:
                statement = gate.top_statement or statements.get(gate.top_id, "")
                if row.chat:
                    return Plan(gate.top_id, self.text_rag.text(row.text, statement, "chat"), None)
                return Plan(gate.top_id, format_text_rag_prompt(row.text, [statement]), None)
            return Plan(None, plain, None)
        if method == "text-rag-oracle":
            if own is None:  # general questions have no edit of their own
                return Plan(None, plain, None)
            return Plan(own, self.text_rag.text(row.text, statements[own], rag_format), None)
        raise ValueError(f"unknown method {method!r}")
