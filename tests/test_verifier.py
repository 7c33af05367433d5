"""The gate's second stage: the verifier, its training data, and the two-stage decision in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertModel

from recipe_chain.data import DataFormatError, EditExample, LocalityPrompt
from recipe_chain.gate import shortlist, verified_choice
from recipe_chain.training.verifier_data import (
    HardNegativeSampler,
    build_pairs,
    load_pokemqa,
    load_verifier_sources,
    statement_queries,
)
from recipe_chain.training.verifier_trainer import VerifierTrainingConfig, train_verifier
from recipe_chain.training.verifier_data import VerifierPair
from recipe_chain.verifier import EditVerifier
from tiny import tiny_backbone_dir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

MATCH = ("Who runs Acme Rockets?", "The CEO of Acme Rockets is Wile E. Coyote")
SAME_RELATION = ("Who runs Zenith Motors?", "The CEO of Acme Rockets is Wile E. Coyote")
SAME_SUBJECT = ("Where is Acme Rockets based?", "The CEO of Acme Rockets is Wile E. Coyote")


def _verifier(backbone_dir: Path, **fields) -> EditVerifier:
    path = tiny_backbone_dir(backbone_dir)
    backbone, tokenizer = BertModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    return EditVerifier.from_backbone(backbone, tokenizer, backbone_id=str(path), **fields)


def _crafted_pairs() -> list[VerifierPair]:
    facts = [("Acme Rockets", "CEO", "Wile E. Coyote", "Who runs", "Where is", "based?", "Paris"),
             ("Zenith Motors", "CEO", "Ada Byron", "Who runs", "Where is", "based?", "Oslo"),
             ("Blue Harbor", "CEO", "Tom Reed", "Who runs", "Where is", "based?", "Lima")]
    pairs = []
    for subject, _, ceo, ask_ceo, ask_place, tail, _ in facts:
        statement = f"The CEO of {subject} is {ceo}"
        pairs.append(VerifierPair(query=f"{ask_ceo} {subject}?", statement=statement, label=1, kind="positive"))
        pairs.append(VerifierPair(query=f"Who is the CEO of {subject}?", statement=statement, label=1, kind="positive"))
        pairs.append(VerifierPair(query=f"{ask_place} {subject} {tail}", statement=statement, label=0, kind="same_subject"))
        for other, *_ in facts:
            if other != subject:
                pairs.append(VerifierPair(query=f"{ask_ceo} {other}?", statement=statement, label=0, kind="same_relation"))
    return pairs


def test_trained_tiny_verifier_admits_the_match_and_rejects_both_neighbours(backbone_dir: Path) -> None:
    verifier = _verifier(backbone_dir, num_layers=2, lora_rank=4)
    pairs = _crafted_pairs()
    log = train_verifier(verifier, pairs, VerifierTrainingConfig(steps=300, batch_size=16, lr=3e-3), progress=False)
    assert log[-1]["loss"] < log[0]["loss"]
    probs = verifier.probabilities(*zip(MATCH, SAME_RELATION, SAME_SUBJECT))
    assert probs[0] > 0.5 > max(float(probs[1]), float(probs[2])), probs
    assert verifier.decide(float(probs[0])) and not verifier.decide(float(probs[1]))


def test_untrained_verifier_does_not_tell_them_apart(backbone_dir: Path) -> None:
    """The crafted triple is not separable by chance: the test above measures training."""
    verifier = _verifier(backbone_dir, num_layers=2, lora_rank=4)
    probs = verifier.probabilities(*zip(MATCH, SAME_RELATION, SAME_SUBJECT))
    assert float(probs.max() - probs.min()) < 0.05


def test_save_load_round_trip_and_compiled_equals_eager(backbone_dir: Path, tmp_path: Path) -> None:
    verifier = _verifier(backbone_dir, num_layers=1, threshold=0.3, candidate_k=3)
    with torch.no_grad():
        verifier.head.weight.normal_()
        for name, p in verifier.named_parameters():
            if name.endswith("lora_b"):
                p.normal_(std=0.1)
    out = verifier.save_pretrained(tmp_path / "v")
    loaded = EditVerifier.from_pretrained(out, backbone=BertModel.from_pretrained(tiny_backbone_dir(backbone_dir)),
                                          tokenizer=AutoTokenizer.from_pretrained(tiny_backbone_dir(backbone_dir)))
    assert loaded.config == verifier.config and len(loaded.backbone.encoder.layer) == 1
    assert verifier.int8_inference and loaded.int8_inference  # the default
    int8 = loaded.probabilities(*zip(MATCH, SAME_SUBJECT))
    verifier.int8_inference = loaded.int8_inference = False
    a = verifier.probabilities(*zip(MATCH, SAME_SUBJECT))
    b = loaded.probabilities(*zip(MATCH, SAME_SUBJECT))
    loaded.compiled_inference = False
    c = loaded.probabilities(*zip(MATCH, SAME_SUBJECT))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(b, c, atol=1e-5)
    assert torch.allclose(int8, c, atol=0.05)
    loaded.compiled_inference = loaded.int8_inference = True  # int8 pairs scored in a batch == one at a time
    pairs = [MATCH, SAME_SUBJECT, SAME_RELATION]
    alone = torch.cat([loaded.probabilities([q], [s]) for q, s in pairs])
    torch.testing.assert_close(loaded.probabilities(*zip(*pairs)), alone, rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="No gate verifier"):
        EditVerifier.from_pretrained(tmp_path / "missing")


def test_long_queries_are_cut_to_fit_the_pair(backbone_dir: Path) -> None:
    verifier = _verifier(backbone_dir, num_layers=1, max_length=32)
    long_query = "Background that says nothing. " * 100 + "Who runs Acme Rockets?"
    batch = verifier.tokenize_pairs([long_query], [MATCH[1]])
    assert batch["input_ids"].shape[1] <= 32
    text = verifier.tokenizer.decode(batch["input_ids"][0])
    assert "who runs acme rockets?" in text and "wile e. coyote" in text  # the asking part and the whole statement


def test_two_stage_rule() -> None:
    assert shortlist([5.0, 3.0, 1.0], 2.0, margin=-0.5, k=3) == [0, 1]
    assert shortlist([5.0, float("nan")], 0.0, margin=0.0, k=2) == [0]
    assert verified_choice([0.4, 0.8, 0.9], 0.5) == 2
    assert verified_choice([0.9, 0.9], 0.5) == 0
    assert verified_choice([None, 0.5], 0.5) is None


def _example(prompt: str, target: str, fmt: str, locality: list[str]) -> EditExample:
    return EditExample(prompt=prompt, target_new=target, source_format=fmt, paraphrases=[prompt.replace("is", "was")],
                       locality=[LocalityPrompt(prompt=p) for p in locality])


def test_hard_negative_sampler_returns_both_kinds_and_never_the_own_statement() -> None:
    examples = [
        _example("The mother tongue of Danielle Darrieux is", "English", "counterfact_flat",
                 ["The mother tongue of Paul Martin is"]),
        _example("The founder of Goursez Vreizh is", "Jean", "knowedit", ["The country of Goursez Vreizh is"]),
        _example("The mother tongue of Lionel Jospin is", "French", "counterfact_flat", ["The mother tongue of Anna is"]),
    ]
    facts = statement_queries(examples)

    def rank(queries: list[str], statements: list[str]) -> torch.Tensor:  # word overlap: a stand-in retriever
        return torch.tensor([[len(set(q.lower().split()) & set(s.lower().split())) for s in statements] for q in queries],
                            dtype=torch.float)

    sampler = HardNegativeSampler(facts, rank, mined_per_query=2)
    kinds = set()
    for i, fact in enumerate(facts):
        for query, statement, kind in sampler.negatives(i):
            kinds.add(kind)
            if kind == "mined":
                assert statement != fact.statement
    assert {"same_relation", "same_subject", "mined"} <= kinds
    pairs = build_pairs(sampler)
    assert {p.kind for p in pairs if p.label == 1} == {"positive"}
    assert not any(p.label == 0 and p.kind == "mined" and p.query in facts[i].positives and p.statement == facts[i].statement
                   for i in range(len(facts)) for p in pairs)


def test_pokemqa_loader_reads_real_records_and_names_bad_fields(tmp_path: Path) -> None:
    real = DATA / "questions" / "pokemqa_edit2questions.json"
    if real.is_file():
        facts = load_pokemqa(real, limit=5)
        assert len(facts) == 5 and all(len(f.positives) == 4 and f.statement for f in facts)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"edit": "A is B", "questions": ["What is A?"]}, {"edit": "C is D", "questions": []}]))
    with pytest.raises(DataFormatError, match="record 1: field 'questions'"):
        load_pokemqa(bad)
    bad.write_text(json.dumps([{"questions": ["Q?"]}]))
    with pytest.raises(DataFormatError, match="record 0: field 'edit'"):
        load_pokemqa(bad)


def test_verifier_sources_keep_hallueditbench_dev_subjects_out(tmp_path: Path) -> None:
    path = DATA / "questions" / "hallueditbench.json"
    if not path.is_file():
        pytest.skip("../shared/data is not beside this checkout")
    from recipe_chain.data import load_edit_examples, split_by_subject

    _, dev = split_by_subject(load_edit_examples(path, on_invalid="skip"))
    dev_statements = {e.statement for e in dev}
    train_facts = load_verifier_sources([str(path)])
    assert train_facts and not dev_statements & {f.statement for f in train_facts}


def test_cli_refuses_evaluation_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recipe_chain.cli import main

    code = main(["train-verifier", "--out", str(tmp_path / "v"), "--data", "../shared/data/counterfact/eval.json"])
    assert code == 2 and "never trained on" in capsys.readouterr().err


# ---------------------------------------------------------------------- the store's two-stage gate
def _scripted(verifier: EditVerifier, answers: dict[str, str]) -> EditVerifier:
    """Make ``verifier`` say 0.9 iff the statement holds the subject that ``answers`` maps the query to."""

    def probabilities(queries, statements):  # noqa: ANN001, ANN202
        return torch.tensor([0.9 if answers.get(q, "\0") in s else 0.1 for q, s in zip(queries, statements)])

    verifier.probabilities = probabilities  # type: ignore[method-assign]
    return verifier


def test_store_admits_the_verified_candidate_and_explains_why(backbone_dir: Path) -> None:
    from recipe_chain.retrievers import RecipeKnowledgeRetriever
    from recipe_chain.runnables import edit_info
    from tiny_store import QUERIES, make_store, tiny_models

    models = tiny_models()
    fingerprint = models.editor.fingerprint
    verifier = _scripted(_verifier(backbone_dir, num_layers=1, candidate_k=5, prefilter_margin=-1e6, threshold=0.5),
                         {QUERIES[0]: "Danielle Darrieux", QUERIES[2]: "France"})
    models.editor.gate_verifier = verifier
    assert models.editor.fingerprint == fingerprint  # the verifier reads texts, not keys
    assert "gate_verifier" not in dict(models.editor.named_modules())
    store = make_store(models.editor)
    assert store.verifier is verifier
    result = store.gate(QUERIES[0])
    assert result.hit is not None and "Danielle Darrieux" in result.hit.statement
    assert result.verifier_probability == pytest.approx(0.9) and result.verifier_threshold == 0.5
    assert all(c.verifier_probability is not None for c in result.candidates)
    info = edit_info(result)
    assert info["edit_fired"] and info["verifier_probability"] == pytest.approx(0.9) and info["verifier_threshold"] == 0.5
    assert store.gate(QUERIES[3]).hit is None  # "Who wrote Hamlet?": nothing verified
    docs = RecipeKnowledgeRetriever(store=store, mode="threshold", k=5).invoke(QUERIES[2])
    assert [d.metadata["admitted"] for d in docs].count(True) == 1
    admitted = next(d for d in docs if d.metadata["admitted"])
    assert "France" in admitted.page_content and admitted.metadata["verifier_probability"] == pytest.approx(0.9)
    assert RecipeKnowledgeRetriever(store=store, mode="gate").invoke(QUERIES[3]) == []
    # no candidate shortlisted: the verifier is never asked and nothing fires
    store.verifier = _scripted(_verifier(backbone_dir, num_layers=1, prefilter_margin=1e6), {QUERIES[0]: "Darrieux"})
    quiet = store.gate(QUERIES[0])
    assert quiet.hit is None and quiet.verifier_probability is None
    plain = make_store(models.editor, verifier=None)
    assert plain.verifier is None and plain.gate(QUERIES[0]).verifier_threshold is None


def test_editor_checkpoint_carries_its_verifier(backbone_dir: Path, tmp_path: Path) -> None:
    from recipe_chain import RecipeEditor
    from tiny_store import tiny_models

    models = tiny_models()
    models.editor.gate_verifier = _verifier(backbone_dir, num_layers=1, threshold=0.42)
    out = models.editor.save_pretrained(tmp_path / "ckpt")
    assert (out / "verifier" / "config.json").is_file()
    loaded = RecipeEditor.from_pretrained(out, llm=models.llm)
    assert loaded.gate_verifier is not None and loaded.gate_verifier.config.threshold == 0.42
    assert loaded.fingerprint == models.editor.fingerprint
    with pytest.raises(TypeError, match="gate_verifier"):
        loaded.gate_verifier = "not a verifier"  # type: ignore[assignment]
