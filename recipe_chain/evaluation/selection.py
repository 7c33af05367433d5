"""Which edits a run evaluates, which it tunes on, and the hashes that pin them down."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedTokenizerBase

from recipe_chain.data import EditExample
from recipe_chain.store import normalize_prompt

__all__ = ["Selection", "select_examples", "fits_encoder", "file_sha256"]

logger = logging.getLogger(__name__)


class Selection(BaseModel):
    """Which examples a run evaluates, and which it tunes on.

    Attributes:
        eval_examples: The ``T`` examples, in editing order.
        dev_examples: The dev split (disjoint prompts).
        n_available: Examples read from the data file.
        n_too_long: Examples left out because a text exceeds the encoder's token limit.
        n_duplicate_prompts: Examples met while taking the ``T`` whose prompt repeats an
            already taken one (skipped, or taken to supersede it; see ``duplicate_facts``).
        duplicate_facts: ``"skip"`` or ``"supersede"``.
        dev_source: Where the dev split comes from.
    """

    model_config = ConfigDict(frozen=True)

    eval_examples: list[EditExample]
    dev_examples: list[EditExample]
    n_available: int
    n_too_long: int
    n_duplicate_prompts: int
    duplicate_facts: str = "skip"
    dev_source: str

    def summary(self) -> dict[str, Any]:
        """JSON-able counts (without the examples)."""
        return {
            "n_available": self.n_available,
            "n_too_long": self.n_too_long,
            "n_duplicate_prompts": self.n_duplicate_prompts,
            "duplicate_facts": self.duplicate_facts,
            "n_eval": len(self.eval_examples),
            "n_dev": len(self.dev_examples),
            "dev_source": self.dev_source,
            "eval_sha256": _examples_hash(self.eval_examples),
        }


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _examples_hash(examples: Sequence[EditExample]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(ex.model_dump_json().encode())
    return digest.hexdigest()[:16]


def _example_texts(ex: EditExample) -> list[str]:
    return [ex.statement, ex.prompt, *ex.paraphrases, *(loc.prompt for loc in ex.locality)]


def fits_encoder(examples: Sequence[EditExample], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[bool]:
    """Whether every text of each example is within the knowledge encoder's token limit."""
    texts: list[str] = []
    owners: list[int] = []
    for i, ex in enumerate(examples):
        for text in _example_texts(ex):
            texts.append(text)
            owners.append(i)
    ok = [True] * len(examples)
    for start in range(0, len(texts), 4096):
        lengths = [len(ids) for ids in tokenizer(texts[start : start + 4096])["input_ids"]]
        for j, n in enumerate(lengths):
            if n > max_length:
                ok[owners[start + j]] = False
    return ok


def select_examples(
    examples: Sequence[EditExample],
    edits: int,
    *,
    seed: int,
    dev_size: int,
    dev_pool: Sequence[EditExample] | None = None,
    dev_source: str = "same file",
    fits: Callable[[Sequence[EditExample]], list[bool]] | None = None,
    duplicate_facts: Literal["skip", "supersede"] = "skip",
) -> Selection:
    """Shuffle with ``seed``, take ``edits`` examples and a disjoint dev split.

    Args:
        examples: The loaded examples.
        edits: ``T``.
        seed: Shuffle seed.
        dev_size: Dev examples wanted.
        dev_pool: Take the dev split from these instead of the rest of ``examples``
            (e.g. a training file); prompts shared with the evaluated examples are skipped.
        dev_source: How to describe the dev pool in the results.
        fits: Returns, per example, whether its texts fit the encoder (all fit if ``None``).
        duplicate_facts: What to do with an example whose prompt (normalised as the store
            does, :func:`~recipe_chain.store.normalize_prompt`) repeats an already taken
            one: ``"skip"`` it (the ``T`` edits are ``T`` distinct facts), or take it too
            (``"supersede"``: its edit supersedes the earlier one in the store, like a
            correction; the superseded example is then left out of measurement).

    Returns:
        The :class:`Selection`.

    Raises:
        ValueError: If fewer than ``edits`` usable examples exist, or a dev split of
            ``dev_size`` is asked for and none can be formed.
    """
    if edits < 1:
        raise ValueError(f"edits must be >= 1, got {edits}")
    if duplicate_facts not in ("skip", "supersede"):
        raise ValueError(f"duplicate_facts must be 'skip' or 'supersede', got {duplicate_facts!r}")
    examples = list(examples)
    ok = fits(examples) if fits is not None else [True] * len(examples)
    n_too_long = ok.count(False)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    seen: set[str] = set()
    chosen: list[EditExample] = []
    rest: list[EditExample] = []
    duplicates = 0
    for i in order:
        if not ok[i]:
            continue
        key = normalize_prompt(examples[i].prompt)
        repeated = key in seen
        seen.add(key)
        if len(chosen) < edits:
            duplicates += repeated
            if not repeated or duplicate_facts == "supersede":
                chosen.append(examples[i])
        elif not repeated:
            rest.append(examples[i])
    if len(chosen) < edits:
        hint = (
            "; pass --duplicate-facts supersede to also edit repeated facts (the later edit supersedes the earlier, "
            "which is then not measured)"
            if duplicate_facts == "skip" and duplicates
            else ""
        )
        kind = "with distinct prompts " if duplicate_facts == "skip" else ""
        raise ValueError(
            f"Asked for {edits} edits but the data has only {len(chosen)} usable examples {kind}"
            f"({len(examples)} read, {n_too_long} too long for the encoder){hint}"
        )
    dev: list[EditExample] = []
    if dev_size:
        if dev_pool is not None:
            pool = list(dev_pool)
            pool_ok = fits(pool) if fits is not None else [True] * len(pool)
            pool_order = list(range(len(pool)))
            random.Random(seed + 1).shuffle(pool_order)
            for i in pool_order:
                if len(dev) >= dev_size:
                    break
                key = normalize_prompt(pool[i].prompt)
                if pool_ok[i] and key not in seen:
                    seen.add(key)
                    dev.append(pool[i])
        else:
            dev = rest[:dev_size]
        if not dev:
            raise ValueError(
                f"No examples are left for a dev split of {dev_size} (the data holds {len(chosen)} usable examples "
                "and all are evaluated); pass a separate dev file (--dev-data, e.g. "
                "../shared/data/counterfact/train.json) or lower --edits"
            )
        if len(dev) < dev_size:
            logger.warning("Only %d dev examples available (asked for %d)", len(dev), dev_size)
    return Selection(
        eval_examples=chosen,
        dev_examples=dev,
        n_available=len(examples),
        n_too_long=n_too_long,
        n_duplicate_prompts=duplicates,
        duplicate_facts=duplicate_facts,
        dev_source=dev_source if dev_size else "none",
    )
