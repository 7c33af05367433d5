"""A persistent cache of the frozen LLM's distributions on locality prompts.

The locality loss compares the LLM with an edit's prefix against the *frozen* LLM
without prefix. The frozen side never changes during training, so it is computed once
per locality prompt and kept as its top-k token ids (int32) and log-probs (float16) at
each scored position. For a prompt with a known answer the positions are the answer's
tokens, teacher-forced (at most ``max_tokens`` of them); without an answer, the
frozen model's own greedy continuation of ``greedy_tokens`` tokens is used.

Entries are computed lazily, the first time a training batch needs them, and the cache
is saved beside the run's checkpoints so a resumed run reuses exactly the same values.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from recipe_chain.prefix_lm import PrefixedCausalLM

__all__ = ["LocalityTeacher", "LocalityCache"]

logger = logging.getLogger(__name__)

_FORMAT = 1


@dataclass(frozen=True)
class LocalityTeacher:
    """The frozen LLM's view of one locality prompt.

    Attributes:
        target_ids: The scored continuation's token ids (``L`` of them).
        top_idx: ``(L, k)`` int32 ids of the top-k tokens at each position.
        top_logp: ``(L, k)`` float16 log-probs of those tokens.
    """

    target_ids: tuple[int, ...]
    top_idx: torch.Tensor
    top_logp: torch.Tensor


class LocalityCache:
    """Top-k teacher distributions keyed by ``(prompt, answer)``.

    Args:
        lm: The frozen LLM, wrapped.
        topk: Tokens kept per position.
        max_tokens: Answer tokens scored at most.
        greedy_tokens: Tokens of greedy continuation scored when the answer is unknown.

    Example:
        >>> cache = LocalityCache(lm, topk=64)  # doctest: +SKIP
        >>> [teacher] = cache.get([("The official religion of Paul is", "Christianity")])  # doctest: +SKIP
        >>> teacher.top_idx.shape  # doctest: +SKIP
        torch.Size([1, 64])
    """

    def __init__(self, lm: PrefixedCausalLM, *, topk: int = 64, max_tokens: int = 4, greedy_tokens: int = 3) -> None:
        if topk < 1 or max_tokens < 1 or greedy_tokens < 1:
            raise ValueError(
                f"topk, max_tokens and greedy_tokens must be >= 1; got {topk}, {max_tokens}, {greedy_tokens}"
            )
        self.lm = lm
        self.topk = topk
        self.max_tokens = max_tokens
        self.greedy_tokens = greedy_tokens
        self._entries: dict[str, LocalityTeacher] = {}
        self._dirty = False

    # ------------------------------------------------------------------ identity
    def _meta(self) -> dict[str, object]:
        return {
            "format": _FORMAT,
            "llm_id": self.lm.llm_id,
            "vocab": int(self.lm.model.get_output_embeddings().weight.shape[0]),
            "topk": self.topk,
            "max_tokens": self.max_tokens,
            "greedy_tokens": self.greedy_tokens,
        }

    @staticmethod
    def key(prompt: str, answer: str | None) -> str:
        """The cache key of a locality prompt and its (optional) answer."""
        return f"{prompt}\x00{'' if answer is None else answer}\x00{int(answer is None)}"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: tuple[str, str | None]) -> bool:
        return self.key(*item) in self._entries

    @property
    def dirty(self) -> bool:
        """Whether entries were added since the last :meth:`save`/:meth:`load`."""
        return self._dirty

    # ------------------------------------------------------------------ compute
    def get(self, items: Sequence[tuple[str, str | None]]) -> list[LocalityTeacher]:
        """Teachers for ``(prompt, answer)`` pairs, computing the missing ones in one batch.

        Args:
            items: Locality prompts with their answer (``None`` if unknown).

        Returns:
            One :class:`LocalityTeacher` per item, in order.
        """
        keys = [self.key(p, a) for p, a in items]
        missing: dict[str, tuple[str, str | None]] = {}
        for k, item in zip(keys, items):
            if k not in self._entries and k not in missing:
                missing[k] = item
        if missing:
            self._compute(list(missing), list(missing.values()))
        return [self._entries[k] for k in keys]

    @torch.no_grad()
    def _compute(self, keys: list[str], items: list[tuple[str, str | None]]) -> None:
        lm = self.lm
        prompt_ids = lm.tokenize([p for p, _ in items])
        target_ids: list[list[int] | None] = [None] * len(items)
        known = [i for i, (_, a) in enumerate(items) if a is not None]
        if known:
            ids = lm.tokenize_targets([items[i][1] for i in known])  # type: ignore[misc]
            for i, row in zip(known, ids):
                target_ids[i] = row[: self.max_tokens]
        unknown = [i for i, (_, a) in enumerate(items) if a is None]
        if unknown:
            for i, row in zip(unknown, self._greedy([prompt_ids[i] for i in unknown])):
                target_ids[i] = row
        logits, _, mask = lm.target_logits(prompt_ids, target_ids, None)  # (N, L, V)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (N, L, V)
        top_logp, top_idx = logp.topk(min(self.topk, logp.shape[-1]), dim=-1)  # (N, L, k)
        for n, key in enumerate(keys):
            length = int(mask[n].sum())
            self._entries[key] = LocalityTeacher(
                target_ids=tuple(int(t) for t in target_ids[n]),  # type: ignore[union-attr]
                top_idx=top_idx[n, :length].to(torch.int32).cpu(),
                top_logp=top_logp[n, :length].to(torch.float16).cpu(),
            )
        self._dirty = True

    def _greedy(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """The frozen model's greedy continuation of each prompt (``greedy_tokens`` tokens)."""
        lm = self.lm
        generated: list[list[int]] = [[] for _ in prompt_ids]
        for _ in range(self.greedy_tokens):
            rows = [list(p) + g for p, g in zip(prompt_ids, generated)]
            batch = lm.build_batch(rows, None)
            logits = lm._head(
                lm.model.base_model(
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                ).last_hidden_state[:, -1]
            )  # (N, V)
            for g, tok in zip(generated, logits.argmax(-1).tolist()):
                g.append(int(tok))
        return generated

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "meta": self._meta(),
            "keys": list(self._entries),
            "target_ids": [list(e.target_ids) for e in self._entries.values()],
            "top_idx": [e.top_idx for e in self._entries.values()],
            "top_logp": [e.top_logp for e in self._entries.values()],
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; this is an ordinary run file
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._dirty = False
        logger.debug("saved %d locality teachers to %s", len(self._entries), path)

    def load(self, path: str | os.PathLike[str]) -> bool:
        """Replace the entries with those saved at ``path``.

        Returns:
            True if loaded; False (and the cache left empty) if the file is missing or was
            written for another LLM or other settings.
        """
        path = Path(path)
        self._entries = {}
        self._dirty = False
        if not path.is_file():
            return False
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("meta") != self._meta():
            logger.warning("Ignoring the locality cache %s: it was built for %s", path, payload.get("meta"))
            return False
        for key, tids, idx, lp in zip(payload["keys"], payload["target_ids"], payload["top_idx"], payload["top_logp"]):
            self._entries[key] = LocalityTeacher(tuple(tids), idx, lp)
        logger.info("Loaded %d cached locality teachers from %s", len(self._entries), path)
        return True
