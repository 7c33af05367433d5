"""The part of a long input that the gate reads: its last sentence.

LCEL prompts carry instructions, retrieved context and chat history before the question;
the question is almost always at the end. So a query longer than the knowledge encoder's
window is cut to its *last sentence* (or line), and a last sentence that alone is too long
keeps its last tokens. Filling the window with as many trailing sentences as fit was
measured too and loses the question among the context: with ~2,000 tokens of context in
front, the right edit fired for 3 % of CounterFact prompts that way and for 95 % with the
last sentence alone (``benchmarks/results/query_window.md``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["split_sentences", "asking_window"]

# A sentence ends at ., !, ? or ; followed by white space, or at a line break.
_BOUNDARY = re.compile(r"(?<=[.!?;])\s+|\s*\n\s*")


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences and lines, in order, without empty pieces.

    Example:
        >>> split_sentences("Some context. More!\\nWho runs Acme Rockets?")
        ['Some context.', 'More!', 'Who runs Acme Rockets?']
    """
    return [piece for piece in (p.strip() for p in _BOUNDARY.split(text)) if piece]


def asking_window(
    text: str,
    count_tokens: Callable[[Sequence[str]], list[int]],
    max_tokens: int,
    tail_tokens: Callable[[str, int], str] | None = None,
) -> str:
    """The asking part of ``text``: itself when it fits ``max_tokens``, else its last sentence.

    Args:
        text: The full input.
        count_tokens: Token counts of texts *with* the encoder's special tokens.
        max_tokens: The encoder's window.
        tail_tokens: ``(sentence, n) -> text`` of the sentence's last ``n`` content
            tokens, for a last sentence that alone exceeds the window; without it such
            a sentence is cut by words.

    Returns:
        ``text`` itself when it fits, else its asking part.
    """
    if count_tokens([text])[0] <= max_tokens:
        return text
    sentences = split_sentences(text)
    if not sentences:
        return text
    last = sentences[-1]
    if count_tokens([last])[0] <= max_tokens:
        return last
    budget = max_tokens - count_tokens([""])[0]  # [CLS] and [SEP] for a BERT tokenizer
    if tail_tokens is not None:
        return tail_tokens(last, budget)
    words = last.split()
    while len(words) > 1 and count_tokens([" ".join(words)])[0] > max_tokens:
        words = words[max(1, len(words) // 8) :]
    return " ".join(words)
