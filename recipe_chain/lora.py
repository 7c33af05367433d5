"""A minimal low-rank adaptation (LoRA) of ``nn.Linear`` layers, for the retriever backbone.

The base weight stays frozen; only ``lora_a``/``lora_b`` train, so a checkpoint holds a
few hundred kB for the backbone instead of the whole model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALinear", "apply_lora", "lora_state_dict", "adapters_disabled"]


class LoRALinear(nn.Module):
    """``y = base(x) + (alpha / r) * x @ A^T @ B^T`` with ``B`` initialised to zero.

    In eval mode without autograd (encoding for a store) it runs one matmul with the
    merged weight ``W + (alpha / r) * B @ A``, cached until any of the weights changes.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

        self._merged: torch.Tensor | None = None
        self._merged_for: tuple[int, ...] | None = None
        self.enabled = True  # False: the base layer alone (see adapters_disabled)

    def merged_weight(self) -> torch.Tensor:
        """``W + (alpha / r) * B @ A``: ``(out, in)``, cached until a weight changes."""
        # Tensor._version counts in-place writes (optimizer steps, load_state_dict), so the
        # cache follows training and reloading without hooks.
        stamp = (
            self.base.weight._version,
            self.lora_a._version,
            self.lora_b._version,
            self.base.weight.data_ptr(),
            self.lora_a.data_ptr(),
            self.lora_b.data_ptr(),
        )
        if self._merged is None or self._merged_for != stamp:
            with torch.no_grad():
                self._merged = self.base.weight + (self.lora_b @ self.lora_a) * self.scaling  # (out, in)
            self._merged_for = stamp
        return self._merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        if not self.enabled:
            return self.base(x)  # (..., out)
        if not self.training and not torch.is_grad_enabled():
            # Inference: one matmul with the merged weight instead of three.
            return F.linear(x, self.merged_weight(), self.base.bias)  # (..., out)
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scaling  # (..., out)


def apply_lora(module: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[str]:
    """Replace every ``nn.Linear`` whose attribute name is in ``targets`` with a LoRALinear.

    Returns:
        The qualified names of the wrapped layers.
    """
    wrapped: list[str] = []
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(parent, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{parent_name}.{child_name}".lstrip("."))
    return wrapped


def lora_state_dict(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Only the LoRA parameters of ``module``."""
    return {
        f"{prefix}{name}": param
        for name, param in module.named_parameters()
        if name.endswith("lora_a") or name.endswith("lora_b")
    }


@contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as its base model: every LoRALinear inside it skips its adapter.

    Example:
        >>> with adapters_disabled(backbone):  # doctest: +SKIP
        ...     base_states = backbone(**batch).last_hidden_state
    """
    layers = [m for m in module.modules() if isinstance(m, LoRALinear)]
    before = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer, state in zip(layers, before):
            layer.enabled = state
