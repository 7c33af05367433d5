"""What the knowledge encoder can see of an edit's target.

A key is the encoder's reading of the statement ``"<prompt> <target_new>"``. Text the
encoder's vocabulary lacks becomes one unknown token (``[UNK]`` for MiniLM): emoji, most
non-Latin scripts the tokenizer was not built for, and any "word" longer than 100
characters. A target made mostly of unknown tokens is invisible to the key, so the edit
cannot carry what was typed ("😀" and "🎉" get the same key). The store refuses such a
target, with a message that says what to do.

The rule, measured on the real editing data in ``benchmarks/results/unknown_targets.md``:
reject a target when more than half of its word pieces are unknown. Of about 30,000 real
targets (CounterFact, ZsRE, KnowEdit, HalluEditBench) it refuses 5, all single Hangul
syllables the vocabulary lacks; emoji and overlong words are refused, Cyrillic, Greek
and CJK names pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_UNKNOWN_SHARE", "check_texts", "unknown_pieces", "check_targets_visible"]

MAX_UNKNOWN_SHARE = 0.5  # a target with a larger share of unknown word pieces is refused


def check_texts(texts: Sequence[str], what: str = "text") -> list[str]:
    """``texts`` as a non-empty list of ``str``.

    Raises:
        TypeError: A single ``str`` (a common slip for a one-item batch), ``None``, or a non-``str`` item.
        ValueError: An empty batch.
    """
    if isinstance(texts, str):
        raise TypeError(f"Expected a sequence of {what}s, got a single str; wrap it in a list")
    if texts is None:
        raise TypeError(f"Expected a sequence of {what}s, got None")
    texts = list(texts)
    if not texts:
        raise ValueError(f"Expected at least one {what}, got an empty batch")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what.capitalize()} {i} is {type(t).__name__}, expected str")
    return texts


def unknown_pieces(tokenizer: Any, texts: Sequence[str]) -> list[tuple[int, int]]:
    """``(unknown, total)`` word pieces of each text, as ``tokenizer`` reads it alone.

    Tokenizers without an unknown token (byte-level BPE) see everything: ``(0, total)``.
    """
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    return [(0 if unk is None else sum(i == unk for i in row), len(row)) for row in ids]


def check_targets_visible(tokenizer: Any, targets: Sequence[str], *, first_index: int = 0) -> None:
    """Raise ``ValueError`` for the first target the encoder mostly cannot read.

    Args:
        tokenizer: The knowledge encoder's tokenizer.
        targets: ``target_new`` of each edit, in input order.
        first_index: Record number of ``targets[0]`` (for the message).

    Raises:
        ValueError: Naming the record, the unknown share, and the fix.
    """
    for offset, (unknown, total) in enumerate(unknown_pieces(tokenizer, targets)):
        if total and unknown / total > MAX_UNKNOWN_SHARE:
            target = targets[offset]
            shown = target if len(target) <= 60 else target[:57] + "..."
            raise ValueError(
                f"Edit record {first_index + offset}: the knowledge encoder cannot read target_new {shown!r} "
                f"({unknown} of its {total} word piece(s) are unknown to its vocabulary), so the edit's key "
                "would not carry it. Write the target in words the encoder knows (e.g. 'party popper' for an "
                "emoji), or split an overlong word."
            )
