"""What a training run does: :class:`TrainingConfig`, and what it produced: :class:`TrainResult`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["TrainingConfig", "TrainResult", "LOSS_NAMES", "ARCH_FIELDS"]

ARCH_FIELDS = ("prompt_len", "prompt_encoder", "prompt_context_len", "prompt_code_dim", "prompt_target_slots", "rep_dim",
                "backbone_tuning")
LOSS_NAMES: tuple[str, ...] = ("reliability", "generality", "locality", "retrieval", "sentinel", "prompt_tokens")
"""The weighted losses, in the order they are logged (the five of RECIPE, then the prompt-token loss)."""


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
    steps: int = Field(default=1500, ge=1, description="Optimisation steps (the learning-rate schedule ends here).")
    batch_size: int = Field(default=8, ge=2, description="Edits per step.")
    lr: float = Field(default=1e-4, gt=0, description="Knowledge/query heads and the sentinel (AdamW).")
    prompt_lr: float | None = Field(default=1e-3, gt=0, description="Prompt encoder (None: same as lr).")
    backbone_lr: float = Field(default=1e-4, gt=0, description="Backbone adapter (LoRA) or the full backbone.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(default=100, ge=0, description="Linear warm-up steps before the cosine decay.")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Clip the gradient norm to this.")
    # Loss weights.
    weight_reliability: float = Field(default=1.0, ge=0, description="Weight of the reliability loss (0: off).")
    weight_generality: float = Field(default=1.0, ge=0, description="Weight of the generality loss (0: off).")
    weight_locality: float = Field(default=1.0, ge=0, description="Weight of the locality KL (0: off).")
    weight_retrieval: float = Field(default=1.0, ge=0, description="Weight of the contrastive retrieval loss (0: off).")
    weight_sentinel: float = Field(default=1.0, ge=0, description="Weight of the sentinel losses (0: off).")
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
    locality_topk: int = Field(default=64, ge=1, description="Frozen-LLM top-k tokens kept per position for the locality KL.")
    locality_max_tokens: int = Field(default=4, ge=1, description="Answer tokens scored by the locality KL.")
    locality_greedy_tokens: int = Field(default=3, ge=1, description="Greedy tokens scored when no answer is known.")
    # Editor architecture (None: RecipeConfig default for a new editor, or the given editor's value).
    prompt_len: int | None = Field(default=None, ge=1, description="Continuous prompt vectors per edit (new editor).")
    prompt_encoder: Literal["mlp", "vocab"] | None = Field(
        default=None,
        description="'mlp': the paper's MLP (RecipeConfig's default); 'vocab': context vectors plus slots that mix the "
        "LLM's token embeddings.",
    )
    prompt_context_len: int | None = Field(
        default=None, ge=0, description="Context vectors in front of the token slots ('vocab' encoder)."
    )
    prompt_code_dim: int | None = Field(
        default=None,
        ge=0,
        description="Give each key a prompt code of this width from its own head: retrieval ignores it and the "
        "prompt encoder reads only it (0: the prompt encoder reads the whole key).",
    )
    prompt_target_slots: int | None = Field(
        default=None,
        ge=0,
        description="Follow the key's vectors with the first N LLM tokens of the edit's own target ('vocab' "
        "encoder; 0: every token slot is decoded from the key).",
    )
    rep_dim: int | None = Field(default=None, ge=1, description="Width of keys, queries and the sentinel (new editor).")
    backbone_tuning: Literal["frozen", "lora", "full"] | None = Field(
        default=None, description="How the knowledge encoder's backbone trains (new editor)."
    )
    editor_options: dict[str, Any] = Field(
        default_factory=dict, description="Other RecipeConfig fields for a new editor (e.g. lora_rank)."
    )
    # Run.
    seed: int = Field(default=0, description="Seed of initialisation, data order and every step's sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="'auto' uses a GPU when one is present.")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads during training.")
    eval_interval: int = Field(default=250, ge=0, description="Steps between sanity evals (0: only at the end).")
    checkpoint_interval: int = Field(default=250, ge=1, description="Steps between checkpoints (a run resumes from the last).")

    @field_validator("editor_options")
    @classmethod
    def _no_duplicated_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = set(ARCH_FIELDS) | {"llm_id", "llm_hidden_size"}
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
