"""Answers as people read them: the first sentence of a greedy output, normalised.

Teacher-forced token accuracy and "the output starts with the target" both flatter an
editor: an output such as ``"English, but not English..."`` passes either, and so does
one that names the new target and then the old one. These functions judge what a reader
takes away from the answer:

* :func:`first_sentence` cuts a generation at its first sentence end or newline;
* :func:`normalize_answer` folds case, accents/compatibility forms and punctuation;
* :func:`answer_correct` -- the first sentence names the new target (as whole words)
  and does not name the old one;
* :func:`locality_kept` -- the first sentence is the same as the unedited model's.

Example:
    >>> answer_correct(" English. She also spoke French.", "English", old_target="French")
    True
    >>> answer_correct(" French. English", "English", old_target="French")
    False
    >>> locality_kept(" Paris, the capital.", "paris, the capital!")
    True
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = [
    "first_sentence",
    "normalize_answer",
    "contains_answer",
    "answer_correct",
    "locality_kept",
]

# A sentence ends at ., ! or ? followed by whitespace (or the end of the text), at any
# newline, or at a CJK full stop. "3.5" and "U.S.A" are not ends: no whitespace follows.
_SENTENCE_END = re.compile(r"[.!?…。！？](?=\s|$)|\n")


def first_sentence(text: str, *, keep: Iterable[str] = ()) -> str:
    """The text up to its first sentence end or newline, stripped.

    Args:
        text: A model output (leading whitespace is ignored).
        keep: Phrases that must not be cut (e.g. the expected answer ``"Wile E. Coyote"``):
            a sentence end that falls inside an occurrence of one of them is skipped.

    Returns:
        The first sentence without its final punctuation, or ``""`` for blank text.

    Example:
        >>> first_sentence(" Rome. It was founded")
        'Rome'
        >>> first_sentence("Wile E. Coyote runs it.", keep=["Wile E. Coyote"])
        'Wile E. Coyote runs it'
    """
    text = text.lstrip()
    protected: list[tuple[int, int]] = []
    lowered = text.casefold()
    for phrase in keep:
        phrase = phrase.strip().casefold()
        if not phrase:
            continue
        start = lowered.find(phrase)
        while start != -1:
            protected.append((start, start + len(phrase)))
            start = lowered.find(phrase, start + 1)
    for match in _SENTENCE_END.finditer(text):
        pos = match.start()
        if match.group() != "\n" and any(a <= pos < b for a, b in protected):
            continue
        return text[:pos].strip()
    return text.strip()


def normalize_answer(text: str) -> str:
    """Case-, accent- and punctuation-folded words joined by single spaces.

    NFKD folds compatibility forms (full-width letters, ligatures) and splits accents
    off, which are then dropped; every character that is not a letter or digit becomes a
    space.

    Example:
        >>> normalize_answer("  Zoë's CAFÉ, Ｔｏｋｙｏ! ")
        'zoe s cafe tokyo'
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept = "".join(
        ch if ch.isalnum() else " " for ch in decomposed if not unicodedata.combining(ch)
    )
    return " ".join(kept.split())


def _contains_words(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def contains_answer(output: str, answers: Iterable[str]) -> bool:
    """Whether the first sentence of ``output`` names any of ``answers`` as whole words.

    Used for open questions with several accepted answers (NQ-open). Blank answers are
    ignored; an empty output never contains one.
    """
    answers = [a for a in answers if normalize_answer(a)]
    sentence = normalize_answer(first_sentence(output, keep=answers))
    return any(_contains_words(sentence, normalize_answer(a)) for a in answers)


def answer_correct(output: str, target: str, *, old_target: str | None = None) -> bool:
    """Whether a reader of ``output`` gets the new ``target`` and not the old answer.

    The first sentence (see :func:`first_sentence`, which does not cut inside the target)
    must contain the normalised target as whole words; with ``old_target`` it must not
    contain the old answer outside the occurrences of the new one (so a new target
    ``"New York City"`` is not failed for containing an old ``"New York"``).

    Args:
        output: The greedy generation.
        target: The new target of the edit.
        old_target: The pre-edit answer, when known.

    Returns:
        ``True`` when the answer reads as the new target.

    Raises:
        ValueError: If ``target`` has no letters or digits.

    Example:
        >>> answer_correct("English, but not English", "English")
        True
        >>> answer_correct("", "English")
        False
    """
    new = normalize_answer(target)
    if not new:
        raise ValueError(f"answer_correct: target {target!r} has no letters or digits")
    keep = [target] + ([old_target] if old_target else [])
    sentence = normalize_answer(first_sentence(output, keep=keep))
    if not _contains_words(sentence, new):
        return False
    if old_target:
        old = normalize_answer(old_target)
        if old and old != new:
            rest = f" {sentence} ".replace(f" {new} ", " | ")
            if f" {old} " in rest:
                return False
    return True


def locality_kept(output: str, unedited_output: str) -> bool:
    """Whether the first sentence of ``output`` reads the same as the unedited model's.

    Both are cut by :func:`first_sentence` and compared after :func:`normalize_answer`,
    so a change after the first sentence, in case or in punctuation does not count.
    """
    return normalize_answer(first_sentence(output)) == normalize_answer(first_sentence(unedited_output))
