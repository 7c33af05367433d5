"""Training data: edit files read into token-ready examples, and the seeded order they are drawn in."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recipe_chain.data import EditExample, load_edit_examples, load_questions, split_by_subject
from recipe_chain.editor import RecipeEditor, statement_of
from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.training.config import TrainingConfig

__all__ = ["TrainExample", "TrainData", "prepare_data", "source_names", "derive_seed", "DataOrder"]

logger = logging.getLogger(__name__)


@dataclass
class TrainExample:
    """An edit, validated and pre-tokenized for training."""

    statement: str
    prompt: str
    target: str
    paraphrases: list[str]
    locality: list[tuple[str, str | None]]
    group: int  # examples sharing a prompt share a group: never negatives of each other
    locality_groups: list[int]  # per locality prompt: the group of an edit with that very prompt, or -1
    prompt_ids: list[int]
    paraphrase_ids: list[list[int]]
    target_ids: list[int]
    source: int = 0  # index of its file in TrainingConfig.data


@dataclass
class TrainData:
    train: list[TrainExample]
    held_out: list[TrainExample]
    extra_queries: list[str]
    dropped: int = 0
    source_names: list[str] = field(default_factory=list)


def fits_encoder(editor: RecipeEditor, texts: list[str]) -> list[bool]:
    if not texts:
        return []
    lengths = [len(ids) for ids in editor.encoder.tokenizer(texts, truncation=False)["input_ids"]]
    return [n <= editor.config.max_length for n in lengths]


def prepare_data(config: TrainingConfig, editor: RecipeEditor, lm: PrefixedCausalLM) -> TrainData:
    raw: list[EditExample] = []
    sources: list[int] = []
    for index, path in enumerate(config.data):
        loaded = load_edit_examples(path, limit=config.data_limit, on_invalid="skip")
        if any(e.source_format == "hallueditbench" for e in loaded):
            loaded, dev = split_by_subject(loaded)  # its dev subjects are an evaluation set: never trained on
            logger.info("%s: training on its %d train-subject examples (%d dev left out)", path, len(loaded), len(dev))
        raw.extend(loaded)
        sources.extend([index] * len(loaded))
    if not raw:
        raise ValueError(f"No usable edit examples in {[str(p) for p in config.data]}")
    statements = [statement_of(e.prompt, e.target_new) for e in raw]
    ok_statement = fits_encoder(editor, statements)
    ok_prompt = fits_encoder(editor, [e.prompt for e in raw])
    para_flat = [p for e in raw for p in e.paraphrases]
    loc_flat = [lp.prompt for e in raw for lp in e.locality]
    ok_para, ok_loc = iter(fits_encoder(editor, para_flat)), iter(fits_encoder(editor, loc_flat))
    groups: dict[str, int] = {}
    kept: list[tuple[EditExample, str, list[str], list[tuple[str, str | None]], int]] = []
    kept_sources: list[int] = []
    dropped = 0
    for e, s, fs, fp, src in zip(raw, statements, ok_statement, ok_prompt, sources):
        paras = [p for p in e.paraphrases if next(ok_para)]
        locs = [(lp.prompt, lp.answer) for lp in e.locality if next(ok_loc)]
        if not (fs and fp):
            dropped += 1
            continue
        group = groups.setdefault(norm_prompt(e.prompt), len(groups))
        kept.append((e, s, paras, locs, group))
        kept_sources.append(src)
    if dropped:
        logger.warning("Dropped %d examples whose statement or prompt exceeds %d backbone tokens", dropped,
                       editor.config.max_length)
    if len(kept) < config.batch_size:
        raise ValueError(f"Only {len(kept)} usable examples; need at least batch_size={config.batch_size}")
    prompt_ids = lm.tokenize([e.prompt for e, *_ in kept])
    target_ids = lm.tokenize_targets([e.target_new for e, *_ in kept])
    para_texts = [p for _, _, paras, _, _ in kept for p in paras]
    para_ids = iter(lm.tokenize(para_texts) if para_texts else [])
    examples = [
        TrainExample(
            statement=s,
            prompt=e.prompt,
            target=e.target_new,
            paraphrases=paras,
            locality=locs,
            group=group,
            # A locality prompt that is literally another edit's prompt (CounterFact has a
            # few hundred) must not be taught to reject that edit's statement.
            locality_groups=[groups.get(norm_prompt(p), -1) for p, _ in locs],
            prompt_ids=pid,
            paraphrase_ids=[next(para_ids) for _ in paras],
            target_ids=tid,
            source=src,
        )
        for (e, s, paras, locs, group), pid, tid, src in zip(kept, prompt_ids, target_ids, kept_sources)
    ]
    n_eval = min(config.eval_examples, max(0, len(examples) - config.batch_size))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(derive_seed(config.seed, "split")))
    held_out = [examples[i] for i in order[:n_eval].tolist()]
    train_set = [examples[i] for i in sorted(order[n_eval:].tolist())]
    extra: list[str] = []
    for path in config.extra_locality:
        questions = [q.prompt for q in load_questions(path)[config.extra_locality_skip :]]
        extra.extend(q for q, ok in zip(questions, fits_encoder(editor, questions)) if ok)
        logger.info("Using %d extra locality questions from %s (skipping its first %d)", len(questions), path,
                    config.extra_locality_skip)
    logger.info("Training on %d examples (%d held out for the sanity eval)", len(train_set), len(held_out))
    return TrainData(train_set, held_out, extra, dropped, source_names=source_names(config.data))


def source_names(paths: list[Path]) -> list[str]:
    """Short names of the data files for per-source metrics: the file stem, made unique."""
    names: list[str] = []
    for path in paths:
        name = Path(path).stem
        names.append(name if name not in names else f"{name}-{len(names)}")
    return names


def norm_prompt(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and labels/counters."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]
    for p in parts:
        if isinstance(p, int):
            words.append(p & 0xFFFFFFFF)
        else:
            words.extend(ord(c) for c in str(p))
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


class DataOrder:
    """Deterministic data order: a fresh permutation per epoch, seeded by ``(seed, epoch)``.

    With per-source weights an epoch draws each example of source ``s`` ``floor(w_s)``
    times plus a seeded share ``w_s - floor(w_s)`` of them once more, so every epoch has
    the same length and a source's share of the batches follows its weight.
    """

    def __init__(self, n: int, seed: int, sources: list[int] | None = None, weights: list[float] | None = None) -> None:
        self.seed = seed
        self.sources = sources if sources is not None else [0] * n
        self.weights = weights or []
        members: dict[int, list[int]] = {}
        for i, src in enumerate(self.sources):
            members.setdefault(src, []).append(i)
        self._members = members
        self.n = sum(round(self._weight(src) * len(idx)) for src, idx in members.items()) if self.weights else n
        if self.n < 1:
            raise ValueError("the data weights leave no example to draw")
        self._perms: dict[int, list[int]] = {}

    def _weight(self, source: int) -> float:
        return self.weights[source] if source < len(self.weights) else 1.0

    def _draw(self, epoch: int) -> list[int]:
        if not self.weights:
            return list(range(len(self.sources)))
        pool: list[int] = []
        for src, idx in sorted(self._members.items()):
            total = round(self._weight(src) * len(idx))
            whole, rest = divmod(total, len(idx))
            pool += idx * whole
            if rest:
                g = torch.Generator().manual_seed(derive_seed(self.seed, "share", epoch, src))
                pool += [idx[j] for j in torch.randperm(len(idx), generator=g)[:rest].tolist()]
        return pool

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            pool = self._draw(epoch)
            self._perms[epoch] = [pool[j] for j in torch.randperm(len(pool), generator=g).tolist()]
        return self._perms[epoch]

    def batch(self, step: int, batch_size: int) -> list[int]:
        start = step * batch_size
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + batch_size)]
