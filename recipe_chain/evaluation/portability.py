"""Portability cases: edits plus a question whose answer follows from them.

Two public forms are read into :class:`PortabilityCase`:

* ROME-form CounterFact with a one-hop ``portability`` question
  (``counterfact/rome_portability.json``): one edit, ``portability["New Question"]``,
  answered by ``portability["New Answer"]``;
* MQuAKE (``mquake/mquake_hard.json``): 2-4 chained ``requested_rewrite`` edits and
  multi-hop ``questions``, answered by ``new_answer`` or one of ``new_answer_alias``.

Example:
    >>> cases = load_portability_cases("../shared/data/mquake/mquake_hard.json", limit=1)
    >>> len(cases[0].edits), cases[0].answers[0]
    (4, 'Arabic')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe_chain.data import DataFormatError, EditExample, LocalityPrompt, iter_records

__all__ = ["PortabilityCase", "load_portability_cases"]


@dataclass(frozen=True)
class PortabilityCase:
    """Edits, the questions that test what they imply, and the answers that count."""

    edits: tuple[EditExample, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    case_id: str | None = None

    def question_prompts(self, per_case: int | None = 1) -> list[LocalityPrompt]:
        """The case's questions (the first ``per_case``) carrying the accepted answers."""
        chosen = self.questions if per_case is None else self.questions[:per_case]
        return [LocalityPrompt(prompt=q, answer=self.answers[0], aliases=self.answers) for q in chosen]


def _text(value: Any, path: Path, index: int, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError("must be a non-empty string", path=path, index=index, field=field)
    return value.strip()


def _rewrite(raw: Any, path: Path, index: int, field: str, case_id: str | None) -> EditExample:
    if not isinstance(raw, dict):
        raise DataFormatError("must be an object", path=path, index=index, field=field)
    template = _text(raw.get("prompt"), path, index, f"{field}.prompt")
    subject = _text(raw.get("subject"), path, index, f"{field}.subject")
    if "{}" not in template:
        raise DataFormatError("has no '{}' subject placeholder", path=path, index=index, field=f"{field}.prompt")
    new = raw.get("target_new")
    true = raw.get("target_true")
    if not isinstance(new, dict):
        raise DataFormatError("must be an object {str, id}", path=path, index=index, field=f"{field}.target_new")
    return EditExample(
        prompt=template.replace("{}", subject),
        target_new=_text(new.get("str"), path, index, f"{field}.target_new.str"),
        subject=subject,
        ground_truth=true.get("str") if isinstance(true, dict) else None,
        case_id=case_id,
        source_format="portability",
    )


def load_portability_cases(path: str | os.PathLike[str], *, limit: int | None = None) -> list[PortabilityCase]:
    """Read ROME-form one-hop portability records or MQuAKE records.

    Args:
        path: A ``.json`` / ``.jsonl`` file.
        limit: Read only the first ``limit`` records.

    Returns:
        One :class:`PortabilityCase` per record, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataFormatError: A record is neither form, or a field is malformed; the message
            names the file, the record and the field.
    """
    p = Path(path)
    records = iter_records(p)
    if limit is not None:
        records = records[:limit]
    cases: list[PortabilityCase] = []
    for index, rec in enumerate(records):
        case_id = None if rec.get("case_id") is None else str(rec["case_id"])
        rewrite = rec.get("requested_rewrite")
        if isinstance(rewrite, dict):  # ROME form with one-hop portability
            port = rec.get("portability")
            if not isinstance(port, dict):
                raise DataFormatError("must be an object with 'New Question' and 'New Answer'", path=p, index=index,
                                      field="portability")
            question = _text(port.get("New Question"), p, index, "portability.New Question")
            answer = _text(port.get("New Answer"), p, index, "portability.New Answer")
            edits = (_rewrite(rewrite, p, index, "requested_rewrite", case_id),)
            cases.append(PortabilityCase(edits, (question,), (answer,), case_id))
        elif isinstance(rewrite, list):  # MQuAKE
            if not rewrite:
                raise DataFormatError("is empty", path=p, index=index, field="requested_rewrite")
            edits = tuple(
                _rewrite(r, p, index, f"requested_rewrite[{i}]", case_id) for i, r in enumerate(rewrite)
            )
            questions = rec.get("questions")
            if not isinstance(questions, list) or not questions:
                raise DataFormatError("must be a non-empty list of strings", path=p, index=index, field="questions")
            qs = tuple(_text(q, p, index, f"questions[{i}]") for i, q in enumerate(questions))
            answer = _text(rec.get("new_answer"), p, index, "new_answer")
            aliases = rec.get("new_answer_alias") or []
            if not isinstance(aliases, list):
                raise DataFormatError("must be a list of strings", path=p, index=index, field="new_answer_alias")
            answers = (answer, *(a.strip() for a in aliases if isinstance(a, str) and a.strip()))
            cases.append(PortabilityCase(edits, qs, answers, case_id))
        else:
            raise DataFormatError(
                "needs 'requested_rewrite' (an object with 'portability', or a list as in MQuAKE)",
                path=p, index=index, field="requested_rewrite",
            )
    return cases
