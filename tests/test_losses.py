"""Unit tests of the RECIPE training losses on crafted tensors."""

from __future__ import annotations

import math

import pytest
import torch

from recipe_chain.training.losses import (
    contrastive_retrieval_loss,
    hinged_cross_entropy,
    prompt_token_loss,
    retrieval_logits,
    sentinel_loss,
    target_nll,
    topk_kl,
)

D = 4


def _unit(i: int, scale: float = 10.0) -> torch.Tensor:
    v = torch.zeros(D)
    v[i] = scale
    return v


# ---------------------------------------------------------------------- target_nll


def test_target_nll_matches_hand_computation_and_ignores_padding() -> None:
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            [[0.0, 0.0, 3.0], [9.0, 9.0, 9.0]],  # second position is padding
        ]
    )  # (B=2, L=2, V=3)
    targets = torch.tensor([[0, 1], [2, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    logp = torch.log_softmax(logits, -1)
    row0 = -(logp[0, 0, 0] + logp[0, 1, 1]) / 2
    row1 = -logp[1, 0, 2]
    expected = (row0 + row1) / 2  # token mean per row, then mean over rows
    assert torch.allclose(target_nll(logits, targets, mask), expected)


def test_target_nll_low_for_confident_correct_high_for_wrong() -> None:
    targets = torch.tensor([[1]])
    mask = torch.tensor([[True]])
    right = torch.tensor([[[0.0, 20.0, 0.0]]])
    wrong = torch.tensor([[[20.0, 0.0, 0.0]]])
    assert target_nll(right, targets, mask) < 1e-6
    assert target_nll(wrong, targets, mask) > 19.0


def test_target_nll_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="mask"):
        target_nll(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="logits"):
        target_nll(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool))


# ---------------------------------------------------------------------- topk_kl


def _teacher(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits, -1)
    top_logp, top_idx = logp.topk(k, -1)
    return top_idx.to(torch.int32), top_logp.to(torch.float16)


def test_topk_kl_is_zero_for_identical_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 50, generator=g)  # (B, L, V)
    idx, logp = _teacher(logits, 8)
    mask = torch.ones(3, 2, dtype=torch.bool)
    assert topk_kl(logits, idx, logp, mask) < 2e-3  # fp16 rounding of the teacher only


def test_topk_kl_is_positive_for_different_distributions_and_grows_with_the_gap() -> None:
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(2, 3, 40, generator=g)
    idx, logp = _teacher(teacher, 10)
    mask = torch.ones(2, 3, dtype=torch.bool)
    noise = torch.randn(2, 3, 40, generator=g)
    small = topk_kl(teacher + 0.3 * noise, idx, logp, mask)
    large = topk_kl(teacher + 3.0 * noise, idx, logp, mask)
    assert 0 < small < large


def test_topk_kl_equals_the_full_kl_when_k_covers_the_vocabulary() -> None:
    g = torch.Generator().manual_seed(2)
    teacher, student = torch.randn(1, 1, 6, generator=g), torch.randn(1, 1, 6, generator=g)
    p, q = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    full = (p.exp() * (p - q)).sum()
    idx, _ = _teacher(teacher, 6)
    got = topk_kl(student, idx, p.gather(-1, idx.long()), torch.ones(1, 1, dtype=torch.bool))
    assert torch.allclose(got, full, atol=1e-5)


def test_topk_kl_counts_the_rest_bucket() -> None:
    # Teacher: all mass on token 0 (top-1 support). A student that moves mass from token 0
    # to *any* other token must pay, even though those tokens are outside the support.
    teacher = torch.tensor([[[10.0, 0.0, 0.0, 0.0]]])
    idx, logp = _teacher(teacher, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    same = topk_kl(teacher, idx, logp, mask)
    moved = topk_kl(torch.tensor([[[0.0, 10.0, 0.0, 0.0]]]), idx, logp, mask)
    assert same < 1e-3 < 5.0 < moved


def test_topk_kl_ignores_masked_positions_and_has_gradients() -> None:
    teacher = torch.zeros(1, 2, 5)
    idx, logp = _teacher(teacher, 5)
    student = torch.zeros(1, 2, 5)
    student[0, 1] = torch.tensor([50.0, 0, 0, 0, 0])  # very different, but masked out
    student.requires_grad_(True)
    loss = topk_kl(student, idx, logp, torch.tensor([[True, False]]))
    assert loss < 1e-3
    loss2 = topk_kl(student, idx, logp, torch.tensor([[True, True]]))
    loss2.backward()
    assert loss2 > 1.0 and student.grad is not None and student.grad[0, 1].abs().sum() > 0


# ---------------------------------------------------------------------- hinge / margin


def test_hinge_zeroes_the_gradient_of_rows_that_already_win() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.5, 0.0]], requires_grad=True)  # row 0 wins clearly
    target = torch.tensor([0, 0])
    loss = hinged_cross_entropy(logits, target, hinge_threshold=0.9)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[0] == 0)
    assert logits.grad[1].abs().sum() > 0
    # Without the hinge both rows get gradient.
    logits.grad = None
    hinged_cross_entropy(logits, target).backward()
    assert logits.grad[0].abs().sum() > 0


def test_margin_raises_the_loss_of_a_narrow_win() -> None:
    logits = torch.tensor([[1.0, 0.5]])
    target = torch.tensor([0])
    plain = hinged_cross_entropy(logits, target)
    with_margin = hinged_cross_entropy(logits, target, margin=1.0)
    expected = -torch.log_softmax(torch.tensor([[0.0, 0.5]]), -1)[0, 0]
    assert with_margin > plain
    assert torch.allclose(with_margin, expected)


def test_hinge_threshold_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="hinge_threshold"):
        hinged_cross_entropy(torch.zeros(1, 2), torch.tensor([0]), hinge_threshold=1.5)


# ---------------------------------------------------------------------- retrieval


def test_retrieval_logits_are_scaled_dot_products_with_the_sentinel_last() -> None:
    q = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    sentinel = torch.tensor([0.0, 0.0, 0.0, 4.0])
    logits = retrieval_logits(q, keys, sentinel)
    assert torch.allclose(logits, torch.tensor([[1.0, 2.0, 0.0]]) / math.sqrt(D))
    masked = retrieval_logits(q, keys, sentinel, key_mask=torch.tensor([[True, False]]))
    assert masked[0, 1] < -1e8 and masked[0, 0] == logits[0, 0] and masked[0, 2] == logits[0, 2]


def test_contrastive_loss_low_when_each_query_is_closest_to_its_own_key() -> None:
    keys = torch.stack([_unit(0), _unit(1), _unit(2)])  # (3, d)
    sentinel = _unit(3, 1.0)
    positives = torch.tensor([0, 1, 2])
    aligned = contrastive_retrieval_loss(keys.clone(), keys, sentinel, positives)
    shuffled = contrastive_retrieval_loss(keys[[1, 2, 0]], keys, sentinel, positives)
    assert aligned < 0.01
    assert shuffled > 10.0


def test_contrastive_loss_treats_the_sentinel_as_a_negative() -> None:
    keys = torch.stack([_unit(0, 1.0)])
    q = _unit(0, 1.0).unsqueeze(0) + _unit(3, 10.0).unsqueeze(0)  # close to the sentinel
    positives = torch.tensor([0])
    near_sentinel = contrastive_retrieval_loss(q, keys, _unit(3, 10.0), positives)
    far_sentinel = contrastive_retrieval_loss(q, keys, -_unit(3, 10.0), positives)
    assert near_sentinel > 5.0 > 0.01 > far_sentinel


def test_contrastive_loss_refuses_a_masked_positive() -> None:
    keys = torch.stack([_unit(0), _unit(1)])
    with pytest.raises(ValueError, match="positive"):
        contrastive_retrieval_loss(
            keys, keys, _unit(3), torch.tensor([0, 1]), key_mask=torch.tensor([[False, True], [True, True]])
        )
    with pytest.raises(ValueError, match="positives"):
        contrastive_retrieval_loss(keys, keys, _unit(3), torch.tensor([0, 5]))


def test_sentinel_loss_low_when_the_sentinel_outranks_unrelated_statements() -> None:
    statements = torch.stack([_unit(0), _unit(1)])  # (2, d)
    queries = torch.stack([_unit(2) + _unit(3), _unit(3)])  # unrelated queries
    good_sentinel = _unit(3)  # the queries point at it
    bad_sentinel = -_unit(3)
    assert sentinel_loss(queries, statements, good_sentinel) < 0.01
    # Queries that look like statements, and a sentinel that does not compete: high loss.
    assert sentinel_loss(statements.clone(), statements, bad_sentinel) > 10.0


def test_sentinel_loss_masks_the_own_statement() -> None:
    # A paraphrase whose own statement (key 0) is masked out must pick the sentinel over key 1.
    keys = torch.stack([_unit(0), _unit(1)])
    q = (_unit(0) + _unit(2, 5.0)).unsqueeze(0)
    sentinel = _unit(2)
    own_masked = sentinel_loss(q, keys, sentinel, key_mask=torch.tensor([[False, True]]))
    unmasked = sentinel_loss(q, keys, sentinel)
    assert own_masked < 0.01
    assert unmasked > 1.0


def test_retrieval_losses_reach_queries_keys_and_sentinel() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, D, generator=g).requires_grad_(True)
    k = torch.randn(4, D, generator=g).requires_grad_(True)
    s = torch.randn(D, generator=g).requires_grad_(True)
    loss = contrastive_retrieval_loss(q, k, s, torch.arange(4)) + sentinel_loss(q, k, s)
    loss.backward()
    for t in (q, k, s):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_prompt_token_loss_rewards_slots_on_the_target_tokens() -> None:
    vocab = 6
    right = torch.full((2, 2, vocab), -5.0)  # (B, S, V)
    right[0, 0, 3] = right[0, 1, 4] = right[1, 0, 1] = 5.0
    targets = [[3, 4], [1]]  # the second target has one token: its second slot is free
    low = prompt_token_loss(right, targets)
    wrong = right.clone()
    wrong[0, 0] = wrong[0, 0].roll(1)
    assert low < 0.01 < prompt_token_loss(wrong, targets)
    free = right.clone()
    free[1, 1] = torch.randn(vocab) * 10  # whatever the free slot holds costs nothing
    torch.testing.assert_close(prompt_token_loss(free, targets), low)
    with pytest.raises(ValueError, match="slot_logits"):
        prompt_token_loss(right, [[1]])
