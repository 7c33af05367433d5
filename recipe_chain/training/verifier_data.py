"""Training pairs for the gate verifier: who answers what, and the neighbours that must not fire.

A pair is ``(query, statement, label, kind)``. Positives are an edit's prompt, its
paraphrases and the questions that ask for it. Negatives come in the kinds a growing
store produces:

* ``same_relation``: the same relation about another subject (CounterFact neighbours);
* ``same_subject``: the same subject asked about another relation (KnowEdit
  ``Relation_Specificity``, HalluEditBench ``locality_question``);
* ``mined``: the statements the retriever itself ranks highest for a query, other than
  the query's own fact (:class:`HardNegativeSampler`), i.e. exactly what the verifier
  will be shown in a large store.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from recipe_chain.data import DataFormatError, EditExample, load_edit_examples, split_by_subject

__all__ = [
    "PairKind",
    "VerifierPair",
    "StatementQueries",
    "load_pokemqa",
    "statement_queries",
    "HardNegativeSampler",
    "build_pairs",
    "load_verifier_sources",
]

logger = logging.getLogger(__name__)

PairKind = Literal["positive", "same_relation", "same_subject", "mined"]

# Locality prompts of these formats share the relation and change the subject; the others
# (KnowEdit Relation_Specificity, HalluEditBench locality questions) share the subject.
_SAME_RELATION_FORMATS = {"counterfact_flat", "counterfact_rome"}


class VerifierPair(BaseModel):
    """One training pair: does ``statement`` answer ``query``?"""

    model_config = ConfigDict(frozen=True)

    query: str
    statement: str
    label: int
    kind: PairKind
    source: str = ""


class StatementQueries(BaseModel):
    """One fact: its statement, the queries it answers and the hard negatives given with it."""

    model_config = ConfigDict(frozen=True)

    statement: str
    prompt_key: str
    positives: list[str]
    negatives: list[tuple[str, PairKind]]
    source: str


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def load_pokemqa(path: str | os.PathLike[str], *, limit: int | None = None) -> list[StatementQueries]:
    """Read PokeMQA's ``{"edit": statement, "questions": [...]}`` records.

    Raises:
        DataFormatError: Naming the record and field, for a malformed record.
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read PokeMQA JSON: {exc}") from exc
    if not isinstance(records, list):
        raise DataFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    out: list[StatementQueries] = []
    for i, record in enumerate(records[:limit] if limit is not None else records):
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}: record {i}: expected an object, got {type(record).__name__}")
        edit = record.get("edit")
        if not isinstance(edit, str) or not edit.strip():
            raise DataFormatError(f"{path}: record {i}: field 'edit': must be a non-empty string, got {edit!r}")
        questions = record.get("questions")
        if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip() for q in questions):
            raise DataFormatError(f"{path}: record {i}: field 'questions': must be a non-empty list of non-empty strings")
        out.append(StatementQueries(statement=edit.strip(), prompt_key=_norm(edit), positives=[q.strip() for q in questions],
                                    negatives=[], source=path.name))
    return out


def statement_queries(examples: Iterable[EditExample], source: str = "") -> list[StatementQueries]:
    """Each example as a fact: its prompt and paraphrases positive, its locality prompts negative."""
    out = []
    for ex in examples:
        kind: PairKind = "same_relation" if ex.source_format in _SAME_RELATION_FORMATS else "same_subject"
        out.append(StatementQueries(
            statement=ex.statement, prompt_key=_norm(ex.prompt), positives=[ex.prompt, *ex.paraphrases],
            negatives=[(loc.prompt, kind) for loc in ex.locality], source=source or ex.source_format,
        ))
    return out


class HardNegativeSampler:
    """Negatives for a fact's queries: its given neighbours plus the retriever's own top wrong hits.

    Args:
        facts: The training facts (their statements form the pool that is mined).
        rank: ``(queries, statements) -> (Q, S)`` similarity matrix, e.g. the editor's
            ``encode_queries(q) @ encode_statements(s).T``; ``None`` mines nothing.
        mined_per_query: How many mined negatives each positive query gets.
        max_queries: Mine for at most this many positive queries (a seeded sample), to bound cost.
        seed: Seed of that sample.
    """

    def __init__(
        self,
        facts: Sequence[StatementQueries],
        rank: Callable[[list[str], list[str]], torch.Tensor] | None = None,
        *,
        mined_per_query: int = 2,
        max_queries: int | None = None,
        seed: int = 0,
    ) -> None:
        self.facts = list(facts)
        self.mined_per_query = mined_per_query
        self._mined: dict[tuple[int, str], list[int]] = {}
        if rank is None or mined_per_query <= 0:
            return
        statements = [f.statement for f in self.facts]
        jobs = [(i, q) for i, f in enumerate(self.facts) for q in f.positives]
        if max_queries is not None and len(jobs) > max_queries:
            jobs = random.Random(seed).sample(jobs, max_queries)
        sims = rank([q for _, q in jobs], statements)  # (Q, S)
        top = sims.topk(min(mined_per_query + 4, len(statements)), dim=1).indices.tolist()
        for (i, query), row in zip(jobs, top):
            own = self.facts[i].prompt_key
            picked = [j for j in row if j != i and self.facts[j].prompt_key != own][:mined_per_query]
            self._mined[(i, query)] = picked

    def negatives(self, index: int) -> list[tuple[str, str, PairKind]]:
        """``(query, statement, kind)`` negatives of fact ``index``; never its own statement."""
        fact = self.facts[index]
        out: list[tuple[str, str, PairKind]] = [(q, fact.statement, kind) for q, kind in fact.negatives]
        for query in fact.positives:
            for j in self._mined.get((index, query), []):
                other = self.facts[j]
                if other.statement != fact.statement:
                    out.append((query, other.statement, "mined"))
        return out


def build_pairs(sampler: HardNegativeSampler) -> list[VerifierPair]:
    """Every positive and negative pair of the sampler's facts."""
    pairs: list[VerifierPair] = []
    for i, fact in enumerate(sampler.facts):
        pairs += [VerifierPair(query=q, statement=fact.statement, label=1, kind="positive", source=fact.source)
                  for q in fact.positives]
        pairs += [VerifierPair(query=q, statement=s, label=0, kind=k, source=fact.source)
                  for q, s, k in sampler.negatives(i)]
    return pairs


def load_verifier_sources(specs: Sequence[str], *, hallueditbench_split: Literal["train", "dev"] = "train") -> list[StatementQueries]:
    """Facts from files given as ``PATH`` or ``PATH:LIMIT``.

    PokeMQA files (``{"edit", "questions"}``) are read with :func:`load_pokemqa`; every
    other format with :func:`~recipe_chain.data.load_edit_examples`. A HalluEditBench
    file contributes only its ``hallueditbench_split`` subjects
    (:func:`~recipe_chain.data.split_by_subject`): the dev subjects are an evaluation set.
    """
    facts: list[StatementQueries] = []
    for spec in specs:
        path, _, limit_text = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        limit = int(limit_text) if limit_text else None
        head = Path(path).read_text(encoding="utf-8", errors="replace")[:2000]
        if '"edit"' in head and '"questions"' in head:
            facts += load_pokemqa(path, limit=limit)
            continue
        examples = load_edit_examples(path, on_invalid="skip")
        if examples and examples[0].source_format == "hallueditbench":
            train, dev = split_by_subject(examples)
            examples = train if hallueditbench_split == "train" else dev
        facts += statement_queries(examples[:limit] if limit is not None else examples, source=Path(path).name)
    return facts
