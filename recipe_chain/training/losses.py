"""The RECIPE training losses, as pure functions on tensors.

Notation (a batch of ``B`` edits): ``k_i`` statement keys ``(B, d)``, ``q`` query
representations ``(Q, d)``, ``κ`` the Knowledge Sentinel ``(d,)``, and the RECIPE
similarity ``sim(a, b) = a·b/√d`` (:func:`recipe_chain.editor.scaled_dot`).

* :func:`target_nll` -- reliability / generality: NLL of the new target, teacher-forced.
* :func:`topk_kl` -- locality: KL(frozen LLM || LLM with prefix), on a cached top-k support.
* :func:`contrastive_retrieval_loss` -- a query must pick its own statement among the
  candidate keys *and* the sentinel.
* :func:`sentinel_loss` -- a query must pick the sentinel over every candidate key
  (used with the query's own statement masked out, and for locality queries).
* :func:`prompt_token_loss` -- not in the paper: the token slots of a ``"vocab"`` prompt
  encoder must put their mixture weight on the new target's tokens.

Hinge-style masking (the paper's "stop pushing a probability once it clearly wins")
is offered by :func:`hinged_cross_entropy`: a row whose correct-class softmax
probability already exceeds ``hinge_threshold`` contributes zero loss and zero
gradient. An additive ``margin`` (subtracted from the correct logit before the
softmax, as in additive-margin softmax) asks the correct class to win by at least
``margin`` similarity units. Both are off when ``hinge_threshold=None, margin=0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recipe_chain.editor import scaled_dot

__all__ = [
    "target_nll",
    "topk_kl",
    "hinged_cross_entropy",
    "retrieval_logits",
    "contrastive_retrieval_loss",
    "sentinel_loss",
    "prompt_token_loss",
]

_NEG = -1e9  # logit of a masked-out candidate (finite, so all-masked rows stay NaN-free)


def _check_token_shapes(logits: torch.Tensor, mask: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, L, V); got shape {tuple(logits.shape)}")
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"mask must be (B, L) = {tuple(logits.shape[:2])}; got {tuple(mask.shape)}")


def _row_token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's real tokens, then over rows that have any: ``(B, L) -> ()``."""
    m = mask.to(per_token.dtype)  # (B, L)
    counts = m.sum(-1)  # (B,)
    rows = counts > 0
    if not bool(rows.any()):
        return per_token.sum() * 0.0
    per_row = (per_token * m).sum(-1)[rows] / counts[rows]  # (B',)
    return per_row.mean()


def target_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Teacher-forced negative log-likelihood of target tokens.

    Args:
        logits: ``(B, L, V)`` logits at the target positions (see
            :meth:`recipe_chain.prefix_lm.PrefixedCausalLM.target_logits`).
        targets: ``(B, L)`` target token ids.
        mask: ``(B, L)`` bool, True on real target tokens.

    Returns:
        Scalar: token-mean NLL per row, averaged over rows (rows without tokens ignored).

    Raises:
        ValueError: On inconsistent shapes.
    """
    _check_token_shapes(logits, mask)
    if targets.shape != mask.shape:
        raise ValueError(f"targets must be (B, L) = {tuple(mask.shape)}; got {tuple(targets.shape)}")
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, L, V)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)
    return _row_token_mean(nll, mask)


def topk_kl(
    student_logits: torch.Tensor,
    teacher_idx: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """KL(teacher || student) on the teacher's top-k support plus one "rest" bucket.

    The teacher (the frozen LLM without prefix) is stored as its ``k`` most likely
    tokens and their log-probs. Both distributions are coarsened to ``k + 1`` outcomes:
    each of the teacher's top-k tokens, and "any other token" (the remaining mass).
    The KL between the coarsened distributions is exact for them, 0 when the student
    equals the teacher, and a lower bound of the full-vocabulary KL.

    Args:
        student_logits: ``(B, L, V)`` logits of the LLM with the prefix.
        teacher_idx: ``(B, L, k)`` token ids of the teacher's top-k (long or int).
        teacher_logp: ``(B, L, k)`` the teacher's log-probs of those tokens (any float dtype).
        mask: ``(B, L)`` bool, True on positions to score.

    Returns:
        Scalar: token-mean KL per row, averaged over rows (rows without tokens ignored).

    Raises:
        ValueError: On inconsistent shapes.
    """
    _check_token_shapes(student_logits, mask)
    if teacher_idx.shape != teacher_logp.shape or teacher_idx.shape[:2] != mask.shape:
        raise ValueError(
            f"teacher_idx {tuple(teacher_idx.shape)} and teacher_logp {tuple(teacher_logp.shape)} "
            f"must both be (B, L, k) with (B, L) = {tuple(mask.shape)}"
        )
    logits = student_logits.float()  # (B, L, V)
    idx = teacher_idx.long()  # (B, L, k)
    lse_all = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, L, 1)
    s_top = logits.gather(-1, idx) - lse_all  # (B, L, k) student log-probs on the support
    rest_logits = logits.scatter(-1, idx, float("-inf"))  # (B, L, V)
    s_rest = torch.logsumexp(rest_logits, dim=-1) - lse_all.squeeze(-1)  # (B, L)
    t_top = teacher_logp.float()  # (B, L, k)
    p_top = t_top.exp()  # (B, L, k)
    p_rest = (1.0 - p_top.sum(-1)).clamp_min(0.0)  # (B, L)
    kl_top = (p_top * (t_top - s_top)).sum(-1)  # (B, L)
    # xlogy gives 0 for p_rest == 0; clamp keeps log(p_rest) finite otherwise.
    kl_rest = torch.xlogy(p_rest, p_rest.clamp_min(1e-12)) - p_rest * s_rest.clamp_min(-1e4)  # (B, L)
    kl = (kl_top + kl_rest).clamp_min(0.0)  # (B, L)
    return _row_token_mean(kl, mask)


def hinged_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    hinge_threshold: float | None = None,
    margin: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy with an optional additive margin and hinge-style row masking.

    Args:
        logits: ``(N, C)`` class logits (masked candidates set to a very low value).
        target: ``(N,)`` index of the correct class per row.
        hinge_threshold: If set (in ``(0, 1)``), rows whose correct-class probability
            (after the margin) exceeds it contribute zero loss and zero gradient.
        margin: Subtracted from the correct class's logit before the softmax.

    Returns:
        Scalar: the mean over all ``N`` rows (masked rows count as 0).

    Raises:
        ValueError: On bad shapes or a threshold outside ``(0, 1)``.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and target (N,); got {tuple(logits.shape)}, {tuple(target.shape)}")
    if hinge_threshold is not None and not 0.0 < hinge_threshold < 1.0:
        raise ValueError(f"hinge_threshold must be in (0, 1) or None; got {hinge_threshold}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    if margin:
        logits = logits - margin * F.one_hot(target, logits.shape[1]).to(logits.dtype)  # (N, C)
    per_row = F.cross_entropy(logits, target, reduction="none")  # (N,)
    if hinge_threshold is not None:
        p_correct = torch.exp(-per_row.detach())  # (N,)
        per_row = per_row * (p_correct <= hinge_threshold).to(per_row.dtype)
    return per_row.mean()


def retrieval_logits(
    queries: torch.Tensor,
    keys: torch.Tensor,
    sentinel: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of each query over ``[keys..., sentinel]``.

    Args:
        queries: ``(Q, d)`` query representations.
        keys: ``(K, d)`` candidate statement keys (``K`` may be 0).
        sentinel: ``(d,)`` the Knowledge Sentinel representation.
        key_mask: ``(Q, K)`` bool, False where a key must not be a candidate for a query.

    Returns:
        ``(Q, K + 1)``: ``sim(q, k_j)`` then ``sim(q, κ)`` in the last column; masked
        keys get a very low logit.

    Raises:
        ValueError: On inconsistent shapes.
    """
    if queries.dim() != 2 or keys.dim() != 2 or sentinel.dim() != 1:
        raise ValueError(
            f"queries (Q, d), keys (K, d) and sentinel (d,) expected; got {tuple(queries.shape)}, "
            f"{tuple(keys.shape)}, {tuple(sentinel.shape)}"
        )
    d = queries.shape[-1]
    if keys.shape[-1] != d or sentinel.shape[0] != d:
        raise ValueError(f"Width mismatch: queries {d}, keys {keys.shape[-1]}, sentinel {sentinel.shape[0]}")
    candidates = torch.cat([keys, sentinel.unsqueeze(0)])  # (K+1, d)
    logits = scaled_dot(queries.float(), candidates.float())  # (Q, K+1)
    if key_mask is not None:
        if key_mask.shape != (queries.shape[0], keys.shape[0]):
            raise ValueError(
                f"key_mask must be (Q, K) = {(queries.shape[0], keys.shape[0])}; got {tuple(key_mask.shape)}"
            )
        keep = torch.cat([key_mask.bool(), key_mask.new_ones(queries.shape[0], 1, dtype=torch.bool)], dim=1)
        logits = logits.masked_fill(~keep, _NEG)
    return logits


def contrastive_retrieval_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    sentinel: torch.Tensor,
    positives: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    hinge_threshold: float | None = None,
    margin: float = 0.0,
) -> torch.Tensor:
    """Each query must rank its own statement above every other key and the sentinel.

    Args:
        queries: ``(Q, d)``, e.g. the queries of edit prompts and paraphrases.
        keys: ``(K, d)`` statement keys (in-batch, optionally followed by a detached queue).
        sentinel: ``(d,)``.
        positives: ``(Q,)`` index into ``keys`` of each query's own statement.
        key_mask: ``(Q, K)`` bool; False hides a key (e.g. a duplicate of the positive).
            The positive itself must stay visible.
        hinge_threshold: See :func:`hinged_cross_entropy`.
        margin: See :func:`hinged_cross_entropy`.

    Returns:
        Scalar cross-entropy over the ``K + 1`` candidates.

    Raises:
        ValueError: On bad shapes, an out-of-range positive or a masked-out positive.
    """
    if positives.shape != queries.shape[:1]:
        raise ValueError(f"positives must be (Q,) = ({queries.shape[0]},); got {tuple(positives.shape)}")
    if positives.numel() and (int(positives.min()) < 0 or int(positives.max()) >= keys.shape[0]):
        raise ValueError(f"positives must index keys in [0, {keys.shape[0]}); got {positives.tolist()}")
    if key_mask is not None and positives.numel():
        rows = torch.arange(positives.shape[0], device=positives.device)
        if not bool(key_mask[rows, positives].all()):
            raise ValueError("key_mask hides a query's own positive key")
    logits = retrieval_logits(queries, keys, sentinel, key_mask)  # (Q, K+1)
    return hinged_cross_entropy(logits, positives, hinge_threshold=hinge_threshold, margin=margin)


def sentinel_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    sentinel: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    hinge_threshold: float | None = None,
    margin: float = 0.0,
) -> torch.Tensor:
    """Each query must rank the sentinel above every (visible) key.

    Used twice in RECIPE training: for edit prompts/paraphrases with their own statement
    masked out (``key_mask``), so that without its edit a query falls back to "no
    knowledge"; and for locality queries over all keys, so unrelated or neighbouring
    prompts never fire an edit.

    Args:
        queries: ``(Q, d)``.
        keys: ``(K, d)``.
        sentinel: ``(d,)``.
        key_mask: ``(Q, K)`` bool; False hides a key from a query.
        hinge_threshold: See :func:`hinged_cross_entropy`.
        margin: See :func:`hinged_cross_entropy`.

    Returns:
        Scalar cross-entropy towards the sentinel class.
    """
    logits = retrieval_logits(queries, keys, sentinel, key_mask)  # (Q, K+1)
    target = torch.full((queries.shape[0],), keys.shape[0], dtype=torch.long, device=logits.device)  # (Q,)
    return hinged_cross_entropy(logits, target, hinge_threshold=hinge_threshold, margin=margin)


def prompt_token_loss(slot_logits: torch.Tensor, target_ids: list[list[int]]) -> torch.Tensor:
    """Cross-entropy of each token slot's vocabulary logits against the target token it should hold.

    Slot ``j`` of row ``i`` is asked for ``target_ids[i][j]``; slots beyond a target's
    length are left free (no loss), so a one-token target constrains one slot.

    Args:
        slot_logits: ``(B, S, V)`` from :meth:`PromptEncoder.forward_with_token_logits`.
        target_ids: Per row, the new target's token ids as the LLM scores them.

    Returns:
        Scalar: the mean over rows of each row's token-mean cross-entropy.

    Raises:
        ValueError: If the number of rows differs.
    """
    if slot_logits.dim() != 3 or slot_logits.shape[0] != len(target_ids):
        raise ValueError(f"slot_logits must be (B={len(target_ids)}, S, V); got {tuple(slot_logits.shape)}")
    b, slots, _ = slot_logits.shape
    targets = torch.zeros(b, slots, dtype=torch.long, device=slot_logits.device)  # (B, S)
    mask = torch.zeros(b, slots, dtype=torch.bool, device=slot_logits.device)  # (B, S)
    for i, ids in enumerate(target_ids):
        n = min(len(ids), slots)
        targets[i, :n] = torch.tensor(ids[:n], dtype=torch.long)
        mask[i, :n] = True
    return target_nll(slot_logits, targets, mask)
