"""How long one query takes, method by method, as a user would run it (batch size 1)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from recipe_chain.data import EditExample, LocalityPrompt
from recipe_chain.evaluation import metrics as M
from recipe_chain.evaluation.config import EvalConfig
from recipe_chain.evaluation.llm_outputs import progress_bar
from recipe_chain.evaluation.measurement import SCORED_KINDS, Row
from recipe_chain.evaluation.results import GateLatencyPoint, MethodLatency
from recipe_chain.evaluation.text_rag_baseline import TextRagBaseline
from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.text_rag import format_text_rag_prompt

__all__ = ["LatencyMeter"]


class LatencyMeter:
    """Times each method's queries live: gate or retrieve now, then score and generate.

    Args:
        lm: The prefix-capable LLM.
        tokenizer: Its tokenizer (to count generated tokens).
        text_rag: The text-RAG baseline (its index must be open for the text-RAG methods).
        config: Supplies ``methods``, ``latency_samples``, ``gate_latency_samples``,
            ``gen_tokens`` and ``seed``.
        as_prefix: Prompt vectors as the LLM takes them.
        recipe_sim_threshold: The current threshold of ``text-rag-recipe-sim``.
        progress: Progress bars (``None``: on a terminal only).
    """

    def __init__(
        self,
        lm: PrefixedCausalLM,
        tokenizer: PreTrainedTokenizerBase,
        text_rag: TextRagBaseline,
        config: EvalConfig,
        as_prefix: Callable[[torch.Tensor], torch.Tensor],
        recipe_sim_threshold: Callable[[], float | None],
        progress: bool | None = None,
    ) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        self.text_rag = text_rag
        self.config = config
        self.as_prefix = as_prefix
        self.recipe_sim_threshold = recipe_sim_threshold
        self.progress = progress

    def live_input(
        self, store: Any, method: str, row: Row, own_statement: str | None
    ) -> tuple[str, torch.Tensor | None]:
        """One query as a user would run it: gate/retrieve now, then build the LLM input."""
        if method == "no-edit":
            return row.text, None
        if method == "text-rag-oracle":
            return self.text_rag.text(row.text, own_statement or ""), None
        if method in ("text-rag", "text-rag-top1"):
            assert self.text_rag.index is not None
            found = self.text_rag.index.search([row.text], k=1)[0]
            top_hit = found[0] if found else None
            if top_hit is None or not self.text_rag.admits(top_hit, thresholded=method == "text-rag"):
                return row.text, None
            return self.text_rag.text(row.text, top_hit.statement), None
        g = store.gate(row.text)
        if method == "recipe":
            return row.text, (self.as_prefix(g.prompt_vectors) if g.fired else None)
        if method == "recipe-no-gate":
            if g.fired:
                return row.text, self.as_prefix(g.prompt_vectors)
            if g.candidates:
                return row.text, self.as_prefix(store.prompt_vectors(g.candidates[0].record.edit_id))
            return row.text, None
        if method == "text-rag-recipe-sim":
            top = g.candidates[0] if g.candidates else None
            if top is not None and (threshold := self.recipe_sim_threshold()) is not None and top.similarity >= threshold:
                return format_text_rag_prompt(row.text, [top.record.statement]), None
            return row.text, None
        raise ValueError(f"unknown method {method!r}")

    def measure(
        self,
        store: Any,
        rows: Sequence[Row],
        targets: Sequence[str | None],
        edit_ids: Sequence[str],
        statements: dict[str, str],
        seed: int,
    ) -> dict[str, MethodLatency]:
        """p50/p95 of scoring and of generating, per method, on a seeded sample of scored rows."""
        pool = [i for i, r in enumerate(rows) if r.kind in SCORED_KINDS and targets[i] is not None]

        def target_of(i: int) -> str:
            target = targets[i]
            if target is None:  # the pool holds scored rows only
                raise ValueError(f"row {i} has no target")
            return target

        rng = random.Random(seed)
        sample = rng.sample(pool, min(self.config.latency_samples, len(pool)))
        methods = self.config.methods
        score_s: dict[str, list[float]] = {m: [] for m in methods}
        gen_s: dict[str, list[float]] = {m: [] for m in methods}
        gen_tokens: dict[str, list[int]] = {m: [] for m in methods}

        def one(method: str, i: int, record: bool) -> None:
            r = rows[i]
            own_statement = statements[edit_ids[r.example]] if r.example is not None else None
            t0 = time.perf_counter()
            text, prefix = self.live_input(store, method, r, own_statement)
            self.lm.score_targets([text], [target_of(i)], [prefix], batch_size=1)
            t1 = time.perf_counter()
            text, prefix = self.live_input(store, method, r, own_statement)
            output = self.lm.generate([text], [prefix], max_new_tokens=self.config.gen_tokens)[0]
            t2 = time.perf_counter()
            if record:
                score_s[method].append(t1 - t0)
                gen_s[method].append(t2 - t1)
                gen_tokens[method].append(len(self.tokenizer(output, add_special_tokens=False)["input_ids"]))

        if sample:
            for m in methods:  # warm-up, untimed
                one(m, sample[0], record=False)
        for i in progress_bar(sample, self.progress, desc="latency", unit="query", leave=False):
            for m in methods:  # interleaved: machine noise hits every method alike
                one(m, i, record=True)
        return {
            m: MethodLatency(
                score_s=M.latency_summary(score_s[m]),
                generate_s=M.latency_summary(gen_s[m]),
                generated_tokens_mean=M.mean(gen_tokens[m]),
            )
            for m in methods
        }

    def probe_gate(
        self, store: Any, edited: Sequence[EditExample], questions: Sequence[LocalityPrompt], t: int
    ) -> GateLatencyPoint:
        """Gate latency at store size ``t``: edit prompts and general questions, drawn with a seed."""
        n = self.config.gate_latency_samples
        if n == 0:
            return GateLatencyPoint(store_size=t, n=0, mean_s=None, p50_s=None, p95_s=None)
        rng = random.Random(self.config.seed * 1_000_003 + t)
        pool = [ex.prompt for ex in edited] + [q.prompt for q in questions]
        texts = [pool[rng.randrange(len(pool))] for _ in range(n)]
        store.gate(texts[0])  # warm-up
        times = []
        for text in texts:
            t0 = time.perf_counter()
            store.gate(text)
            times.append(time.perf_counter() - t0)
        s = M.latency_summary(times)
        return GateLatencyPoint(store_size=t, n=n, mean_s=s["mean"], p50_s=s["p50"], p95_s=s["p95"])
