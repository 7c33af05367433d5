"""The fair text-RAG baseline of the evaluation: its statement index, threshold and prompt format.

What a LangChain user builds instead of RECIPE: the edit statements embedded with a
plain sentence encoder (all-MiniLM-L6-v2) in a Chroma collection, the top-1 statement
put in front of the query when its cosine similarity reaches a threshold. To be a
baseline worth beating it is tuned as carefully as the method it is compared with, on a
dev split disjoint from the evaluated edits (:meth:`TextRagBaseline.tune`):

1. the threshold maximises dev balanced accuracy of "fire" on edit prompts and
   paraphrases against "stay quiet" on locality prompts and general questions
   (:func:`~recipe_chain.evaluation.thresholds.tune_balanced_threshold`);
2. the prompt format, the statement in front of the query (``plain``) or the LLM's chat
   template with the statement in the system message (``chat``), is the one whose
   generated answers score better on dev (mean of answer accuracy and locality kept).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from recipe_chain.data import EditExample, LocalityPrompt
from recipe_chain.evaluation import answers as A
from recipe_chain.evaluation import metrics as M
from recipe_chain.evaluation.thresholds import TunedThreshold, tune_balanced_threshold
from recipe_chain.statement_index import SentenceEmbeddings, StatementHit, StatementIndex
from recipe_chain.store import normalize_prompt
from recipe_chain.text_rag import format_text_rag_prompt

__all__ = ["PromptFormat", "TextRagTuning", "TextRagBaseline", "fact_id"]

logger = logging.getLogger(__name__)

PromptFormat = Literal["plain", "chat"]

RETRIEVAL_DESCRIPTION = (
    "cosine similarity of mean-pooled sentence embeddings (all-MiniLM-L6-v2 by default) in a Chroma collection "
    "of the edit statements; top-1 admitted iff similarity >= threshold"
)

Generate = Callable[[set[tuple[str, None]]], dict[tuple[str, None], str]]
"""``{(llm input text, None)} -> {key: greedy output}``: the harness's cached generation."""


class TextRagTuning(BaseModel):
    """How the fair text-RAG baseline was tuned on the dev split.

    Attributes:
        retrieval: What scores queries (plain sentence-embedding cosine similarity).
        threshold: The balanced-accuracy threshold and its dev curve.
        dev_rows: Dev positives (prompts, paraphrases) and negatives (locality prompts,
            general questions).
        format: The prompt format the text-RAG methods use.
        format_scores: Dev score of each format tried: the mean of answer accuracy on
            dev prompts/paraphrases and locality kept on dev locality prompts.
        format_dev_examples: Dev examples the format choice was measured on.
    """

    model_config = ConfigDict(frozen=True)

    retrieval: str
    threshold: TunedThreshold
    dev_rows: dict[str, int]
    format: PromptFormat
    format_scores: dict[str, dict[str, float | None]]
    format_dev_examples: int


def fact_id(prompt: str) -> str:
    """The statement-index id of a fact: one current statement per normalised prompt."""
    return "fact-" + hashlib.sha1(normalize_prompt(prompt).encode()).hexdigest()[:20]


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos_id


class TextRagBaseline:
    """The baseline's statement index of the evaluated store, its threshold and format.

    Args:
        tokenizer: The LLM's tokenizer (for the chat template).
        embeddings: The sentence encoder; ``None`` loads all-MiniLM-L6-v2 on first use.
        prompt_format: The format until :meth:`tune` or :meth:`adopt` chooses one.
        batch_size: Queries per index search.
        progress: Progress bars (``None``: on a terminal only).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        embeddings: Any = None,
        *,
        prompt_format: PromptFormat = "plain",
        batch_size: int = 256,
        progress: bool | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self._embeddings = embeddings
        self.format: PromptFormat = prompt_format
        self.threshold: float | None = None
        self.index: StatementIndex | None = None
        self.batch_size = batch_size
        self.progress = progress
        self._adds_bos = _adds_bos(tokenizer)

    # ------------------------------------------------------------------ index
    def new_index(self) -> StatementIndex:
        """An empty in-memory statement index."""
        if self._embeddings is None:
            self._embeddings = SentenceEmbeddings.default()
        return StatementIndex(self._embeddings)

    def open(self) -> StatementIndex:
        """Start the index of the evaluated store (replacing any previous one)."""
        self.close()
        self.index = self.new_index()
        return self.index

    def close(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None

    def add_edit(self, ex: EditExample, edit_id: str, index: StatementIndex | None = None) -> None:
        """Index an edit's statement; a later edit of the same fact replaces it."""
        target = index if index is not None else self.index
        if target is None:
            raise ValueError("no statement index is open; call open() first")
        target.upsert(fact_id(ex.prompt), ex.statement, {"edit_id": edit_id})

    def search_all(
        self, texts: Sequence[str], desc: str, index: StatementIndex | None = None
    ) -> dict[str, StatementHit | None]:
        """The top-1 statement of each distinct text (``None`` when the index is empty)."""
        target = index if index is not None else self.index
        if target is None:
            raise ValueError("no statement index is open; call open() first")
        unique = list(dict.fromkeys(texts))
        out: dict[str, StatementHit | None] = {}
        starts = range(0, len(unique), self.batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", leave=False,
                          disable=None if self.progress is None else not self.progress):
            chunk = unique[start : start + self.batch_size]
            for text, hits in zip(chunk, target.search(chunk, k=1)):
                out[text] = hits[0] if hits else None
        return out

    # ------------------------------------------------------------------ decisions
    def admits(self, hit: StatementHit | None, *, thresholded: bool = True) -> bool:
        """Whether ``hit`` is put in front (``text-rag``), or any hit is (``text-rag-top1``)."""
        if hit is None:
            return False
        if not thresholded:
            return True
        if self.threshold is None:
            raise ValueError("text-rag's threshold is not tuned; call tune() or adopt() first")
        return hit.score >= self.threshold

    def text(self, question: str, statement: str, prompt_format: PromptFormat | None = None) -> str:
        """The LLM input: ``statement`` in front of ``question`` in the chosen format."""
        fmt = prompt_format or self.format
        if fmt == "plain":
            return format_text_rag_prompt(question, [statement])
        return self.chat_text(question, system=f"New fact: {statement}")

    def chat_text(self, question: str, *, system: str | None = None) -> str:
        """``question`` as the user turn of the LLM's chat template, ready for the answer."""
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": question}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = getattr(self.tokenizer, "bos_token", None)
        if self._adds_bos and bos and text.startswith(bos):  # the tokenizer adds it again
            text = text[len(bos) :]
        return text

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def adopt(self, tuning: TextRagTuning) -> None:
        """Use the threshold and format of an earlier tuning."""
        self.threshold = tuning.threshold.value
        self.format = tuning.format

    # ------------------------------------------------------------------ tuning
    def tune(
        self,
        dev_examples: Sequence[EditExample],
        dev_questions: Sequence[LocalityPrompt],
        generate: Generate,
        *,
        prompt_format: Literal["auto", "plain", "chat"] = "auto",
        format_dev_sample: int = 100,
    ) -> TextRagTuning:
        """Tune the threshold, then (``"auto"``) the prompt format, on dev; adopt them.

        Raises:
            ValueError: Without dev examples, or without any dev negatives.
        """
        if not dev_examples:
            raise ValueError("text-rag needs dev examples to tune its threshold")
        index = self.new_index()
        try:
            for i, ex in enumerate(dev_examples):
                self.add_edit(ex, f"dev-{i:06d}", index)
            positives_q = [t for ex in dev_examples for t in (ex.prompt, *ex.paraphrases)]
            locality_q = [loc.prompt for ex in dev_examples for loc in ex.locality]
            general_q = [q.prompt for q in dev_questions]
            hits = self.search_all([*positives_q, *locality_q, *general_q], "dev text-rag", index)
            positives = [hits[t].score for t in positives_q if hits[t] is not None]
            negatives = [hits[t].score for t in (*locality_q, *general_q) if hits[t] is not None]
            tuned = tune_balanced_threshold(positives, negatives)
            self.threshold = tuned.value
            logger.info(
                "text-rag cosine threshold %.4f (dev balanced accuracy %.3f: fire %.3f, quiet %.3f)",
                tuned.value, tuned.balanced_accuracy, tuned.tpr, tuned.tnr,
            )
            sample = list(dev_examples[:format_dev_sample])
            scores: dict[str, dict[str, float | None]] = {}
            if prompt_format == "auto":
                formats: list[PromptFormat] = ["plain", "chat"] if self.has_chat_template() else ["plain"]
                for fmt in formats:
                    scores[fmt] = self._format_score(index, sample, fmt, generate)
                scores.setdefault("chat", {"score": None, "answer_accuracy": None, "locality_kept": None})
                chosen: PromptFormat = max(formats, key=lambda f: (scores[f]["score"] or 0.0, f == "plain"))
            else:
                chosen = prompt_format
            self.format = chosen
            logger.info("text-rag prompt format: %s (dev scores %s)", chosen, scores)
            return TextRagTuning(
                retrieval=RETRIEVAL_DESCRIPTION,
                threshold=tuned,
                dev_rows={
                    "positive": len(positives),
                    "negative": len(negatives),
                    "negative_locality": len(locality_q),
                    "negative_general": len(general_q),
                },
                format=chosen,
                format_scores=scores,
                format_dev_examples=len(sample) if prompt_format == "auto" else 0,
            )
        finally:
            index.close()

    def _format_score(
        self, index: StatementIndex, examples: Sequence[EditExample], fmt: PromptFormat, generate: Generate
    ) -> dict[str, float | None]:
        """Dev answer accuracy, locality kept and their mean for one prompt format."""
        edit_rows = [(t, ex) for ex in examples for t in (ex.prompt, *ex.paraphrases)]
        loc_rows = [loc.prompt for ex in examples for loc in ex.locality]
        hits = self.search_all([t for t, _ in edit_rows] + loc_rows, f"dev {fmt}", index)

        def llm_input(text: str) -> str:
            hit = hits[text]
            return self.text(text, hit.statement, fmt) if self.admits(hit) and hit is not None else text

        keys = {(llm_input(t), None) for t, _ in edit_rows} | {(llm_input(t), None) for t in loc_rows}
        keys |= {(t, None) for t in loc_rows}
        outputs = generate(keys)
        correct = [
            A.answer_correct(outputs[(llm_input(t), None)], ex.target_new, old_target=ex.ground_truth)
            for t, ex in edit_rows
        ]
        kept = [A.locality_kept(outputs[(llm_input(t), None)], outputs[(t, None)]) for t in loc_rows]
        acc, loc = M.mean(correct), M.mean(kept)
        parts = [v for v in (acc, loc) if v is not None]
        return {"score": M.mean(parts), "answer_accuracy": acc, "locality_kept": loc}
