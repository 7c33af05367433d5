"""One optimisation step of RECIPE training, and the held-out sanity evaluation between steps."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipe_chain.editor import RecipeEditor
from recipe_chain.errors import CheckpointMismatchError
from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.training.config import LOSS_NAMES, TrainingConfig
from recipe_chain.training.examples import DataOrder, TrainData, derive_seed
from recipe_chain.training.locality_cache import LocalityCache
from recipe_chain.training.losses import (
    contrastive_retrieval_loss,
    prompt_token_loss,
    retrieval_logits,
    sentinel_loss,
    target_nll,
    topk_kl,
)

__all__ = ["KeyQueue", "Run", "train_step", "sanity_eval", "lm_target_logits", "scale_grad"]

logger = logging.getLogger(__name__)




class KeyQueue:
    """A ring buffer of detached statement keys and their group ids."""

    def __init__(self, size: int, dim: int, device: torch.device) -> None:
        self.size = size
        self.keys = torch.zeros(size, dim, device=device)  # (M, d)
        self.groups = torch.full((size,), -1, dtype=torch.long, device=device)  # (M,)
        self.ptr = 0
        self.count = 0

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys (m, d), groups (m,))`` of the filled slots."""
        return self.keys[: self.count], self.groups[: self.count]

    def push(self, keys: torch.Tensor, groups: torch.Tensor) -> None:
        if self.size == 0:
            return
        for k, g in zip(keys.detach(), groups):
            self.keys[self.ptr] = k
            self.groups[self.ptr] = g
            self.ptr = (self.ptr + 1) % self.size
            self.count = min(self.count + 1, self.size)

    def state_dict(self) -> dict[str, Any]:
        return {"keys": self.keys.cpu(), "groups": self.groups.cpu(), "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["keys"].shape != self.keys.shape:
            raise CheckpointMismatchError(f"Saved key queue {tuple(state['keys'].shape)} != {tuple(self.keys.shape)}")
        self.keys.copy_(state["keys"])
        self.groups.copy_(state["groups"])
        self.ptr, self.count = int(state["ptr"]), int(state["count"])


def pad_teachers(teachers: list, width: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.zeros(len(teachers), width, k, dtype=torch.long)  # (B_l, Lt, k)
    logp = torch.zeros(len(teachers), width, k, dtype=torch.float32)  # (B_l, Lt, k)
    for i, t in enumerate(teachers):
        n, kk = t.top_idx.shape
        idx[i, :n, :kk] = t.top_idx.long()
        logp[i, :n, :kk] = t.top_logp.float()
        if kk < k:  # a vocabulary smaller than k: pad with impossible duplicates of mass 0
            logp[i, :n, kk:] = float("-inf")
    return idx.to(device), logp.to(device)


def backbone_features(enc, texts: list[str], chunk: int, adapters: bool = True) -> torch.Tensor:  # noqa: ANN001
    """``(N, 4H)`` pooled backbone features, run over length-sorted chunks (less padding)."""
    lengths = [len(ids) for ids in enc.tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    with torch.set_grad_enabled(torch.is_grad_enabled() and adapters):
        parts = [enc.features(enc.tokenize([texts[i] for i in order[s : s + chunk]]), adapters=adapters)
                 for s in range(0, len(texts), chunk)]
    inverse = torch.empty(len(texts), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(texts))
    return torch.cat(parts)[inverse.to(parts[0].device)]


def lm_target_logits(
    lm: PrefixedCausalLM,
    prompt_ids: list[list[int]],
    target_ids: list[list[int]],
    prefixes: list[torch.Tensor],
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`PrefixedCausalLM.target_logits` over length-sorted chunks of rows.

    Rows are padded only to the longest row of their chunk, which saves a large share of
    the LLM's compute when prompt lengths vary (CounterFact paraphrases do). The result
    is in the original row order: ``(logits (R, Lt, V), targets (R, Lt), mask (R, Lt))``.
    """
    n = len(prompt_ids)
    order = sorted(range(n), key=lambda i: (len(prompt_ids[i]) + len(target_ids[i]), i))
    width = max(len(t) for t in target_ids)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for s in range(0, n, chunk):
        rows = order[s : s + chunk]
        logits, tgt, mask = lm.target_logits([prompt_ids[i] for i in rows], [target_ids[i] for i in rows],
                                             [prefixes[i] for i in rows])
        pad = width - logits.shape[1]
        if pad:
            logits = torch.nn.functional.pad(logits, (0, 0, 0, pad))
            tgt = torch.nn.functional.pad(tgt, (0, pad), value=lm.pad_token_id)
            mask = torch.nn.functional.pad(mask, (0, pad), value=False)
        parts.append((logits, tgt, mask))
    inverse = torch.empty(n, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(n)
    inverse = inverse.to(parts[0][0].device)
    return tuple(torch.cat([p[j] for p in parts])[inverse] for j in range(3))  # type: ignore[return-value]


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient times ``scale`` in the backward pass."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x * scale + x.detach() * (1.0 - scale)


def train_step(run: Run, step: int) -> dict[str, float]:
    """One optimisation step; returns the logged loss values."""
    cfg, editor, lm, data = run.config, run.editor, run.lm, run.data
    enc = editor.encoder
    device = editor.device
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "step", step))
    torch.manual_seed(derive_seed(cfg.seed, "dropout", step))  # backbone dropout
    batch = [data.train[i] for i in run.order.batch(step, cfg.batch_size)]
    b = len(batch)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=gen)) if n > 1 else 0

    para_idx = [pick(len(ex.paraphrases)) if ex.paraphrases else -1 for ex in batch]
    loc_rows = [i for i, ex in enumerate(batch) if ex.locality]
    loc_pick = [pick(len(batch[i].locality)) for i in loc_rows]
    loc_items = [batch[i].locality[j] for i, j in zip(loc_rows, loc_pick)]
    loc_groups = [batch[i].locality_groups[j] for i, j in zip(loc_rows, loc_pick)]
    train_retrieval = not cfg.freeze_retriever and bool(cfg.weight_retrieval or cfg.weight_sentinel)
    n_extra = min(cfg.extra_locality_per_batch, len(data.extra_queries)) if train_retrieval else 0
    extras = [data.extra_queries[pick(len(data.extra_queries))] for _ in range(n_extra)]
    paraphrases = [ex.paraphrases[j] if j >= 0 else ex.prompt for ex, j in zip(batch, para_idx)]

    # --- knowledge encoder: one backbone pass for statements and all queries
    texts = [ex.statement for ex in batch] + [ex.prompt for ex in batch] + paraphrases
    texts += [p for p, _ in loc_items] + extras
    with torch.set_grad_enabled(not cfg.freeze_retriever):
        feats = backbone_features(enc, texts, 2 * cfg.batch_size)  # (N, 4H)
    code_feats = None
    if enc.code_reads_base_features:  # the prompt code reads the backbone without its adapters
        code_feats = backbone_features(enc, texts[:b], 2 * cfg.batch_size, adapters=False)  # (B, 4H)
    keys = enc.keys_from_features(feats[:b], code_feats)  # (B, d)
    queries = enc.queries_from_features(feats[b:])  # (2B + B_l + E, d)
    q_edit = queries[: 2 * b]  # (2B, d): prompts then paraphrases
    q_loc = queries[2 * b :]  # (B_l + E, d)
    losses: dict[str, torch.Tensor] = {}
    zero = keys.sum() * 0.0

    if train_retrieval:
        kappa = editor.sentinel(enc)  # (d,)
        groups = torch.tensor([ex.group for ex in batch], device=device)  # (B,)
        q_keys, q_groups = run.queue.view()
        all_keys = torch.cat([keys, q_keys])  # (B + m, d)
        all_groups = torch.cat([groups, q_groups])  # (B + m,)
        edit_groups = groups.repeat(2)  # (2B,)
        same = edit_groups[:, None] == all_groups[None, :]  # (2B, B + m)
        positives = torch.arange(b, device=device).repeat(2)  # (2B,)
        own = torch.zeros_like(same)
        own[torch.arange(2 * b, device=device), positives] = True
        shaping = {"hinge_threshold": cfg.hinge_threshold, "margin": cfg.margin}
        if cfg.weight_retrieval:
            losses["retrieval"] = contrastive_retrieval_loss(
                q_edit, all_keys, kappa, positives, key_mask=~same | own, **shaping
            )
        if cfg.weight_sentinel:
            masked = sentinel_loss(q_edit, all_keys, kappa, key_mask=~same, **shaping)
            query_groups = torch.tensor(loc_groups + [-1] * len(extras), dtype=torch.long, device=device)
            loc_mask = (query_groups[:, None] < 0) | (query_groups[:, None] != all_groups[None, :])  # (B_l + E, B + m)
            loc = sentinel_loss(q_loc, all_keys, kappa, key_mask=loc_mask, **shaping) if q_loc.shape[0] else zero
            losses["sentinel"] = masked + loc
            losses["sentinel_masked"], losses["sentinel_locality"] = masked, loc

    # --- frozen LLM with the edits' prompt vectors: one pass over all LM rows
    use_loc = bool(cfg.weight_locality and loc_rows)
    if cfg.weight_reliability or cfg.weight_generality or use_loc:
        prompt_keys = scale_grad(keys, cfg.prompt_key_grad)  # (B, d): same values, scaled gradient
        vectors, slot_logits = editor.prompt_encoder.forward_with_token_logits(prompt_keys)  # (B, P, D), (B, S, V)
        # B x (P + S_i, D): with target slots each row also carries its target's first tokens
        prefixes = editor.prompt_encoder.append_targets(vectors.to(lm.dtype), [ex.target_ids for ex in batch])
        if cfg.weight_prompt_tokens and slot_logits is not None:
            losses["prompt_tokens"] = prompt_token_loss(slot_logits, [ex.target_ids for ex in batch])
        prompt_ids: list[list[int]] = []
        target_ids: list[list[int]] = []
        rows: list[torch.Tensor] = []
        if cfg.weight_reliability:
            prompt_ids += [ex.prompt_ids for ex in batch]
            target_ids += [ex.target_ids for ex in batch]
            rows += list(prefixes)
        if cfg.weight_generality:
            prompt_ids += [ex.paraphrase_ids[j] if j >= 0 else ex.prompt_ids for ex, j in zip(batch, para_idx)]
            target_ids += [ex.target_ids for ex in batch]
            rows += list(prefixes)
        teachers = run.cache.get(loc_items) if use_loc else []
        if use_loc:
            prompt_ids += lm.tokenize([p for p, _ in loc_items])
            target_ids += [list(t.target_ids) for t in teachers]
            rows += [prefixes[i] for i in loc_rows]
        logits, tgt, mask = lm_target_logits(lm, prompt_ids, target_ids, rows, cfg.batch_size)  # (R, Lt, V)
        at = 0
        for name in ("reliability", "generality"):
            if getattr(cfg, f"weight_{name}"):
                losses[name] = target_nll(logits[at : at + b], tgt[at : at + b], mask[at : at + b])
                at += b
        if use_loc:
            t_idx, t_logp = pad_teachers(teachers, logits.shape[1], cfg.locality_topk, logits.device)
            losses["locality"] = topk_kl(logits[at:], t_idx, t_logp, mask[at:])

    total = zero
    for name in LOSS_NAMES:
        if name in losses:
            total = total + getattr(cfg, f"weight_{name}") * losses[name]
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in editor.parameters() if p.requires_grad], cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.queue.push(keys.detach(), torch.tensor([ex.group for ex in batch], device=device))
    out = {name: float(v.detach()) for name, v in losses.items()}
    out["total"] = float(total.detach())
    return out


# ---------------------------------------------------------------------- sanity eval


@torch.no_grad()
def sanity_eval(run: Run) -> dict[str, float]:
    """Held-out slice: own-prefix token accuracy, in-slice retrieval and locality gate."""
    editor, lm, held = run.editor, run.lm, run.data.held_out
    editor.eval()  # no dropout, and the prompt encoder's running statistics stay as trained (the caller restores train mode)
    if not held:
        return {}
    keys = editor.encode_statements([ex.statement for ex in held])  # (n, d)
    kappa = editor.sentinel_key()  # (d,)
    n = len(held)
    paras = [ex.paraphrases[0] if ex.paraphrases else ex.prompt for ex in held]
    out: dict[str, float] = {}
    own = torch.arange(n, device=keys.device)
    for name, texts in (("prompt", [ex.prompt for ex in held]), ("paraphrase", paras)):
        pred = retrieval_logits(editor.encode_queries(texts), keys, kappa).argmax(-1)  # (n,)
        out[f"retrieval_acc_{name}"] = float((pred == own).float().mean())
    loc = [(i, ex.locality[0]) for i, ex in enumerate(held) if ex.locality]
    if loc:
        pred = retrieval_logits(editor.encode_queries([p for _, (p, _) in loc]), keys, kappa).argmax(-1)
        out["locality_rejected"] = float((pred == n).float().mean())
    targets = [ex.target for ex in held]
    prefixes = [p.to(lm.dtype) for p in editor.prefix_vectors(keys, targets)]  # n x (P_i, D)
    rel = lm.score_targets([ex.prompt for ex in held], targets, prefixes)
    gen = lm.score_targets(paras, targets, prefixes)
    out["reliability_acc"] = float(np.mean([s.token_accuracy for s in rel]))
    out["generality_acc"] = float(np.mean([s.token_accuracy for s in gen]))
    names = run.data.source_names
    if len(names) > 1:  # per source: a mix can hide a source the prefix does not serve
        for index, name in enumerate(names):
            rows = [i for i, ex in enumerate(held) if ex.source == index]
            if rows:
                out[f"reliability_acc/{name}"] = float(np.mean([rel[i].token_accuracy for i in rows]))
                out[f"generality_acc/{name}"] = float(np.mean([gen[i].token_accuracy for i in rows]))
    answered = [(i, p, a) for i, (p, a) in loc if a is not None]
    if answered:
        prompts, answers = [p for _, p, _ in answered], [a for _, _, a in answered]
        if "locality" not in run.frozen_eval:
            run.frozen_eval["locality"] = [s.argmax_ids for s in lm.score_targets(prompts, answers, None)]
        with_prefix = lm.score_targets(prompts, answers, [prefixes[i] for i, _, _ in answered])
        agree = [
            float(np.mean([a == b for a, b in zip(s.argmax_ids, ref)]))
            for s, ref in zip(with_prefix, run.frozen_eval["locality"])
        ]
        out["locality_agreement_with_prefix"] = float(np.mean(agree))
    return out


@dataclass
class Run:
    config: TrainingConfig
    editor: RecipeEditor
    lm: PrefixedCausalLM
    data: TrainData
    cache: LocalityCache
    queue: KeyQueue
    out_dir: Path
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    order: DataOrder
    step: int = 0
    wall_time: float = 0.0
    last_eval: dict[str, float] | None = None
    frozen_eval: dict[str, list[list[int]]] = field(default_factory=dict)
