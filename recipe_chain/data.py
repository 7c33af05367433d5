"""Loaders for public knowledge-editing benchmark files.

The record formats below are read into one model, :class:`EditExample`:

* ``counterfact_flat`` -- CounterFact in the flat RECIPE/EasyEdit form
  (``prompt``, ``target_new``, ``ground_truth``, ``subject``, ``rephrase_prompt``,
  ``locality_prompt``, ``locality_ground_truth``).
* ``zsre_mend`` -- ZsRE in MEND's form (``src``, ``alt``, ``answers``, ``subject``,
  ``rephrase``, ``loc``, ``loc_ans``).
* ``knowedit`` -- the KnowEdit form (``prompt``, ``target_new``, ``subject``,
  ``ground_truth``, ``rephrase_prompt``, ``locality: {name: [{prompt, ground_truth}]}``;
  ``portability`` is ignored).
* ``counterfact_rome`` -- ROME's original CounterFact (``requested_rewrite``,
  ``paraphrase_prompts``, ``neighborhood_prompts``).
* ``hallueditbench`` -- HalluEditBench's question form, one *true* fact per record
  (``subject``, ``question``, ``object``, ``multiple_choices``,
  ``paraphrased_question``, ``locality_question``). The counterfactual ``target_new``
  is one of the record's wrong choices, picked by a generator seeded with the record's
  subject and question, so every load gives the same edit; :func:`split_by_subject`
  gives the train/dev split.
* ``pokemqa`` -- PokeMQA's ``{"edit": statement, "questions": [...]}``: the statement is
  split into a cloze prompt and its object at a known relation phrase
  (:data:`RELATION_PHRASES`, else the first "is"/"was"), and the questions become
  paraphrases: the ways a user asks for the fact.
* ``mquake`` -- MQuAKE's chained rewrites (``requested_rewrite: [{prompt, subject,
  target_new, target_true, question}]``, ``single_hops``): one example per rewrite,
  its ``question`` as the paraphrase and the record's single-hop cloze prompts about other
  subjects as locality prompts (same relation chain, other subject).

The format is detected per file from its first record (or forced with ``format=``);
every record is then validated against it. Any problem with a file's content raises
:class:`DataFormatError`, whose message names the file, the record index (and
``case_id`` when the record has one) and the offending field.

Example:
    >>> from recipe_chain.data import load_edit_examples
    >>> examples = load_edit_examples("../shared/data/counterfact/eval.json", limit=2)
    >>> examples[0].statement
    'The mother tongue of Danielle Darrieux is English'
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from recipe_chain.errors import RecipeChainError

__all__ = [
    "DATA_FORMATS",
    "DataFormat",
    "NEVER_TRAINED_ON",
    "RELATION_PHRASES",
    "check_trainable",
    "DataFormatError",
    "EditExample",
    "LocalityPrompt",
    "detect_format",
    "iter_records",
    "load_edit_examples",
    "load_questions",
    "split_by_subject",
    "split_statement",
]

logger = logging.getLogger(__name__)

DataFormat = Literal[
    "counterfact_flat", "zsre_mend", "knowedit", "counterfact_rome", "hallueditbench", "pokemqa", "mquake"
]
"""Names of the record formats :func:`load_edit_examples` understands."""

DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
"""All :data:`DataFormat` names, in a fixed order."""

NEVER_TRAINED_ON: tuple[str, ...] = ("zsre/train-1k.json", "knowedit/wiki_recent_train.json", "counterfact/eval.json")
"""The evaluation sets of ``../shared/data`` (path endings) that no training run may read;
HalluEditBench's dev subjects are kept out by :func:`split_by_subject` instead."""


def check_trainable(path: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` if ``path`` is one of the :data:`NEVER_TRAINED_ON` evaluation sets."""
    posix = str(path).replace("\\", "/")
    if any(posix.endswith(name) for name in NEVER_TRAINED_ON):
        raise ValueError(f"{path} is an evaluation set that is never trained on")

_NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

_ZSRE_LOC_PREFIX = "nq question:"


class LocalityPrompt(BaseModel):
    """A prompt an edit must *not* change, with the expected answer when known.

    Attributes:
        prompt: The prompt text (stripped, non-empty).
        answer: The reference answer, or ``None`` when the data gives none.
        aliases: Every accepted answer, when the data gives several (NQ-open); empty
            otherwise (then ``answer`` alone is accepted).

    Example:
        >>> LocalityPrompt(prompt="Michel Rocard is a native speaker of", answer="French").answer
        'French'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: _NonEmptyStr
    answer: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def accepted_answers(self) -> tuple[str, ...]:
        """``aliases`` when given, else ``(answer,)``, else ``()``."""
        if self.aliases:
            return self.aliases
        return (self.answer,) if self.answer is not None else ()

    @field_validator("answer")
    @classmethod
    def _blank_answer_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        return value or None


class EditExample(BaseModel):
    """One knowledge edit with its evaluation prompts, independent of the source format.

    Attributes:
        prompt: The edit prompt, e.g. ``"The mother tongue of Danielle Darrieux is"``.
        target_new: The new target the edit should produce, e.g. ``"English"``.
        subject: The edited subject, when the format gives it.
        ground_truth: The old (pre-edit) answer, when the format gives it.
        paraphrases: Rephrased prompts that should also yield ``target_new`` (generality).
        locality: Unrelated prompts whose answers the edit must not change.
        case_id: The record's id in its source data, as a string, when it has one.
        source_format: The :data:`DataFormat` name the example was read from (free text
            for examples built by hand).

    Example:
        >>> ex = EditExample(prompt="The mother tongue of Danielle Darrieux is ",
        ...                  target_new="English", source_format="counterfact_flat")
        >>> ex.statement
        'The mother tongue of Danielle Darrieux is English'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: _NonEmptyStr
    target_new: _NonEmptyStr
    subject: str | None = None
    ground_truth: str | None = None
    paraphrases: list[_NonEmptyStr] = Field(default_factory=list)
    locality: list[LocalityPrompt] = Field(default_factory=list)
    case_id: str | None = None
    source_format: str

    @field_validator("subject", "ground_truth", "case_id")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        return value or None

    @property
    def statement(self) -> str:
        """The edit as one sentence: ``"<prompt> <target_new>"`` with a single space."""
        return f"{self.prompt.rstrip()} {self.target_new}"


class DataFormatError(RecipeChainError, ValueError):
    """A data file, or one record in it, does not have the expected shape.

    Derives from :class:`~recipe_chain.errors.RecipeChainError` and ``ValueError``.

    Attributes:
        path: The file concerned, when known.
        index: The 0-based record index (for ``.jsonl``: among non-blank lines), when known.
        field: The missing or invalid field, when known.
        case_id: The record's ``case_id``, when it has one.

    Example:
        >>> try:
        ...     detect_format({"foo": 1})
        ... except DataFormatError as err:
        ...     print("unknown" in str(err))
        True
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        index: int | None = None,
        field: str | None = None,
        case_id: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.index = index
        self.field = field
        self.case_id = case_id
        where: list[str] = []
        if self.path is not None:
            where.append(self.path)
        if index is not None:
            rec = f"record {index}"
            if case_id is not None:
                rec += f" (case_id={case_id})"
            where.append(rec)
        if field is not None:
            where.append(f"field {field!r}")
        full = f"{': '.join(where)}: {message}" if where else message
        super().__init__(full)


# --------------------------------------------------------------------------------------
# reading files


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _parse_jsonl(text: str, path: Path) -> list[Any]:
    records: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataFormatError(
                f"line {lineno} (record {len(records)}) is not valid JSON: {err.msg}", path=path
            ) from err
    return records


def iter_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the raw records of a ``.json`` or ``.jsonl`` file.

    A ``.json`` file must hold a list of objects, or an object with exactly one
    list-of-objects value (e.g. ``{"data": [...]}``). A ``.jsonl``/``.ndjson`` file holds
    one object per line; blank lines are skipped. Other suffixes are read as JSON, falling
    back to JSON Lines when the text holds several JSON values.

    Args:
        path: The file to read (UTF-8).

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataFormatError: If the file is empty, not valid JSON/JSON Lines, holds no
            records, or a record is not a JSON object.

    Example:
        >>> records = iter_records("../shared/data/general/nq-open.jsonl")
        >>> sorted(records[0])[:2]
        ['answer', 'output']
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"file is not UTF-8 text ({err.reason})", path=p) from err
    if not text.strip():
        raise DataFormatError("file is empty", path=p)

    suffix = p.suffix.lower()
    data: Any
    if suffix in {".jsonl", ".ndjson"}:
        data = _parse_jsonl(text, p)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if suffix != ".json" and err.msg == "Extra data":
                data = _parse_jsonl(text, p)
            else:
                raise DataFormatError(
                    f"file is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
                    path=p,
                ) from err

    if isinstance(data, dict):
        lists = [(k, v) for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(item, dict) for item in lists[0][1]):
            logger.debug("%s: reading the records under key %r", p, lists[0][0])
            data = lists[0][1]
        else:
            raise DataFormatError(
                "expected a JSON list of records, or an object holding exactly one list of "
                f"records; got an object with keys {sorted(data)[:10]}",
                path=p,
            )
    if not isinstance(data, list):
        raise DataFormatError(
            f"expected a JSON list of records, got {type(data).__name__}", path=p
        )
    if not data:
        raise DataFormatError("file holds no records", path=p)
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataFormatError(
                f"expected a JSON object, got {_describe(record)}", path=p, index=index
            )
    return data


# --------------------------------------------------------------------------------------
# format detection


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


# --------------------------------------------------------------------------------------
# per-record parsing


class _RecordError(Exception):
    """Internal: a problem with one field of the record being parsed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


_MISSING = object()


def _required_text(record: dict[str, Any], key: str, *, field: str | None = None) -> str:
    field = field or key
    value = record.get(key, _MISSING)
    if value is _MISSING:
        raise _RecordError(field, "is missing")
    if not isinstance(value, str):
        raise _RecordError(field, f"must be a string, got {_describe(value)}")
    value = value.strip()
    if not value:
        raise _RecordError(field, "must be a non-empty string, got an empty one")
    return value


def _optional_text(record: dict[str, Any], key: str, *, field: str | None = None) -> str | None:
    field = field or key
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _RecordError(field, f"must be a string, got {_describe(value)}")
    return value.strip() or None


def _first_answer(value: Any, field: str) -> str | None:
    """First non-empty string in a string / number / (nested) list of them; else None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _RecordError(field, f"must be a string or a list of strings, got {_describe(value)}")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list):
        for item in value:
            found = _first_answer(item, field)
            if found is not None:
                return found
        return None
    raise _RecordError(field, f"must be a string or a list of strings, got {_describe(value)}")


def _text_list(value: Any, field: str) -> list[str]:
    """A string or list of strings -> list of non-empty stripped strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if not isinstance(value, list):
        raise _RecordError(field, f"must be a string or a list of strings, got {_describe(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _RecordError(f"{field}[{i}]", f"must be a string, got {_describe(item)}")
        if item.strip():
            out.append(item.strip())
    return out


def _case_id(record: dict[str, Any]) -> str | None:
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
        answer = _first_answer(record.get("locality_ground_truth"), "locality_ground_truth")
        locality.append(LocalityPrompt(prompt=loc_prompt, answer=answer))
    return {
        "prompt": _required_text(record, "prompt"),
        "target_new": _required_text(record, "target_new"),
        "subject": _optional_text(record, "subject"),
        "ground_truth": _first_answer(record.get("ground_truth"), "ground_truth"),
        "paraphrases": _text_list(record.get("rephrase_prompt"), "rephrase_prompt"),
        "locality": locality,
    }


def _parse_zsre_mend(record: dict[str, Any]) -> dict[str, Any]:
    answers = record.get("answers")
    if answers is not None and not isinstance(answers, (list, str)):
        raise _RecordError("answers", f"must be a list of strings, got {_describe(answers)}")
    locality: list[LocalityPrompt] = []
    loc = _optional_text(record, "loc")
    if loc is not None:
        if loc.lower().startswith(_ZSRE_LOC_PREFIX):
            loc = loc[len(_ZSRE_LOC_PREFIX) :].strip()
        if loc:
            answer = _first_answer(record.get("loc_ans"), "loc_ans")
            locality.append(LocalityPrompt(prompt=loc, answer=answer))
    return {
        "prompt": _required_text(record, "src"),
        "target_new": _required_text(record, "alt"),
        "subject": _optional_text(record, "subject"),
        "ground_truth": _first_answer(answers, "answers"),
        "paraphrases": _text_list(record.get("rephrase"), "rephrase"),
        "locality": locality,
    }


def _parse_knowedit(record: dict[str, Any]) -> dict[str, Any]:
    rephrase_key = "rephrase_prompt" if "rephrase_prompt" in record else "rephrase"
    locality: list[LocalityPrompt] = []
    groups = record.get("locality")
    if groups is not None:
        if not isinstance(groups, dict):
            raise _RecordError("locality", f"must be an object {{name: [{{prompt, ground_truth}}]}}, got {_describe(groups)}")
        for name, items in groups.items():
            field = f"locality.{name}"
            if isinstance(items, dict):
                items = [items]
            if not isinstance(items, list):
                raise _RecordError(field, f"must be a list of {{prompt, ground_truth}} objects, got {_describe(items)}")
            for i, item in enumerate(items):
                item_field = f"{field}[{i}]"
                if not isinstance(item, dict):
                    raise _RecordError(item_field, f"must be an object {{prompt, ground_truth}}, got {_describe(item)}")
                prompts = item.get("prompt")
                answers = item.get("ground_truth")
                if isinstance(prompts, list):
                    # EasyEdit's columnar variant: {"prompt": [...], "ground_truth": [...]}
                    prompt_list = _text_list(prompts, f"{item_field}.prompt")
                    answer_list = answers if isinstance(answers, list) else [answers] * len(prompt_list)
                    for j, p in enumerate(prompt_list):
                        a = answer_list[j] if j < len(answer_list) else None
                        locality.append(LocalityPrompt(prompt=p, answer=_first_answer(a, f"{item_field}.ground_truth")))
                    continue
                prompt = _required_text(item, "prompt", field=f"{item_field}.prompt")
                answer = _first_answer(answers, f"{item_field}.ground_truth")
                locality.append(LocalityPrompt(prompt=prompt, answer=answer))
    return {
        "prompt": _required_text(record, "prompt"),
        "target_new": _required_text(record, "target_new"),
        "subject": _optional_text(record, "subject"),
        "ground_truth": _first_answer(record.get("ground_truth"), "ground_truth"),
        "paraphrases": _text_list(record.get(rephrase_key), rephrase_key),
        "locality": locality,
    }


def _parse_counterfact_rome(record: dict[str, Any]) -> dict[str, Any]:
    rewrite = record.get("requested_rewrite", _MISSING)
    if rewrite is _MISSING:
        raise _RecordError("requested_rewrite", "is missing")
    if not isinstance(rewrite, dict):
        raise _RecordError("requested_rewrite", f"must be an object, got {_describe(rewrite)}")
    template = _required_text(rewrite, "prompt", field="requested_rewrite.prompt")
    subject = _required_text(rewrite, "subject", field="requested_rewrite.subject")
    if "{}" not in template:
        raise _RecordError("requested_rewrite.prompt", f"has no '{{}}' subject placeholder: {template!r}")
    target_new = rewrite.get("target_new", _MISSING)
    if target_new is _MISSING:
        raise _RecordError("requested_rewrite.target_new", "is missing")
    if not isinstance(target_new, dict):
        raise _RecordError("requested_rewrite.target_new", f"must be an object {{str, id}}, got {_describe(target_new)}")
    new = _required_text(target_new, "str", field="requested_rewrite.target_new.str")
    target_true = rewrite.get("target_true")
    if target_true is not None and not isinstance(target_true, dict):
        raise _RecordError("requested_rewrite.target_true", f"must be an object {{str, id}}, got {_describe(target_true)}")
    true = None if target_true is None else _optional_text(target_true, "str", field="requested_rewrite.target_true.str")

    neighbours = record.get("neighborhood_prompts")
    locality: list[LocalityPrompt] = []
    if neighbours is not None:
        if not isinstance(neighbours, list):
            raise _RecordError("neighborhood_prompts", f"must be a list of strings, got {_describe(neighbours)}")
        for i, item in enumerate(neighbours):
            field = f"neighborhood_prompts[{i}]"
            if isinstance(item, dict):  # some derived versions use {"prompt": ..., "target": ...}
                text = _required_text(item, "prompt", field=f"{field}.prompt")
            elif isinstance(item, str):
                text = item.strip()
            else:
                raise _RecordError(field, f"must be a string, got {_describe(item)}")
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

    subject = _required_text(record, "subject")
    question = _required_text(record, "question")
    true = _required_text(record, "object")
    raw = record.get("multiple_choices", _MISSING)
    if raw is _MISSING:
        raise _RecordError("multiple_choices", "is missing")
    choices: Any = raw
    if isinstance(raw, str):  # the CSV-derived files hold a Python list literal in a string
        try:
            choices = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise _RecordError("multiple_choices", f"is not a list literal: {raw[:80]!r}") from None
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, (str, int, float)) for c in choices):
        raise _RecordError("multiple_choices", f"must be a list of strings, got {_describe(choices)}")
    wrong = sorted({str(c).strip() for c in choices if str(c).strip() and str(c).strip().casefold() != true.casefold()})
    if not wrong:
        raise _RecordError("multiple_choices", "holds no wrong choice to make a counterfactual target from")
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
    edit = _required_text(record, "edit")
    questions = record.get("questions", _MISSING)
    if questions is _MISSING:
        raise _RecordError("questions", "is missing")
    questions = _text_list(questions, "questions")
    if not questions:
        raise _RecordError("questions", "must hold at least one non-empty question")
    try:
        prompt, obj, subject = split_statement(edit)
    except ValueError as err:
        raise _RecordError("edit", str(err)) from None
    return {"prompt": prompt, "target_new": obj, "subject": subject, "paraphrases": questions, "locality": []}


def _parse_mquake(record: dict[str, Any]) -> list[dict[str, Any]]:
    rewrites = record.get("requested_rewrite")
    if not isinstance(rewrites, list) or not rewrites:
        raise _RecordError("requested_rewrite", f"must be a non-empty list of rewrites, got {_describe(rewrites)}")
    hops = record.get("single_hops") or []
    if not isinstance(hops, list):
        raise _RecordError("single_hops", f"must be a list, got {_describe(hops)}")
    clozes: list[tuple[str, str | None]] = []
    for i, hop in enumerate(hops):
        if not isinstance(hop, dict):
            raise _RecordError(f"single_hops[{i}]", f"must be an object, got {_describe(hop)}")
        cloze = _optional_text(hop, "cloze", field=f"single_hops[{i}].cloze")
        if cloze:
            clozes.append((cloze, _first_answer(hop.get("answer"), f"single_hops[{i}].answer")))
    out = []
    for i, rewrite in enumerate(rewrites):
        if not isinstance(rewrite, dict):
            raise _RecordError(f"requested_rewrite[{i}]", f"must be an object, got {_describe(rewrite)}")
        fields = _parse_counterfact_rome({"requested_rewrite": rewrite})
        question = _optional_text(rewrite, "question", field=f"requested_rewrite[{i}].question")
        fields["paraphrases"] = [question] if question else []
        subject = fields["subject"].casefold()
        fields["locality"] = [LocalityPrompt(prompt=c, answer=a) for c, a in clozes if subject not in c.casefold()]
        out.append(fields)
    return out


def split_by_subject(
    examples: Sequence[EditExample], *, dev_share: float = 0.2, salt: str = "recipe-chain-dev"
) -> tuple[list[EditExample], list[EditExample]]:
    """Split examples into train and dev so that no subject is in both.

    A subject goes to dev iff a hash of its normalised form (and ``salt``) falls in the
    lowest ``dev_share`` of the hash range: the split depends on the subject alone, not on
    the order or the rest of the file, so the dev subjects of a file stay dev subjects
    in every run and every version of the data.

    Args:
        examples: Examples with a ``subject`` (those without one go to train).
        dev_share: Share of subjects sent to dev, in ``(0, 1)``.
        salt: Changes which subjects are drawn.

    Returns:
        ``(train, dev)`` in input order.

    Raises:
        ValueError: If ``dev_share`` is not in ``(0, 1)``.
    """
    import hashlib

    if not 0.0 < dev_share < 1.0:
        raise ValueError(f"dev_share must be in (0, 1), got {dev_share}")
    train: list[EditExample] = []
    dev: list[EditExample] = []
    for ex in examples:
        if ex.subject is None:
            train.append(ex)
            continue
        key = " ".join(ex.subject.casefold().split())
        h = int.from_bytes(hashlib.sha256(f"{salt}\x1f{key}".encode()).digest()[:8], "big") / 2**64
        (dev if h < dev_share else train).append(ex)
    return train, dev


_PARSERS: dict[str, Callable[[dict[str, Any]], dict[str, Any] | list[dict[str, Any]]]] = {
    "counterfact_flat": _parse_counterfact_flat,
    "zsre_mend": _parse_zsre_mend,
    "knowedit": _parse_knowedit,
    "counterfact_rome": _parse_counterfact_rome,
    "hallueditbench": _parse_hallueditbench,
    "pokemqa": _parse_pokemqa,
    "mquake": _parse_mquake,
}


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")


def _head(records: Sequence[dict[str, Any]], limit: int | None) -> Sequence[dict[str, Any]]:
    return records if limit is None else records[:limit]


# --------------------------------------------------------------------------------------
# public loaders


def load_edit_examples(
    path: str | os.PathLike[str],
    *,
    format: DataFormat | Literal["auto"] = "auto",  # noqa: A002 - public API name
    limit: int | None = None,
    on_invalid: Literal["raise", "skip"] = "raise",
) -> list[EditExample]:
    """Load knowledge edits from a benchmark file in any of the :data:`DataFormat` forms.

    Text is stripped of surrounding whitespace; an empty prompt or target is an error.
    Optional fields that are absent, ``null`` or blank are left out (``None`` / ``[]``).

    Args:
        path: A ``.json`` or ``.jsonl`` file (see :func:`iter_records`).
        format: The record format, or ``"auto"`` to detect it from the first record.
        limit: Read only the first ``limit`` records of the file (``None``: all).
        on_invalid: ``"raise"`` (default) stops at the first invalid record with a
            :class:`DataFormatError`; ``"skip"`` logs a warning for each invalid record
            and leaves it out (the public ZsRE MEND data, for instance, has a few
            records with an empty ``alt``).

    Returns:
        One :class:`EditExample` per (valid) record, in file order (one per rewrite for
        MQuAKE, whose records chain several).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataFormatError: If the file or a record is malformed; the message names the
            file, the record index (and ``case_id``) and the field.
        ValueError: If ``format``, ``limit`` or ``on_invalid`` is not a valid value.

    Example:
        >>> examples = load_edit_examples("../shared/data/zsre/train-1k.json", limit=1)
        >>> examples[0].prompt, examples[0].target_new, examples[0].locality[0].prompt
        ('What is the product made by UniFirst?', 'unmanned aircraft', "john goodman's character in the big lebowski")
    """
    if format != "auto" and format not in _PARSERS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {list(DATA_FORMATS)}")
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    _check_limit(limit)
    if limit == 0:
        return []

    p = Path(path)
    records = _head(iter_records(p), limit)
    if format == "auto":
        try:
            fmt: str = detect_format(records[0])
        except DataFormatError as err:
            raise DataFormatError(str(err), path=p, index=0) from err
        logger.debug("%s: detected format %s", p, fmt)
    else:
        fmt = format
    parse = _PARSERS[fmt]

    examples: list[EditExample] = []
    skipped = 0
    for index, record in enumerate(records):
        case_id = _case_id(record)
        try:
            parsed = parse(record)
            examples += [
                EditExample(**fields, case_id=case_id, source_format=fmt)
                for fields in (parsed if isinstance(parsed, list) else [parsed])
            ]
        except _RecordError as err:
            error = DataFormatError(err.message, path=p, index=index, field=err.field, case_id=case_id)
        except ValidationError as err:  # safety net: model constraints not caught above
            first = err.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or None
            error = DataFormatError(first["msg"], path=p, index=index, field=field, case_id=case_id)
        else:
            continue
        if on_invalid == "raise":
            raise error
        skipped += 1
        logger.warning("Skipping invalid record: %s", error)

    if skipped:
        logger.warning("%s: skipped %d invalid record(s) of %d", p, skipped, len(records))
    logger.info("Loaded %d edit examples (%s) from %s", len(examples), fmt, p)
    return examples


def load_questions(path: str | os.PathLike[str], *, limit: int | None = None) -> list[LocalityPrompt]:
    """Load open-domain questions (NQ-open style) as locality prompts.

    Each record is ``{"question": str, "answer": [str, ...]}`` (``"answers"`` and a
    plain-string answer are accepted too); the prompt is the question and the answer
    the first non-empty answer, or ``None`` when there is none.

    Args:
        path: A ``.jsonl`` or ``.json`` file (see :func:`iter_records`).
        limit: Read only the first ``limit`` records (``None``: all).

    Returns:
        One :class:`LocalityPrompt` per record, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataFormatError: If the file or a record is malformed (e.g. no ``question``).
        ValueError: If ``limit`` is negative.

    Example:
        >>> qs = load_questions("../shared/data/general/nq-open.jsonl", limit=1)
        >>> qs[0].prompt
        'who got the first nobel prize in physics?'
    """
    _check_limit(limit)
    if limit == 0:
        return []
    p = Path(path)
    questions: list[LocalityPrompt] = []
    for index, record in enumerate(_head(iter_records(p), limit)):
        try:
            prompt = _required_text(record, "question")
            key = "answer" if "answer" in record else "answers"
            answer = _first_answer(record.get(key), key)
            raw = record.get(key)
            aliases = tuple(
                a for a in (_first_answer(v, key) for v in (raw if isinstance(raw, list) else [raw])) if a is not None
            )
        except _RecordError as err:
            raise DataFormatError(err.message, path=p, index=index, field=err.field, case_id=_case_id(record)) from None
        questions.append(LocalityPrompt(prompt=prompt, answer=answer, aliases=aliases))
    logger.info("Loaded %d questions from %s", len(questions), p)
    return questions
