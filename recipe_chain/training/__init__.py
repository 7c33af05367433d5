"""Training of RECIPE editors: losses, the locality-teacher cache and the training loop.

Example:
    >>> from recipe_chain.training import TrainingConfig, train
    >>> cfg = TrainingConfig(data=["../shared/data/counterfact/train.json"], steps=10)
    >>> cfg.weight_locality
    1.0
"""

from recipe_chain.training.locality_cache import LocalityCache, LocalityTeacher
from recipe_chain.training.losses import (
    contrastive_retrieval_loss,
    hinged_cross_entropy,
    retrieval_logits,
    sentinel_loss,
    target_nll,
    topk_kl,
)
from recipe_chain.training.config import LOSS_NAMES, TrainingConfig, TrainResult
from recipe_chain.training.trainer import train

__all__ = [
    "TrainingConfig",
    "TrainResult",
    "train",
    "LOSS_NAMES",
    "LocalityCache",
    "LocalityTeacher",
    "target_nll",
    "topk_kl",
    "hinged_cross_entropy",
    "retrieval_logits",
    "contrastive_retrieval_loss",
    "sentinel_loss",
]
