"""One evaluation suite over every set: how the editor does across data, at a glance.

:func:`run_suite` runs the lifelong-editing harness on each evaluation set in turn with
the same methods and settings, then measures portability (questions whose answers
follow from the edits), and writes ``SUMMARY.md`` and ``summary.json``: one row per
set and method. Each set's full report stays in ``OUT/<set>/``.

It is resumable at two levels: a set whose ``results.json`` was written with the same
settings is not run again, and an interrupted set continues from its
``results.partial.json`` and LLM-output journal (the harness's own resume).

Example:
    >>> sets = default_sets("../shared/data")  # doctest: +SKIP
    >>> run_suite("benchmarks/results/suite", llm, tok, editor, SuiteSettings(), sets)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from recipe_chain.data import EditExample, LocalityPrompt, load_edit_examples, load_questions, split_by_subject
from recipe_chain.evaluation.config import EvalConfig, Method
from recipe_chain.evaluation.harness import LifelongEvaluator, make_store_factory
from recipe_chain.evaluation.results import EvalResults, QuestionMetrics
from recipe_chain.evaluation.resume import PARTIAL_FILE
from recipe_chain.evaluation.selection import file_sha256
from recipe_chain.evaluation.portability import load_portability_cases
from recipe_chain.evaluation.report import write_report
from recipe_chain.store import normalize_prompt

__all__ = ["SuiteSet", "SuiteSettings", "default_sets", "run_suite", "summary_markdown", "SUMMARY_FILE"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "SUMMARY.md"
SUITE_METHODS: tuple[Method, ...] = ("no-edit", "recipe", "text-rag", "text-rag-top1", "text-rag-oracle")


class SuiteSet(BaseModel):
    """One evaluation set of the suite.

    Attributes:
        name: Short name (the output folder).
        data: The data file (relative to the data directory).
        dev_data: A separate file to tune text-RAG on (``None``: the rest of ``data``).
        subject_split: ``"dev"`` evaluates only the dev subjects of
            :func:`~recipe_chain.data.split_by_subject` (and tunes on train subjects).
        dev_size: Dev examples for text-RAG tuning.
        general_answer_n: General questions answered at the final ``T`` (general ability).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    data: str
    dev_data: str | None = None
    subject_split: str | None = None
    dev_size: int = 200
    general_answer_n: int = 0


class SuiteSettings(BaseModel):
    """Settings shared by every set (see :class:`~recipe_chain.evaluation.config.EvalConfig`)."""

    model_config = ConfigDict(frozen=True)

    edits: int = Field(default=1000, gt=0)
    seed: int = 0
    methods: tuple[Method, ...] = SUITE_METHODS
    final_sample: int | None = 500
    gen_sample: int | None = 200
    general_n: int = 500
    dev_general_n: int = 200
    format_dev_sample: int = 60
    latency_samples: int = 10
    gate_latency_samples: int = 5
    duplicate_facts: str = "skip"
    portability_cases: int = Field(default=100, ge=0)
    chat_path: bool = True


def default_sets() -> list[SuiteSet]:
    """The four evaluation sets no training run may use, with their dev sources."""
    return [
        SuiteSet(name="counterfact", data="counterfact/eval.json", dev_data="counterfact/train.json",
                 general_answer_n=300),
        SuiteSet(name="zsre", data="zsre/train-1k.json", dev_size=150),
        SuiteSet(name="knowedit-recent", data="knowedit/wiki_recent_train.json", dev_size=150),
        SuiteSet(name="hallueditbench-dev", data="questions/hallueditbench.json", subject_split="dev"),
    ]


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_set(s: SuiteSet, data_dir: Path) -> tuple[list[EditExample], list[EditExample] | None, str]:
    examples = load_edit_examples(data_dir / s.data, on_invalid="skip")
    dev_pool: list[EditExample] | None = None
    source = f"rest of {Path(s.data).name}"
    if s.dev_data is not None:
        dev_pool = load_edit_examples(data_dir / s.dev_data, on_invalid="skip")
        source = s.dev_data
    if s.subject_split == "dev":
        train, dev = split_by_subject(examples)
        examples, dev_pool, source = dev, dev_pool or train, f"train subjects of {Path(s.data).name}"
    elif s.subject_split is not None:
        raise ValueError(f"subject_split must be None or 'dev', got {s.subject_split!r}")
    return examples, dev_pool, source


def _drop_old_store(set_dir: Path) -> None:
    """Empty the store of a set that runs from the start.

    The harness empties its collections itself, but only after opening them, and a store
    written by another editor (an earlier checkpoint) refuses to open.
    """
    store = set_dir / "store"
    if not store.is_dir():
        return
    import chromadb

    client = chromadb.PersistentClient(path=str(store))
    for collection in client.list_collections():
        name = getattr(collection, "name", collection)
        logger.info("suite: %s: dropping collection %s of an earlier run", set_dir.name, name)
        client.delete_collection(name)


def run_suite(
    out_dir: str | os.PathLike[str],
    llm: Any,
    tokenizer: Any,
    editor: Any,
    settings: SuiteSettings,
    sets: Sequence[SuiteSet],
    *,
    data_dir: str | os.PathLike[str],
    run_info: dict[str, Any] | None = None,
    progress: bool | None = None,
    sentence_embeddings: Any = None,
) -> dict[str, Any]:
    """Run every set (skipping finished ones), then portability; write the summary.

    Args:
        out_dir: Output directory: ``<set>/`` reports, ``portability.json``,
            ``SUMMARY.md``, ``summary.json``.
        llm: The frozen causal LM.
        tokenizer: Its tokenizer.
        editor: The RECIPE editor.
        settings: :class:`SuiteSettings`.
        sets: The sets (see :func:`default_sets`).
        data_dir: Where the sets' files are.
        run_info: Extra information recorded in every result (command, checkpoint, ...).
        progress: Progress bars (``None``: on a terminal only).
        sentence_embeddings: The text-RAG baseline's encoder (default all-MiniLM-L6-v2).

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        FileNotFoundError: If a set's data file is missing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(data_dir)
    for s in sets:
        for rel in (s.data, s.dev_data):
            if rel is not None and not (data_root / rel).is_file():
                raise FileNotFoundError(f"suite set {s.name!r}: no data file at {data_root / rel}")
    nq = data_root / "general/nq-open.jsonl"
    questions = load_questions(nq, limit=settings.general_n + settings.dev_general_n) if nq.is_file() else []
    fingerprint = getattr(editor, "fingerprint", None)
    results: dict[str, EvalResults] = {}
    tuned_on_counterfact: EvalResults | None = None
    bar = tqdm(sets, desc="suite", unit="set", disable=None if progress is None else not progress)
    for s in bar:
        bar.set_postfix_str(s.name)
        set_dir = out / s.name
        cfg = EvalConfig(
            edits=settings.edits,
            seed=settings.seed,
            methods=settings.methods,
            dev_size=s.dev_size,
            general_n=settings.general_n,
            dev_general_n=settings.dev_general_n,
            t_grid=(settings.edits,),
            final_sample=settings.final_sample,
            gen_sample=settings.gen_sample,
            latency_samples=settings.latency_samples,
            gate_latency_samples=settings.gate_latency_samples,
            format_dev_sample=settings.format_dev_sample,
            general_answer_n=s.general_answer_n,
            chat_path=settings.chat_path,
            duplicate_facts=settings.duplicate_facts,  # type: ignore[arg-type]
        )
        key = _key({"set": s.model_dump(), "config": cfg.model_dump(mode="json"), "editor": fingerprint})
        done = set_dir / "results.json"
        if done.is_file():
            raw = json.loads(done.read_text())
            if raw.get("complete") and raw.get("config", {}).get("suite_key") == key:
                logger.info("suite: %s is done (%s); not run again", s.name, done)
                results[s.name] = EvalResults.model_validate(raw)
                if s.name == "counterfact":
                    tuned_on_counterfact = results[s.name]
                continue
        examples, dev_pool, dev_source = _load_set(s, data_root)
        # T is capped by the set's distinct facts (repeated prompts are skipped), less a dev split taken from it
        distinct = len({normalize_prompt(e.prompt) for e in examples})
        examples_t = min(settings.edits, max(1, distinct - (0 if dev_pool is not None else s.dev_size)))
        if examples_t < settings.edits:
            cfg = cfg.model_copy(update={"edits": examples_t, "t_grid": (examples_t,)})
        evaluator = LifelongEvaluator(
            llm, tokenizer, editor, cfg, progress=progress, sentence_embeddings=sentence_embeddings,
            store_factory=make_store_factory(editor, cfg, path=set_dir / "store"),
        )
        info = {
            **(run_info or {}),
            "suite_key": key,
            "suite_set": s.model_dump(),
            "data": {"path": str(data_root / s.data), "sha256": file_sha256(data_root / s.data),
                     "n_records": len(examples), "format": examples[0].source_format if examples else None},
        }
        started = time.perf_counter()
        resume = (set_dir / PARTIAL_FILE).is_file()
        if not resume:
            _drop_old_store(set_dir)
        run_kwargs = dict(questions=questions, dev_pool=dev_pool, dev_source=dev_source, run_info=info,
                          out_dir=set_dir)
        try:
            res = evaluator.run(examples, resume=resume, **run_kwargs)
        except ValueError as exc:
            if not resume or "another configuration" not in str(exc):
                raise
            logger.warning("suite: %s: partial results of other settings; starting the set over", s.name)
            _drop_old_store(set_dir)
            res = evaluator.run(examples, resume=False, **run_kwargs)
        write_report(res, set_dir)
        logger.info("suite: %s done in %.1f min", s.name, (time.perf_counter() - started) / 60)
        results[s.name] = res
        if s.name == "counterfact":
            tuned_on_counterfact = res

    portability = _portability(out, llm, tokenizer, editor, settings, data_root, tuned_on_counterfact,
                               progress, sentence_embeddings, fingerprint)
    summary = _summary(results, portability, settings)
    summary["command"] = (run_info or {}).get("command")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (out / SUMMARY_FILE).write_text(summary_markdown(summary))
    return summary


def _portability(
    out: Path,
    llm: Any,
    tokenizer: Any,
    editor: Any,
    settings: SuiteSettings,
    data_root: Path,
    tuned: EvalResults | None,
    progress: bool | None,
    sentence_embeddings: Any,
    fingerprint: str | None,
) -> dict[str, Any] | None:
    """One-hop (CounterFact) and multi-hop (MQuAKE) portability, text-RAG tuned on CounterFact."""
    if settings.portability_cases == 0:
        return None
    files = {"counterfact-one-hop": "counterfact/rome_portability.json", "mquake": "mquake/mquake_hard.json"}
    if any(not (data_root / f).is_file() for f in files.values()):
        logger.warning("suite: portability data missing under %s; skipped", data_root)
        return None
    methods = tuple(m for m in settings.methods if m != "text-rag" or (tuned and tuned.text_rag_tuning))
    key = _key({"n": settings.portability_cases, "seed": settings.seed, "methods": methods, "editor": fingerprint,
                "asked": "chat template",
                "tuning": tuned.text_rag_tuning.model_dump(mode="json") if tuned and tuned.text_rag_tuning else None})
    path = out / "portability.json"
    if path.is_file():
        raw = json.loads(path.read_text())
        if raw.get("key") == key:
            return raw
    cfg = EvalConfig(edits=1, methods=methods, dev_size=1, general_n=0, seed=settings.seed)
    evaluator = LifelongEvaluator(
        llm, tokenizer, editor, cfg, progress=progress, sentence_embeddings=sentence_embeddings,
        store_factory=make_store_factory(editor, cfg, path=out / "portability-store"),
    )
    if tuned is not None:
        evaluator.use_tuning(tuned.text_rag_tuning, tuned.text_rag_threshold)
    sets: dict[str, Any] = {}
    started = time.perf_counter()
    for name, rel in files.items():
        cases = load_portability_cases(data_root / rel)
        rng = random.Random(settings.seed)
        cases = rng.sample(cases, min(settings.portability_cases, len(cases)))
        edits = [e for c in cases for e in c.edits]
        qs: list[LocalityPrompt] = []
        oracle: list[list[str]] = []
        for c in cases:
            for q in c.question_prompts(per_case=1):
                qs.append(q)
                oracle.append([e.statement for e in c.edits])
        metrics: dict[str, QuestionMetrics] = evaluator.answer_questions(
            edits, qs, namespace=name, desc=name, oracle_statements=oracle
        )
        sets[name] = {
            "data": rel,
            "cases": len(cases),
            "edits": len(edits),
            "questions": len(qs),
            "methods": {m: v.model_dump() for m, v in metrics.items()},
        }
    payload = {"key": key, "text_rag_tuned_on": "counterfact" if tuned is not None else None, "sets": sets,
               "wall_time_s": time.perf_counter() - started}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def _summary(results: dict[str, EvalResults], portability: dict[str, Any] | None,
             settings: SuiteSettings) -> dict[str, Any]:
    rows = []
    for name, res in results.items():
        final = res.final
        if final is None:
            continue
        base = final.methods.get("no-edit")
        # added latency is judged on the teacher-forced pass of the same target (gating/retrieval
        # included): every method then processes the same output tokens, while greedy generation stops
        # at EOS after a different number of tokens per method (SmolLM2 often stops at once on a raw question)
        base_p50 = base.latency.score_s.get("p50") if base is not None and base.latency else None
        base_gen = base.latency.generate_s.get("p50") if base is not None and base.latency else None
        for m, mm in final.methods.items():
            p50 = mm.latency.score_s.get("p50") if mm.latency else None
            gen = mm.latency.generate_s.get("p50") if mm.latency else None
            rows.append({
                "set": name,
                "method": m,
                "T": final.t,
                "measured": final.n_measured,
                "generated": final.counts.get("generation_examples"),
                "reliability": mm.reliability,
                "generality": mm.generality,
                "locality": mm.locality,
                "answer_accuracy": mm.answer_accuracy,
                "answer_accuracy_paraphrase": mm.answer_accuracy_paraphrase,
                "locality_kept": mm.locality_kept,
                "correct_fire": mm.gate.correct_hit_prompt,
                "correct_fire_paraphrase": mm.gate.correct_hit_paraphrase,
                "false_fire_neighbours": mm.gate.false_fire_locality,
                "false_fire_general": mm.gate.false_fire_general,
                "added_tokens": mm.added_tokens.llm_total,
                "added_latency": None if (p50 is None or not base_p50) else p50 / base_p50 - 1,
                "added_generation_latency": None if (gen is None or not base_gen) else gen / base_gen - 1,
                "generated_tokens": mm.latency.generated_tokens_mean if mm.latency else None,
                "general_answer_accuracy": mm.general_answer_accuracy,
                "general_answer_delta": mm.general_answer_delta,
                "general_answer_delta_ci95": mm.general_answer_delta_ci95,
                "chat_answer_accuracy": mm.chat_answer_accuracy,
                "chat_answer_accuracy_paraphrase": mm.chat_answer_accuracy_paraphrase,
            })
    sets = {
        name: {
            "data": res.config.get("data", {}).get("path"),
            "T": res.final.t if res.final else None,
            "wall_time_s": res.wall_time_s,
            "text_rag_threshold": res.text_rag_tuning.threshold.value if res.text_rag_tuning else None,
            "text_rag_format": res.text_rag_tuning.format if res.text_rag_tuning else None,
            "diagnostics": res.final.diagnostics if res.final else {},
            "command": res.config.get("command"),
        }
        for name, res in results.items()
    }
    total = sum(s["wall_time_s"] for s in sets.values()) + float((portability or {}).get("wall_time_s") or 0.0)
    return {"settings": settings.model_dump(mode="json"), "sets": sets, "rows": rows, "portability": portability,
            "wall_time_s": total}


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.1f}%" if pct else f"{v:.3f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """``SUMMARY.md``: the set × method table, portability, and how each set was run."""
    lines = ["# Evaluation suite", ""]
    if summary.get("command"):
        lines += [f"Command: `{summary['command']}` (each set's own command is in its report).", ""]
    st = summary["settings"]
    lines.append(
        f"T = {st['edits']} sequential edits per set (the whole set where it is smaller), seed {st['seed']}; "
        f"teacher-forced metrics and gate statistics on up to {st['final_sample']} measured edits, generated "
        f"answers on up to {st['gen_sample']}. Each set's full report is in its folder. Wall time "
        f"{summary.get('wall_time_s', 0.0) / 60:.1f} min (the sets' runs plus portability)."
    )
    lines += ["", "| set | method | Rel | Gen | Loc | answer acc. | answer acc. para. | locality kept | "
              "correct fire | false fire neighbours | false fire general | + tokens | + latency |",
              "|" + "---|" * 13]
    for r in summary["rows"]:
        tokens = "–" if r["added_tokens"] is None else f"{r['added_tokens']:.1f}"
        lines.append(
            f"| {r['set']} | `{r['method']}` | {_f(r['reliability'])} | {_f(r['generality'])} | {_f(r['locality'])} | "
            f"{_f(r['answer_accuracy'])} | {_f(r['answer_accuracy_paraphrase'])} | {_f(r['locality_kept'])} | "
            f"{_f(r['correct_fire'])} | {_f(r['false_fire_neighbours'])} | {_f(r['false_fire_general'])} | "
            f"{tokens} | {_f(r['added_latency'], pct=True)} |"
        )
    lines += ["", "Rel/Gen: teacher-forced token accuracy of the new target on the edit prompt / paraphrases; Loc: "
              "share of the unedited model's argmax tokens kept on locality prompts (CounterFact: same relation, "
              "other subject; ZsRE: NQ questions; KnowEdit: `Relation_Specificity`, same subject; HalluEditBench: "
              "`locality_question`, same subject). answer acc.: the first sentence of the greedy answer names the "
              "new target and not the old one; locality kept: that sentence equals the unedited model's. correct "
              "fire: the edit's own prompt used its edit; false fire: an edit was used on a locality prompt / an "
              "NQ question. + tokens: input positions added per query; + latency: p50 of one query (gating or "
              "retrieval, then a teacher-forced pass of the same target) against `no-edit` (greedy generation "
              "is not comparable across methods: it stops at EOS after different numbers of tokens; each set's "
              "report has it)."]
    chat = [r for r in summary["rows"] if r.get("chat_answer_accuracy") is not None]
    if chat:
        lines += ["", "## The chat path (greedy answer accuracy)", "",
                  "| set | method | prompt | paraphrase |", "|---|---|---|---|"]
        lines += [f"| {r['set']} | `{r['method']}` | {_f(r['chat_answer_accuracy'])} | "
                  f"{_f(r.get('chat_answer_accuracy_paraphrase'))} |" for r in chat]
        lines += ["", "The generated examples' prompts and paraphrases asked as the user turn of the LLM's chat "
                  "template, as `RecipeEditedChatModel` asks them (text-RAG in its chat format)."]
    general = [r for r in summary["rows"] if r.get("general_answer_delta") is not None]
    if general:
        lines += ["", "## General ability (NQ-open, greedy answer accuracy)", "",
                  "| set | method | with T edits in the store | change vs empty store (95 % interval) |",
                  "|---|---|---|---|"]
        lines += [
            f"| {r['set']} | `{r['method']}` | {_f(r['general_answer_accuracy'])} | "
            f"{r['general_answer_delta']:+.3f} (±{r['general_answer_delta_ci95']:.3f}) |"
            for r in general
        ]
        lines += ["", "Questions asked through the LLM's chat template. With an empty store no method fires, so "
                  "each answers exactly as `no-edit`."]
    port = summary.get("portability")
    if port:
        lines += ["", "## Portability (a measurement only; no method is expected to pass it yet)", "",
                  "Answer accuracy on questions whose answer follows from the edits, asked through the LLM's chat "
                  "template (text-RAG threshold tuned on "
                  f"{port.get('text_rag_tuned_on') or 'nothing'}; the statement goes into the system message). "
                  "`text-rag-oracle` puts the statements of the question's own case in front.", ""]
        names = list(port["sets"])
        lines.append("| method | " + " | ".join(
            f"{n} ({port['sets'][n]['questions']} questions, {port['sets'][n]['edits']} edits)" for n in names) + " |")
        lines.append("|---|" + "---|" * len(names))
        methods = list(next(iter(port["sets"].values()))["methods"]) if names else []
        for m in methods:
            cells = []
            for n in names:
                v = port["sets"][n]["methods"].get(m, {})
                cells.append(f"{_f(v.get('answer_accuracy'))} (fired {_f(v.get('fired'))})")
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    lines += ["", "## Sets", "", "| set | T | wall time (min) | text-rag threshold | text-rag format | "
              "retrieval top-1 (prompt) | gate admits correct top-1 |", "|---|---|---|---|---|---|---|"]
    for name, s in summary["sets"].items():
        d = s.get("diagnostics") or {}
        lines.append(
            f"| {name} | {s['T']} | {s['wall_time_s'] / 60:.1f} | {_f(s['text_rag_threshold'])} | "
            f"{s['text_rag_format'] or '–'} | {_f(d.get('retrieval_top1_prompt'))} | "
            f"{_f(d.get('gate_admits_correct_top1_prompt'))} |"
        )
    return "\n".join(lines) + "\n"
