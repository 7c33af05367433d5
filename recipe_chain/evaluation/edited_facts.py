"""Locality prompts that ask a fact the store itself has edited.

Thousands of edits drawn from one pool overlap: the neighbourhood prompt of one
CounterFact record ("Nissan NX is created by", reference answer "Nissan") can ask exactly
the fact another stored edit changed ("Nissan NX is created by BMW"). There the edited
answer is the one the user asked for, and keeping the unedited answer would be the
failure. The harness therefore scores such prompts apart from Locality
(``benchmarks/results/eval/cf-T10000-verifier/locality_conflicts.md`` shows how often
they fire at T = 10,000).

A locality prompt *asks an edited fact* when some stored edit's subject appears in it as
whole words and that edit's old answer (``ground_truth``) equals the prompt's reference
answer, both folded by :func:`recipe_chain.evaluation.answers.normalize_answer`. Same
subject with another answer (another relation) stays a locality prompt: an edit must not
fire there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from recipe_chain.data import EditExample
from recipe_chain.evaluation.answers import normalize_answer

__all__ = ["EditedFacts"]


class EditedFacts:
    """The (subject, old answer) pairs of a set of edits, to recognise prompts that ask them.

    Args:
        examples: The edits in the store. Those without a subject or an old answer
            cannot be recognised and are ignored.

    Example:
        >>> from recipe_chain.data import EditExample
        >>> facts = EditedFacts([EditExample(prompt="Nissan NX is created by", target_new="BMW",
        ...                                  subject="Nissan NX", ground_truth="Nissan",
        ...                                  source_format="counterfact_flat")])
        >>> facts.asks_edited_fact("Nissan NX, developed by", "Nissan")
        True
        >>> facts.asks_edited_fact("Nissan NX is sold in", "Japan")
        False
    """

    def __init__(self, examples: Iterable[EditExample]) -> None:
        self._subjects_by_answer: dict[str, set[str]] = defaultdict(set)
        for ex in examples:
            if ex.subject and ex.ground_truth:
                subject, answer = normalize_answer(ex.subject), normalize_answer(ex.ground_truth)
                if subject and answer:
                    self._subjects_by_answer[answer].add(subject)

    def __len__(self) -> int:
        return sum(len(s) for s in self._subjects_by_answer.values())

    def asks_edited_fact(self, prompt: str, answer: str | None) -> bool:
        """Whether ``prompt`` with reference ``answer`` asks a fact one of the edits changed.

        Args:
            prompt: A locality prompt.
            answer: Its reference answer; ``None`` (no reference) never matches.

        Returns:
            True if an edit's subject is named in ``prompt`` and its old answer is ``answer``.
        """
        if not answer:
            return False
        subjects = self._subjects_by_answer.get(normalize_answer(answer))
        if not subjects:
            return False
        padded = f" {normalize_answer(prompt)} "
        return any(f" {subject} " in padded for subject in subjects)
