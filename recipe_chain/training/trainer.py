"""The RECIPE training loop: retriever, Knowledge Sentinel and prompt encoder vs a frozen LLM.

:func:`train` jointly optimises, against a frozen causal LM,

* the knowledge encoder (backbone adapter + knowledge head + query head),
* the Knowledge Sentinel,
* the prompt encoder,

with the five RECIPE losses of :mod:`recipe_chain.training.losses`:

1. **reliability** -- NLL of ``target_new`` after the edit prompt, with the edit's prefix;
2. **generality** -- the same after a paraphrase (one sampled per step; the prompt if none);
3. **locality** -- KL(frozen LLM || LLM with the edit's prefix) on a locality prompt, at its
   answer tokens (or the frozen model's greedy continuation), from a persistent top-k cache;
4. **retrieval** -- prompt and paraphrase queries must pick their own statement among the
   in-batch statements, a detached queue of recent statement keys, and the sentinel;
5. **sentinel** -- (a) the same queries with their own statement masked out must pick the
   sentinel; (b) locality queries (and optional extra open-domain questions) must pick the
   sentinel over every statement.

Gradients of the LM losses reach the prompt encoder *and*, through the keys, the
knowledge head and the backbone adapter. The LLM never trains.

Run behaviour: deterministic for a seed (every step draws its randomness from a
generator seeded by ``(seed, step)``, and data order from ``(seed, epoch)``), resumable
(``trainer_state.pt`` holds the trainable tensors, the optimizer, the schedule and the
key queue; ``locality_cache.pt`` the frozen-LLM teachers), a tqdm bar, a JSONL metrics
log and a PNG plot of the losses.

Output directory layout::

    out_dir/
      checkpoint/          RecipeEditor.save_pretrained (loadable with from_pretrained)
      trainer_state.pt     everything needed to resume
      locality_cache.pt    frozen-LLM top-k teachers
      metrics.jsonl        one JSON object per step ("kind": "train") and per eval ("kind": "eval")
      losses.png           loss curves (and eval metrics)
      training_config.json the TrainingConfig of the run
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain.data import EditExample, load_edit_examples, load_questions, split_by_subject
from recipe_chain.editor import RecipeEditor, statement_of
from recipe_chain.errors import CheckpointMismatchError
from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.training.locality_cache import LocalityCache
from recipe_chain.training.losses import (
    contrastive_retrieval_loss,
    prompt_token_loss,
    retrieval_logits,
    sentinel_loss,
    target_nll,
    topk_kl,
)

__all__ = ["TrainingConfig", "TrainResult", "train", "LOSS_NAMES"]

logger = logging.getLogger(__name__)

_ARCH_FIELDS = ("prompt_len", "prompt_encoder", "prompt_context_len", "prompt_code_dim", "prompt_target_slots", "rep_dim",
                "backbone_tuning")
LOSS_NAMES: tuple[str, ...] = ("reliability", "generality", "locality", "retrieval", "sentinel", "prompt_tokens")
"""The weighted losses, in the order they are logged (the five of RECIPE, then the prompt-token loss)."""

STATE_FILE = "trainer_state.pt"
CACHE_FILE = "locality_cache.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "losses.png"
CHECKPOINT_DIR = "checkpoint"
CONFIG_FILE = "training_config.json"
_STATE_FORMAT = 1
# Fields that may change between a run and its resumption without changing its result
# (``steps`` changes the learning-rate schedule, so it is allowed with a warning).
_RESUMABLE_CHANGES = frozenset({"steps", "device", "threads", "eval_interval", "checkpoint_interval"})


class TrainingConfig(BaseModel):
    """Everything that defines a RECIPE training run.

    Architecture fields left at ``None`` (``prompt_len``, ``prompt_encoder``,
    ``prompt_context_len``, ``rep_dim``, ``backbone_tuning``) take
    :class:`~recipe_chain.config.RecipeConfig`'s defaults (3, ``"mlp"``, -, 512,
    ``"lora"``) for a new editor, or the given editor's values.

    Why these defaults (measured on SmolLM2-135M + all-MiniLM-L6-v2, batch 8, CPU):

    * ``lr=1e-4`` for the heads and the sentinel: at 1e-3 the retrieval and sentinel
      losses see-saw (the single sentinel vector and the unnormalised ``q·k/√d`` scale
      swing together); at 1e-4 they fall steadily.
    * ``prompt_lr=1e-3``: with the prompt encoder reading running-standardised keys, the
      held-out reliability (token accuracy with the right prefix, 64 examples) after 100
      steps is 0.091 at 1e-3 and 0.049 at 3e-4. (Before the standardisation, 1e-3 made the
      NLL rise early, and the encoder collapsed to one constant prefix at any rate.)
    * ``backbone_lr=1e-4`` for the LoRA adapter (its ``B`` starts at zero).
    * ``tie_head_init``: the query head starts as a copy of the knowledge head, so
      retrieval starts from the backbone's own similarity (retrieval loss 3.1 instead of
      4.5 after 90 steps).
    * ``hinge_threshold=0.95``, ``margin=1.0``: retrieval and sentinel rows stop pushing
      once they win clearly, but must win by a margin of one similarity unit.
    * ``key_queue_size=2048``: each query also competes with ~2k recent statements, as in
      a store of thousands of edits.
    * ``steps=1500`` at ``batch_size=8``: 1.2 epochs of CounterFact's 10k edits, sized
      for the 90-minute CPU budget at the measured 0.29 steps/s on a 2-core machine.
    * ``prompt_encoder="mlp"`` (the paper's form) stays the default although the
      ``"vocab"`` form learns far better prompt vectors: 2 context vectors + 2 token slots
      (``prompt_len=4``, ``weight_prompt_tokens=1``) reached 0.555 held-out reliability with
      the right prefix after 240 steps, against 0.117 for the MLP after 800; but trained
      jointly it pulls the shared keys towards the new target, and retrieval of the own
      edit fell to 0.14 (MLP: 0.95). Detaching the keys (``prompt_key_grad=0``), a 0.1
      gradient, and a frozen trained retriever all made the prompt-token loss diverge or
      stall. What works is a second phase: ``freeze_retriever=True`` on a phase-1
      checkpoint with a separate prompt code (``RecipeConfig.prompt_code_dim``) read from
      the backbone without its adapters: 0.893 after 700 steps, retrieval unchanged (the
      shipped checkpoint). Every figure: ``benchmarks/results/training/attempts.md``.
    * ``weight_locality=1`` (the paper's): at 0.1 the held-out reliability after 150 and 300
      steps was ~0.03 higher, but the LLM's agreement with itself on locality prompts
      *with* a prefix fell from 0.48 to 0.11, which every false fire of the gate pays.

    Example:
        >>> cfg = TrainingConfig(data=["../shared/data/counterfact/train.json"], steps=100)
        >>> cfg.batch_size, cfg.lr
        (8, 0.0001)
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _weights_match_files(self) -> "TrainingConfig":
        if self.data_weights and len(self.data_weights) != len(self.data):
            raise ValueError(f"data_weights has {len(self.data_weights)} entries for {len(self.data)} data files")
        if any(w <= 0 for w in self.data_weights):
            raise ValueError(f"data_weights must be positive, got {self.data_weights}")
        return self

    # Data.
    data: list[Path] = Field(min_length=1, description="Edit files (any format load_edit_examples reads).")
    data_weights: list[float] = Field(
        default_factory=list,
        description="Per file of `data`, how many times each of its examples is drawn per epoch (fractions draw a "
        "seeded share); empty: 1 for every file.",
    )
    data_limit: int | None = Field(default=None, ge=1, description="Read at most this many records per file.")
    extra_locality: list[Path] = Field(
        default_factory=list,
        description="Question files (NQ-open jsonl) used as extra locality queries for the sentinel loss.",
    )
    extra_locality_skip: int = Field(
        default=1000,
        ge=0,
        description="Skip this many leading records of each extra_locality file: the evaluation uses the first "
        "1,000 NQ-open questions for false-fire rates, so training must not see them.",
    )
    extra_locality_per_batch: int = Field(default=8, ge=0, description="Extra locality queries per step.")
    eval_examples: int = Field(default=64, ge=0, description="Examples held out from training for the sanity eval.")
    # Optimisation.
    steps: int = Field(default=1500, ge=1)
    batch_size: int = Field(default=8, ge=2)
    lr: float = Field(default=1e-4, gt=0, description="Knowledge/query heads and the sentinel (AdamW).")
    prompt_lr: float | None = Field(default=1e-3, gt=0, description="Prompt encoder (None: same as lr).")
    backbone_lr: float = Field(default=1e-4, gt=0, description="Backbone adapter (LoRA) or the full backbone.")
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    grad_clip: float | None = Field(default=1.0, gt=0)
    # Loss weights.
    weight_reliability: float = Field(default=1.0, ge=0)
    weight_generality: float = Field(default=1.0, ge=0)
    weight_locality: float = Field(default=1.0, ge=0)
    weight_retrieval: float = Field(default=1.0, ge=0)
    weight_sentinel: float = Field(default=1.0, ge=0)
    weight_prompt_tokens: float = Field(
        default=1.0,
        ge=0,
        description="'vocab' prompt encoder only: cross-entropy of each token slot's vocabulary mixture against "
        "the new target's token at that slot (not in the paper; 0 turns it off).",
    )
    prompt_key_grad: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Scale of the gradient that the LLM-side losses (reliability, generality, locality, "
        "prompt_tokens) send through the prompt encoder into the keys; 0 detaches the keys there, so only "
        "the retrieval and sentinel losses shape the key space.",
    )
    # Retrieval-loss shaping.
    hinge_threshold: float | None = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="Retrieval/sentinel rows whose correct-class probability exceeds this stop contributing.",
    )
    margin: float = Field(default=1.0, ge=0, description="Additive margin (similarity units) on the correct class.")
    freeze_retriever: bool = Field(
        default=False,
        description="Keep the backbone, the knowledge and query heads and the sentinel exactly as given (no "
        "retrieval or sentinel loss); train only the prompt encoder and the prompt-code head. For a new prompt "
        "encoder on a trained retriever (`recipe-chain train --init-encoder-from ... --freeze-retriever`).",
    )
    tie_head_init: bool = Field(
        default=True,
        description="A new run starts the query head as a copy of the knowledge head (turn it off to continue "
        "from a trained editor; `recipe-chain train --init-from` does).",
    )
    key_queue_size: int = Field(
        default=2048, ge=0, description="Detached keys of recent statements used as extra negatives (0: off)."
    )
    # Locality teacher cache.
    locality_topk: int = Field(default=64, ge=1)
    locality_max_tokens: int = Field(default=4, ge=1, description="Answer tokens scored by the locality KL.")
    locality_greedy_tokens: int = Field(default=3, ge=1, description="Greedy tokens scored when no answer is known.")
    # Editor architecture (None: RecipeConfig default for a new editor, or the given editor's value).
    prompt_len: int | None = Field(default=None, ge=1)
    prompt_encoder: Literal["mlp", "vocab"] | None = None
    prompt_context_len: int | None = Field(default=None, ge=0)
    prompt_code_dim: int | None = Field(default=None, ge=0)
    prompt_target_slots: int | None = Field(default=None, ge=0)
    rep_dim: int | None = Field(default=None, ge=1)
    backbone_tuning: Literal["frozen", "lora", "full"] | None = None
    editor_options: dict[str, Any] = Field(
        default_factory=dict, description="Other RecipeConfig fields for a new editor (e.g. lora_rank)."
    )
    # Run.
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads during training.")
    eval_interval: int = Field(default=250, ge=0, description="Steps between sanity evals (0: only at the end).")
    checkpoint_interval: int = Field(default=250, ge=1)

    @field_validator("editor_options")
    @classmethod
    def _no_duplicated_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = set(_ARCH_FIELDS) | {"llm_id", "llm_hidden_size"}
        clash &= set(value)
        if clash:
            raise ValueError(f"Set {sorted(clash)} through their own TrainingConfig fields, not editor_options")
        return value


class TrainResult(BaseModel):
    """What :func:`train` produced.

    Attributes:
        out_dir: The run directory.
        checkpoint: The final editor checkpoint (``RecipeEditor.from_pretrained``-loadable).
        steps: Steps completed.
        resumed_from: The step the run resumed from, or ``None`` for a fresh run.
        wall_time_s: Training wall time, summed over resumed sessions.
        steps_per_s: Steps per second of the last session.
        final_losses: Mean of each loss over the last (up to) 20 steps.
        eval: The last sanity-eval metrics, if any.
        metrics_path: The JSONL log.
        plot_path: The loss plot.
    """

    model_config = ConfigDict(frozen=True)

    out_dir: Path
    checkpoint: Path
    steps: int
    resumed_from: int | None
    wall_time_s: float
    steps_per_s: float
    final_losses: dict[str, float]
    eval: dict[str, float] | None
    metrics_path: Path
    plot_path: Path


# ---------------------------------------------------------------------- data


@dataclass
class _Example:
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
class _Data:
    train: list[_Example]
    held_out: list[_Example]
    extra_queries: list[str]
    dropped: int = 0
    source_names: list[str] = field(default_factory=list)


def _fits(editor: RecipeEditor, texts: list[str]) -> list[bool]:
    if not texts:
        return []
    lengths = [len(ids) for ids in editor.encoder.tokenizer(texts, truncation=False)["input_ids"]]
    return [n <= editor.config.max_length for n in lengths]


def _prepare(config: TrainingConfig, editor: RecipeEditor, lm: PrefixedCausalLM) -> _Data:
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
    ok_statement = _fits(editor, statements)
    ok_prompt = _fits(editor, [e.prompt for e in raw])
    para_flat = [p for e in raw for p in e.paraphrases]
    loc_flat = [lp.prompt for e in raw for lp in e.locality]
    ok_para, ok_loc = iter(_fits(editor, para_flat)), iter(_fits(editor, loc_flat))
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
        group = groups.setdefault(_norm(e.prompt), len(groups))
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
        _Example(
            statement=s,
            prompt=e.prompt,
            target=e.target_new,
            paraphrases=paras,
            locality=locs,
            group=group,
            # A locality prompt that is literally another edit's prompt (CounterFact has a
            # few hundred) must not be taught to reject that edit's statement.
            locality_groups=[groups.get(_norm(p), -1) for p, _ in locs],
            prompt_ids=pid,
            paraphrase_ids=[next(para_ids) for _ in paras],
            target_ids=tid,
            source=src,
        )
        for (e, s, paras, locs, group), pid, tid, src in zip(kept, prompt_ids, target_ids, kept_sources)
    ]
    n_eval = min(config.eval_examples, max(0, len(examples) - config.batch_size))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(_derive(config.seed, "split")))
    held_out = [examples[i] for i in order[:n_eval].tolist()]
    train_set = [examples[i] for i in sorted(order[n_eval:].tolist())]
    extra: list[str] = []
    for path in config.extra_locality:
        questions = [q.prompt for q in load_questions(path)[config.extra_locality_skip :]]
        extra.extend(q for q, ok in zip(questions, _fits(editor, questions)) if ok)
        logger.info("Using %d extra locality questions from %s (skipping its first %d)", len(questions), path,
                    config.extra_locality_skip)
    logger.info("Training on %d examples (%d held out for the sanity eval)", len(train_set), len(held_out))
    return _Data(train_set, held_out, extra, dropped, source_names=_source_names(config.data))


def _source_names(paths: list[Path]) -> list[str]:
    """Short names of the data files for per-source metrics: the file stem, made unique."""
    names: list[str] = []
    for path in paths:
        name = Path(path).stem
        names.append(name if name not in names else f"{name}-{len(names)}")
    return names


def _norm(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def _derive(seed: int, *parts: object) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and labels/counters."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]
    for p in parts:
        if isinstance(p, int):
            words.append(p & 0xFFFFFFFF)
        else:
            words.extend(ord(c) for c in str(p))
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


class _Order:
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
                g = torch.Generator().manual_seed(_derive(self.seed, "share", epoch, src))
                pool += [idx[j] for j in torch.randperm(len(idx), generator=g)[:rest].tolist()]
        return pool

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = torch.Generator().manual_seed(_derive(self.seed, "epoch", epoch))
            pool = self._draw(epoch)
            self._perms[epoch] = [pool[j] for j in torch.randperm(len(pool), generator=g).tolist()]
        return self._perms[epoch]

    def batch(self, step: int, batch_size: int) -> list[int]:
        start = step * batch_size
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + batch_size)]


# ---------------------------------------------------------------------- key queue


class _KeyQueue:
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


# ---------------------------------------------------------------------- the run


@dataclass
class _Run:
    config: TrainingConfig
    editor: RecipeEditor
    lm: PrefixedCausalLM
    data: _Data
    cache: LocalityCache
    queue: _KeyQueue
    out_dir: Path
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    order: _Order
    step: int = 0
    wall_time: float = 0.0
    last_eval: dict[str, float] | None = None
    frozen_eval: dict[str, list[list[int]]] = field(default_factory=dict)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available")
    return torch.device(name)


def _build_editor(
    config: TrainingConfig, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, editor: RecipeEditor | None
) -> RecipeEditor:
    arch = {k: getattr(config, k) for k in _ARCH_FIELDS if getattr(config, k) is not None}
    if editor is None:
        editor = RecipeEditor.from_backbone(llm, seed=config.seed, **arch, **config.editor_options)
        editor.attach_llm(llm, tokenizer)
        return editor
    editor.attach_llm(llm, tokenizer)
    wanted = arch | config.editor_options
    clash = {k: (v, getattr(editor.config, k)) for k, v in wanted.items() if getattr(editor.config, k) != v}
    if clash:
        details = ", ".join(f"{k}: config {a!r} vs editor {b!r}" for k, (a, b) in clash.items())
        raise ValueError(f"The TrainingConfig does not match the given editor ({details})")
    return editor


def _train_mode(editor: RecipeEditor, config: TrainingConfig) -> None:
    """Training mode, except a frozen retriever's backbone (no dropout: the features a store will see)."""
    editor.train()
    if config.freeze_retriever:
        editor.encoder.backbone.eval()


def _lr_lambda(config: TrainingConfig):  # noqa: ANN202
    warm, total, floor = config.warmup_steps, config.steps, config.min_lr_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        span = max(1, total - warm)
        progress = min(1.0, (step - warm) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _optimizer(config: TrainingConfig, editor: RecipeEditor) -> torch.optim.Optimizer:
    """AdamW with three groups: heads + sentinel, prompt encoder, backbone (adapter)."""
    parts: dict[str, list[torch.nn.Parameter]] = {"heads": [], "prompt": [], "backbone": []}
    for name, param in editor.named_parameters():
        if param.requires_grad:
            if name.startswith("encoder.backbone."):
                parts["backbone"].append(param)
            elif name.startswith("prompt_encoder."):
                parts["prompt"].append(param)
            else:
                parts["heads"].append(param)
    lrs = {"heads": config.lr, "prompt": config.prompt_lr or config.lr, "backbone": config.backbone_lr}
    groups = [{"params": params, "lr": lrs[name], "name": name} for name, params in parts.items() if params]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _pad_teachers(teachers: list, width: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.zeros(len(teachers), width, k, dtype=torch.long)  # (B_l, Lt, k)
    logp = torch.zeros(len(teachers), width, k, dtype=torch.float32)  # (B_l, Lt, k)
    for i, t in enumerate(teachers):
        n, kk = t.top_idx.shape
        idx[i, :n, :kk] = t.top_idx.long()
        logp[i, :n, :kk] = t.top_logp.float()
        if kk < k:  # a vocabulary smaller than k: pad with impossible duplicates of mass 0
            logp[i, :n, kk:] = float("-inf")
    return idx.to(device), logp.to(device)


def _backbone_features(enc, texts: list[str], chunk: int, adapters: bool = True) -> torch.Tensor:  # noqa: ANN001
    """``(N, 4H)`` pooled backbone features, run over length-sorted chunks (less padding)."""
    lengths = [len(ids) for ids in enc.tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    with torch.set_grad_enabled(torch.is_grad_enabled() and adapters):
        parts = [enc.features(enc.tokenize([texts[i] for i in order[s : s + chunk]]), adapters=adapters)
                 for s in range(0, len(texts), chunk)]
    inverse = torch.empty(len(texts), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(texts))
    return torch.cat(parts)[inverse.to(parts[0].device)]


def _lm_target_logits(
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


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient times ``scale`` in the backward pass."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x * scale + x.detach() * (1.0 - scale)


def _train_step(run: _Run, step: int) -> dict[str, float]:
    """One optimisation step; returns the logged loss values."""
    cfg, editor, lm, data = run.config, run.editor, run.lm, run.data
    enc = editor.encoder
    device = editor.device
    gen = torch.Generator().manual_seed(_derive(cfg.seed, "step", step))
    torch.manual_seed(_derive(cfg.seed, "dropout", step))  # backbone dropout
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
        feats = _backbone_features(enc, texts, 2 * cfg.batch_size)  # (N, 4H)
    code_feats = None
    if enc.code_reads_base_features:  # the prompt code reads the backbone without its adapters
        code_feats = _backbone_features(enc, texts[:b], 2 * cfg.batch_size, adapters=False)  # (B, 4H)
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
        prompt_keys = _scale_grad(keys, cfg.prompt_key_grad)  # (B, d): same values, scaled gradient
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
        logits, tgt, mask = _lm_target_logits(lm, prompt_ids, target_ids, rows, cfg.batch_size)  # (R, Lt, V)
        at = 0
        for name in ("reliability", "generality"):
            if getattr(cfg, f"weight_{name}"):
                losses[name] = target_nll(logits[at : at + b], tgt[at : at + b], mask[at : at + b])
                at += b
        if use_loc:
            t_idx, t_logp = _pad_teachers(teachers, logits.shape[1], cfg.locality_topk, logits.device)
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
def _sanity_eval(run: _Run) -> dict[str, float]:
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


# ---------------------------------------------------------------------- persistence


def _atomic_torch_save(obj: object, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary run files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save(run: _Run) -> None:
    """Checkpoint: locality cache, then the resume state (atomic), then the editor export."""
    out = run.out_dir
    if run.config.weight_locality and run.cache.dirty:
        run.cache.save(out / CACHE_FILE)
    state = {
        "format": _STATE_FORMAT,
        "step": run.step,
        "wall_time": run.wall_time,
        "config": run.config.model_dump(mode="json"),
        "editor_config": run.editor.config.model_dump(mode="json"),
        "editor": {k: v.detach().cpu().clone() for k, v in run.editor.trainable_state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "queue": run.queue.state_dict(),
        "last_eval": run.last_eval,
    }
    _atomic_torch_save(state, out / STATE_FILE)
    run.editor.invalidate_fingerprint()
    run.editor.save_pretrained(out / CHECKPOINT_DIR)
    _plot(out / METRICS_FILE, out / PLOT_FILE)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A dumped TrainingConfig with its file paths made absolute (resume from another cwd)."""
    out = dict(config)
    for key in ("data", "extra_locality"):
        out[key] = [str(Path(p).resolve()) for p in out.get(key, [])]
    return out


def _restore(run: _Run, state: dict[str, Any]) -> None:
    if state.get("format") != _STATE_FORMAT:
        raise CheckpointMismatchError(f"Unknown trainer state format {state.get('format')!r} in {run.out_dir}")
    saved = _comparable(state["config"])
    for name, field in TrainingConfig.model_fields.items():
        saved.setdefault(name, field.default)  # a field added since the run started had its default then
    now = _comparable(run.config.model_dump(mode="json"))
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        raise ValueError(
            f"Cannot resume {run.out_dir}: the run was started with different settings for {changed}. "
            "Use the same settings, a new output directory, or resume=False (--no-resume) to start over."
        )
    if saved.get("steps") != now["steps"]:
        logger.warning("Resuming with steps=%s (was %s): the learning-rate schedule changes", now["steps"],
                       saved.get("steps"))
    if state["editor_config"] != run.editor.config.model_dump(mode="json"):
        raise CheckpointMismatchError(f"The editor saved in {run.out_dir} has another configuration")
    missing, unexpected = run.editor.load_state_dict(state["editor"], strict=False)
    lost = sorted(set(run.editor.trainable_state_dict()).intersection(missing))
    if lost or unexpected:
        raise CheckpointMismatchError(
            f"Trainer state does not fit the editor: missing {lost[:5]}, unexpected {unexpected[:5]}"
        )
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.queue.load_state_dict(state["queue"])
    run.step = int(state["step"])
    run.wall_time = float(state["wall_time"])
    run.last_eval = state.get("last_eval")
    if run.config.weight_locality:
        run.cache.load(run.out_dir / CACHE_FILE)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the log lines of steps up to ``step`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _plot(metrics_path: Path, plot_path: Path) -> None:
    """Write the loss curves (moving average) and eval metrics to a PNG (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not metrics_path.is_file():
        return
    train_rows, eval_rows = [], []
    for line in metrics_path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            (eval_rows if row.get("kind") == "eval" else train_rows).append(row)
    if not train_rows:
        return
    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    window = max(1, len(train_rows) // 50)
    for name in (*LOSS_NAMES, "total"):
        pts = [(r["step"], r[name]) for r in train_rows if name in r]
        if not pts:
            continue
        steps, values = zip(*pts)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=name, linewidth=1.8 if name == "total" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving average of {window})")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_title("training losses")
    ax.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    if eval_rows:
        names = sorted({k for r in eval_rows for k in r if k not in {"kind", "step", "wall_time"}})
        for name in names:
            pts = [(r["step"], r[name]) for r in eval_rows if name in r]
            ax2.plot(*zip(*pts), marker="o", label=name)
        ax2.set_ylim(-0.02, 1.02)
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no sanity eval yet", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("step")
    ax2.set_title("held-out sanity metrics")
    fig.tight_layout()
    tmp = plot_path.with_name(f".{plot_path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, plot_path)


# ---------------------------------------------------------------------- entry point


def train(
    config: TrainingConfig,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    editor: RecipeEditor | None = None,
    *,
    out_dir: str | os.PathLike[str],
    resume: bool = True,
    until_step: int | None = None,
) -> TrainResult:
    """Train a RECIPE editor for a frozen causal LM.

    Args:
        config: The run's settings.
        llm: Any Hugging Face causal LM; it is frozen (``requires_grad=False``), put in
            eval mode and moved to the training device.
        tokenizer: Its tokenizer.
        editor: The editor to train; a fresh one on the default all-MiniLM-L6-v2 backbone
            (seeded by ``config.seed``) when omitted. On resume its weights are replaced
            by the saved ones.
        out_dir: The run directory (see the module docstring for its layout).
        resume: Continue from ``out_dir/trainer_state.pt`` if it exists. With ``False`` an
            existing run in ``out_dir`` is discarded.
        until_step: Stop after this global step (with a checkpoint), as if interrupted;
            calling again with ``resume=True`` continues. Splits a long run into sessions
            without changing its result. ``None``: run to ``config.steps``.

    Returns:
        A :class:`TrainResult`; the trained editor is at ``result.checkpoint``.

    Raises:
        FileNotFoundError: A data file is missing.
        ValueError: Inconsistent settings, too little data, or a resume with other settings.
        CheckpointMismatchError: The editor was built for another LLM, or the saved state
            does not fit it.

    Example:
        >>> from recipe_chain import load_default_llm
        >>> from recipe_chain.training import TrainingConfig, train
        >>> llm, tok = load_default_llm()  # doctest: +SKIP
        >>> cfg = TrainingConfig(data=["../shared/data/counterfact/train.json"], steps=2000)
        >>> result = train(cfg, llm, tok, out_dir="runs/cf")  # doctest: +SKIP
        >>> editor = RecipeEditor.from_pretrained(result.checkpoint, llm=llm)  # doctest: +SKIP
    """
    for path in [*config.data, *config.extra_locality]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"No data file at {path}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        for name in (STATE_FILE, CACHE_FILE, METRICS_FILE, PLOT_FILE):
            (out / name).unlink(missing_ok=True)
    device = _resolve_device(config.device)
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        cuda_devices = []
        if device.type == "cuda":
            cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=cuda_devices):
            return _train(config, llm, tokenizer, editor, out, resume, device, until_step)
    finally:
        torch.set_num_threads(old_threads)


def _train(
    config: TrainingConfig,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    editor: RecipeEditor | None,
    out: Path,
    resume: bool,
    device: torch.device,
    until_step: int | None,
) -> TrainResult:
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)
    llm.requires_grad_(False)
    llm.eval()
    llm.to(device)
    editor = _build_editor(config, llm, tokenizer, editor).to(device)
    if config.freeze_retriever:
        editor.encoder.requires_grad_(False)
        editor.sentinel.requires_grad_(False)
        if editor.encoder.prompt_code_head is not None:
            editor.encoder.prompt_code_head.requires_grad_(True)
    lm = PrefixedCausalLM(llm, tokenizer)
    data = _prepare(config, editor, lm)
    optimizer = _optimizer(config, editor)
    run = _Run(
        config=config,
        editor=editor,
        lm=lm,
        data=data,
        cache=LocalityCache(
            lm,
            topk=config.locality_topk,
            max_tokens=config.locality_max_tokens,
            greedy_tokens=config.locality_greedy_tokens,
        ),
        queue=_KeyQueue(config.key_queue_size, editor.config.rep_dim, device),
        out_dir=out,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config)),
        order=_Order(len(data.train), config.seed, [ex.source for ex in data.train], config.data_weights),
    )
    resumed_from: int | None = None
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        _restore(run, torch.load(state_path, map_location=device, weights_only=True))
        resumed_from = run.step
        logger.info("Resuming %s from step %d", out, run.step)
    elif config.tie_head_init and not config.freeze_retriever:
        # Start the query head as a copy of the knowledge head: q(x)·k(s) then begins as a
        # similarity of the backbone's own features, so an edit prompt (a prefix of its
        # statement) is close to its statement from step 0 instead of from scratch.
        editor.encoder.query_head.load_state_dict(editor.encoder.knowledge_head.state_dict())
    _truncate_metrics(out / METRICS_FILE, run.step)
    (out / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")

    _train_mode(editor, config)
    start_step, session_start = run.step, time.perf_counter()
    recent: list[dict[str, float]] = []
    bar = tqdm(total=config.steps, initial=run.step, desc="recipe train", dynamic_ncols=True, unit="step")
    try:
        with (out / METRICS_FILE).open("a") as log:
            last = config.steps if until_step is None else min(config.steps, until_step)
            while run.step < last:
                t0 = time.perf_counter()
                lrs = {f"lr_{g['name']}": g["lr"] for g in run.optimizer.param_groups}
                values = _train_step(run, run.step)
                run.step += 1
                run.wall_time += time.perf_counter() - t0
                elapsed = time.perf_counter() - session_start
                row: dict[str, Any] = {"kind": "train", "step": run.step, **values, **lrs}
                row |= {"steps_per_s": (run.step - start_step) / elapsed, "wall_time": run.wall_time}
                log.write(json.dumps(row) + "\n")
                log.flush()
                recent = (recent + [values])[-20:]
                bar.update(1)
                bar.set_postfix({k[:3]: f"{v:.3f}" for k, v in values.items() if k in (*LOSS_NAMES, "total")})
                if not math.isfinite(values["total"]):
                    raise FloatingPointError(f"Non-finite loss at step {run.step}: {values}; lower the learning rates")
                evaluate_now = config.eval_interval and run.step % config.eval_interval == 0
                if evaluate_now or (run.step == config.steps and config.eval_examples):
                    run.last_eval = _sanity_eval(run)
                    _train_mode(editor, config)
                    if run.last_eval:
                        log.write(json.dumps({"kind": "eval", "step": run.step, **run.last_eval}) + "\n")
                        log.flush()
                        logger.info("step %d eval: %s", run.step,
                                    ", ".join(f"{k}={v:.3f}" for k, v in run.last_eval.items()))
                if run.step % config.checkpoint_interval == 0 or run.step == last:
                    _save(run)
    finally:
        bar.close()
        editor.eval()
        editor.invalidate_fingerprint()
    if not (out / CHECKPOINT_DIR / "config.json").is_file():
        _save(run)
    session = time.perf_counter() - session_start
    done = run.step - start_step
    final = {
        k: float(np.mean([r[k] for r in recent if k in r]))
        for k in (*LOSS_NAMES, "total")
        if any(k in r for r in recent)
    }
    logger.info("Trained %d steps in %.1fs (%.3f steps/s); checkpoint: %s", done, session,
                done / session if session > 0 else 0.0, out / CHECKPOINT_DIR)
    return TrainResult(
        out_dir=out,
        checkpoint=out / CHECKPOINT_DIR,
        steps=run.step,
        resumed_from=resumed_from,
        wall_time_s=run.wall_time,
        steps_per_s=done / session if session > 0 and done else 0.0,
        final_losses=final,
        eval=run.last_eval,
        metrics_path=out / METRICS_FILE,
        plot_path=out / PLOT_FILE,
    )
