"""Tests for recipe_chain.data: the four edit formats, detection, validation, questions."""

from __future__ import annotations

import json
import re
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from recipe_chain.data import (
    DataFormatError,
    EditExample,
    LocalityPrompt,
    detect_format,
    iter_records,
    load_edit_examples,
    load_questions,
)
from recipe_chain.errors import RecipeChainError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CF_FLAT: dict[str, Any] = {
    "case_id": 0,
    "prompt": "The mother tongue of Danielle Darrieux is ",
    "target_new": " English",
    "subject": "Danielle Darrieux",
    "ground_truth": "French",
    "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
    "locality_prompt": "Michel Rocard is a native speaker of",
    "locality_ground_truth": "French",
}

ZSRE: dict[str, Any] = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniform"],
    "loc": "nq question: john goodman's character in the big lebowski",
    "loc_ans": "Walter Sobchak",
    "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?",
}

KNOWEDIT: dict[str, Any] = {
    "subject": "Epaspidoceras",
    "target_new": "Noctuidae",
    "prompt": "Which family does Epaspidoceras belong to?",
    "ground_truth": ["Aspidoceratidae"],
    "rephrase_prompt": "What family are Epaspidoceras?",
    "locality": {
        "Relation_Specificity": [
            {"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]},
            {"prompt": "Epaspidoceras taxon rank", "ground_truth": [["genus", "rank genus"]]},
        ],
        "Forgetfulness": [{"prompt": "The family of Epaspidoceras, which is not Noctuidae, is", "ground_truth": "Aspidoceratidae"}],
    },
    "portability": {"Reasoning": [{"prompt": "What is the common name for that family?", "ground_truth": "Owlet moths"}]},
}

ROME: dict[str, Any] = {
    "case_id": 7,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": ["Shayna does this. Danielle Darrieux, a native", "Danielle Darrieux spoke the language"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "Michel Rocard is a native speaker of"],
    "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}


def write_json(tmp_path: Path, data: Any, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(tmp_path: Path, records: list[Any], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- formats


def test_counterfact_flat_fields(tmp_path: Path) -> None:
    [ex] = load_edit_examples(write_json(tmp_path, [CF_FLAT]))
    assert ex.source_format == "counterfact_flat"
    assert ex.prompt == "The mother tongue of Danielle Darrieux is"
    assert ex.target_new == "English"
    assert ex.subject == "Danielle Darrieux"
    assert ex.ground_truth == "French"
    assert ex.case_id == "0"
    assert ex.paraphrases == ["Where Danielle Darrieux is from, people speak the language of"]
    assert ex.locality == [LocalityPrompt(prompt="Michel Rocard is a native speaker of", answer="French")]


def test_zsre_mend_fields_and_nq_prefix_stripped(tmp_path: Path) -> None:
    [ex] = load_edit_examples(write_json(tmp_path, [ZSRE]))
    assert ex.source_format == "zsre_mend"
    assert ex.prompt == "What is the product made by UniFirst?"
    assert ex.target_new == "unmanned aircraft"
    assert ex.ground_truth == "uniform"
    assert ex.subject == "UniFirst"
    assert ex.case_id is None
    assert ex.paraphrases == ["What will be the product of UniFirst?"]
    assert ex.locality == [LocalityPrompt(prompt="john goodman's character in the big lebowski", answer="Walter Sobchak")]


def test_knowedit_fields_locality_flattened(tmp_path: Path) -> None:
    [ex] = load_edit_examples(write_json(tmp_path, [KNOWEDIT]))
    assert ex.source_format == "knowedit"
    assert (ex.prompt, ex.target_new, ex.subject) == ("Which family does Epaspidoceras belong to?", "Noctuidae", "Epaspidoceras")
    assert ex.ground_truth == "Aspidoceratidae"
    assert ex.paraphrases == ["What family are Epaspidoceras?"]
    assert [(lp.prompt, lp.answer) for lp in ex.locality] == [
        ("The taxon rank of Epaspidoceras is", "genus"),
        ("Epaspidoceras taxon rank", "genus"),
        ("The family of Epaspidoceras, which is not Noctuidae, is", "Aspidoceratidae"),
    ]
    # portability is ignored, never mixed into locality or paraphrases
    assert all("common name" not in lp.prompt for lp in ex.locality)


def test_knowedit_optional_fields_absent_and_list_rephrase(tmp_path: Path) -> None:
    recent = {
        "subject": "Leo Arons",
        "prompt": "The place of death of Leo Arons is",
        "target_new": "Berlin",
        "portability": {},
    }
    with_list = dict(KNOWEDIT, rephrase_prompt=["What family are Epaspidoceras?", "Epaspidoceras is in which family?"], ground_truth="Aspidoceratidae")
    ex1, ex2 = load_edit_examples(write_json(tmp_path, [recent, with_list]))
    assert ex1.source_format == ex2.source_format == "knowedit"
    assert ex1.ground_truth is None and ex1.paraphrases == [] and ex1.locality == []
    assert ex2.paraphrases == ["What family are Epaspidoceras?", "Epaspidoceras is in which family?"]
    assert ex2.ground_truth == "Aspidoceratidae"


def test_counterfact_rome_fields(tmp_path: Path) -> None:
    [ex] = load_edit_examples(write_json(tmp_path, [ROME]))
    assert ex.source_format == "counterfact_rome"
    assert ex.prompt == "The mother tongue of Danielle Darrieux is"
    assert ex.target_new == "English"
    assert ex.subject == "Danielle Darrieux"
    assert ex.ground_truth == "French"
    assert ex.case_id == "7"
    assert ex.paraphrases == ROME["paraphrase_prompts"]
    assert ex.locality == [
        LocalityPrompt(prompt="The mother tongue of Léon Blum is", answer="French"),
        LocalityPrompt(prompt="Michel Rocard is a native speaker of", answer="French"),
    ]


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("record", "expected"),
    [(CF_FLAT, "counterfact_flat"), (ZSRE, "zsre_mend"), (KNOWEDIT, "knowedit"), (ROME, "counterfact_rome")],
)
def test_detect_format(record: dict[str, Any], expected: str) -> None:
    assert detect_format(record) == expected


def test_detect_format_unknown_lists_keys_and_formats() -> None:
    with pytest.raises(DataFormatError) as info:
        detect_format({"question": "q?", "answer": ["a"]})
    message = str(info.value)
    assert "'answer'" in message and "'question'" in message
    for name in ("counterfact_flat", "zsre_mend", "knowedit", "counterfact_rome"):
        assert name in message


def test_auto_detection_per_file_and_forced_format(tmp_path: Path) -> None:
    for i, (record, expected) in enumerate(
        [(CF_FLAT, "counterfact_flat"), (ZSRE, "zsre_mend"), (KNOWEDIT, "knowedit"), (ROME, "counterfact_rome")]
    ):
        path = write_json(tmp_path, [record, record], name=f"f{i}.json")
        assert [ex.source_format for ex in load_edit_examples(path)] == [expected, expected]
        assert load_edit_examples(path, format=expected)[0].source_format == expected
    # forcing a wrong format reports the field that format needs
    with pytest.raises(DataFormatError, match=r"record 0.*'src'"):
        load_edit_examples(write_json(tmp_path, [CF_FLAT]), format="zsre_mend")
    with pytest.raises(ValueError, match="unknown format"):
        load_edit_examples(write_json(tmp_path, [CF_FLAT]), format="bogus")  # type: ignore[arg-type]


def test_unknown_format_file_names_path_and_record(tmp_path: Path) -> None:
    path = write_json(tmp_path, [{"question": "who?", "answer": ["me"]}])
    with pytest.raises(DataFormatError) as info:
        load_edit_examples(path)
    assert str(path) in str(info.value)
    assert "record 0" in str(info.value)
    assert "unknown record format" in str(info.value)


# ----------------------------------------------------------------------------- model


def test_statement_property() -> None:
    ex = EditExample(prompt="The mother tongue of Danielle Darrieux is   ", target_new="English", source_format="counterfact_flat")
    assert ex.statement == "The mother tongue of Danielle Darrieux is English"
    ex2 = EditExample(prompt="Q: What is the capital of France?", target_new=" Lyon ", source_format="x")
    assert ex2.statement == "Q: What is the capital of France? Lyon"


def test_models_are_frozen_and_reject_empty_text() -> None:
    ex = EditExample(prompt="p", target_new="t", source_format="counterfact_flat")
    with pytest.raises(ValidationError):
        ex.prompt = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        EditExample(prompt="p", target_new="   ", source_format="counterfact_flat")
    with pytest.raises(ValidationError):
        LocalityPrompt(prompt="")
    assert LocalityPrompt(prompt=" q ", answer="  ").answer is None


# ----------------------------------------------------------------------------- malformed input


def test_missing_field_names_index_case_id_and_field(tmp_path: Path) -> None:
    bad = {k: v for k, v in CF_FLAT.items() if k != "target_new"}
    bad["case_id"] = 42
    path = write_json(tmp_path, [CF_FLAT, CF_FLAT, bad])
    with pytest.raises(DataFormatError) as info:
        load_edit_examples(path)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, RecipeChainError)
    assert (err.index, err.field, err.case_id, err.path) == (2, "target_new", "42", str(path))
    assert "record 2" in str(err) and "case_id=42" in str(err) and "'target_new'" in str(err) and "missing" in str(err)


def test_empty_target_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path, [ZSRE, dict(ZSRE, alt="   ")])
    with pytest.raises(DataFormatError, match=r"record 1.*field 'alt'.*non-empty"):
        load_edit_examples(path)


def test_empty_prompt_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path, [dict(CF_FLAT, prompt="")])
    with pytest.raises(DataFormatError, match=r"record 0 \(case_id=0\).*field 'prompt'"):
        load_edit_examples(path)


def test_wrong_types_name_nested_field(tmp_path: Path) -> None:
    rome_bad = json.loads(json.dumps(ROME))
    rome_bad["requested_rewrite"]["target_new"] = "English"
    with pytest.raises(DataFormatError, match=r"record 1.*'requested_rewrite\.target_new'"):
        load_edit_examples(write_json(tmp_path, [ROME, rome_bad], name="rome.json"))
    ke_bad = json.loads(json.dumps(KNOWEDIT))
    ke_bad["locality"]["Relation_Specificity"][1] = {"ground_truth": "genus"}
    with pytest.raises(DataFormatError, match=r"record 0.*'locality\.Relation_Specificity\[1\]\.prompt'.*missing"):
        load_edit_examples(write_json(tmp_path, [ke_bad], name="ke.json"))
    with pytest.raises(DataFormatError, match=r"'rephrase_prompt'.*string"):
        load_edit_examples(write_json(tmp_path, [dict(CF_FLAT, rephrase_prompt=3)], name="cf.json"))


def test_rome_prompt_without_placeholder_rejected(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(ROME))
    bad["requested_rewrite"]["prompt"] = "The mother tongue of Danielle Darrieux is"
    with pytest.raises(DataFormatError, match=r"case_id=7.*'requested_rewrite\.prompt'.*placeholder"):
        load_edit_examples(write_json(tmp_path, [bad]))


def test_non_list_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="expected a JSON list of records, got str"):
        load_edit_examples(write_json(tmp_path, "just a string"))
    with pytest.raises(DataFormatError, match="exactly one list of records"):
        load_edit_examples(write_json(tmp_path, ZSRE, name="single.json"))
    with pytest.raises(DataFormatError, match=r"record 1: expected a JSON object, got list"):
        load_edit_examples(write_json(tmp_path, [CF_FLAT, ["not", "a", "dict"]], name="mixed.json"))


def test_bad_json_and_empty_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "x", "target_new": ', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.json: file is not valid JSON"):
        load_edit_examples(bad)
    empty = tmp_path / "empty.json"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="file is empty"):
        load_edit_examples(empty)
    with pytest.raises(DataFormatError, match="holds no records"):
        load_edit_examples(write_json(tmp_path, [], name="nolist.json"))
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps(ZSRE) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"line 2 \(record 1\) is not valid JSON"):
        load_edit_examples(bad_line)
    with pytest.raises(FileNotFoundError):
        load_edit_examples(tmp_path / "missing.json")


def test_on_invalid_skip_logs_and_drops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_json(tmp_path, [ZSRE, dict(ZSRE, alt=""), dict(ZSRE, src="Second?")])
    with caplog.at_level(logging.WARNING, logger="recipe_chain.data"):
        examples = load_edit_examples(path, on_invalid="skip")
    assert [ex.prompt for ex in examples] == [ZSRE["src"], "Second?"]
    assert any("record 1" in r.getMessage() and "'alt'" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- limit, jsonl, wrappers


def test_limit(tmp_path: Path) -> None:
    records = [dict(CF_FLAT, case_id=i, target_new=f"T{i}") for i in range(5)]
    path = write_json(tmp_path, records + [{"prompt": "broken"}])  # record 5 is invalid
    assert [ex.case_id for ex in load_edit_examples(path, limit=3)] == ["0", "1", "2"]
    assert load_edit_examples(path, limit=0) == []
    assert len(load_edit_examples(path, limit=5)) == 5  # the broken record is beyond the limit
    with pytest.raises(DataFormatError, match=r"record 5.*'target_new'"):
        load_edit_examples(path, limit=6)
    with pytest.raises(ValueError, match="limit"):
        load_edit_examples(path, limit=-1)


def test_jsonl_edits_and_wrapped_json(tmp_path: Path) -> None:
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(ROME) + "\n\n" + json.dumps(dict(ROME, case_id=8)) + "\n", encoding="utf-8")
    assert [ex.case_id for ex in load_edit_examples(path)] == ["7", "8"]
    wrapped = write_json(tmp_path, {"version": 1, "data": [CF_FLAT]}, name="wrapped.json")
    assert iter_records(wrapped) == [CF_FLAT]
    assert load_edit_examples(wrapped)[0].target_new == "English"


def test_load_questions(tmp_path: Path) -> None:
    rows = [
        {"question": " who got the first nobel prize in physics? ", "answer": ["Wilhelm Conrad Röntgen", "Röntgen"], "output": ["..."]},
        {"question": "when is the next deadpool movie being released?", "answer": []},
        {"question": "how many?", "answer": "3"},
    ]
    qs = load_questions(write_jsonl(tmp_path, rows))
    assert qs == [
        LocalityPrompt(prompt="who got the first nobel prize in physics?", answer="Wilhelm Conrad Röntgen",
                       aliases=("Wilhelm Conrad Röntgen", "Röntgen")),
        LocalityPrompt(prompt="when is the next deadpool movie being released?", answer=None),
        LocalityPrompt(prompt="how many?", answer="3", aliases=("3",)),
    ]
    # every accepted answer is kept for answer accuracy
    assert qs[0].accepted_answers == ("Wilhelm Conrad Röntgen", "Röntgen") and qs[1].accepted_answers == ()
    assert LocalityPrompt(prompt="p", answer="x").accepted_answers == ("x",)
    assert len(load_questions(write_jsonl(tmp_path, rows), limit=2)) == 2
    with pytest.raises(DataFormatError, match=r"record 1.*'question'.*missing"):
        load_questions(write_jsonl(tmp_path, [rows[0], {"answer": ["x"]}], name="bad.jsonl"))


# ----------------------------------------------------------------------------- real data


def test_real_shared_data() -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")

    cf = load_edit_examples(SHARED_DATA / "counterfact" / "eval.json")
    assert len(cf) == 10_000
    assert {ex.source_format for ex in cf} == {"counterfact_flat"}
    assert cf[0].statement == "The mother tongue of Danielle Darrieux is English"
    assert all(ex.paraphrases and ex.locality and ex.ground_truth and ex.case_id is not None for ex in cf)
    assert len({ex.case_id for ex in cf}) == 10_000

    zsre_path = SHARED_DATA / "zsre" / "train-1k.json"
    assert len(iter_records(zsre_path)) == 1_000
    # The public MEND file has two records with an empty "alt" (index 534 and 723):
    # strict loading reports the first, skip mode drops both.
    with pytest.raises(DataFormatError, match=r"record 534.*'alt'"):
        load_edit_examples(zsre_path)
    zsre = load_edit_examples(zsre_path, on_invalid="skip")
    assert len(zsre) == 998
    assert {ex.source_format for ex in zsre} == {"zsre_mend"}
    assert all(ex.paraphrases and ex.locality and ex.locality[0].answer for ex in zsre)
    assert not any(lp.prompt.startswith("nq question:") for ex in zsre for lp in ex.locality)

    nq = load_questions(SHARED_DATA / "general" / "nq-open.jsonl")
    assert len(nq) == 3_610
    assert all(q.prompt and q.answer for q in nq)


# ----------------------------------------------------------------------------- PokeMQA and MQuAKE

POKEMQA: dict[str, Any] = {
    "edit": "Carl Sagan is employed by British Broadcasting Corporation",
    "questions": ["Who is the employer of Carl Sagan?", "Where does Carl Sagan work?"],
}

MQUAKE: dict[str, Any] = {
    "case_id": 7417,
    "requested_rewrite": [
        {"prompt": "{} was performed by", "subject": "Hey Jude", "question": "Who performed Hey Jude?",
         "target_new": {"str": "Madonna", "id": "Q1744"}, "target_true": {"str": "The Beatles", "id": "Q1299"}},
        {"prompt": "The director of {} is", "subject": "Madonna", "question": "Who is the director of Madonna?",
         "target_new": {"str": "Narendra Modi", "id": "Q1058"}, "target_true": {"str": "Guy Oseary", "id": "Q5622519"}},
    ],
    "questions": ["Who directs the performer of Hey Jude?"],
    "single_hops": [
        {"question": "Who performed Hey Jude?", "cloze": "Hey Jude was performed by", "answer": "The Beatles"},
        {"question": "Who is the director of The Beatles?", "cloze": "The director of The Beatles is",
         "answer": "Brian Epstein"},
    ],
}


def test_pokemqa_statement_split_at_the_relation_phrase(tmp_path: Path) -> None:
    path = tmp_path / "poke.json"
    path.write_text(json.dumps([POKEMQA, {"edit": "The Leader of the Opposition is Don Young", "questions": ["Who?"]}]))
    first, second = load_edit_examples(path)
    assert detect_format(POKEMQA) == "pokemqa"
    assert (first.prompt, first.target_new, first.subject) == (
        "Carl Sagan is employed by", "British Broadcasting Corporation", "Carl Sagan")
    assert first.paraphrases == POKEMQA["questions"] and first.statement == POKEMQA["edit"]
    # no known relation phrase: split after the first "is", subject unknown
    assert (second.prompt, second.target_new, second.subject) == ("The Leader of the Opposition is", "Don Young", None)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"edit": "Carl Sagan is employed by BBC", "questions": []}, "questions"),
        ({"edit": "Carl Sagan is employed by BBC", "questions": ["ok?", 3]}, "questions[1]"),
        ({"edit": "", "questions": ["Who?"]}, "edit"),
        ({"edit": "Nothing here splits", "questions": ["Who?"]}, "edit"),
    ],
)
def test_pokemqa_malformed_record_names_the_field(tmp_path: Path, record: dict[str, Any], field: str) -> None:
    path = tmp_path / "poke.json"
    path.write_text(json.dumps([POKEMQA, record]))
    with pytest.raises(DataFormatError, match=rf"record 1.*'{re.escape(field)}'"):
        load_edit_examples(path)


def test_mquake_one_example_per_rewrite_with_other_subjects_as_locality(tmp_path: Path) -> None:
    path = tmp_path / "mquake.json"
    path.write_text(json.dumps([MQUAKE]))
    first, second = load_edit_examples(path)
    assert detect_format(MQUAKE) == "mquake"
    assert (first.prompt, first.target_new, first.ground_truth, first.case_id) == (
        "Hey Jude was performed by", "Madonna", "The Beatles", "7417")
    assert first.paraphrases == ["Who performed Hey Jude?"]
    # the hop about the rewrite's own subject is not a locality prompt of it
    assert [lp.prompt for lp in first.locality] == ["The director of The Beatles is"]
    assert second.statement == "The director of Madonna is Narendra Modi"
    assert [lp.prompt for lp in second.locality] == ["Hey Jude was performed by", "The director of The Beatles is"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"requested_rewrite": []}, "requested_rewrite"),
        ({"requested_rewrite": [MQUAKE["requested_rewrite"][0], "x"]}, "requested_rewrite[1]"),
        ({"single_hops": [{"cloze": 5}]}, "single_hops[0].cloze"),
    ],
)
def test_mquake_malformed_record_names_the_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    path = tmp_path / "mquake.json"
    path.write_text(json.dumps([MQUAKE, {**MQUAKE, **change}]))
    with pytest.raises(DataFormatError, match=rf"record 1.*'{re.escape(field)}'"):
        load_edit_examples(path)


def test_real_pokemqa_and_mquake() -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    poke = load_edit_examples(SHARED_DATA / "questions" / "pokemqa_edit2questions.json")
    assert len(poke) == 6_688 and {ex.source_format for ex in poke} == {"pokemqa"}
    assert all(ex.statement == " ".join(r["edit"].split())
               for ex, r in zip(poke, iter_records(SHARED_DATA / "questions" / "pokemqa_edit2questions.json")))
    assert sum(ex.subject is not None for ex in poke) / len(poke) > 0.99  # a known relation phrase split it
    assert all(len(ex.paraphrases) == 4 for ex in poke)
    mquake = load_edit_examples(SHARED_DATA / "mquake" / "mquake_hard.json")
    records = iter_records(SHARED_DATA / "mquake" / "mquake_hard.json")
    assert len(mquake) == sum(len(r["requested_rewrite"]) for r in records)
    assert all(ex.paraphrases and ex.ground_truth for ex in mquake)
