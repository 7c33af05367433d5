"""The evaluation metric functions on crafted tokens and logits with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from recipe_chain.evaluation import metrics as M


def _logits_for(argmax: list[list[int]], vocab: int = 6) -> torch.Tensor:
    """(B, L, V) logits whose argmax is exactly ``argmax`` (runner-up 1.0 below)."""
    out = torch.zeros(len(argmax), len(argmax[0]), vocab)
    for b, row in enumerate(argmax):
        for j, tok in enumerate(row):
            out[b, j] = torch.linspace(0, 1, vocab)  # a distractor ordering
            out[b, j, tok] = 5.0
    return out


def test_token_accuracy_counts_exact_positions():
    assert M.token_accuracy([5, 7, 9], [5, 7, 9]) == 1.0
    assert M.token_accuracy([5, 7, 9], [5, 0, 9]) == pytest.approx(2 / 3)
    assert M.token_accuracy([1], [2]) == 0.0
    # position matters, not membership
    assert M.token_accuracy([7, 5], [5, 7]) == 0.0


def test_token_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        M.token_accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        M.token_accuracy([], [])


def test_kept_token_share_is_agreement_with_the_unedited_argmax():
    assert M.kept_token_share([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert M.kept_token_share([9, 9], [1, 2]) == 0.0
    with pytest.raises(ValueError):
        M.kept_token_share([1], [1, 2])


def test_token_accuracy_from_logits_with_mask():
    logits = _logits_for([[2, 3, 4], [1, 1, 0]])  # (2, 3, 6)
    targets = torch.tensor([[2, 3, 5], [1, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)  # row 1 has a 2-token target
    acc = M.token_accuracy_from_logits(logits, targets, mask)
    assert acc == pytest.approx([2 / 3, 1 / 2])
    # without a mask every position counts
    assert M.token_accuracy_from_logits(logits, targets) == pytest.approx([2 / 3, 2 / 3])


def test_logits_and_token_versions_agree():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 11)
    targets = torch.randint(0, 11, (4, 5))
    by_logits = M.token_accuracy_from_logits(logits, targets)
    by_tokens = [M.token_accuracy(logits[b].argmax(-1).tolist(), targets[b].tolist()) for b in range(4)]
    assert by_logits == pytest.approx(by_tokens)


def test_kept_token_share_from_logits():
    unedited = _logits_for([[1, 2, 3, 4]])
    edited = _logits_for([[1, 5, 3, 0]])
    assert M.kept_token_share_from_logits(edited, unedited) == pytest.approx([0.5])
    mask = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    assert M.kept_token_share_from_logits(edited, unedited, mask) == pytest.approx([0.5])
    mask = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    assert M.kept_token_share_from_logits(edited, unedited, mask) == pytest.approx([1.0])


def test_logit_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, L, V\)"):
        M.token_accuracy_from_logits(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        M.token_accuracy_from_logits(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        M.token_accuracy_from_logits(
            torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="differ in shape"):
        M.kept_token_share_from_logits(torch.zeros(1, 2, 4), torch.zeros(1, 3, 4))


def test_exact_match_is_a_stripped_prefix_match():
    assert M.exact_match(" English, and some French", "English")
    assert M.exact_match("\n  Rome.", " Rome ")
    assert not M.exact_match(" The answer is English", "English")  # must start with it
    assert not M.exact_match(" english", "English")  # case-sensitive
    assert not M.exact_match("", "English")
    with pytest.raises(ValueError):
        M.exact_match("x", "  ")


def test_output_unchanged_ignores_outer_whitespace_only():
    assert M.output_unchanged(" Paris.\n", "Paris.")
    assert not M.output_unchanged("Paris!", "Paris.")


def test_means_rates_and_none_for_empty():
    assert M.mean([1, 0, 1, 1]) == 0.75
    assert M.mean([]) is None
    assert M.rate([True, False, False, False]) == 0.25
    assert M.rate([]) is None
    # per-example averaging: [1, 0] -> 0.5 and [1] -> 1.0, the empty group is ignored
    assert M.mean_of_means([[1.0, 0.0], [1.0], []]) == 0.75
    assert M.mean_of_means([[], []]) is None


def test_percentile_interpolates_and_validates():
    assert M.percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert M.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert M.percentile([7.0], 0.95) == 7.0
    assert M.percentile([], 0.5) is None
    with pytest.raises(ValueError):
        M.percentile([1.0], 1.5)


def test_latency_summary():
    s = M.latency_summary([0.1, 0.2, 0.3])
    assert s["n"] == 3 and s["p50"] == pytest.approx(0.2) and s["mean"] == pytest.approx(0.2)
    assert s["p95"] == pytest.approx(0.29)
    empty = M.latency_summary([])
    assert empty == {"n": 0, "mean": None, "p50": None, "p95": None}
    assert not any(isinstance(v, float) and math.isnan(v) for v in empty.values())
