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

import torch
from pydantic import BaseModel, ConfigDict

__all__ = ["ThresholdPoint", "TunedThreshold", "tune_balanced_threshold", "best_threshold", "THRESHOLD_PROCEDURE"]


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


THRESHOLD_PROCEDURE = (
    "text-rag-recipe-sim admits the store's top-1 edit iff its RECIPE similarity q.k/sqrt(d) >= threshold. "
    "The threshold is tuned on a dev split disjoint from the T evaluated examples (no shared prompt): "
    "the D dev statements are edited into a separate, temporary store namespace, every dev prompt, "
    "paraphrase and locality prompt is gated once, and over the observed top-1 similarities the "
    "threshold maximising (share of dev prompts/paraphrases whose top-1 is their own edit and is "
    "admitted + share of dev locality prompts not admitted) / 2 is chosen (lowest on ties), then moved "
    "halfway down to the next lower observed similarity (same dev decisions, a margin for unseen "
    "queries). 'Always admit' is stored as min - 1, 'never' as max + 1. Caveat: the dev store holds D "
    "edits while the evaluated store holds T; similarities of the best unrelated edit grow with store size."
)


def best_threshold(
    hit_sims: Sequence[float], hit_correct: Sequence[bool], nonhit_sims: Sequence[float]
) -> tuple[float, float, float | None, float | None]:
    """The text-RAG admission threshold that best separates dev queries.

    A query is admitted iff its top-1 similarity ``>= threshold``. Success on a query that
    should hit: its top-1 is correct and admitted; on one that should not: not admitted.

    Args:
        hit_sims: Top-1 similarity of each dev prompt/paraphrase.
        hit_correct: Whether that top-1 is the query's own edit.
        nonhit_sims: Top-1 similarity of each dev locality prompt.

    Returns:
        ``(threshold, objective, hit_accuracy, non_fire)`` where ``objective`` is the mean
        of the two accuracies that exist (see :data:`THRESHOLD_PROCEDURE`).

    Raises:
        ValueError: If there are no similarities at all, or the lengths disagree.

    Example:
        >>> best_threshold([3.0, 2.0], [True, True], [1.0])[:2]
        (1.5, 1.0)
    """
    if len(hit_sims) != len(hit_correct):
        raise ValueError("hit_sims and hit_correct differ in length")
    observed = sorted(set(float(s) for s in [*hit_sims, *nonhit_sims]))
    if not observed:
        raise ValueError("no dev similarities to tune a threshold on")
    correct = torch.tensor(sorted(float(s) for s, c in zip(hit_sims, hit_correct) if c), dtype=torch.float64)
    negatives = torch.tensor(sorted(float(s) for s in nonhit_sims), dtype=torch.float64)
    candidates = torch.tensor([*observed, observed[-1] + 1.0], dtype=torch.float64)  # last: never admit
    parts = []
    hit_acc = non_fire = None
    if hit_sims:
        admitted_correct = len(correct) - torch.searchsorted(correct, candidates, right=False)  # sims >= tau
        hit_acc = admitted_correct.double() / len(hit_sims)
        parts.append(hit_acc)
    if len(negatives):
        non_fire = torch.searchsorted(negatives, candidates, right=False).double() / len(negatives)  # sims < tau
        parts.append(non_fire)
    objective = torch.stack(parts).mean(0)
    best = int(torch.argmax(objective))  # first maximum: the lowest threshold
    if best == len(observed):
        value = observed[-1] + 1.0
    elif best == 0:
        value = observed[0] - 1.0
    else:
        value = (observed[best - 1] + observed[best]) / 2
    return (
        float(value),
        float(objective[best]),
        None if hit_acc is None else float(hit_acc[best]),
        None if non_fire is None else float(non_fire[best]),
    )
