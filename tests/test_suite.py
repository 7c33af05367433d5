"""The evaluation suite, the HalluEditBench loader and subject split, portability cases."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from recipe_chain.data import DataFormatError, load_edit_examples, split_by_subject
from recipe_chain.evaluation import harness as H
from recipe_chain.evaluation.portability import load_portability_cases
from recipe_chain.evaluation.suite import SuiteSet, SuiteSettings, run_suite
from test_harness import ScriptedEmbeddings, tiny_set

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _hallu(i: int, subject: str | None = None) -> dict:
    return {
        "subject": subject or f"Land{i}",
        "question": f"What is the capital of Land{i}?",
        "object": "Paris",
        "multiple_choices": "['Paris', 'Rome', 'London', 'Oslo']",
        "paraphrased_question": f"Which city is the capital of Land{i}?",
        "locality_question": f"What language is spoken in Land{i}?",
    }


# ------------------------------------------------------------------------------- HalluEditBench


def test_hallueditbench_loader_on_real_records():
    path = SHARED / "questions" / "hallueditbench.json"
    examples = load_edit_examples(path, limit=50)
    raw = json.loads(path.read_text())[:50]
    assert len(examples) == 50 and all(e.source_format == "hallueditbench" for e in examples)
    for ex, rec in zip(examples, raw):
        assert ex.prompt == rec["question"].strip() and ex.ground_truth == rec["object"].strip()
        assert ex.target_new.casefold() != rec["object"].strip().casefold()  # a counterfactual wrong choice
        assert ex.target_new in rec["multiple_choices"]
        assert ex.paraphrases == [rec["paraphrased_question"].strip()]
        assert [loc.prompt for loc in ex.locality] == [rec["locality_question"].strip()]
    # seeded: the same record gives the same target in every load
    assert [e.target_new for e in load_edit_examples(path, limit=50)] == [e.target_new for e in examples]


def test_hallueditbench_loader_errors_name_the_record_and_field(tmp_path):
    bad = _hallu(1)
    bad["multiple_choices"] = "['Paris', 'Rome'"  # cut literal
    path = tmp_path / "h.json"
    path.write_text(json.dumps([_hallu(0), bad]))
    with pytest.raises(DataFormatError, match=r"record 1.*multiple_choices.*list literal"):
        load_edit_examples(path)
    only_true = _hallu(0)
    only_true["multiple_choices"] = "['Paris', 'paris']"
    path.write_text(json.dumps([only_true]))
    with pytest.raises(DataFormatError, match="no wrong choice"):
        load_edit_examples(path)
    no_question = _hallu(0)
    del no_question["question"]
    path.write_text(json.dumps([_hallu(0), no_question]))
    with pytest.raises(DataFormatError, match=r"record 1.*'question'"):
        load_edit_examples(path, format="hallueditbench")


def test_split_by_subject_keeps_subjects_apart_and_is_stable():
    examples = load_edit_examples(SHARED / "questions" / "hallueditbench.json")
    train, dev = split_by_subject(examples)
    assert len(train) + len(dev) == len(examples)
    assert not {e.subject.casefold() for e in train} & {e.subject.casefold() for e in dev}
    assert 0.1 < len(dev) / len(examples) < 0.3
    # the split depends on the subject only: reversed input, same dev subjects
    _, dev_rev = split_by_subject(list(reversed(examples)))
    assert {e.subject for e in dev_rev} == {e.subject for e in dev}
    with pytest.raises(ValueError, match="dev_share"):
        split_by_subject(examples, dev_share=1.0)


# ------------------------------------------------------------------------------- portability


def test_portability_cases_from_both_forms(tmp_path):
    one_hop = load_portability_cases(SHARED / "counterfact" / "rome_portability.json", limit=3)
    assert len(one_hop) == 3 and len(one_hop[0].edits) == 1
    assert one_hop[0].edits[0].prompt == "Spike Hughes originates from"
    assert one_hop[0].answers == ("Cheesesteaks",)
    mq = load_portability_cases(SHARED / "mquake" / "mquake_hard.json", limit=2)
    assert len(mq[0].edits) == 4 and mq[0].answers[0] == "Arabic" and "Arabic language" in mq[0].answers
    q = mq[0].question_prompts(per_case=1)
    assert len(q) == 1 and q[0].accepted_answers == mq[0].answers
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps([{"requested_rewrite": {"prompt": "{} is in", "subject": "X",
                                                      "target_new": {"str": "Y"}}}]))
    with pytest.raises(DataFormatError, match=r"record 0.*portability"):
        load_portability_cases(bad)


# ------------------------------------------------------------------------------- the suite


def _data_dir(root: Path, n: int = 12) -> Path:
    flat = [{"case_id": i, "prompt": f"The capital of Land{i} is", "target_new": "Rome", "ground_truth": "Paris",
             "subject": f"Land{i}", "rephrase_prompt": f"Land{i} has its capital in",
             "locality_prompt": f"The capital of Isle{i} is", "locality_ground_truth": "Paris"} for i in range(n)]
    files = {
        "counterfact/eval.json": flat,
        "counterfact/train.json": [
            dict(r, case_id=100 + r["case_id"], prompt=r["prompt"].replace("Land", "Land5"),
                 rephrase_prompt=r["rephrase_prompt"].replace("Land", "Land5"))
            for r in flat
        ],
        "questions/hallueditbench.json": [_hallu(i) for i in range(n)],
        "general/nq-open.jsonl": None,
        "counterfact/rome_portability.json": [
            {"case_id": i, "requested_rewrite": {"prompt": "The capital of {} is", "subject": f"Land{i}",
                                                  "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}},
             "portability": {"New Question": f"Which river flows through the capital of Land{i}?",
                             "New Answer": "Tiber"}} for i in range(4)],
        "mquake/mquake_hard.json": [
            {"case_id": i, "requested_rewrite": [
                {"prompt": "The capital of {} is", "subject": f"Land{i}", "target_new": {"str": "Rome"},
                 "target_true": {"str": "Paris"}}],
             "questions": [f"What river is in the capital of Land{i}?"], "new_answer": "Tiber",
             "new_answer_alias": ["Tevere"]} for i in range(4)],
    }
    for rel, records in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if records is None:
            path.write_text("".join(json.dumps({"question": f"who wrote book number {i}?", "answer": ["Alex"]}) + "\n"
                                    for i in range(10)))
        else:
            path.write_text(json.dumps(records))
    return root


def test_suite_writes_the_summary_and_resumes_without_rerunning_finished_sets(tmp_path, monkeypatch):
    llm, tok, editor = tiny_set()
    data = _data_dir(tmp_path / "data")
    out = tmp_path / "suite"
    sets = [
        SuiteSet(name="counterfact", data="counterfact/eval.json", dev_data="counterfact/train.json", dev_size=4,
                 general_answer_n=3),
        SuiteSet(name="hallu-dev", data="questions/hallueditbench.json", subject_split="dev", dev_size=3),
    ]
    # every subject of the tiny HalluEditBench file in dev would leave no train pool: put half in dev
    monkeypatch.setattr("recipe_chain.evaluation.suite.split_by_subject",
                        lambda exs: (list(exs[::2]), list(exs[1::2])))
    settings = SuiteSettings(edits=5, final_sample=5, gen_sample=3, general_n=4, dev_general_n=4,
                             format_dev_sample=2, latency_samples=1, gate_latency_samples=1, portability_cases=3)
    runs: list[str] = []
    real_run = H.LifelongEvaluator.run

    def counting_run(self, examples, **kwargs):
        name = Path(kwargs["out_dir"]).name
        runs.append(name)
        if name == "hallu-dev" and fail["now"]:
            raise KeyboardInterrupt  # interrupted while running the second set
        return real_run(self, examples, **kwargs)

    fail = {"now": True}
    monkeypatch.setattr(H.LifelongEvaluator, "run", counting_run)
    kwargs = dict(data_dir=data, progress=False, sentence_embeddings=ScriptedEmbeddings())
    with pytest.raises(KeyboardInterrupt):
        run_suite(out, llm, tok, editor, settings, sets, **kwargs)
    assert runs == ["counterfact", "hallu-dev"] and (out / "counterfact" / "results.json").is_file()
    assert not (out / "SUMMARY.md").exists()

    fail["now"] = False
    summary = run_suite(out, llm, tok, editor, settings, sets, **kwargs)
    assert runs == ["counterfact", "hallu-dev", "hallu-dev"]  # the finished set was not run again
    rows = {(r["set"], r["method"]): r for r in summary["rows"]}
    assert set(rows) == {(s.name, m) for s in sets for m in settings.methods}
    assert rows[("counterfact", "text-rag")]["correct_fire"] == 1.0  # scripted cosine: prompts score 0.95
    assert rows[("counterfact", "no-edit")]["false_fire_neighbours"] == 0.0
    assert rows[("counterfact", "recipe")]["general_answer_accuracy"] is not None
    assert set(summary["portability"]["sets"]) == {"counterfact-one-hop", "mquake"}
    assert summary["portability"]["sets"]["mquake"]["questions"] == 3
    text = (out / "SUMMARY.md").read_text()
    assert "| counterfact | `text-rag` |" in text and "## Portability" in text and "## General ability" in text
    assert json.loads((out / "summary.json").read_text()) == summary

    # a third call finds everything done: no set and no portability run again
    third = run_suite(out, llm, tok, editor, settings, sets, **kwargs)
    assert runs == ["counterfact", "hallu-dev", "hallu-dev"] and third["rows"] == summary["rows"]
    # other settings make a set run again
    run_suite(out, llm, tok, editor, settings.model_copy(update={"gen_sample": 2}), sets[:1], **kwargs)
    assert runs[-1] == "counterfact"
    # ... and so does another editor (a new checkpoint), though its store was written by the old one
    other = copy.deepcopy(editor)
    with torch.no_grad():
        other.sentinel.token_embeddings.add_(0.01)
    other.invalidate_fingerprint()
    assert other.fingerprint != editor.fingerprint
    run_suite(out, llm, tok, other, settings, sets[:1], **kwargs)
    assert runs[-1] == "counterfact" and len(runs) == 5


def test_suite_names_a_missing_data_file(tmp_path):
    llm, tok, editor = tiny_set()
    with pytest.raises(FileNotFoundError, match="suite set 'x'.*nope.json"):
        run_suite(tmp_path / "o", llm, tok, editor, SuiteSettings(), [SuiteSet(name="x", data="nope.json")],
                  data_dir=tmp_path, progress=False)
