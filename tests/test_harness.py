"""The lifelong-editing harness and ``recipe-chain eval``, on tiny random models.

Most tests use :class:`ScriptedStore`, a stand-in knowledge store whose gate decisions
are scripted (an example's prompt and paraphrase hit its own edit, its locality prompt's
best candidate is its own edit but below the sentinel, general questions are far from
everything). Known decisions give exact expected gate statistics and let the tests
check that every method uses the edit it should. One test runs the real
:class:`~recipe_chain.store.RecipeKnowledgeStore`, and one the real default models.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from langchain_core.embeddings import Embeddings
from transformers import AutoTokenizer, BertModel

from recipe_chain import RecipeEditor
from recipe_chain.cli import build_parser, main
from recipe_chain.data import EditExample, LocalityPrompt, load_edit_examples
from recipe_chain.evaluation.config import METHODS, EvalConfig
from recipe_chain.models import EditingModels
from recipe_chain.evaluation.harness import LifelongEvaluator
from recipe_chain.evaluation.resume import JOURNAL_FILE, PARTIAL_FILE
from recipe_chain.evaluation.results import EvalResults
from recipe_chain.evaluation.selection import select_examples
from recipe_chain.evaluation.text_rag_baseline import TextRagTuning
from recipe_chain.evaluation.thresholds import best_threshold
from recipe_chain.evaluation.edited_facts import EditedFacts
from recipe_chain.evaluation.report import markdown_report, write_report
from recipe_chain.statement_index import SentenceEmbeddings
from tiny_models import tiny_backbone, tiny_causal_lm

# ------------------------------------------------------------------------------- models


@functools.lru_cache(maxsize=1)
def _backbone_dir() -> str:
    directory = Path(tempfile.mkdtemp(prefix="harness-backbone-"))
    tiny_backbone(directory)
    return str(directory)


@functools.lru_cache(maxsize=1)
def tiny_set():
    """``(llm, tokenizer, editor)``: a 2-layer Llama and a tiny untrained RECIPE editor."""
    llm, tokenizer = tiny_causal_lm("llama")
    path = _backbone_dir()
    backbone, backbone_tokenizer = BertModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    backbone.eval()
    editor = RecipeEditor.from_backbone(
        llm, backbone, backbone_tokenizer, backbone_id=path, seed=0,
        rep_dim=16, head_hidden_dim=32, prompt_hidden_dim=32, backbone_tuning="frozen",
    )
    return llm, tokenizer, editor


@pytest.fixture(scope="module", autouse=False)
def models():
    yield tiny_set()


class ScriptedEmbeddings(Embeddings):
    """Sentence embeddings with scripted cosine similarities for :func:`make_examples` texts.

    A statement of Land<i> is the unit vector of axis i. Against it, the edit prompt
    scores 0.95, its paraphrase 0.9, its locality prompt (Isle<i>) 0.4; general
    questions are orthogonal to every statement (0.0).
    """

    DIM = 256

    def _vector(self, text: str) -> list[float]:
        v = [0.0] * self.DIM
        m = re.search(r"(Land|Isle)(\d+)", text)
        if m is None:
            v[255] = 1.0
            return v
        i = int(m.group(2)) % 240  # axes 240.. are the query kinds
        if m.group(1) == "Isle":
            a, extra = 0.4, 252
        elif text.startswith(f"Land{i} has"):
            a, extra = 0.9, 251
        elif text.rstrip().endswith(" is"):
            a, extra = 0.95, 250
        else:  # a statement
            a, extra = 1.0, None
        v[i] = a
        if extra is not None:
            v[extra] = math.sqrt(1 - a * a)
        return v

    def embed_documents(self, texts):
        return [self._vector(t) for t in texts]

    def embed_query(self, text):
        return self._vector(text)


@pytest.fixture(autouse=True)
def scripted_sentence_embeddings(monkeypatch):
    """The text-RAG baseline's sentence encoder is scripted in these tests (no MiniLM load)."""
    monkeypatch.setattr(SentenceEmbeddings, "default", classmethod(lambda cls: ScriptedEmbeddings()))


def make_examples(n: int, offset: int = 0) -> list[EditExample]:
    targets = ["Paris", "Rome", "London", "English", "French", "Islam", "piano"]
    return [
        EditExample(
            prompt=f"The capital of Land{i} is",
            target_new=targets[i % len(targets)],
            subject=f"Land{i}",
            paraphrases=[f"Land{i} has its capital in"],
            locality=[LocalityPrompt(prompt=f"The capital of Isle{i} is", answer="Rome")],
            case_id=str(i),
            source_format="counterfact_flat",
        )
        for i in range(offset, offset + n)
    ]


QUESTIONS = [LocalityPrompt(prompt=f"who wrote book number {i}?", answer="Alex") for i in range(5)]

# ------------------------------------------------------------------------------- scripted store


@dataclass(frozen=True)
class Rec:
    edit_id: str
    prompt: str
    target_new: str
    statement: str
    active: bool = True


@dataclass(frozen=True)
class Cand:
    record: Rec
    similarity: float


@dataclass(frozen=True)
class Gate:
    query: str
    hit: Rec | None
    hit_similarity: float | None
    sentinel_similarity: float
    margin: float
    gated: bool
    candidates: list
    prompt_vectors: torch.Tensor | None

    @property
    def fired(self) -> bool:
        return self.hit is not None


@dataclass
class ScriptedStore:
    """A knowledge store whose gate follows a script built from the examples' texts.

    * an example's prompt: its own edit, similarity 2.0 (sentinel 1.0) -> hit;
    * its paraphrases: its own edit, 1.8 -> hit;
    * its locality prompts: its own edit, 0.5 -> below the sentinel, no hit;
    * anything else (general questions): the first edit, 0.2 -> no hit.
    """

    editor: RecipeEditor
    script: dict[str, tuple[str, str]]  # text -> (kind, the example's prompt)
    fail_at_add: int | None = None
    records: dict[str, Rec] = field(default_factory=dict)
    by_prompt: dict[str, str] = field(default_factory=dict)
    adds: int = 0
    gate_batch_texts: list[list[str]] = field(default_factory=list)

    @classmethod
    def for_examples(cls, editor: RecipeEditor, examples: list[EditExample], **kwargs) -> "ScriptedStore":
        script: dict[str, tuple[str, str]] = {}
        for ex in examples:
            script[ex.prompt] = ("prompt", ex.prompt)
            for p in ex.paraphrases:
                script.setdefault(p, ("paraphrase", ex.prompt))
            for loc in ex.locality:
                script.setdefault(loc.prompt, ("locality", ex.prompt))
        return cls(editor, script, **kwargs)

    # -- contract subset used by the harness
    def add_edit(self, prompt, target_new, *, subject=None, metadata=None, edit_id=None):
        self.adds += 1
        if self.fail_at_add is not None and self.adds >= self.fail_at_add:
            raise RuntimeError("simulated crash")
        assert edit_id is not None and edit_id not in self.records
        rec = Rec(edit_id, prompt, target_new, f"{prompt.rstrip()} {target_new.strip()}")
        self.records[edit_id] = rec
        self.by_prompt[prompt] = edit_id
        return rec

    def clear(self):
        self.records.clear()
        self.by_prompt.clear()

    def close(self):
        pass

    def count(self, include_inactive=False):
        return len(self.records)

    def list_edits(self, where=None, limit=100, offset=0, include_inactive=False):
        recs = list(self.records.values())
        return recs if limit is None else recs[offset : offset + limit]

    def delete_edits(self, edit_ids):
        out = [self.records.pop(e) for e in edit_ids]
        for r in out:
            self.by_prompt.pop(r.prompt, None)
        return out

    def prompt_vectors(self, edit_id):
        rec = self.records[edit_id]
        return self.editor.prompt_vectors(self.editor.encode_statements([rec.statement]))[0]  # (P, D)

    def gate(self, text):
        kind, ex_prompt = self.script.get(text, ("general", ""))
        own = self.by_prompt.get(ex_prompt)
        sim = {"prompt": 2.0, "paraphrase": 1.8, "locality": 0.5}.get(kind, 0.2)
        if own is None:
            own, sim = next(iter(self.records)), 0.2
        rec = self.records[own]
        hit = rec if sim > 1.0 else None
        return Gate(text, hit, sim, 1.0, 0.0, True, [Cand(rec, sim)],
                    self.prompt_vectors(own) if hit is not None else None)

    def gate_batch(self, texts):
        self.gate_batch_texts.append(list(texts))
        return [self.gate(t) for t in texts]


def scripted_factory(editor, examples, stores: dict | None = None, **kwargs):
    """namespace -> the same ScriptedStore per namespace (a persistent store, in effect)."""
    stores = {} if stores is None else stores

    def factory(namespace: str) -> ScriptedStore:
        if namespace not in stores:
            stores[namespace] = ScriptedStore.for_examples(editor, examples, **kwargs)
        return stores[namespace]

    return factory


def _unit_values(metrics) -> list[float | None]:
    return [metrics.reliability, metrics.generality, metrics.locality, metrics.em_prompt,
            metrics.em_paraphrase, metrics.locality_unchanged, *metrics.gate.model_dump().values()]


# ------------------------------------------------------------------------------- selection & threshold


def test_select_examples_is_seeded_distinct_and_disjoint():
    examples = make_examples(30)
    dup = examples[3].model_copy(update={"target_new": "Berlin", "case_id": "dup"})  # same fact, other target
    examples.append(dup)
    a = select_examples(examples, 10, seed=0, dev_size=5)
    b = select_examples(examples, 10, seed=0, dev_size=5)
    c = select_examples(examples, 10, seed=1, dev_size=5)
    assert [e.case_id for e in a.eval_examples] == [e.case_id for e in b.eval_examples]
    assert [e.case_id for e in a.eval_examples] != [e.case_id for e in c.eval_examples]
    prompts = [e.prompt for e in a.eval_examples + a.dev_examples]
    assert len(prompts) == len(set(prompts)) == 15  # distinct facts, dev disjoint from eval
    full = select_examples(examples, 30, seed=0, dev_size=0)
    assert len({e.prompt for e in full.eval_examples}) == 30 and full.n_duplicate_prompts == 1
    with pytest.raises(ValueError, match="only 30 usable.*--duplicate-facts supersede"):
        select_examples(examples, 31, seed=0, dev_size=0)
    every = select_examples(examples, 31, seed=0, dev_size=0, duplicate_facts="supersede")
    assert len(every.eval_examples) == 31 and every.n_duplicate_prompts == 1
    assert every.summary()["duplicate_facts"] == "supersede"
    with pytest.raises(ValueError, match="--dev-data"):
        select_examples(examples, 30, seed=0, dev_size=5)


def test_select_examples_dev_pool_and_too_long():
    examples = make_examples(10)
    pool = make_examples(5, offset=8)  # Land8, Land9 overlap the eval examples
    sel = select_examples(examples, 10, seed=0, dev_size=5, dev_pool=pool, dev_source="pool")
    assert {e.subject for e in sel.dev_examples} == {"Land10", "Land11", "Land12"}
    assert sel.dev_source == "pool"
    sel = select_examples(examples, 8, seed=0, dev_size=0, fits=lambda exs: [e.subject != "Land0" for e in exs])
    assert sel.n_too_long == 1 and all(e.subject != "Land0" for e in sel.eval_examples)


def test_best_threshold_known_answers():
    # separable: correct hits at 2.0/1.8, negatives at 0.5 and 0.7 -> midway between 0.7 and 1.8
    value, objective, hit_acc, non_fire = best_threshold([2.0, 1.8], [True, True], [0.5, 0.7])
    assert (value, objective, hit_acc, non_fire) == (pytest.approx(1.25), 1.0, 1.0, 1.0)
    # a wrong top-1 never counts as a hit (2 of 3 at best); the best is to admit from 1.0 up
    value, objective, *_ = best_threshold([3.0, 1.0, 2.5], [False, True, True], [0.1])
    assert value == pytest.approx(0.55) and objective == pytest.approx((2 / 3 + 1) / 2)
    # negatives above every hit: never admitting scores 0.5, admitting all scores 0.5 -> lowest wins
    value, objective, *_ = best_threshold([1.0], [True], [2.0])
    assert objective == 0.5 and value == pytest.approx(0.0)  # min - 1
    # no correct hit at all: the lowest threshold that admits no negative (midway 0.5 .. 1.0)
    value, objective, hit_acc, non_fire = best_threshold([1.0], [False], [0.5])
    assert value == pytest.approx(0.75) and hit_acc == 0.0 and non_fire == 1.0
    # only negatives: never admit (max + 1)
    value, objective, hit_acc, non_fire = best_threshold([], [], [0.5, 0.9])
    assert value == pytest.approx(1.9) and hit_acc is None and non_fire == 1.0
    with pytest.raises(ValueError):
        best_threshold([], [], [])


def test_eval_config_validation_and_grids():
    cfg = EvalConfig(edits=250, t_grid=(100, 1, 10, 1000))
    assert cfg.checkpoints() == [1, 10, 100, 250]
    assert cfg.gate_probes() == [1, 2, 5, 10, 20, 50, 100, 200, 250]
    assert EvalConfig(edits=5, methods=("recipe", "no-edit")).methods == ("no-edit", "recipe")
    with pytest.raises(ValueError):
        EvalConfig(edits=5, methods=())
    with pytest.raises(ValueError, match="dev_size"):
        EvalConfig(edits=5, dev_size=0)
    assert EvalConfig(edits=5, dev_size=0, methods=("no-edit", "recipe")).dev_size == 0
    with pytest.raises(ValueError):
        EvalConfig(edits=0)


# ------------------------------------------------------------------------------- the harness


def test_scripted_run_every_method_uses_the_right_edit(models, tmp_path):
    llm, tok, editor = models
    examples = make_examples(40)
    cfg = EvalConfig(edits=20, dev_size=10, general_n=5, t_grid=(1, 10), latency_samples=3,
                     gate_latency_samples=2, gen_tokens=4, general_answer_n=4)
    stores: dict = {}
    evaluator = LifelongEvaluator(llm, tok, editor, cfg, store_factory=scripted_factory(editor, examples, stores),
                                  progress=False)
    started = time.perf_counter()
    results = evaluator.run(examples, questions=QUESTIONS, out_dir=tmp_path, run_info={"data": {"path": "x.json"}})
    assert time.perf_counter() - started < 60

    # gate every query once per measurement, in batches
    store = stores["eval"]
    per_measure = [texts for texts in store.gate_batch_texts]
    assert all(len(b) == len(set(b)) for b in per_measure)
    final = results.final
    assert final is not None and final.t == 20 and final.n_measured == 20 and results.complete
    assert [cp.t for cp in results.checkpoints] == [1, 10, 20]
    assert final.counts == {"prompt": 20, "paraphrase": 20, "locality": 20, "locality_scored": 20, "general": 5,
                            "generation_examples": 20, "general_answered": 4, "locality_edited_fact": 0,
                            "chat_answered": 0}
    assert set(final.methods) == set(METHODS)
    assert all(cp.counts["general_answered"] == 0 for cp in results.checkpoints[:-1])  # final T only

    # the RECIPE-similarity threshold separates the scripted similarities (hits >= 1.8, locality 0.5)
    th = results.text_rag_threshold
    assert th is not None and th.value == pytest.approx((0.5 + 1.8) / 2) and th.dev_objective == 1.0
    assert "dev store holds D" in th.procedure
    # the cosine threshold of the fair baseline separates paraphrases (0.9) from locality prompts (0.4)
    tuning = results.text_rag_tuning
    assert tuning is not None and tuning.threshold.value == pytest.approx(0.65)
    assert tuning.threshold.balanced_accuracy == 1.0
    assert tuning.dev_rows == {"positive": 20, "negative": 10, "negative_locality": 10, "negative_general": 0}
    assert tuning.format in ("plain", "chat") and tuning.format_scores["plain"]["score"] is not None

    m = final.methods
    no, rc, ng, rag, top1, sim, orc = (m[k] for k in METHODS)
    # text-rag-top1 always fires; the RECIPE-similarity variant fires where the scripted gate does
    assert top1.gate.false_fire_locality == 1.0 and top1.gate.false_fire_general == 1.0
    assert top1.gate.correct_hit_prompt == 1.0
    assert sim.gate.model_dump() == rc.gate.model_dump()
    # general ability: a method that never fires on general questions answers them as no-edit
    for method in (no, rc, rag):
        assert method.general_answer_accuracy == no.general_answer_accuracy
        assert method.general_answer_delta == 0.0 and method.general_answer_delta_ci95 == 0.0
    assert top1.general_answer_delta is not None and top1.general_answer_delta_ci95 is not None
    assert no.gate.model_dump() == {"hit_rate": 0.0, "correct_hit_prompt": 0.0, "correct_hit_paraphrase": 0.0,
                                    "false_fire_locality": 0.0, "false_fire_general": 0.0,
                                    "fire_on_edited_fact": None}
    assert rc.gate.model_dump() == {"hit_rate": 1.0, "correct_hit_prompt": 1.0, "correct_hit_paraphrase": 1.0,
                                    "false_fire_locality": 0.0, "false_fire_general": 0.0,
                                    "fire_on_edited_fact": None}
    assert ng.gate.false_fire_locality == 1.0 and ng.gate.false_fire_general == 1.0
    assert rag.gate.model_dump() == rc.gate.model_dump()
    assert orc.gate.false_fire_locality == 1.0 and orc.gate.false_fire_general is None
    # a method that leaves a locality prompt untouched keeps every unedited token and output
    for method in (no, rc, rag):
        assert method.locality == 1.0 and method.locality_unchanged == 1.0
    # same prefixes on prompts/paraphrases -> same scores; same text -> same scores
    assert ng.reliability == rc.reliability and ng.generality == rc.generality
    assert ng.em_prompt == rc.em_prompt
    assert rag.reliability == orc.reliability and rag.generality == orc.generality
    assert rc.conditional["reliability_given_correct_hit"] == rc.reliability
    # added input: recipe 3 virtual tokens on 40 of 60 scored queries, text RAG adds text
    assert rc.added_tokens.virtual == pytest.approx(3 * 40 / 60) and rc.added_tokens.llm_text == 0
    assert rc.added_tokens.cl100k == 0 and ng.added_tokens.virtual == 3.0
    assert rag.added_tokens.llm_text > 0 and rag.added_tokens.cl100k > 0 and rag.added_tokens.virtual == 0
    assert orc.added_tokens.llm_text > rag.added_tokens.llm_text
    assert no.added_tokens.llm_total == 0
    assert final.diagnostics["retrieval_top1_prompt"] == 1.0
    assert final.diagnostics["gate_admits_correct_top1_paraphrase"] == 1.0
    for method in m.values():
        assert all(v is None or 0.0 <= v <= 1.0 for v in _unit_values(method))
        assert method.latency is not None and method.latency.generate_s["n"] == 3
    # edit latencies, gate latency probes, memory, JSON round trip
    assert results.edit_latency_s["n"] == 20
    assert [p.store_size for p in results.gate_latency] == [1, 2, 5, 10, 20]
    assert results.peak_memory_mib and results.peak_memory_mib > 10
    paths = write_report(results, tmp_path)
    raw = json.loads(paths["json"].read_text())
    for key in ("schema_version", "complete", "config", "machine", "selection", "text_rag_threshold",
                "edit_latency_s", "gate_latency", "checkpoints", "final", "peak_memory_mib", "wall_time_s"):
        assert key in raw
    assert raw["config"]["eval"]["edits"] == 20 and raw["config"]["editor_fingerprint"] == editor.fingerprint
    assert raw["config"]["llm_id"] == "tiny-llama"
    assert EvalResults.model_validate(raw) == results
    assert paths["metrics_vs_T"].stat().st_size > 10_000 and paths["gate_latency"].exists()
    assert paths["scale"].stat().st_size > 5_000 and paths["text_rag_dev_curve"].stat().st_size > 5_000
    text = paths["markdown"].read_text()
    assert "| `recipe` |" in text and "## Metrics against T" in text and "threshold" in text
    assert not (tmp_path / PARTIAL_FILE).exists()


def test_partial_results_and_resume(models, tmp_path):
    llm, tok, editor = models
    examples = make_examples(30)
    cfg = EvalConfig(edits=20, dev_size=5, general_n=2, t_grid=(1, 5, 10), latency_samples=1,
                     gate_latency_samples=1, gen_tokens=3, methods=("no-edit", "recipe", "text-rag"))
    stores: dict = {}
    crash = LifelongEvaluator(
        llm, tok, editor, cfg, progress=False,
        store_factory=scripted_factory(editor, examples, stores, fail_at_add=13),
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        crash.run(examples, questions=QUESTIONS, out_dir=tmp_path)
    partial = json.loads((tmp_path / PARTIAL_FILE).read_text())
    assert partial["complete"] is False and partial["resume"]["t_done"] == 10
    assert [c["t"] for c in partial["checkpoints"]] == [1, 5, 10]
    assert "PARTIAL" in markdown_report(EvalResults.model_validate({k: v for k, v in partial.items() if k != "resume"}))
    assert stores["eval"].count() == 12  # two edits beyond the last checkpoint

    other = LifelongEvaluator(llm, tok, editor, cfg.model_copy(update={"seed": 1}), progress=False,
                              store_factory=scripted_factory(editor, examples, stores))
    with pytest.raises(ValueError, match="another configuration"):
        other.run(examples, questions=QUESTIONS, out_dir=tmp_path, resume=True)

    stores["eval"].fail_at_add = None
    resumed = LifelongEvaluator(llm, tok, editor, cfg, progress=False,
                                store_factory=scripted_factory(editor, examples, stores))
    results = resumed.run(examples, questions=QUESTIONS, out_dir=tmp_path, resume=True)
    assert results.complete and [c.t for c in results.checkpoints] == [1, 5, 10, 20]
    assert results.edit_latency_s["n"] == 20 and stores["eval"].count() == 20
    # the tuning is kept, not redone; the statement index is rebuilt from the 10 edits kept
    assert results.text_rag_tuning == TextRagTuning.model_validate(partial["text_rag_tuning"])
    assert results.text_rag_threshold is None  # text-rag-recipe-sim was not asked for
    rag = results.final.methods["text-rag"]
    assert rag.gate.correct_hit_prompt == 1.0 and rag.gate.false_fire_locality == 0.0
    assert results.wall_time_s >= partial["resume"]["wall_time_s"]
    assert not (tmp_path / PARTIAL_FILE).exists()


def test_crash_in_the_final_measurement_resumes_from_the_llm_journal(models, tmp_path):
    llm, tok, editor = models
    examples = make_examples(12)
    cfg = EvalConfig(edits=8, dev_size=0, methods=("no-edit", "recipe", "text-rag-oracle"), general_n=0,
                     t_grid=(4,), latency_samples=0, gate_latency_samples=0, gen_tokens=3, gen_batch_size=2,
                     batch_size=2)
    stores: dict = {}

    def counting(evaluator, fail_after=None):
        calls = []
        real = evaluator.lm.generate

        def generate(*args, **kwargs):
            if fail_after is not None and len(calls) >= fail_after:
                raise RuntimeError("simulated crash in generation")
            calls.append(1)
            return real(*args, **kwargs)

        evaluator.lm.generate = generate
        return calls

    full = LifelongEvaluator(llm, tok, editor, cfg, progress=False,
                             store_factory=scripted_factory(editor, examples))
    full_calls = counting(full)
    expected = full.run(examples, out_dir=tmp_path / "full")

    crash = LifelongEvaluator(llm, tok, editor, cfg, progress=False,
                              store_factory=scripted_factory(editor, examples, stores))
    crash_calls = counting(crash, fail_after=len(full_calls) - 2)
    with pytest.raises(RuntimeError, match="simulated crash in generation"):
        crash.run(examples, out_dir=tmp_path / "crash")
    journal = tmp_path / "crash" / JOURNAL_FILE
    assert len(journal.read_text().splitlines()) > 1 + len(crash_calls)  # header + outputs of every batch
    with journal.open("a") as fh:
        fh.write('{"g": ["cut by the cra')  # a line cut by the crash is ignored

    resumed = LifelongEvaluator(llm, tok, editor, cfg, progress=False,
                                store_factory=scripted_factory(editor, examples, stores))
    resumed_calls = counting(resumed)
    results = resumed.run(examples, out_dir=tmp_path / "crash", resume=True)
    assert len(resumed_calls) == 2  # only the batches the crash prevented
    assert results.final.methods == expected.final.methods
    assert not journal.exists()


def test_checkpoint_subsample_and_locality_without_answer(models):
    llm, tok, editor = models
    examples = [
        ex.model_copy(update={"locality": [LocalityPrompt(prompt=ex.locality[0].prompt, answer=None)]})
        for ex in make_examples(12)
    ]
    cfg = EvalConfig(edits=12, dev_size=0, methods=("no-edit", "recipe", "recipe-no-gate"), general_n=0,
                     t_grid=(10,), checkpoint_sample=4, gen_sample=5, latency_samples=0, gate_latency_samples=0,
                     gen_tokens=4)
    stores: dict = {}
    evaluator = LifelongEvaluator(llm, tok, editor, cfg, progress=False,
                                  store_factory=scripted_factory(editor, examples, stores))
    results = evaluator.run(examples)
    cp10, final = results.checkpoints
    assert cp10.subsampled and cp10.n_measured == 4 and not final.subsampled and final.n_measured == 12
    assert final.counts["generation_examples"] == 5 and final.counts["prompt"] == 12
    # the locality target comes from the unedited greedy continuation
    assert final.counts["locality_scored"] > 0
    assert final.methods["recipe"].locality == 1.0
    assert final.methods["recipe"].latency is None and results.text_rag_threshold is None
    assert results.gate_latency[0].n == 0

    # LLM outputs are cached by (text, statement): measuring again runs the LLM not at all
    calls = []
    for name in ("generate", "score_targets"):
        real = getattr(evaluator.lm, name)
        setattr(evaluator.lm, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    store = stores["eval"]
    order = [store.records[e] for e in sorted(store.records)]
    by_prompt = {ex.prompt: ex for ex in examples}
    measured = [by_prompt[r.prompt] for r in order]
    again = evaluator.measure(store, measured, [r.edit_id for r in order], t=12, seed=12)  # the run's seed at T=12
    assert calls == []
    assert again.methods["recipe"].reliability == final.methods["recipe"].reliability


# ------------------------------------------------------------------------------- CLI


def _write_formats(directory: Path) -> dict[str, tuple[Path, int]]:
    """Small files in each supported format -> (path, locality prompts per example)."""
    n = 6
    flat = [{"case_id": i, "prompt": f"The capital of Land{i} is", "target_new": "Rome", "ground_truth": "Paris",
             "subject": f"Land{i}", "rephrase_prompt": f"Land{i} has its capital in",
             "locality_prompt": f"The capital of Isle{i} is", "locality_ground_truth": "Paris"} for i in range(n)]
    zsre = [{"subject": f"Firm{i}", "src": f"What is made by Firm{i}?", "rephrase": f"What does Firm{i} make?",
             "alt": "piano", "answers": ["uniform"], "loc": f"nq question: who wrote book {i}",
             "loc_ans": "Alex"} for i in range(n)]
    zsre.append({"subject": "x", "src": "What is empty?", "rephrase": "Empty?", "alt": "", "answers": ["x"],
                 "loc": "nq question: who", "loc_ans": "me"})  # an invalid record: skipped
    knowedit = [{"subject": f"Land{i}", "prompt": f"The capital of Land{i} is", "target_new": "Rome",
                 "ground_truth": "Paris", "rephrase_prompt": f"Land{i} has its capital in",
                 "locality": {"Relation_Specificity": [
                     {"prompt": f"The capital of Isle{i} is", "ground_truth": ["Paris"]},
                     {"prompt": f"The language of Isle{i} is", "ground_truth": ["French"]}]},
                 "portability": {}} for i in range(n)]
    rome = [{"case_id": i, "requested_rewrite": {"prompt": "The capital of {} is", "subject": f"Land{i}",
                                                  "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}},
             "paraphrase_prompts": [f"Land{i} has its capital in"],
             "neighborhood_prompts": [f"The capital of Isle{i} is", f"The capital of Cape{i} is"]} for i in range(n)]
    out = {}
    for name, records, per in (("counterfact_flat", flat, 1), ("zsre_mend", zsre, 1), ("knowedit", knowedit, 2),
                               ("counterfact_rome", rome, 2)):
        path = directory / f"{name}.json"
        path.write_text(json.dumps(records))
        out[name] = (path, per)
    return out


@pytest.fixture()
def patched_cli(models, monkeypatch):
    """``recipe-chain eval`` with the tiny models and scripted stores (built from --data)."""
    llm, tok, editor = models
    calls = {}

    def fake_models(checkpoint=None, *, llm=None, allow_untrained=False):
        calls["checkpoint"] = checkpoint
        return EditingModels(llm=llm_, tokenizer=tok, editor=editor, trained=False, checkpoint=checkpoint)

    llm_ = llm

    def fake_factory(editor_, cfg, *, path=None, collection_prefix=None):
        calls["store_path"] = path
        return scripted_factory(editor_, calls["examples"])

    real_load = load_edit_examples

    def load_and_remember(path, **kwargs):
        examples = real_load(path, **kwargs)
        calls["examples"] = examples
        return examples

    monkeypatch.setattr("recipe_chain.models.load_models", fake_models)
    monkeypatch.setattr("recipe_chain.evaluation.harness.make_store_factory", fake_factory)
    monkeypatch.setattr("recipe_chain.data.load_edit_examples", load_and_remember)
    return calls


@pytest.mark.parametrize("fmt", ["counterfact_flat", "zsre_mend", "knowedit", "counterfact_rome"])
def test_cli_reads_every_format(fmt, patched_cli, tmp_path, capsys):
    path, per = _write_formats(tmp_path)[fmt]
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question": f"who wrote book {i}?", "answer": ["Alex"]})
                                   for i in range(3)) + "\n")
    out = tmp_path / "out"
    code = main(["eval", "--data", str(path), "--edits", "3", "--dev-size", "2", "--general-questions",
                 str(questions), "--general-n", "2", "--latency-samples", "1", "--gate-latency-samples", "1",
                 "--gen-tokens", "3", "--t-grid", "1,2", "--out", str(out), "--methods", "no-edit,recipe",
                 "text-rag", "--checkpoint", "ckpt-dir"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| `recipe` |" in printed and "results.json" in printed
    raw = json.loads((out / "results.json").read_text())
    assert raw["config"]["data"]["format"] == fmt
    assert raw["config"]["data"]["n_records"] == 6
    assert raw["config"]["eval"]["methods"] == ["no-edit", "recipe", "text-rag"]
    assert raw["final"]["counts"] == {"prompt": 3, "paraphrase": 3, "locality": 3 * per,
                                      "locality_scored": 3 * per, "general": 2, "generation_examples": 3,
                                      "general_answered": 0, "locality_edited_fact": 0, "chat_answered": 0}
    assert raw["selection"]["n_dev"] == 2 and raw["config"]["command"].startswith("recipe-chain eval --data")
    assert patched_cli["checkpoint"] == "ckpt-dir" and patched_cli["store_path"] == out / "store"
    assert (out / "metrics_vs_T.png").exists() and (out / "results.md").exists()


@pytest.mark.parametrize(
    ("option", "int8_queries", "int8_statements"),
    [(None, True, False), ("--float32-queries", False, False), ("--int8-statements", True, True)],
)
def test_cli_precision_flags_switch_the_editor_and_are_recorded(
    patched_cli, models, tmp_path, option, int8_queries, int8_statements, capsys
):
    path, _ = _write_formats(tmp_path)["counterfact_flat"]
    editor = models[2]
    editor.int8_queries, editor.int8_statements = (not int8_queries), (not int8_statements)  # the CLI must set both
    out = tmp_path / "out"
    try:
        code = main(["eval", "--data", str(path), "--edits", "2", "--dev-size", "1", "--general-n", "0",
                     "--latency-samples", "1", "--gate-latency-samples", "1", "--gen-tokens", "2", "--t-grid", "1",
                     "--methods", "recipe", "--no-plots", *([option] if option else []), "--out", str(out)])
        assert code == 0
        assert (editor.int8_queries, editor.int8_statements) == (int8_queries, int8_statements)
    finally:
        editor.int8_queries, editor.int8_statements = True, False
    raw = json.loads((out / "results.json").read_text())
    assert raw["config"]["int8_queries"] is int8_queries and raw["config"]["int8_statements"] is int8_statements
    if option is None:
        return
    assert f" {option}" in raw["config"]["command"]
    assert main(["eval", "--data", str(path), "--edits", "2", option, "--resume", "--out", str(out)]) == 2
    assert f"{option} cannot --resume" in capsys.readouterr().err


def test_cli_global_checkpoint_option_reaches_eval():
    args = build_parser().parse_args(["--checkpoint", "A", "eval", "--data", "f", "--edits", "1"])
    assert args.checkpoint == "A"
    args = build_parser().parse_args(["eval", "--data", "f", "--edits", "1", "--checkpoint", "B"])
    assert args.checkpoint == "B"
    args = build_parser().parse_args(["eval", "--data", "f", "--edits", "1"])
    assert getattr(args, "checkpoint", None) is None


def test_cli_user_errors_exit_2(tmp_path, monkeypatch, capsys):
    path, _ = _write_formats(tmp_path)["counterfact_flat"]
    assert main(["eval", "--data", str(path)]) == 2
    assert "--edits T is required" in capsys.readouterr().err
    assert main(["eval", "--data", str(path), "--edits", "2", "--methods", "magic"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path / "missing.json"), "--edits", "2"]) == 2
    assert "No data file" in capsys.readouterr().err
    assert main(["eval", "--data", str(path), "--edits", "2", "--general-n", "0", "--dev-size", "1",
                 "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "No RECIPE checkpoint at" in capsys.readouterr().err
    # no checkpoint shipped and none given: a clear error before any model is loaded
    monkeypatch.setattr("recipe_chain.models.default_checkpoint_path", lambda: tmp_path / "none")
    monkeypatch.setattr("recipe_chain.models.load_default_llm", lambda: pytest.fail("must not load the LLM"))
    assert main(["eval", "--data", str(path), "--edits", "2", "--general-n", "0", "--dev-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "No shipped RECIPE checkpoint" in err and "--allow-untrained" in err
    assert main(["eval", "--data", str(path), "--edits", "2", "--resume", "--ephemeral-store"]) == 2
    assert "--resume needs" in capsys.readouterr().err
    assert main(["eval", "--data", str(path), "--edits", "2", "--resume", "--float32-queries"]) == 2
    assert "--float32-queries cannot --resume" in capsys.readouterr().err


# ------------------------------------------------------------------------------- real store


def test_end_to_end_with_the_real_store(models, tmp_path):
    """20 sequential edits into a real (in-memory) RecipeKnowledgeStore, every method."""
    llm, tok, editor = models
    examples = make_examples(40)
    cfg = EvalConfig(edits=20, dev_size=10, general_n=5, t_grid=(1, 10), latency_samples=2,
                     gate_latency_samples=2, gen_tokens=4)
    started = time.perf_counter()
    results = LifelongEvaluator(llm, tok, editor, cfg, progress=False).run(examples, questions=QUESTIONS)
    assert time.perf_counter() - started < 60
    final = results.final
    assert final is not None and final.n_measured == 20 and final.n_superseded_excluded == 0
    assert set(final.methods) == set(METHODS)
    for name, method in final.methods.items():
        assert all(v is None or 0.0 <= v <= 1.0 for v in _unit_values(method)), name
        assert method.reliability is not None and method.latency is not None
    m = final.methods
    # the ablation fires on everything; the oracle always has the right statement
    assert m["recipe-no-gate"].gate.hit_rate == 1.0 and m["recipe-no-gate"].gate.false_fire_general == 1.0
    assert m["text-rag-oracle"].gate.correct_hit_prompt == 1.0
    assert m["no-edit"].locality == 1.0 and m["no-edit"].locality_unchanged == 1.0
    assert m["recipe-no-gate"].gate.correct_hit_prompt == final.diagnostics["retrieval_top1_prompt"]
    json.dumps(results.model_dump(mode="json"), allow_nan=False)


def test_cli_resume_with_the_real_persistent_store(models, tmp_path, monkeypatch, capsys):
    """A crash after the T=4 checkpoint, then ``--resume``: the on-disk store is reused."""
    llm, tok, editor = models
    monkeypatch.setattr("recipe_chain.models.load_models",
                        lambda checkpoint=None, **kw: EditingModels(llm=llm, tokenizer=tok, editor=editor, trained=False))
    path, _ = _write_formats(tmp_path)["counterfact_flat"]
    out = tmp_path / "out"
    argv = ["eval", "--data", str(path), "--edits", "6", "--methods", "no-edit,recipe", "--general-n", "0",
            "--t-grid", "2,4", "--latency-samples", "1", "--gate-latency-samples", "1", "--gen-tokens", "3",
            "--no-plots", "--no-progress", "--out", str(out)]
    real_measure = LifelongEvaluator.measure

    def crash_at_final(self, store, examples, edit_ids, questions=(), *, t, **kwargs):
        if t == 6:
            raise RuntimeError("simulated crash")
        return real_measure(self, store, examples, edit_ids, questions, t=t, **kwargs)

    monkeypatch.setattr(LifelongEvaluator, "measure", crash_at_final)
    with pytest.raises(RuntimeError):
        main(argv)
    assert json.loads((out / PARTIAL_FILE).read_text())["resume"]["t_done"] == 4
    monkeypatch.setattr(LifelongEvaluator, "measure", real_measure)
    assert main([*argv, "--resume"]) == 0
    raw = json.loads((out / "results.json").read_text())
    assert [c["t"] for c in raw["checkpoints"]] == [2, 4, 6] and raw["edit_latency_s"]["n"] == 6
    assert raw["final"]["n_superseded_excluded"] == 0 and raw["final"]["counts"]["prompt"] == 6
    assert raw["config"]["store"] == str(out / "store")
    assert not (out / PARTIAL_FILE).exists() and not (out / JOURNAL_FILE).exists()


def test_final_sample_measures_a_seeded_subset_after_all_edits(models):
    llm, tok, editor = models
    examples = make_examples(6)
    cfg = EvalConfig(edits=6, dev_size=0, methods=("no-edit", "recipe"), general_n=0, t_grid=(),
                     latency_samples=0, gate_latency_samples=0, gen_tokens=2, final_sample=3)
    results = LifelongEvaluator(llm, tok, editor, cfg, progress=False).run(examples)
    assert results.final.t == 6 and results.final.n_measured == 3 and results.final.subsampled
    assert results.edit_latency_s["n"] == 6  # every edit went into the store
    again = LifelongEvaluator(llm, tok, editor, cfg, progress=False).run(examples)
    assert again.final.model_dump()["methods"]["recipe"]["reliability"] == \
        results.final.model_dump()["methods"]["recipe"]["reliability"]


def test_edited_facts_match_subject_words_and_old_answer():
    facts = EditedFacts([
        EditExample(prompt="The capital of Land1 is", target_new="Paris", subject="Land1", ground_truth="Old1",
                    source_format="counterfact_flat"),
        EditExample(prompt="Zoë's café is in", target_new="Rome", subject="Zoë's café", ground_truth="Vienna",
                    source_format="counterfact_flat"),
        EditExample(prompt="No subject here", target_new="x", source_format="counterfact_flat"),  # cannot be recognised: ignored
    ])
    assert len(facts) == 2
    assert facts.asks_edited_fact("Where is the capital of LAND1? It is", "old1")
    assert facts.asks_edited_fact("Zoe's Cafe can be found in", "Vienna")  # folded
    assert not facts.asks_edited_fact("The capital of Land10 is", "Old1")  # whole words only
    assert not facts.asks_edited_fact("The anthem of Land1 is", "Hymn")  # same subject, another fact
    assert not facts.asks_edited_fact("The capital of Land1 is", None)


def test_locality_prompts_that_ask_an_edited_fact_are_scored_apart(models):
    """Example 0's locality prompt asks example 1's edited fact: firing there is not a locality failure."""
    llm, tok, editor = models
    examples = [
        EditExample(prompt=f"The capital of Land{i} is", target_new=t, subject=f"Land{i}", ground_truth=f"Old{i}",
                    paraphrases=[f"Land{i} has its capital in"], source_format="counterfact_flat",
                    locality=[LocalityPrompt(prompt=loc, answer=ans)])
        for i, (t, loc, ans) in enumerate([
            ("Paris", "The capital of Land1 is", "Old1"),  # the fact example 1 edits
            ("Rome", "The anthem of Land0 is", "Hymn"),  # same subject, another fact: still locality
            ("London", "The capital of Isle2 is", "Rome"),
        ])
    ]
    cfg = EvalConfig(edits=3, dev_size=0, methods=("no-edit", "recipe"), general_n=0, t_grid=(),
                     latency_samples=0, gate_latency_samples=0, gen_tokens=2)
    results = LifelongEvaluator(llm, tok, editor, cfg, store_factory=scripted_factory(editor, examples),
                                progress=False).run(examples)
    final = results.final
    assert final.counts["locality_edited_fact"] == 1 and final.counts["locality"] == 2
    recipe = final.methods["recipe"]
    # the scripted gate fires example 1's edit on its own prompt, here asked as example 0's locality prompt
    assert recipe.gate.fire_on_edited_fact == 1.0 and recipe.gate.false_fire_locality == 0.0
    assert recipe.locality == 1.0 and recipe.locality_all_prompts is not None
    assert final.methods["no-edit"].locality_all_prompts == 1.0


def test_superseded_examples_are_not_measured(models):
    """With duplicate_facts='supersede' the real store supersedes the earlier edit of a fact."""
    llm, tok, editor = models
    examples = make_examples(5)
    examples.append(examples[2].model_copy(update={"target_new": "Berlin", "case_id": "again"}))
    cfg = EvalConfig(edits=6, dev_size=0, methods=("no-edit", "recipe"), general_n=0, t_grid=(),
                     latency_samples=0, gate_latency_samples=0, gen_tokens=2, duplicate_facts="supersede")
    results = LifelongEvaluator(llm, tok, editor, cfg, progress=False).run(examples)
    assert results.selection["n_duplicate_prompts"] == 1
    assert results.final.n_superseded_excluded == 1 and results.final.n_measured == 5
    with pytest.raises(ValueError, match="duplicate-facts"):
        LifelongEvaluator(llm, tok, editor, cfg.model_copy(update={"duplicate_facts": "skip"}),
                          progress=False).run(examples)


@pytest.mark.integration
def test_quick_run_on_the_real_default_models(tmp_path, monkeypatch, capsys):
    """``recipe-chain eval`` on SmolLM2 + MiniLM with the shipped checkpoint and real CounterFact records."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "eval.json"
    records = json.loads(data.read_text())[:30]
    small = tmp_path / "cf30.json"
    small.write_text(json.dumps(records))
    out = tmp_path / "out"
    code = main(["eval", "--data", str(small), "--edits", "4", "--dev-size", "6", "--general-n", "5",
                 "--latency-samples", "1", "--gate-latency-samples", "2", "--gen-tokens", "4",
                 "--checkpoint-sample", "2", "--out", str(out)])
    assert code == 0
    raw = json.loads((out / "results.json").read_text())
    assert raw["config"]["llm_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    from recipe_chain.defaults import default_checkpoint_path

    assert raw["config"]["trained"] is True and raw["final"]["n_measured"] == 4
    assert Path(raw["config"]["checkpoint"]) == default_checkpoint_path()
    assert set(raw["final"]["methods"]) == set(METHODS)
    assert (out / "store").is_dir()


def test_chat_path_asks_through_the_template_with_the_prefix(models):
    llm, tok, editor = models
    templated = copy.deepcopy(tok)
    templated.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    examples = make_examples(12)
    cfg = EvalConfig(edits=12, dev_size=0, methods=("no-edit", "recipe"), general_n=0, t_grid=(12,), gen_sample=5,
                     latency_samples=0, gate_latency_samples=0, gen_tokens=4, chat_path=True)
    evaluator = LifelongEvaluator(llm, templated, editor, cfg, progress=False,
                                  store_factory=scripted_factory(editor, examples))
    final = evaluator.run(examples).final
    assert final is not None and final.counts["chat_answered"] == 5
    for method in final.methods.values():
        assert method.chat_answer_accuracy is not None and method.chat_answer_accuracy_paraphrase is not None
    # the chat rows reach the LLM templated, and recipe puts its admitted edit's prompt vectors in front
    chat_keys = {key for key in evaluator.outputs.generated if key[0].startswith("<|im_start|>user")}
    with_prefix = {text for text, prefix in chat_keys if prefix is not None}
    assert len(with_prefix) == 10 and {prefix for _, prefix in chat_keys} - {None} <= {ex.statement for ex in examples}
    assert all(evaluator.text_rag.chat_text(ex.prompt) in {t for t, _ in chat_keys} for ex in examples
               if any(ex.statement == p for _, p in chat_keys))

    # without a chat template there is no chat path to measure
    plain = LifelongEvaluator(llm, tok, editor, cfg, progress=False, store_factory=scripted_factory(editor, examples))
    final = plain.run(examples).final
    assert final is not None and final.counts["chat_answered"] == 0
    assert final.methods["recipe"].chat_answer_accuracy is None
