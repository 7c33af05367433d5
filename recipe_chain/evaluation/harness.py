"""The lifelong-editing evaluation harness: RECIPE vs text RAG vs the unedited model.

:class:`LifelongEvaluator` takes benchmark examples (any format
:func:`recipe_chain.data.load_edit_examples` reads), shuffles them with a seed, takes
``T`` of them, edits them **one at a time** into a fresh
:class:`~recipe_chain.store.RecipeKnowledgeStore` and measures, side by side, in one
process, on the same edits and the same store content:

* ``no-edit``: the unedited LLM;
* ``recipe``: the Knowledge Sentinel gate + the hit's continuous prompt vectors (prefix);
* ``recipe-no-gate``: always the top-1 edit's prompt vectors (ablation of the sentinel);
* ``text-rag``: the baseline a LangChain user would build: plain all-MiniLM-L6-v2
  cosine similarity over the edit statements in a Chroma collection
  (:mod:`recipe_chain.statement_index`), the top-1 statement put in front of the query
  when its similarity reaches a threshold tuned on a disjoint dev split by balanced
  accuracy, in the prompt format (plain or chat template) that did better on dev
  (see :meth:`LifelongEvaluator.tune_text_rag`);
* ``text-rag-top1``: always the top-1 statement of that index, no threshold;
* ``text-rag-recipe-sim``: the top-1 edit of the RECIPE store admitted iff its RECIPE
  similarity ``q.k/sqrt(d)`` reaches a tuned threshold (kept for comparison with older
  results; that similarity's scale moves with the query, so one threshold separates poorly);
* ``text-rag-oracle``: the example's own statement always put in front -- also in front
  of its *locality* prompts, which is what an always-on text edit does to unrelated
  prompts. It is the upper bound of text RAG on Reliability/Generality.

Every query (edit prompts, paraphrases, locality prompts, general questions) is gated
once per measurement with :meth:`~recipe_chain.store.RecipeKnowledgeStore.gate_batch`;
``recipe``, ``recipe-no-gate`` and ``text-rag-recipe-sim`` derive their decision from the
same :class:`~recipe_chain.store.GateResult` (its best candidate and its hit); the text-RAG
methods share one statement index that is edited alongside the store. Identical LLM
inputs across methods (same text, same prefix) are scored and generated once.

Metrics (see :mod:`recipe_chain.evaluation.metrics`), averaged per example, then over
examples:

* Reliability / Generality: teacher-forced token accuracy of ``target_new`` after the
  prompt / its paraphrases, with the prefix or text the method gives that row.
* Locality: teacher-forced on the locality prompt + its reference answer (or, without
  one, the unedited model's greedy continuation, first line), the share of the unedited
  model's argmax tokens the method keeps.
* User-visible (:mod:`recipe_chain.evaluation.answers`): answer accuracy, the first
  sentence of the greedy ``gen_tokens``-token output names ``target_new`` and not the old
  answer, on the prompt and the paraphrases; locality kept, that first sentence equals
  the unedited model's; and the older, more lenient exact match (output starts with
  ``target_new``) and "output unchanged". At the final ``T``, ``general_answer_n``
  general questions are also answered and scored (general ability).
* Gate statistics (shares of queries): hit rate on edit prompts; correct-hit rate (the
  example's own edit is used) on prompts and on paraphrases; false-fire rate on locality
  prompts and on general questions (e.g. NQ-open).
* Efficiency: edit latency (p50/p95), per-query latency of teacher-forced scoring and of
  a ``gen_tokens``-token greedy generation per method (batch size 1, ``latency_samples``
  sampled queries, methods interleaved query by query so machine noise hits all
  methods alike), input tokens each method adds per query (LLM tokenizer and tiktoken
  ``cl100k_base``, offline; RECIPE adds ``prompt_len`` *virtual* tokens when it fires and
  no text), peak resident memory, gate latency against store size.

Checkpoints: the metrics are also taken after the first ``t`` sequential edits for each
``t`` of ``t_grid`` below ``T`` (on those ``t`` examples; when ``t`` exceeds
``checkpoint_sample``, on a seeded random subsample of that size; the final ``T``
measurement covers all ``T`` examples unless ``final_sample`` caps it the same way). Gate latency is probed at every
checkpoint and at 1-2-5 store sizes in between. After each checkpoint the results so
far are written to ``results.partial.json``; with a persistent store a run can resume
from it.

Selection: examples any of whose texts exceed the knowledge encoder's token limit are
left out; among the shuffled rest, an example whose prompt repeats an already selected
prompt (the same fact with another target, e.g. CounterFact's twin cities) is skipped by
default, so the ``T`` edits are ``T`` distinct facts and none supersedes another. With
``duplicate_facts="supersede"`` it is edited too, as a correction of the earlier edit
(``counterfact/eval.json`` has 9,917 distinct prompts in 10,000 records, so ``T=10000``
needs this). Edits the store marks superseded are excluded from measurement and counted
(``n_superseded_excluded``).

Example:
    >>> from recipe_chain.evaluation import EvalConfig, LifelongEvaluator
    >>> evaluator = LifelongEvaluator(llm, tokenizer, editor, EvalConfig(edits=100))  # doctest: +SKIP
    >>> results = evaluator.run(examples, questions=questions)  # doctest: +SKIP
    >>> results.final.methods["recipe"].reliability  # doctest: +SKIP
    0.97
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain._moved import moved_names
from recipe_chain.data import EditExample, LocalityPrompt
from recipe_chain.editor import RecipeEditor
from recipe_chain.evaluation import answers as A
from recipe_chain.evaluation import metrics as M
from recipe_chain.evaluation.config import NEEDS_DEV, EvalConfig
from recipe_chain.evaluation.edited_facts import EditedFacts
from recipe_chain.evaluation.latency import LatencyMeter
from recipe_chain.evaluation.llm_outputs import LLMOutputs, progress_bar
from recipe_chain.evaluation.planning import MethodPlanner
from recipe_chain.evaluation.measurement import (
    SCORED_KINDS,
    InputCosts,
    Plan,
    Row,
    assemble,
    diagnostics,
    first_line,
    general_delta,
    rows_for,
)
from recipe_chain.evaluation.results import (
    CheckpointResult,
    EvalResults,
    QuestionMetrics,
    TextRagThreshold,
    machine_info,
    peak_memory_mib,
)
from recipe_chain.evaluation.resume import JOURNAL_FILE, PARTIAL_FILE, RunState, load_partial, run_key, save_partial
from recipe_chain.evaluation.selection import Selection, fits_encoder, select_examples
from recipe_chain.evaluation.text_rag_baseline import TextRagBaseline, TextRagTuning
from recipe_chain.evaluation.thresholds import best_threshold
from recipe_chain.loading import llm_id_of
from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.statement_index import StatementHit
from recipe_chain.text_rag import CONTEXT_SEPARATOR

__all__ = ["LifelongEvaluator", "StoreFactory", "make_store_factory"]

logger = logging.getLogger(__name__)

_TEXT_RAG_METHODS = ("text-rag", "text-rag-top1", "text-rag-oracle")
"""Methods that put a statement in front of the query in the dev-chosen prompt format."""


# ====================================================================================
# helpers


StoreFactory = Callable[[str], Any]
"""``namespace -> RecipeKnowledgeStore``: how the harness opens its (fresh) stores."""


def make_store_factory(
    editor: RecipeEditor,
    config: EvalConfig,
    *,
    path: str | os.PathLike[str] | None = None,
    collection_prefix: str | None = None,
) -> StoreFactory:
    """A factory of knowledge stores for the harness, all on one Chroma client.

    Args:
        editor: The editor every store encodes with.
        config: Supplies ``gate_margin`` and ``candidate_k``.
        path: A persistent Chroma directory (needed to resume a run); ``None`` uses an
            in-memory client.
        collection_prefix: Collection prefix; defaults to ``"recipe"`` on disk and a
            unique one in memory (the in-process ephemeral client is shared).

    Returns:
        ``namespace -> RecipeKnowledgeStore``.
    """
    from recipe_chain.store import RecipeKnowledgeStore

    kwargs: dict[str, Any] = {"gate_margin": config.gate_margin, "candidate_k": config.candidate_k}
    if path is not None:
        import chromadb

        Path(path).mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(path=str(path))
        prefix = collection_prefix or "recipe"

        def persistent(namespace: str) -> Any:
            return RecipeKnowledgeStore(
                editor, client=client, namespace=namespace, collection_prefix=prefix, **kwargs
            )

        return persistent
    prefix = collection_prefix or f"eval{uuid.uuid4().hex[:10]}"

    def ephemeral(namespace: str) -> Any:
        return RecipeKnowledgeStore(editor, ephemeral=True, namespace=namespace, collection_prefix=prefix, **kwargs)

    return ephemeral



# ====================================================================================
# query rows and per-method plans


# ====================================================================================
# the evaluator


class LifelongEvaluator:
    """Runs the sequential-editing benchmark for one LLM + editor.

    Args:
        llm: The frozen causal LM.
        tokenizer: Its tokenizer.
        editor: The RECIPE editor (trained, or untrained for smoke runs).
        config: :class:`EvalConfig`.
        store_factory: ``namespace -> RecipeKnowledgeStore``; defaults to in-memory stores
            from :func:`make_store_factory`. It must return an empty-able store per call.
        progress: Show tqdm bars (``None``: only on a terminal).
        sentence_embeddings: The plain sentence encoder of the text-RAG baseline (any
            LangChain ``Embeddings``); ``None`` loads all-MiniLM-L6-v2 when a text-RAG
            method needs it.

    Example:
        >>> evaluator = LifelongEvaluator(llm, tok, editor, EvalConfig(edits=10))  # doctest: +SKIP
        >>> results = evaluator.run(examples, questions=questions, out_dir="out")  # doctest: +SKIP
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        editor: RecipeEditor,
        config: EvalConfig,
        *,
        store_factory: StoreFactory | None = None,
        progress: bool | None = None,
        sentence_embeddings: Any = None,
    ) -> None:
        self.lm = PrefixedCausalLM(llm, tokenizer)
        self.tokenizer = tokenizer
        self.editor = editor
        self.config = config
        self.progress = progress
        self.store_factory = store_factory or make_store_factory(editor, config)
        self.prompt_len = editor.config.prompt_len
        self.outputs = LLMOutputs(self.lm, tokenizer, gen_tokens=config.gen_tokens,
                                  gen_batch_size=config.gen_batch_size, score_batch_size=config.batch_size,
                                  progress=progress)
        self._costs = InputCosts(
            llm_tokens=self.outputs.llm_tokens,
            cl100k_tokens=self.outputs.cl100k_tokens,
            prefix_len=lambda statement: self.planner.prefixes[statement].shape[0],
            counts_cl100k=self.outputs.counts_cl100k,
        )
        self.text_rag = TextRagBaseline(
            tokenizer,
            sentence_embeddings,
            prompt_format="plain" if config.text_rag_format == "auto" else config.text_rag_format,
            batch_size=config.gate_batch_size,
            progress=progress,
        )
        self.planner = MethodPlanner(self.lm, self.text_rag, config.gate_batch_size, progress)
        self.latency = LatencyMeter(self.lm, tokenizer, self.text_rag, config, self.planner.as_prefix,
                                    lambda: self.planner.recipe_sim_threshold, progress)

    # ------------------------------------------------------------------ public API
    def select(
        self,
        examples: Sequence[EditExample],
        *,
        dev_pool: Sequence[EditExample] | None = None,
        dev_source: str = "same file",
    ) -> Selection:
        """:func:`select_examples` with this run's settings and the encoder's token limit."""
        enc_tok = self.editor.encoder.tokenizer
        max_len = self.editor.config.max_length
        return select_examples(
            examples,
            self.config.edits,
            seed=self.config.seed,
            dev_size=self.config.dev_size if any(m in self.config.methods for m in NEEDS_DEV) else 0,
            dev_pool=dev_pool,
            dev_source=dev_source,
            fits=lambda exs: fits_encoder(exs, enc_tok, max_len),
            duplicate_facts=self.config.duplicate_facts,
        )

    def run(
        self,
        examples: Sequence[EditExample],
        *,
        questions: Sequence[LocalityPrompt] = (),
        dev_pool: Sequence[EditExample] | None = None,
        dev_source: str = "same file",
        dev_questions: Sequence[LocalityPrompt] | None = None,
        run_info: dict[str, Any] | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> EvalResults:
        """Select, tune, edit sequentially, measure at each checkpoint; return the results.

        Args:
            examples: All examples of the data file (the run shuffles and selects).
            questions: General questions for the false-fire rate (the first
                ``general_n`` are used; too-long ones are dropped). The next
                ``dev_general_n`` serve as text-rag's dev negatives unless
                ``dev_questions`` is given.
            dev_pool: Separate examples to draw the dev split from (default: the rest of
                ``examples``).
            dev_source: Description of the dev pool for the results.
            dev_questions: General questions used as dev negatives (default: see ``questions``).
            run_info: Extra configuration to record (data file, hash, checkpoint, ...).
            out_dir: Where ``results.partial.json`` is written after each checkpoint
                (``None``: nowhere). :mod:`recipe_chain.evaluation.report` writes the
                final files.
            resume: Continue from ``out_dir/results.partial.json`` if its configuration
                matches (needs a persistent store from the factory).

        Returns:
            The :class:`EvalResults` (``complete=True``).

        Raises:
            ValueError: Too few examples, no dev split for text-rag, or a partial file
                that does not match this configuration.
        """
        started = time.perf_counter()
        phases: dict[str, float] = {}
        cfg = self.config
        self.planner.clear()
        self.outputs.clear()
        t0 = time.perf_counter()
        selection = self.select(examples, dev_pool=dev_pool, dev_source=dev_source)
        all_questions = list(questions)
        questions = self._usable_questions(all_questions[: cfg.general_n])
        if dev_questions is None:
            dev_questions = all_questions[cfg.general_n : cfg.general_n + cfg.dev_general_n]
        dev_questions = self._usable_questions(list(dev_questions)[: cfg.dev_general_n])
        phases["selection"] = time.perf_counter() - t0
        eval_examples = selection.eval_examples
        edit_ids = [f"eval-{i:06d}" for i in range(len(eval_examples))]
        config_dump = {
            "eval": cfg.model_dump(mode="json"),
            "llm_id": llm_id_of(self.lm.model),
            "editor_fingerprint": self.editor.fingerprint,
            "editor_config": self.editor.config.model_dump(mode="json"),
            "n_general_questions": len(questions),
            "n_dev_general_questions": len(dev_questions) if "text-rag" in cfg.methods else 0,
            **(run_info or {}),
        }
        config_key = run_key(config_dump, selection)
        out = Path(out_dir) if out_dir is not None else None

        state = RunState()
        if resume:
            if out is None:
                raise ValueError("resume needs out_dir (where results.partial.json lives)")
            state = load_partial(out / PARTIAL_FILE, config_key)
        self.outputs.journal = None
        if out is not None:
            self.outputs.open_journal(out / JOURNAL_FILE, config_key, resume)
        store = self.store_factory("eval")
        if self._uses_index():
            self.text_rag.open()
        if state.t_done:
            self._prepare_resume(store, edit_ids, state.t_done)
            self.planner.recipe_sim_threshold = state.threshold.value if state.threshold is not None else None
            if state.rag_tuning is not None:
                self.text_rag.adopt(state.rag_tuning)
            if self.text_rag.index is not None:  # the index is in memory: rebuild it from the edits made
                for i in range(state.t_done):
                    self.text_rag.add_edit(eval_examples[i], edit_ids[i])
            logger.info("Resuming after %d of %d edits", state.t_done, len(eval_examples))
        else:
            store.clear()

        if "text-rag-recipe-sim" in cfg.methods and state.threshold is None:
            t0 = time.perf_counter()
            state.threshold = self.tune_threshold(selection.dev_examples, selection.dev_source)
            self.planner.recipe_sim_threshold = state.threshold.value
            phases["dev_tuning_recipe_sim"] = time.perf_counter() - t0
        if "text-rag" in cfg.methods and state.rag_tuning is None:
            t0 = time.perf_counter()
            state.rag_tuning = self.tune_text_rag(selection.dev_examples, dev_questions)
            phases["dev_tuning"] = time.perf_counter() - t0

        checkpoints = set(cfg.checkpoints())
        probes = set(cfg.gate_probes())
        editing_s = 0.0
        measure_s = 0.0
        bar = progress_bar(range(state.t_done, len(eval_examples)), self.progress, desc="sequential edits", unit="edit",
                   initial=state.t_done, total=len(eval_examples))
        for i in bar:
            ex = eval_examples[i]
            metadata: dict[str, str | int] = {"eval_index": i}
            if ex.case_id is not None:
                metadata["case_id"] = ex.case_id
            t0 = time.perf_counter()
            store.add_edit(ex.prompt, ex.target_new, subject=ex.subject, metadata=metadata, edit_id=edit_ids[i])
            dt = time.perf_counter() - t0
            if self.text_rag.index is not None:
                self.text_rag.add_edit(ex, edit_ids[i])
            state.edit_latencies.append(dt)
            editing_s += dt
            t = i + 1
            if t in probes:
                state.gate_latency.append(self.latency.probe_gate(store, eval_examples[:t], questions, t))
            if t in checkpoints:
                t0 = time.perf_counter()
                final = t == len(eval_examples)
                measured, idx, subsampled = self._checkpoint_sample(eval_examples[:t], t, final)
                result = self.measure(
                    store,
                    measured,
                    [edit_ids[j] for j in idx],
                    questions,
                    t=t,
                    subsampled=subsampled,
                    with_latency=final,
                    seed=cfg.seed * 1_000_003 + t,
                    stored=eval_examples[:t],
                )
                state.checkpoints.append(result)
                measure_s += time.perf_counter() - t0
                _log_checkpoint(result)
                state.t_done = t
                if out is not None and not final:
                    save_partial(
                        out / PARTIAL_FILE,
                        config_key,
                        state,
                        self._results(state, config_dump, selection, phases, started, complete=False),
                    )
        phases["editing"] = editing_s
        phases["measurement"] = measure_s
        store.close()
        self.text_rag.close()
        results = self._results(state, config_dump, selection, phases, started, complete=True)
        if out is not None:
            for name in (PARTIAL_FILE, JOURNAL_FILE):
                if (out / name).exists():
                    (out / name).unlink()
        self.outputs.journal = None
        return results

    # ------------------------------------------------------------------ dev tuning
    def tune_text_rag(
        self, dev_examples: Sequence[EditExample], dev_questions: Sequence[LocalityPrompt] = ()
    ) -> TextRagTuning:
        """Tune the fair text-RAG baseline on dev (see :meth:`TextRagBaseline.tune`) and adopt it.

        Dev generations are cached like the run's but not journaled.

        Raises:
            ValueError: Without dev examples, or without any dev negatives.
        """

        def generate(keys: set[tuple[str, None]]) -> dict[tuple[str, None], str]:
            with self.outputs.unjournaled():
                out = self.outputs.generate(keys, lambda statement: None, desc="dev generate")
            return {k: out[k] for k in keys}

        return self.text_rag.tune(
            dev_examples,
            dev_questions,
            generate,
            prompt_format=self.config.text_rag_format,
            format_dev_sample=self.config.format_dev_sample,
        )

    def _uses_index(self) -> bool:
        return any(m in self.config.methods for m in ("text-rag", "text-rag-top1"))

    def tune_threshold(self, dev_examples: Sequence[EditExample], dev_source: str) -> TextRagThreshold:
        """Tune ``text-rag-recipe-sim``'s RECIPE-similarity threshold in a temporary store namespace.

        See :data:`THRESHOLD_PROCEDURE`. The dev namespace is cleared afterwards.
        """
        if not dev_examples:
            raise ValueError("text-rag needs dev examples to tune its threshold")
        dev_store = self.store_factory("eval-dev")
        try:
            dev_store.clear()
            dev_ids = [f"dev-{i:06d}" for i in range(len(dev_examples))]
            for ex, eid in zip(
                progress_bar(dev_examples, self.progress, desc="dev store", unit="edit"), dev_ids
            ):
                dev_store.add_edit(ex.prompt, ex.target_new, subject=ex.subject, edit_id=eid)
            rows = rows_for(dev_examples, ())
            gates = self.planner.gate_all(dev_store, [r.text for r in rows], desc="gate dev")
            hit_sims: list[float] = []
            hit_ok: list[bool] = []
            non_sims: list[float] = []
            for r in rows:
                g = gates[r.text]
                if g.top_sim is None:
                    continue
                if r.kind == "locality":
                    non_sims.append(g.top_sim)
                else:
                    hit_sims.append(g.top_sim)
                    hit_ok.append(g.top_id == dev_ids[r.example])  # type: ignore[index]
            value, objective, hit_acc, non_fire = best_threshold(hit_sims, hit_ok, non_sims)
            result = TextRagThreshold(
                value=value,
                dev_size=len(dev_examples),
                dev_source=dev_source,
                dev_rows={"hit": len(hit_sims), "locality": len(non_sims)},
                dev_objective=objective,
                dev_hit_accuracy=hit_acc,
                dev_non_fire=non_fire,
            )
            logger.info(
                "text-rag threshold %.4f (dev objective %.3f: hit accuracy %s, non-fire %s)",
                value, objective, hit_acc, non_fire,
            )
            return result
        finally:
            self.planner.edit_of.clear()  # dev edit ids are gone with the dev namespace
            dev_store.clear()
            dev_store.close()

    # ------------------------------------------------------------------ portability
    def use_tuning(self, tuning: TextRagTuning | None, recipe_sim: TextRagThreshold | None = None) -> None:
        """Adopt text-RAG settings tuned by an earlier :meth:`run` (e.g. for :meth:`answer_questions`)."""
        if tuning is not None:
            self.text_rag.adopt(tuning)
        if recipe_sim is not None:
            self.planner.recipe_sim_threshold = recipe_sim.value

    def answer_questions(
        self,
        edits: Sequence[EditExample],
        questions: Sequence[LocalityPrompt],
        *,
        namespace: str = "questions",
        desc: str = "questions",
        oracle_statements: Sequence[Sequence[str]] | None = None,
    ) -> dict[str, QuestionMetrics]:
        """Edit ``edits`` into a fresh store, then ask ``questions`` with every method.

        This measures what an edit implies beyond its own prompt (portability: a
        question whose answer follows from the edited facts). Each question's
        ``accepted_answers`` are the answers that count; answer accuracy is
        :func:`~recipe_chain.evaluation.answers.contains_answer` on the greedy output.
        ``text-rag-oracle`` puts the statements of ``oracle_statements`` (per question:
        the edits it depends on) in front, the upper bound of text in the context when
        the right statements are known.

        Args:
            edits: The edits, made one at a time (a repeated prompt supersedes).
            questions: The questions, with their accepted answers.
            namespace: Store namespace (cleared before and after).
            desc: Progress-bar label.
            oracle_statements: Per question, the statements ``text-rag-oracle`` gives it
                (default: none, so the oracle answers as ``no-edit``).

        Returns:
            Method name -> :class:`QuestionMetrics`.

        Raises:
            ValueError: If a text-RAG method's threshold is not set (run :meth:`run` or
                :meth:`use_tuning` first).
        """
        methods = self.config.methods
        if "text-rag" in methods and self.text_rag.threshold is None:
            raise ValueError("text-rag's threshold is not set; call use_tuning() with a run's text_rag_tuning")
        if "text-rag-recipe-sim" in methods and self.planner.recipe_sim_threshold is None:
            raise ValueError("text-rag-recipe-sim's threshold is not set; call use_tuning()")
        store = self.store_factory(namespace)
        with self.outputs.unjournaled():
            index = self.text_rag.new_index() if self._uses_index() else None
            try:
                store.clear()
                ids: list[str] = []
                for i, ex in enumerate(progress_bar(edits, self.progress, desc=f"{desc}: edits", unit="edit", leave=False)):
                    eid = f"{namespace}-{i:06d}"
                    store.add_edit(ex.prompt, ex.target_new, subject=ex.subject, edit_id=eid)
                    if index is not None:
                        self.text_rag.add_edit(ex, eid, index)
                    ids.append(eid)
                chat = self.text_rag.has_chat_template()  # questions are asked as a user asks an instruct model
                rows = [Row("general", None, q.prompt, None, answers=q.accepted_answers, chat=chat) for q in questions]
                texts = [r.text for r in rows]
                gates = self.planner.gate_all(store, texts, desc=f"{desc}: gate")
                hits = self.text_rag.search_all(texts, f"{desc}: search", index) if index is not None else {}
                if oracle_statements is not None and len(oracle_statements) != len(rows):
                    raise ValueError(f"{len(oracle_statements)} oracle statement lists for {len(rows)} questions")
                plans: dict[str, list[Plan]] = {}
                for m in ("no-edit", *[m for m in methods if m != "no-edit"]):
                    if m == "text-rag-oracle":
                        plans[m] = [
                            Plan("oracle", self.text_rag.text(r.text, CONTEXT_SEPARATOR.join(own),
                                                               "chat" if r.chat else None), None)
                            if own else self.planner.plan("no-edit", r, gates[r.text], ids, {}, None)
                            for r, own in zip(rows, oracle_statements or [()] * len(rows))
                        ]
                    else:
                        plans[m] = [self.planner.plan(m, r, gates[r.text], ids, {}, hits.get(r.text)) for r in rows]
                keys = {(p.text, p.prefix) for ps in plans.values() for p in ps}
                outputs = self.outputs.generate(keys, lambda st: self.planner.prefix(store, st), desc=f"{desc}: generate")
                return {
                    m: QuestionMetrics(
                        n=len(rows),
                        answer_accuracy=M.rate(
                            A.contains_answer(outputs[(p.text, p.prefix)], r.answers) for p, r in zip(plans[m], rows)
                        ),
                        fired=M.rate(p.fired is not None for p in plans[m]),
                    )
                    for m in methods
                }
            finally:
                if index is not None:
                    index.close()
                store.clear()
                store.close()

    # ------------------------------------------------------------------ measurement
    def measure(
        self,
        store: Any,
        examples: Sequence[EditExample],
        edit_ids: Sequence[str],
        questions: Sequence[LocalityPrompt] = (),
        *,
        t: int,
        subsampled: bool = False,
        with_latency: bool = False,
        seed: int = 0,
        stored: Sequence[EditExample] | None = None,
    ) -> CheckpointResult:
        """Measure every method on ``examples`` (whose edits, ``edit_ids``, are in ``store``).

        Args:
            store: The knowledge store holding (at least) the examples' edits.
            examples: The examples to measure.
            edit_ids: Each example's edit id in ``store``.
            questions: General questions (gate statistics only).
            t: Store size, for the record.
            subsampled: Whether ``examples`` is a subsample, for the record.
            with_latency: Also time each method per query (batch size 1).
            seed: Seed of the latency sample and of the generation subsample.
            stored: Every edit in ``store`` (default: ``examples``). Locality prompts that
                ask a fact one of them changed are scored apart
                (:class:`~recipe_chain.evaluation.edited_facts.EditedFacts`).

        Returns:
            The :class:`CheckpointResult`.

        Raises:
            ValueError: If the lengths disagree, or text-rag's threshold is not tuned.
        """
        if len(examples) != len(edit_ids):
            raise ValueError(f"{len(examples)} examples but {len(edit_ids)} edit ids")
        if "text-rag-recipe-sim" in self.config.methods and self.planner.recipe_sim_threshold is None:
            raise ValueError("text-rag-recipe-sim's threshold is not tuned yet; call tune_threshold() first")
        if "text-rag" in self.config.methods and self.text_rag.threshold is None:
            raise ValueError("text-rag's threshold is not tuned yet; call tune_text_rag() first")
        if self._uses_index() and self.text_rag.index is None:
            raise ValueError("the text-RAG methods need the statement index of the store (run() builds it)")
        started = time.perf_counter()
        inactive = _inactive_ids(store)
        keep = [i for i, eid in enumerate(edit_ids) if eid not in inactive]
        excluded = len(examples) - len(keep)
        if excluded:
            logger.warning("%d measured edits are superseded in the store; they are left out", excluded)
        examples = [examples[i] for i in keep]
        edit_ids = [edit_ids[i] for i in keep]
        facts = EditedFacts(examples if stored is None else stored)
        rows = [
            replace(r, edited_fact=True) if r.kind == "locality" and facts.asks_edited_fact(r.text, r.target) else r
            for r in rows_for(examples, questions)
        ]

        t0 = time.perf_counter()
        gates = self.planner.gate_all(store, [r.text for r in rows], desc=f"gate t={t}")
        gate_batch_s = time.perf_counter() - t0
        hits: dict[str, StatementHit | None] = {}
        if self._uses_index():
            hits = self.text_rag.search_all([r.text for r in rows], f"text-rag search t={t}")

        methods = self.config.methods
        computed = ("no-edit", *[m for m in methods if m != "no-edit"])
        statements = {eid: ex.statement for eid, ex in zip(edit_ids, examples)}
        plans: dict[str, list[Plan]] = {
            m: [self.planner.plan(m, r, gates[r.text], edit_ids, statements, hits.get(r.text)) for r in rows]
            for m in computed
        }
        scored = [i for i, r in enumerate(rows) if r.kind in SCORED_KINDS]
        gen_examples = self._gen_subset(len(examples), seed)
        generated = [i for i in scored if gen_examples is None or rows[i].example in gen_examples]
        answered: set[int] = set()
        if with_latency and self.config.general_answer_n:
            # general ability: questions asked as a user asks an instruct model, through its chat
            # template (gated on the question itself, like every other row of the same text)
            chat = self.text_rag.has_chat_template()
            extra = [
                Row("general_answer", None, r.text, None, answers=r.answers, chat=chat)
                for r in rows if r.kind == "general"
            ][: self.config.general_answer_n]
            answered = set(range(len(rows), len(rows) + len(extra)))
            rows = [*rows, *extra]
            for m in computed:
                plans[m] += [self.planner.plan(m, r, gates[r.text], edit_ids, statements, hits.get(r.text)) for r in extra]
        generated += sorted(answered)
        if with_latency and self.config.chat_path and self.text_rag.has_chat_template():
            # the chat path: the same questions as a user's turn of the chat template, gated on that turn
            extra = [
                replace(rows[i], kind=f"chat_{rows[i].kind}", chat=True)
                for i in generated if rows[i].kind in ("prompt", "paraphrase")
            ]
            generated += range(len(rows), len(rows) + len(extra))
            rows = [*rows, *extra]
            for m in computed:
                plans[m] += [self.planner.plan(m, r, gates[r.text], edit_ids, statements, hits.get(r.text)) for r in extra]

        # 1. greedy generations (unique inputs only)
        gen_keys = {(plans[m][i].text, plans[m][i].prefix) for m in computed for i in generated}
        gen_keys |= {(r.text, None) for r in rows if r.kind == "locality" and r.target is None}
        gen_out = self.outputs.generate(gen_keys, lambda st: self.planner.prefix(store, st), desc=f"generate t={t}")
        # locality targets: the reference answer, else the unedited greedy continuation
        targets: list[str | None] = []
        for r in rows:
            if r.kind == "locality" and r.target is None:
                targets.append(first_line(gen_out[(r.text, None)]))
            else:
                targets.append(r.target)
        # 2. teacher-forced scores (unique inputs only)
        tf_keys = {
            (plans[m][i].text, targets[i], plans[m][i].prefix)
            for m in computed
            for i in scored
            if targets[i] is not None
        }
        tf_out = self.outputs.score(tf_keys, lambda st: self.planner.prefix(store, st), desc=f"score t={t}")

        for m in computed:  # every used prefix, for its length (it varies with target slots)
            for plan in plans[m]:
                self.planner.prefix(store, plan.prefix)
        method_metrics = {
            m: assemble(m, rows, plans, targets, gen_out, tf_out, edit_ids, self._costs, gen_examples, answered)
            for m in methods
        }
        if answered:
            method_metrics = {
                m: mm.model_copy(update=general_delta(m, rows, plans, gen_out, sorted(answered)))
                for m, mm in method_metrics.items()
            }
        if with_latency and self.config.latency_samples:
            latencies = self.latency.measure(store, rows, targets, edit_ids, statements, seed)
            method_metrics = {
                m: mm.model_copy(update={"latency": latencies[m]}) for m, mm in method_metrics.items()
            }
        counts = {
            "prompt": sum(r.kind == "prompt" for r in rows),
            "paraphrase": sum(r.kind == "paraphrase" for r in rows),
            "locality": sum(r.kind == "locality" and not r.edited_fact for r in rows),
            "locality_scored": sum(r.kind == "locality" and not r.edited_fact and targets[i] is not None
                                   for i, r in enumerate(rows)),
            "locality_edited_fact": sum(r.edited_fact for r in rows),
            "general": sum(r.kind == "general" for r in rows),
            "generation_examples": len(examples) if gen_examples is None else len(gen_examples),
            "general_answered": len(answered),
            "chat_answered": sum(r.kind == "chat_prompt" for r in rows),
        }
        return CheckpointResult(
            t=t,
            n_measured=len(examples),
            subsampled=subsampled,
            n_superseded_excluded=excluded,
            counts=counts,
            methods=method_metrics,
            diagnostics=diagnostics(rows, gates, edit_ids),
            gate_batch_s=gate_batch_s,
            wall_s=time.perf_counter() - started,
        )

    # ------------------------------------------------------------------ internals: run state
    def _usable_questions(self, questions: Sequence[LocalityPrompt]) -> list[LocalityPrompt]:
        questions = list(questions)
        if not questions:
            return []
        enc_tok = self.editor.encoder.tokenizer
        lengths = [len(ids) for ids in enc_tok([q.prompt for q in questions])["input_ids"]]
        usable = [q for q, n in zip(questions, lengths) if n <= self.editor.config.max_length]
        if len(usable) < len(questions):
            logger.warning(
                "%d general questions exceed the encoder limit and are left out", len(questions) - len(usable)
            )
        return usable

    def _gen_subset(self, n: int, seed: int) -> set[int] | None:
        cap = self.config.gen_sample
        if cap is None or n <= cap:
            return None
        return set(random.Random(seed + 7).sample(range(n), cap))

    def _checkpoint_sample(
        self, examples: Sequence[EditExample], t: int, final: bool
    ) -> tuple[list[EditExample], list[int], bool]:
        cap = self.config.final_sample if final else self.config.checkpoint_sample
        if cap is None or t <= cap:
            return list(examples), list(range(t)), False
        idx = sorted(random.Random(self.config.seed + t).sample(range(t), cap))
        return [examples[i] for i in idx], idx, True

    def _prepare_resume(self, store: Any, edit_ids: Sequence[str], t_done: int) -> None:
        existing = {r.edit_id for r in store.list_edits(limit=None, include_inactive=True)}
        missing = [eid for eid in edit_ids[:t_done] if eid not in existing]
        if missing:
            raise ValueError(
                f"Cannot resume: the store lacks {len(missing)} of the first {t_done} edits (e.g. {missing[0]}); "
                "start over without --resume"
            )
        extra = [eid for eid in edit_ids[t_done:] if eid in existing]
        if extra:
            logger.info("Removing %d edits made after the last checkpoint", len(extra))
            store.delete_edits(extra)

    def _results(
        self,
        state: "RunState",
        config_dump: dict[str, Any],
        selection: Selection,
        phases: dict[str, float],
        started: float,
        *,
        complete: bool,
    ) -> EvalResults:
        checkpoints = list(state.checkpoints)
        final = checkpoints[-1] if complete and checkpoints else None
        return EvalResults(
            complete=complete,
            config=config_dump,
            machine=machine_info(),
            selection=selection.summary(),
            text_rag_threshold=state.threshold,
            text_rag_tuning=state.rag_tuning,
            edit_latency_s=M.latency_summary(state.edit_latencies),
            gate_latency=list(state.gate_latency),
            checkpoints=checkpoints,
            final=final,
            peak_memory_mib=peak_memory_mib(),
            wall_time_s=state.wall_s_before + (time.perf_counter() - started),
            phase_times_s=dict(phases),
        )


def _log_checkpoint(result: CheckpointResult) -> None:
    def f(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    parts = [
        f"{m}: rel {f(mm.reliability)} gen {f(mm.generality)} loc {f(mm.locality)}"
        for m, mm in result.methods.items()
    ]
    logger.info("T=%d (%d measured, %.0fs): %s", result.t, result.n_measured, result.wall_s, "; ".join(parts))


def _inactive_ids(store: Any) -> set[str]:
    try:
        records = store.list_edits(where={"active": False}, limit=None, include_inactive=True)
    except TypeError:  # pragma: no cover - a store without include_inactive
        return set()
    return {r.edit_id for r in records if not r.active}


# Names that lived here before the split, kept as deprecated aliases.
__getattr__ = moved_names(__name__, {
    "Method": "recipe_chain.evaluation.config",
    "METHODS": "recipe_chain.evaluation.config",
    "EvalConfig": "recipe_chain.evaluation.config",
    "GateStats": "recipe_chain.evaluation.results",
    "AddedTokens": "recipe_chain.evaluation.results",
    "MethodLatency": "recipe_chain.evaluation.results",
    "MethodMetrics": "recipe_chain.evaluation.results",
    "CheckpointResult": "recipe_chain.evaluation.results",
    "GateLatencyPoint": "recipe_chain.evaluation.results",
    "TextRagThreshold": "recipe_chain.evaluation.results",
    "QuestionMetrics": "recipe_chain.evaluation.results",
    "EvalResults": "recipe_chain.evaluation.results",
    "machine_info": "recipe_chain.evaluation.results",
    "peak_memory_mib": "recipe_chain.evaluation.results",
    "RESULTS_SCHEMA_VERSION": "recipe_chain.evaluation.results",
    "TextRagTuning": "recipe_chain.evaluation.text_rag_baseline",
    "Selection": "recipe_chain.evaluation.selection",
    "select_examples": "recipe_chain.evaluation.selection",
    "file_sha256": "recipe_chain.evaluation.selection",
    "best_threshold": "recipe_chain.evaluation.thresholds",
    "PARTIAL_FILE": "recipe_chain.evaluation.resume",
    "JOURNAL_FILE": "recipe_chain.evaluation.resume",
})
