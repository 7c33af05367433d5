"""Training loop of the gate verifier: balanced batches of positive and hard-negative pairs.

Only the LoRA adapters and the head train; the backbone stays frozen. The admission
threshold is then tuned on held-out pairs (:func:`tune_threshold`) and stored in the
verifier's config, so a loaded verifier gates as it was measured.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from recipe_chain.training.verifier_data import VerifierPair
from recipe_chain.verifier import EditVerifier

__all__ = ["VerifierTrainingConfig", "train_verifier", "tune_threshold", "split_pairs", "pair_metrics"]

logger = logging.getLogger(__name__)


class VerifierTrainingConfig(BaseModel):
    """Settings of :func:`train_verifier`.

    Attributes:
        steps: Optimiser steps.
        batch_size: Pairs per step, half positive and half negative.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: Seed of the batch sampling.
        min_recall: :func:`tune_threshold` keeps the highest threshold that admits at
            least this share of held-out positives.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=3000, ge=1)
    batch_size: int = Field(default=32, ge=2)
    lr: float = Field(default=5e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    seed: int = 0
    min_recall: float = Field(default=0.97, gt=0, le=1)


def split_pairs(pairs: Sequence[VerifierPair], dev_share: float, seed: int = 0) -> tuple[list[VerifierPair], list[VerifierPair]]:
    """Split pairs into train and dev by *statement*, so that no fact is in both."""
    statements = sorted({p.statement for p in pairs})
    random.Random(seed).shuffle(statements)
    dev_statements = set(statements[: int(len(statements) * dev_share)])
    train = [p for p in pairs if p.statement not in dev_statements]
    dev = [p for p in pairs if p.statement in dev_statements]
    return train, dev


def train_verifier(
    verifier: EditVerifier,
    pairs: Sequence[VerifierPair],
    config: VerifierTrainingConfig | None = None,
    *,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``verifier`` in place on ``pairs``.

    Returns:
        A log: one ``{"step", "loss", "seconds"}`` entry per 50 steps.

    Raises:
        ValueError: If ``pairs`` lacks positives or negatives.
    """
    config = config or VerifierTrainingConfig()
    positives = [p for p in pairs if p.label == 1]
    negatives = [p for p in pairs if p.label == 0]
    if not positives or not negatives:
        raise ValueError(f"Need positive and negative pairs; got {len(positives)} and {len(negatives)}")
    rng = random.Random(config.seed)
    params = [p for p in verifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (config.steps - s) / max(1, config.steps - warmup)))
    )
    verifier.train()
    log: list[dict[str, float]] = []
    start, running = time.perf_counter(), 0.0
    half = config.batch_size // 2
    bar = _progress(config.steps, progress)
    try:
        for step in range(1, config.steps + 1):
            batch = rng.sample(positives, min(half, len(positives))) + rng.sample(negatives, min(half, len(negatives)))
            encoded = verifier.tokenize_pairs([p.query for p in batch], [p.statement for p in batch])
            labels = torch.tensor([float(p.label) for p in batch], device=verifier.head.weight.device)
            loss = F.binary_cross_entropy_with_logits(verifier.logits(encoded), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            running = 0.98 * running + 0.02 * value if step > 1 else value
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}")
            if step % 50 == 0 or step == config.steps:
                log.append({"step": step, "loss": round(running, 4), "seconds": round(time.perf_counter() - start, 1)})
    finally:
        if bar is not None:
            bar.close()
        verifier.eval()
    return log


def _progress(total: int, enabled: bool):  # noqa: ANN202 - a tqdm bar or None
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="verifier", unit="step")


@torch.no_grad()
def _probabilities(verifier: EditVerifier, pairs: Sequence[VerifierPair], batch_size: int = 128) -> torch.Tensor:
    parts = [
        verifier.probabilities([p.query for p in pairs[a : a + batch_size]], [p.statement for p in pairs[a : a + batch_size]])
        for a in range(0, len(pairs), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def tune_threshold(verifier: EditVerifier, dev: Sequence[VerifierPair], min_recall: float = 0.97) -> float:
    """The highest threshold that admits at least ``min_recall`` of the dev positives.

    Raises:
        ValueError: If ``dev`` has no positives.
    """
    probs = _probabilities(verifier, dev)
    labels = torch.tensor([p.label for p in dev])
    pos = probs[labels == 1].sort().values
    if len(pos) == 0:
        raise ValueError("tune_threshold needs dev pairs with positives")
    index = int((1.0 - min_recall) * len(pos))  # this many positives may fall below
    threshold = float(pos[index]) - 1e-6
    return min(max(threshold, 1e-4), 1 - 1e-4)


def pair_metrics(verifier: EditVerifier, pairs: Sequence[VerifierPair], threshold: float | None = None) -> dict[str, float]:
    """Share admitted per pair kind (positives: recall; negatives: false admits)."""
    threshold = verifier.config.threshold if threshold is None else threshold
    probs = _probabilities(verifier, pairs)
    out: dict[str, float] = {}
    for kind in ("positive", "same_relation", "same_subject", "mined"):
        chosen = [i for i, p in enumerate(pairs) if p.kind == kind]
        if chosen:
            out[f"admitted_{kind}"] = round(float((probs[chosen] > threshold).float().mean()), 4)
            out[f"n_{kind}"] = len(chosen)
    return out
