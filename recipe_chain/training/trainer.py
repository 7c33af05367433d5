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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain._moved import moved_names
from recipe_chain.editor import RecipeEditor
from recipe_chain.prefix_lm import PrefixedCausalLM
from recipe_chain.training.config import ARCH_FIELDS, LOSS_NAMES, TrainingConfig, TrainResult
from recipe_chain.training.examples import DataOrder, prepare_data
from recipe_chain.training.locality_cache import LocalityCache
from recipe_chain.training.state import (
    CACHE_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    PLOT_FILE,
    STATE_FILE,
    restore_state,
    save_state,
    truncate_metrics,
)
from recipe_chain.training.step import KeyQueue, Run, sanity_eval, train_step

__all__ = ["train"]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- the run


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available")
    return torch.device(name)


def _build_editor(
    config: TrainingConfig, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, editor: RecipeEditor | None
) -> RecipeEditor:
    arch = {k: getattr(config, k) for k in ARCH_FIELDS if getattr(config, k) is not None}
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
    data = prepare_data(config, editor, lm)
    optimizer = _optimizer(config, editor)
    run = Run(
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
        queue=KeyQueue(config.key_queue_size, editor.config.rep_dim, device),
        out_dir=out,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config)),
        order=DataOrder(len(data.train), config.seed, [ex.source for ex in data.train], config.data_weights),
    )
    resumed_from: int | None = None
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        restore_state(run, torch.load(state_path, map_location=device, weights_only=True))
        resumed_from = run.step
        logger.info("Resuming %s from step %d", out, run.step)
    elif config.tie_head_init and not config.freeze_retriever:
        # Start the query head as a copy of the knowledge head: q(x)·k(s) then begins as a
        # similarity of the backbone's own features, so an edit prompt (a prefix of its
        # statement) is close to its statement from step 0 instead of from scratch.
        editor.encoder.query_head.load_state_dict(editor.encoder.knowledge_head.state_dict())
    truncate_metrics(out / METRICS_FILE, run.step)
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
                values = train_step(run, run.step)
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
                    run.last_eval = sanity_eval(run)
                    _train_mode(editor, config)
                    if run.last_eval:
                        log.write(json.dumps({"kind": "eval", "step": run.step, **run.last_eval}) + "\n")
                        log.flush()
                        logger.info("step %d eval: %s", run.step,
                                    ", ".join(f"{k}={v:.3f}" for k, v in run.last_eval.items()))
                if run.step % config.checkpoint_interval == 0 or run.step == last:
                    save_state(run)
    finally:
        bar.close()
        editor.eval()
        editor.invalidate_fingerprint()
    if not (out / CHECKPOINT_DIR / "config.json").is_file():
        save_state(run)
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


# Names that lived here before the split, kept as deprecated aliases.
__getattr__ = moved_names(__name__, {
    "TrainingConfig": "recipe_chain.training.config",
    "TrainResult": "recipe_chain.training.config",
    "LOSS_NAMES": "recipe_chain.training.config",
})
