"""The gate's second stage: a cross-encoder that reads the query and a candidate statement together.

The Knowledge Sentinel compares the best of T similarities with one sentinel similarity,
and the best of T creeps up as a store grows: at 10,000 CounterFact edits a quarter of
the neighbours of edited facts fired. A dot product of two separately pooled vectors
also cannot tell "The mother tongue of Paul is" from "The mother tongue of Danielle
Darrieux is English"; reading both texts at once can. So the sentinel's decision becomes
a cheap *shortlist* (the top ``candidate_k`` edits within ``prefilter_margin`` of the
sentinel) and :class:`EditVerifier` decides whether a shortlisted statement answers the
query. Its cost is paid only for shortlisted queries. The designs compared before
choosing this one are in ``benchmarks/results/gate_scale.md``.

The verifier is MiniLM (the retriever's own backbone, so nothing new ships but LoRA
adapters and a linear head, a few hundred kB) run on the pair ``[CLS] query [SEP]
statement [SEP]``. It does not read the editor's keys, so a store needs no reindex when a
verifier is added or retrained.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain.checkpoint_io import atomic_directory, load_trained_state
from recipe_chain.errors import CheckpointMismatchError
from recipe_chain.lora import apply_lora
from recipe_chain.query_window import asking_window

__all__ = ["VerifierConfig", "EditVerifier", "VERIFIER_DIR"]

logger = logging.getLogger(__name__)

VERIFIER_DIR = "verifier"
"""Sub-directory of an editor checkpoint that holds its gate verifier, when it has one."""

_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"


class VerifierConfig(BaseModel):
    """What a verifier checkpoint needs to be rebuilt, and the gate settings it was tuned for.

    Attributes:
        backbone_id: The base encoder (``"sentence-transformers/all-MiniLM-L6-v2"``, or a directory).
        num_layers: How many of the backbone's layers the cross-encoder keeps (fewer is faster).
        lora_rank: Rank of the LoRA adapters.
        lora_alpha: LoRA scaling numerator.
        lora_targets: Names of the adapted ``nn.Linear`` layers.
        max_length: Token limit of a pair; the query is cut to its asking part to fit.
        threshold: Admit a candidate whose probability exceeds this (tuned on dev).
        candidate_k: How many top candidates the verifier reads.
        prefilter_margin: Shortlist candidates with ``sim > sentinel + prefilter_margin``
            (negative: looser than the sentinel alone).
        int8_inference: Score pairs through the int8 compiled graph on a CPU: under half
            the float32 time, with the same gate figures at T = 10,000 to 0.5 points
            (``benchmarks/results/gate_scale-int8.md``).
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    backbone_id: str
    backbone_hidden_size: int
    num_layers: int = Field(ge=1)
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")
    max_length: int = Field(default=96, ge=8)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    candidate_k: int = Field(default=2, ge=1)
    prefilter_margin: float = -2.0
    int8_inference: bool = True


class EditVerifier(nn.Module):
    """``P(statement answers query)`` from a LoRA-adapted MiniLM cross-encoder.

    Args:
        config: Its :class:`VerifierConfig`.
        backbone: The base encoder (its first ``config.num_layers`` layers are kept; the
            module is modified in place).
        tokenizer: Its tokenizer.

    Example:
        >>> verifier = EditVerifier.from_pretrained("ckpt/verifier")  # doctest: +SKIP
        >>> verifier.probabilities(["Who runs Acme Rockets?"], ["The CEO of Acme Rockets is Wile E. Coyote"])  # doctest: +SKIP
        tensor([0.9731])
    """

    def __init__(self, config: VerifierConfig, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        if backbone.config.hidden_size != config.backbone_hidden_size:
            raise CheckpointMismatchError(
                f"Verifier backbone hidden size {backbone.config.hidden_size} != {config.backbone_hidden_size}"
            )
        layers = backbone.encoder.layer
        if config.num_layers > len(layers):
            raise ValueError(f"num_layers={config.num_layers} but the backbone has {len(layers)} layers")
        backbone.encoder.layer = layers[: config.num_layers]
        backbone.config.num_hidden_layers = config.num_layers
        backbone.requires_grad_(False)
        apply_lora(backbone, config.lora_targets, config.lora_rank, config.lora_alpha)
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = nn.Linear(config.backbone_hidden_size, 1)  # mean-pooled pair -> logit
        from recipe_chain.encoder import _plain_backend

        self._backend = _plain_backend(tokenizer)
        self._compiled: tuple[tuple[int | bool, ...], object] | None = None
        self.compiled_inference = True
        self.int8_inference = config.int8_inference  # int8 weights and activations in the compiled graph
        self.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, backbone_id: str, seed: int = 0,
        **fields: object,
    ) -> EditVerifier:
        """A fresh verifier (untrained adapters and head) on ``backbone``."""
        config = VerifierConfig.model_validate(
            {"backbone_id": backbone_id, "backbone_hidden_size": backbone.config.hidden_size,
             "num_layers": len(backbone.encoder.layer)} | fields
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config, backbone, tokenizer)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, backbone: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> EditVerifier:
        """Load a verifier written by :meth:`save_pretrained`.

        Raises:
            FileNotFoundError: If ``path`` holds no verifier.
            CheckpointMismatchError: For an unknown format version or a backbone that does not fit.
        """
        path = Path(path)
        if not (path / _CONFIG_FILE).is_file():
            raise FileNotFoundError(f"No gate verifier at {path} (missing {_CONFIG_FILE})")
        config = VerifierConfig.model_validate_json((path / _CONFIG_FILE).read_text())
        if config.format_version != 1:
            raise CheckpointMismatchError(f"Verifier format {config.format_version} at {path}; this version reads 1")
        if backbone is None:
            from recipe_chain.loading import resolve_encoder

            backbone, tokenizer = resolve_encoder(config.backbone_id, where=f"Verifier {path}")
        elif tokenizer is None:
            raise ValueError("Pass the backbone's tokenizer together with the backbone")
        verifier = cls(config, backbone, tokenizer)
        load_trained_state(verifier, path / _WEIGHTS_FILE, verifier.trainable_state_dict(), f"Verifier {path}")
        verifier.eval()
        return verifier

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA adapters and the head: all a checkpoint stores."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.") or k.endswith(("lora_a", "lora_b"))}

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (temp dir, then rename)."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.trainable_state_dict().items()}
            save_file(tensors, str(tmp / _WEIGHTS_FILE), metadata={"format": "pt"})
            os.chmod(tmp / _WEIGHTS_FILE, 0o644)
            (tmp / _CONFIG_FILE).write_text(json.dumps(self.config.model_dump(mode="json"), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ scoring
    def _count(self, texts: Sequence[str]) -> list[int]:
        if self._backend is not None:  # counts without the "longer than the maximum length" warning
            return [len(e.ids) for e in self._backend.encode_batch(list(texts))]
        return [len(ids) for ids in self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]

    def tokenize_pairs(self, queries: Sequence[str], statements: Sequence[str]) -> dict[str, torch.Tensor]:
        """Pair encodings; each query is cut to its asking part so that the pair fits ``max_length``."""
        if len(queries) != len(statements):
            raise ValueError(f"{len(queries)} queries but {len(statements)} statements")
        limit = self.config.max_length
        fitted = list(queries)
        # A token covers at least one character, so short pairs (nearly all) skip the count.
        long = [i for i, (q, s) in enumerate(zip(queries, statements)) if len(q) + len(s) + 3 > limit]
        if long:
            statement_tokens = self._count([statements[i] for i in long])
            for i, n_statement in zip(long, statement_tokens):
                room = max(8, limit - n_statement + 1)  # the pair shares one [CLS]: +1
                if self._count([queries[i]])[0] > room:
                    fitted[i] = asking_window(queries[i], self._count, room)
        batch = self.tokenizer(
            fitted, list(statements), padding=True, truncation="longest_first", max_length=limit, return_tensors="pt"
        )
        return {k: v.to(self.head.weight.device) for k, v in batch.items()}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B,)`` logits of tokenized pairs, with gradients when training."""
        mask = batch["attention_mask"]
        token_types = batch.get("token_type_ids", torch.zeros_like(mask))
        compiled = self._compiled_backbone()
        if compiled is not None:
            hidden = compiled(batch["input_ids"], token_types, mask)  # (B, T, H)
        else:
            hidden = self.backbone(input_ids=batch["input_ids"], token_type_ids=token_types, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, H)
        return self.head(pooled)[:, 0]  # (B,)

    @torch.no_grad()
    def probabilities(self, queries: Sequence[str], statements: Sequence[str]) -> torch.Tensor:
        """``(B,)`` probabilities that each statement answers its query."""
        if not queries:
            return torch.zeros(0)
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self.logits(self.tokenize_pairs(queries, statements))).float().cpu()
        finally:
            self.train(was_training)

    def _compiled_backbone(self):  # noqa: ANN202 - a CompiledBertBackbone or None
        if self.training or torch.is_grad_enabled() or not self.compiled_inference:
            return None
        if self.head.weight.device.type != "cpu":
            return None
        from recipe_chain.compiled_backbone import CompiledBertBackbone, supports, weights_stamp

        if not supports(self.backbone):
            return None
        stamp = (*weights_stamp(self.backbone), bool(self.int8_inference))
        if self._compiled is None or self._compiled[0] != stamp:
            try:
                self._compiled = (stamp, CompiledBertBackbone(self.backbone, adapters=True, int8=bool(self.int8_inference)))
            except Exception as exc:  # noqa: BLE001 - the eager forward is always correct
                logger.warning("Could not compile the verifier backbone (%s); using the eager forward", exc)
                self.compiled_inference = False
                return None
        return self._compiled[1]

    def decide(self, probability: float) -> bool:
        """Whether ``probability`` clears the tuned threshold."""
        return probability > self.config.threshold


VerifierChoice = Literal["auto"] | EditVerifier | None
"""What a store takes as ``verifier=``: ``"auto"`` (the editor's own, if its checkpoint has
one), an :class:`EditVerifier`, or ``None`` (the sentinel alone)."""
