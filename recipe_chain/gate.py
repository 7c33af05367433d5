"""The Knowledge Sentinel gate as pure functions (no Chroma, no networks).

The store retrieves approximate top candidates from Chroma; these functions re-score
them exactly and take the decision:

* :func:`rescore`: exact ``q·k/√d`` of one query against candidate keys;
* :func:`rank`: candidate order, best first (ties keep the retrieval order);
* :func:`admits`: the gate rule ``best > sentinel + margin`` (or always, ungated);
* :func:`shortlist` and :func:`verified_choice`: the two-stage rule with a gate verifier
  (:mod:`recipe_chain.verifier`): candidates near the sentinel are shortlisted, and the
  verifier's most probable one is admitted if it clears its threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


__all__ = ["rescore", "rank", "admits", "sentinel_similarity", "shortlist", "verified_choice"]


def rescore(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Exact RECIPE similarities of one query to candidate keys.

    Args:
        query: ``(d,)`` query representation.
        keys: ``(K, d)`` candidate keys (``K`` may be 0).

    Returns:
        ``(K,)`` float32 similarities ``q·k/√d``.

    Raises:
        ValueError: If the widths differ.
    """
    if query.dim() != 1 or keys.dim() != 2:
        raise ValueError(f"Expected query (d,) and keys (K, d); got {tuple(query.shape)} and {tuple(keys.shape)}")
    if keys.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float32)
    if keys.shape[1] != query.shape[0]:
        raise ValueError(f"Query width {query.shape[0]} != key width {keys.shape[1]}")
    # the same operations as editor.scaled_dot, so both give bit-identical similarities
    return (query.float()[None] @ keys.float().T / math.sqrt(query.shape[0]))[0]  # (K,)


def sentinel_similarity(query: torch.Tensor, sentinel: torch.Tensor) -> float:
    """Exact ``sim(query, sentinel)`` for one ``(d,)`` query and the ``(d,)`` sentinel key."""
    return float(rescore(query, sentinel[None])[0])


def rank(similarities: torch.Tensor) -> list[int]:
    """Indices of ``similarities`` from best to worst; equal values keep their order."""
    values = similarities.tolist()
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def admits(best: float | None, sentinel: float, *, margin: float = 0.0, use_gate: bool = True) -> bool:
    """The Knowledge Sentinel rule.

    Args:
        best: Exact similarity of the best candidate, ``None`` if there is none.
        sentinel: Exact similarity of the query to the sentinel.
        margin: Extra margin the best candidate must beat the sentinel by.
        use_gate: ``False`` admits any best candidate (ablation).

    Returns:
        Whether the best candidate is used.

    Example:
        >>> admits(2.0, 1.5), admits(2.0, 1.5, margin=1.0), admits(2.0, 3.0, use_gate=False)
        (True, False, True)
    """
    if best is None or math.isnan(best):
        return False
    if not use_gate:
        return True
    return best > sentinel + margin


def shortlist(similarities: Sequence[float], sentinel: float, *, margin: float, k: int) -> list[int]:
    """Indices of the first ``k`` candidates (best first) with ``similarity > sentinel + margin``.

    Example:
        >>> shortlist([5.0, 3.0, 1.0], 2.0, margin=-1.5, k=2), shortlist([5.0, 3.0], 2.0, margin=4.0, k=2)
        ([0, 1], [])
    """
    return [i for i, sim in enumerate(list(similarities)[:k]) if not math.isnan(sim) and sim > sentinel + margin]


def verified_choice(probabilities: Sequence[float | None], threshold: float) -> int | None:
    """Index of the most probable verified candidate above ``threshold`` (first on ties), or ``None``.

    Example:
        >>> verified_choice([0.2, None, 0.9, 0.9], 0.5), verified_choice([0.2, None], 0.5)
        (2, None)
    """
    best: int | None = None
    for i, p in enumerate(probabilities):
        if p is not None and p > threshold and (best is None or p > probabilities[best]):  # type: ignore[operator]
            best = i
    return best
