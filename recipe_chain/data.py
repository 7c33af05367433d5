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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from recipe_chain.data_formats import (
    PARSERS,
    RELATION_PHRASES,
    RecordError,
    case_id_of,
    describe,
    detect_format,
    first_answer,
    required_text,
    split_statement,
)
from recipe_chain.edit_examples import DATA_FORMATS, DataFormat, DataFormatError, EditExample, LocalityPrompt

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

NEVER_TRAINED_ON: tuple[str, ...] = ("zsre/train-1k.json", "knowedit/wiki_recent_train.json", "counterfact/eval.json")
"""The evaluation sets of ``../shared/data`` (path endings) that no training run may read;
HalluEditBench's dev subjects are kept out by :func:`split_by_subject` instead."""


def check_trainable(path: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` if ``path`` is one of the :data:`NEVER_TRAINED_ON` evaluation sets."""
    posix = str(path).replace("\\", "/")
    if any(posix.endswith(name) for name in NEVER_TRAINED_ON):
        raise ValueError(f"{path} is an evaluation set that is never trained on")

# --------------------------------------------------------------------------------------
# reading files


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
                f"expected a JSON object, got {describe(record)}", path=p, index=index
            )
    return data


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
    if format != "auto" and format not in PARSERS:
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
    parse = PARSERS[fmt]

    examples: list[EditExample] = []
    skipped = 0
    for index, record in enumerate(records):
        case_id = case_id_of(record)
        try:
            parsed = parse(record)
            examples += [
                EditExample(**fields, case_id=case_id, source_format=fmt)
                for fields in (parsed if isinstance(parsed, list) else [parsed])
            ]
        except RecordError as err:
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
            prompt = required_text(record, "question")
            key = "answer" if "answer" in record else "answers"
            answer = first_answer(record.get(key), key)
            raw = record.get(key)
            aliases = tuple(
                a for a in (first_answer(v, key) for v in (raw if isinstance(raw, list) else [raw])) if a is not None
            )
        except RecordError as err:
            raise DataFormatError(err.message, path=p, index=index, field=err.field, case_id=case_id_of(record)) from None
        questions.append(LocalityPrompt(prompt=prompt, answer=answer, aliases=aliases))
    logger.info("Loaded %d questions from %s", len(questions), p)
    return questions
