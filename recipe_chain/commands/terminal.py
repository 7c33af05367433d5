"""Stored text made safe to print on a terminal.

Edits come from files, servers and other people. Printed raw, an ESC or BEL in a stored
statement drives the reader's terminal (colours, titles, cursor moves, and on some
terminals worse), and a bidi override such as U+202E makes a line read differently from
what it holds. Every command prints stored or generated text through :func:`terminal_safe`.
"""

from __future__ import annotations

import unicodedata

__all__ = ["terminal_safe"]

# Format characters that reorder or hide text: bidi embeddings, overrides and isolates,
# direction marks, and zero-width joiners/spaces that can splice look-alike text.
_HIDDEN_FORMAT = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"
)


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control and bidi characters written as escapes (``\\x1b``, ``\\u202e``).

    Args:
        text: What to print.
        keep_newlines: Leave ``\\n`` and ``\\t`` as they are (a generated answer);
            otherwise they are escaped too (one table cell, one line).

    Example:
        >>> terminal_safe("red \\x1b[31mtext\\u202e")
        'red \\\\x1b[31mtext\\\\u202e'
    """
    out = []
    for ch in text:
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) == "Cc" or ch in _HIDDEN_FORMAT:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
