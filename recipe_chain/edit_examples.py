"""The typed edit every loader produces (:class:`EditExample`), and the error a malformed file raises."""

from __future__ import annotations

import os
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from recipe_chain.errors import RecipeChainError

__all__ = ["DATA_FORMATS", "DataFormat", "DataFormatError", "EditExample", "LocalityPrompt"]

DataFormat = Literal[
    "counterfact_flat", "zsre_mend", "knowedit", "counterfact_rome", "hallueditbench", "pokemqa", "mquake"
]
"""Names of the record formats :func:`load_edit_examples` understands."""

DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
"""All :data:`DataFormat` names, in a fixed order."""


_NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


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
        >>> str(DataFormatError("must be a string", path="x.json", index=3, field="prompt"))
        "x.json: record 3: field 'prompt': must be a string"
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
