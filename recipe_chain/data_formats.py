"""Per-format record parsing: which format a record is in, and its fields as :class:`EditExample` fields.

Each parser returns the keyword arguments of one :class:`~recipe_chain.edit_examples.EditExample`
(or a list of them, for MQuAKE's chained rewrites) and raises :class:`RecordError` naming
the field at fault; :func:`recipe_chain.data.load_edit_examples` adds the file and record.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from recipe_chain.edit_examples import DataFormat, DataFormatError, LocalityPrompt

__all__ = [
    "PARSERS",
    "RELATION_PHRASES",
    "RecordError",
    "case_id_of",
    "describe",
    "detect_format",
    "first_answer",
    "required_text",
    "split_statement",
]

_ZSRE_LOC_PREFIX = "nq question:"


def describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def detect_format(record: dict[str, Any]) -> DataFormat:
    """Tell which :data:`DataFormat` a record is in, from its keys.

    Rules, in order: ``edit`` and ``questions`` -> ``pokemqa``; ``requested_rewrite`` -> ``mquake``
    when it is a list, else ``counterfact_rome``; ``question``, ``object`` and ``multiple_choices``
    -> ``hallueditbench``; ``src`` or ``alt`` ->
    ``zsre_mend``; ``prompt`` or ``target_new`` together with ``locality`` or
    ``portability`` -> ``knowedit``; ``prompt`` or ``target_new`` otherwise ->
    ``counterfact_flat``. Detection only looks at keys; the loader validates the values.

    Args:
        record: One raw record (a JSON object).

    Returns:
        The format name.

    Raises:
        DataFormatError: If ``record`` is not a dict or matches no known format; the
            message lists the keys seen and the formats known.

    Example:
        >>> detect_format({"src": "What is the product made by UniFirst?", "alt": "drone"})
        'zsre_mend'
    """
    if not isinstance(record, dict):
        raise DataFormatError(f"cannot detect the format of a {type(record).__name__}, expected a JSON object")
    keys = set(record)
    if {"edit", "questions"} <= keys:
        return "pokemqa"
    if "requested_rewrite" in keys:
        return "mquake" if isinstance(record["requested_rewrite"], list) else "counterfact_rome"
    if {"question", "object", "multiple_choices"} <= keys:
        return "hallueditbench"
    if keys & {"src", "alt"}:
        return "zsre_mend"
    if keys & {"prompt", "target_new"}:
        if keys & {"locality", "portability"}:
            return "knowedit"
        return "counterfact_flat"
    raise DataFormatError(
        f"unknown record format: keys seen {sorted(keys)}; formats known: "
        "counterfact_flat (prompt, target_new, rephrase_prompt, locality_prompt, ...), "
        "zsre_mend (src, alt, answers, rephrase, loc, loc_ans), "
        "knowedit (prompt, target_new, rephrase_prompt, locality: {...}, portability), "
        "counterfact_rome (requested_rewrite, paraphrase_prompts, neighborhood_prompts), "
        "hallueditbench (subject, question, object, multiple_choices, paraphrased_question, locality_question), "
        "pokemqa (edit, questions), mquake (requested_rewrite: [...], questions, single_hops)"
    )


class RecordError(Exception):
    """Internal: a problem with one field of the record being parsed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


_MISSING = object()


def required_text(record: dict[str, Any], key: str, *, field: str | None = None) -> str:
    field = field or key
    value = record.get(key, _MISSING)
    if value is _MISSING:
        raise RecordError(field, "is missing")
    if not isinstance(value, str):
        raise RecordError(field, f"must be a string, got {describe(value)}")
    value = value.strip()
    if not value:
        raise RecordError(field, "must be a non-empty string, got an empty one")
    return value


def _optional_text(record: dict[str, Any], key: str, *, field: str | None = None) -> str | None:
    field = field or key
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(field, f"must be a string, got {describe(value)}")
    return value.strip() or None


def first_answer(value: Any, field: str) -> str | None:
    """First non-empty string in a string / number / (nested) list of them; else None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordError(field, f"must be a string or a list of strings, got {describe(value)}")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list):
        for item in value:
            found = first_answer(item, field)
            if found is not None:
                return found
        return None
    raise RecordError(field, f"must be a string or a list of strings, got {describe(value)}")


def _text_list(value: Any, field: str) -> list[str]:
    """A string or list of strings -> list of non-empty stripped strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if not isinstance(value, list):
        raise RecordError(field, f"must be a string or a list of strings, got {describe(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordError(f"{field}[{i}]", f"must be a string, got {describe(item)}")
        if item.strip():
            out.append(item.strip())
    return out


def case_id_of(record: dict[str, Any]) -> str | None:
    value = record.get("case_id")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value).strip() or None
    return None


def _parse_counterfact_flat(record: dict[str, Any]) -> dict[str, Any]:
    locality: list[LocalityPrompt] = []
    loc_prompt = _optional_text(record, "locality_prompt")
    if loc_prompt is not None:
        answer = first_answer(record.get("locality_ground_truth"), "locality_ground_truth")
        locality.append(LocalityPrompt(prompt=loc_prompt, answer=answer))
    return {
        "prompt": required_text(record, "prompt"),
        "target_new": required_text(record, "target_new"),
        "subject": _optional_text(record, "subject"),
        "ground_truth": first_answer(record.get("ground_truth"), "ground_truth"),
        "paraphrases": _text_list(record.get("rephrase_prompt"), "rephrase_prompt"),
        "locality": locality,
    }


def _parse_zsre_mend(record: dict[str, Any]) -> dict[str, Any]:
    answers = record.get("answers")
    if answers is not None and not isinstance(answers, (list, str)):
        raise RecordError("answers", f"must be a list of strings, got {describe(answers)}")
    locality: list[LocalityPrompt] = []
    loc = _optional_text(record, "loc")
    if loc is not None:
        if loc.lower().startswith(_ZSRE_LOC_PREFIX):
            loc = loc[len(_ZSRE_LOC_PREFIX) :].strip()
        if loc:
            answer = first_answer(record.get("loc_ans"), "loc_ans")
            locality.append(LocalityPrompt(prompt=loc, answer=answer))
    return {
        "prompt": required_text(record, "src"),
        "target_new": required_text(record, "alt"),
        "subject": _optional_text(record, "subject"),
        "ground_truth": first_answer(answers, "answers"),
        "paraphrases": _text_list(record.get("rephrase"), "rephrase"),
        "locality": locality,
    }


def _parse_knowedit(record: dict[str, Any]) -> dict[str, Any]:
    rephrase_key = "rephrase_prompt" if "rephrase_prompt" in record else "rephrase"
    locality: list[LocalityPrompt] = []
    groups = record.get("locality")
    if groups is not None:
        if not isinstance(groups, dict):
            raise RecordError("locality", f"must be an object {{name: [{{prompt, ground_truth}}]}}, got {describe(groups)}")
        for name, items in groups.items():
            field = f"locality.{name}"
            if isinstance(items, dict):
                items = [items]
            if not isinstance(items, list):
                raise RecordError(field, f"must be a list of {{prompt, ground_truth}} objects, got {describe(items)}")
            for i, item in enumerate(items):
                item_field = f"{field}[{i}]"
                if not isinstance(item, dict):
                    raise RecordError(item_field, f"must be an object {{prompt, ground_truth}}, got {describe(item)}")
                prompts = item.get("prompt")
                answers = item.get("ground_truth")
                if isinstance(prompts, list):
                    # EasyEdit's columnar variant: {"prompt": [...], "ground_truth": [...]}
                    prompt_list = _text_list(prompts, f"{item_field}.prompt")
                    answer_list = answers if isinstance(answers, list) else [answers] * len(prompt_list)
                    for j, p in enumerate(prompt_list):
                        a = answer_list[j] if j < len(answer_list) else None
                        locality.append(LocalityPrompt(prompt=p, answer=first_answer(a, f"{item_field}.ground_truth")))
                    continue
                prompt = required_text(item, "prompt", field=f"{item_field}.prompt")
                answer = first_answer(answers, f"{item_field}.ground_truth")
                locality.append(LocalityPrompt(prompt=prompt, answer=answer))
    return {
        "prompt": required_text(record, "prompt"),
        "target_new": required_text(record, "target_new"),
        "subject": _optional_text(record, "subject"),
        "ground_truth": first_answer(record.get("ground_truth"), "ground_truth"),
        "paraphrases": _text_list(record.get(rephrase_key), rephrase_key),
        "locality": locality,
    }


def _parse_counterfact_rome(record: dict[str, Any]) -> dict[str, Any]:
    rewrite = record.get("requested_rewrite", _MISSING)
    if rewrite is _MISSING:
        raise RecordError("requested_rewrite", "is missing")
    if not isinstance(rewrite, dict):
        raise RecordError("requested_rewrite", f"must be an object, got {describe(rewrite)}")
    template = required_text(rewrite, "prompt", field="requested_rewrite.prompt")
    subject = required_text(rewrite, "subject", field="requested_rewrite.subject")
    if "{}" not in template:
        raise RecordError("requested_rewrite.prompt", f"has no '{{}}' subject placeholder: {template!r}")
    target_new = rewrite.get("target_new", _MISSING)
    if target_new is _MISSING:
        raise RecordError("requested_rewrite.target_new", "is missing")
    if not isinstance(target_new, dict):
        raise RecordError("requested_rewrite.target_new", f"must be an object {{str, id}}, got {describe(target_new)}")
    new = required_text(target_new, "str", field="requested_rewrite.target_new.str")
    target_true = rewrite.get("target_true")
    if target_true is not None and not isinstance(target_true, dict):
        raise RecordError("requested_rewrite.target_true", f"must be an object {{str, id}}, got {describe(target_true)}")
    true = None if target_true is None else _optional_text(target_true, "str", field="requested_rewrite.target_true.str")

    neighbours = record.get("neighborhood_prompts")
    locality: list[LocalityPrompt] = []
    if neighbours is not None:
        if not isinstance(neighbours, list):
            raise RecordError("neighborhood_prompts", f"must be a list of strings, got {describe(neighbours)}")
        for i, item in enumerate(neighbours):
            field = f"neighborhood_prompts[{i}]"
            if isinstance(item, dict):  # some derived versions use {"prompt": ..., "target": ...}
                text = required_text(item, "prompt", field=f"{field}.prompt")
            elif isinstance(item, str):
                text = item.strip()
            else:
                raise RecordError(field, f"must be a string, got {describe(item)}")
            if text:
                locality.append(LocalityPrompt(prompt=text, answer=true))
    return {
        "prompt": template.replace("{}", subject).strip(),
        "target_new": new,
        "subject": subject,
        "ground_truth": true,
        "paraphrases": _text_list(record.get("paraphrase_prompts"), "paraphrase_prompts"),
        "locality": locality,
    }


def _parse_hallueditbench(record: dict[str, Any]) -> dict[str, Any]:
    import ast
    import hashlib
    import random

    subject = required_text(record, "subject")
    question = required_text(record, "question")
    true = required_text(record, "object")
    raw = record.get("multiple_choices", _MISSING)
    if raw is _MISSING:
        raise RecordError("multiple_choices", "is missing")
    choices: Any = raw
    if isinstance(raw, str):  # the CSV-derived files hold a Python list literal in a string
        try:
            choices = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise RecordError("multiple_choices", f"is not a list literal: {raw[:80]!r}") from None
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, (str, int, float)) for c in choices):
        raise RecordError("multiple_choices", f"must be a list of strings, got {describe(choices)}")
    wrong = sorted({str(c).strip() for c in choices if str(c).strip() and str(c).strip().casefold() != true.casefold()})
    if not wrong:
        raise RecordError("multiple_choices", "holds no wrong choice to make a counterfactual target from")
    seed = hashlib.sha256(f"hallueditbench\x1f{subject}\x1f{question}".encode()).digest()
    target_new = random.Random(seed).choice(wrong)
    locality_question = _optional_text(record, "locality_question")
    return {
        "prompt": question,
        "target_new": target_new,
        "subject": subject,
        "ground_truth": true,
        "paraphrases": _text_list(record.get("paraphrased_question"), "paraphrased_question"),
        "locality": [LocalityPrompt(prompt=locality_question)] if locality_question else [],
    }


RELATION_PHRASES: tuple[str, ...] = (
    "{} is a citizen of", "{} is affiliated with the religion of", "{} is associated with the sport of",
    "{} is employed by", "{} is famous for", "{} is located in the continent of", "{} is married to",
    "{} plays the position of", "{} was born in the city of", "{} died in the city of", "{} worked in the city of",
    "{} was created by", "{} was created in the country of", "{} was developed by", "{} was founded by",
    "{} was founded in the city of", "{} was performed by", "{} works in the field of", "{} speaks the language of",
    "{} was written in the language of", "{}'s child is", "The author of {} is", "The capital of {} is",
    "The chairperson of {} is", "The chief executive officer of {} is", "The company that produced {} is",
    "The director of {} is", "The head coach of {} is", "The headquarters of {} is located in the city of",
    "The name of the current head of the {} government is", "The name of the current head of state in {} is",
    "The official language of {} is", "The original language of {} is", "The origianl broadcaster of {} is",
    "The type of music that {} plays is", "The univeristy where {} was educated is",
)
"""Cloze templates of the PokeMQA/MQuAKE relations (spelling as in the data), used to split a
PokeMQA statement into its prompt and its object."""

_RELATION_PATTERNS = [
    re.compile("^" + re.escape(t).replace(re.escape("{}"), "(?P<subject>.+?)") + r"\s+(?P<object>\S.*)$")
    for t in sorted(RELATION_PHRASES, key=len, reverse=True)
]
_FALLBACK_SPLITS = (  # the first "is"/"was", else the last "of"/"by"/"in"
    re.compile(r"^(?P<prompt>.+?\s(?:is|was))\s+(?P<object>\S.*)$"),
    re.compile(r"^(?P<prompt>.+\s(?:of|by|in))\s+(?P<object>\S.*)$"),
)


def split_statement(statement: str) -> tuple[str, str, str | None]:
    """``(prompt, object, subject or None)`` of a statement such as PokeMQA's edits.

    A known relation phrase (:data:`RELATION_PHRASES`) gives the split and the subject;
    otherwise the statement is split after its first "is" or "was", else after its last
    "of", "by" or "in".

    Raises:
        ValueError: If the statement has no such word before its last word.

    Example:
        >>> split_statement("Carl Sagan is employed by British Broadcasting Corporation")
        ('Carl Sagan is employed by', 'British Broadcasting Corporation', 'Carl Sagan')
    """
    text = " ".join(statement.split())
    for pattern in _RELATION_PATTERNS:
        match = pattern.match(text)
        if match:
            obj = match.group("object")
            return text[: len(text) - len(obj)].rstrip(), obj, match.group("subject")
    for pattern in _FALLBACK_SPLITS:
        match = pattern.match(text)
        if match:
            return match.group("prompt"), match.group("object"), None
    raise ValueError(f"cannot tell the object of {statement!r}: no relation phrase and no 'is'/'was'/'of'/'by'/'in'")


def _parse_pokemqa(record: dict[str, Any]) -> dict[str, Any]:
    edit = required_text(record, "edit")
    questions = record.get("questions", _MISSING)
    if questions is _MISSING:
        raise RecordError("questions", "is missing")
    questions = _text_list(questions, "questions")
    if not questions:
        raise RecordError("questions", "must hold at least one non-empty question")
    try:
        prompt, obj, subject = split_statement(edit)
    except ValueError as err:
        raise RecordError("edit", str(err)) from None
    return {"prompt": prompt, "target_new": obj, "subject": subject, "paraphrases": questions, "locality": []}


def _parse_mquake(record: dict[str, Any]) -> list[dict[str, Any]]:
    rewrites = record.get("requested_rewrite")
    if not isinstance(rewrites, list) or not rewrites:
        raise RecordError("requested_rewrite", f"must be a non-empty list of rewrites, got {describe(rewrites)}")
    hops = record.get("single_hops") or []
    if not isinstance(hops, list):
        raise RecordError("single_hops", f"must be a list, got {describe(hops)}")
    clozes: list[tuple[str, str | None]] = []
    for i, hop in enumerate(hops):
        if not isinstance(hop, dict):
            raise RecordError(f"single_hops[{i}]", f"must be an object, got {describe(hop)}")
        cloze = _optional_text(hop, "cloze", field=f"single_hops[{i}].cloze")
        if cloze:
            clozes.append((cloze, first_answer(hop.get("answer"), f"single_hops[{i}].answer")))
    out = []
    for i, rewrite in enumerate(rewrites):
        if not isinstance(rewrite, dict):
            raise RecordError(f"requested_rewrite[{i}]", f"must be an object, got {describe(rewrite)}")
        fields = _parse_counterfact_rome({"requested_rewrite": rewrite})
        question = _optional_text(rewrite, "question", field=f"requested_rewrite[{i}].question")
        fields["paraphrases"] = [question] if question else []
        subject = fields["subject"].casefold()
        fields["locality"] = [LocalityPrompt(prompt=c, answer=a) for c, a in clozes if subject not in c.casefold()]
        out.append(fields)
    return out


PARSERS: dict[str, Callable[[dict[str, Any]], dict[str, Any] | list[dict[str, Any]]]] = {
    "counterfact_flat": _parse_counterfact_flat,
    "zsre_mend": _parse_zsre_mend,
    "knowedit": _parse_knowedit,
    "counterfact_rome": _parse_counterfact_rome,
    "hallueditbench": _parse_hallueditbench,
    "pokemqa": _parse_pokemqa,
    "mquake": _parse_mquake,
}
