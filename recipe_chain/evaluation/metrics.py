"""Pure metric functions of the lifelong-editing evaluation (no models, no I/O).

The paper metrics follow RECIPE (Chen et al., EMNLP 2024) and EasyEdit:

* **Reliability**: teacher-forced token accuracy of ``target_new`` after the edit
  prompt -- the share of target tokens that are the model's argmax given the prompt
  and the target tokens before them (:func:`token_accuracy`).
* **Generality**: the same on the paraphrases of the edit prompt.
* **Locality**: on a locality prompt teacher-forced with a continuation (its reference
  answer), the share of the *unedited* model's argmax tokens that the edited model
  keeps (:func:`kept_token_share`).

What a user sees is measured on greedy generations: :func:`exact_match` (the stripped
output starts with the new target) and :func:`output_unchanged`. Gate statistics are
shares of booleans (:func:`rate`). Aggregates are means over examples; an empty set
gives ``None`` (JSON ``null``), never ``NaN``.

Example:
    >>> token_accuracy([5, 7, 9], [5, 7, 2])
    0.6666666666666666
    >>> kept_token_share(edited_argmax=[1, 2, 3, 4], unedited_argmax=[1, 2, 0, 4])
    0.75
    >>> exact_match(" English, and French", "English")
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "token_accuracy",
    "kept_token_share",
    "token_accuracy_from_logits",
    "kept_token_share_from_logits",
    "exact_match",
    "output_unchanged",
    "mean",
    "mean_of_means",
    "rate",
    "percentile",
    "latency_summary",
]


def _check_same_length(a: Sequence[int], b: Sequence[int], what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: sequences differ in length ({len(a)} vs {len(b)})")
    if len(a) == 0:
        raise ValueError(f"{what}: empty token sequence")


def token_accuracy(argmax_ids: Sequence[int], target_ids: Sequence[int]) -> float:
    """Share of target tokens the model predicts exactly (Reliability / Generality).

    Args:
        argmax_ids: The model's argmax token at each target position (teacher-forced).
        target_ids: The target's token ids.

    Returns:
        A value in ``[0, 1]``.

    Raises:
        ValueError: If the sequences are empty or differ in length.
    """
    _check_same_length(argmax_ids, target_ids, "token_accuracy")
    return sum(int(a == t) for a, t in zip(argmax_ids, target_ids)) / len(target_ids)


def kept_token_share(edited_argmax: Sequence[int], unedited_argmax: Sequence[int]) -> float:
    """Share of the unedited model's argmax tokens the edited model keeps (Locality).

    Both sequences are argmax tokens at the same teacher-forced continuation positions
    of the same locality prompt; the edited one may have been computed with a prefix or
    with text in front of the prompt.

    Returns:
        A value in ``[0, 1]``.

    Raises:
        ValueError: If the sequences are empty or differ in length.
    """
    _check_same_length(edited_argmax, unedited_argmax, "kept_token_share")
    return sum(int(a == b) for a, b in zip(edited_argmax, unedited_argmax)) / len(unedited_argmax)


def _check_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, L, V); got shape {tuple(logits.shape)}")
    if mask is None:
        return torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"mask must be (B, L) = {tuple(logits.shape[:2])}; got {tuple(mask.shape)}")
    mask = mask.bool()
    if not bool(mask.any(-1).all()):
        raise ValueError("every row of mask needs at least one real target position")
    return mask


def token_accuracy_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> list[float]:
    """Per-row teacher-forced token accuracy from logits at the target positions.

    Args:
        logits: ``(B, L, V)`` logits predicting each target token (as
            :meth:`~recipe_chain.prefix_lm.PrefixedCausalLM.target_logits` returns them).
        targets: ``(B, L)`` target token ids.
        mask: ``(B, L)``, true on real target tokens (``None``: all real).

    Returns:
        ``B`` accuracies in ``[0, 1]``.

    Raises:
        ValueError: On shape mismatches or a row without target tokens.
    """
    mask = _check_logits(logits, mask)
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must be (B, L) = {tuple(logits.shape[:2])}; got {tuple(targets.shape)}")
    hits = (logits.argmax(-1) == targets) & mask  # (B, L)
    return (hits.sum(-1).float() / mask.sum(-1).float()).tolist()


def kept_token_share_from_logits(
    edited_logits: torch.Tensor, unedited_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> list[float]:
    """Per-row Locality from the edited and unedited logits at the same positions.

    Args:
        edited_logits: ``(B, L, V)``.
        unedited_logits: ``(B, L, V)``.
        mask: ``(B, L)``, true on real continuation tokens (``None``: all real).

    Returns:
        ``B`` shares in ``[0, 1]``.
    """
    mask = _check_logits(unedited_logits, mask)
    if edited_logits.shape != unedited_logits.shape:
        raise ValueError(
            f"edited and unedited logits differ in shape: {tuple(edited_logits.shape)} vs "
            f"{tuple(unedited_logits.shape)}"
        )
    same = (edited_logits.argmax(-1) == unedited_logits.argmax(-1)) & mask  # (B, L)
    return (same.sum(-1).float() / mask.sum(-1).float()).tolist()


def exact_match(generated: str, target: str) -> bool:
    """Whether a greedy generation, stripped, starts with the (stripped) target.

    Raises:
        ValueError: If the target is empty.
    """
    target = target.strip()
    if not target:
        raise ValueError("exact_match: empty target")
    return generated.strip().startswith(target)


def output_unchanged(edited: str, unedited: str) -> bool:
    """Whether the edited greedy output equals the unedited one (ignoring outer whitespace)."""
    return edited.strip() == unedited.strip()


def mean(values: Iterable[float | bool]) -> float | None:
    """Arithmetic mean, or ``None`` for no values."""
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def mean_of_means(groups: Iterable[Sequence[float | bool]]) -> float | None:
    """Mean over groups of each non-empty group's mean (per-example averaging).

    Example:
        >>> mean_of_means([[1.0, 0.0], [1.0], []])
        0.75
    """
    means = [m for m in (mean(g) for g in groups) if m is not None]
    return mean(means)


def rate(flags: Iterable[bool]) -> float | None:
    """Share of true flags, or ``None`` for none."""
    return mean(bool(f) for f in flags)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (``0 <= q <= 1``) with linear interpolation; ``None`` if empty.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
        2.5
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return None
    k = (len(ordered) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """``{"n", "mean", "p50", "p95"}`` of latencies in seconds (``None`` values if empty)."""
    return {
        "n": len(seconds),
        "mean": mean(seconds),
        "p50": percentile(seconds, 0.5),
        "p95": percentile(seconds, 0.95),
    }
