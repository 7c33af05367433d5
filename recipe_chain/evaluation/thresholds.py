"""Choosing a retrieval score threshold by balanced accuracy on a dev split.

A text-RAG chain built the standard LangChain way
(``as_retriever(search_type="similarity_score_threshold")``) admits the top document
when its relevance score reaches a threshold. The threshold is tuned as a binary
classifier of "should this query fire?": dev edit prompts and paraphrases should
(positives), dev locality prompts and general questions should not (negatives).
Balanced accuracy, the mean of the true-positive and true-negative rates, weighs the
two classes equally however many rows each has.

Example:
    >>> tuned = tune_balanced_threshold([0.9, 0.8, 0.7], [0.2, 0.75])
    >>> tuned.value, tuned.balanced_accuracy
    (0.775, 0.8333333333333333)
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

__all__ = ["ThresholdPoint", "TunedThreshold", "tune_balanced_threshold"]


class ThresholdPoint(BaseModel):
    """One point of the dev curve: firing iff ``score >= threshold``."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    tpr: float
    tnr: float
    balanced_accuracy: float


class TunedThreshold(BaseModel):
    """The chosen threshold, its dev rates and the whole dev curve.

    Attributes:
        value: Fire iff ``score >= value``.
        balanced_accuracy: ``(tpr + tnr) / 2`` on dev at ``value``.
        tpr: Share of dev positives that fire.
        tnr: Share of dev negatives that do not fire.
        n_positive: Dev positives.
        n_negative: Dev negatives.
        curve: Every candidate threshold with its rates, ascending.
    """

    model_config = ConfigDict(frozen=True)

    value: float
    balanced_accuracy: float
    tpr: float
    tnr: float
    n_positive: int
    n_negative: int
    curve: list[ThresholdPoint]


def tune_balanced_threshold(
    positive_scores: Sequence[float], negative_scores: Sequence[float], *, margin: float = 1e-6
) -> TunedThreshold:
    """The score threshold with the best dev balanced accuracy.

    Candidates are midpoints between consecutive distinct observed scores, plus one
    below all of them (always fire) and one above (never fire). Ties go to the candidate
    nearest the middle of the tied run, so the decision boundary sits in the widest gap
    the dev data allows.

    Args:
        positive_scores: Top-1 scores of dev queries that should fire.
        negative_scores: Top-1 scores of dev queries that should not fire.
        margin: How far below/above the observed range the extreme candidates lie.

    Returns:
        The :class:`TunedThreshold`.

    Raises:
        ValueError: If either class is empty (balanced accuracy is undefined), or a score
            is not finite.
    """
    pos = sorted(float(s) for s in positive_scores)
    neg = sorted(float(s) for s in negative_scores)
    if not pos:
        raise ValueError("cannot tune a threshold: the dev split has no positives (queries that should fire)")
    if not neg:
        raise ValueError(
            "cannot tune a threshold: the dev split has no negatives (locality prompts or general questions); "
            "give dev examples with locality prompts or general questions"
        )
    if any(s != s or s in (float("inf"), float("-inf")) for s in (*pos, *neg)):
        raise ValueError("dev scores must be finite")
    observed = sorted(set(pos) | set(neg))
    candidates = [observed[0] - margin]
    candidates += [(a + b) / 2 for a, b in zip(observed, observed[1:])]
    candidates.append(observed[-1] + margin)

    import bisect

    curve: list[ThresholdPoint] = []
    for tau in candidates:
        tpr = (len(pos) - bisect.bisect_left(pos, tau)) / len(pos)  # scores >= tau fire
        tnr = bisect.bisect_left(neg, tau) / len(neg)  # scores < tau stay quiet
        curve.append(ThresholdPoint(threshold=tau, tpr=tpr, tnr=tnr, balanced_accuracy=(tpr + tnr) / 2))
    best = max(p.balanced_accuracy for p in curve)
    tied = [i for i, p in enumerate(curve) if p.balanced_accuracy == best]
    # the longest run of consecutive tied candidates, then its middle candidate
    runs: list[list[int]] = []
    for i in tied:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    run = max(runs, key=len)
    chosen = curve[run[(len(run) - 1) // 2]]
    return TunedThreshold(
        value=chosen.threshold,
        balanced_accuracy=chosen.balanced_accuracy,
        tpr=chosen.tpr,
        tnr=chosen.tnr,
        n_positive=len(pos),
        n_negative=len(neg),
        curve=curve,
    )
