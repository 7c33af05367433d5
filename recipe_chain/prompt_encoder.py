"""The prompt encoder: a key representation -> continuous prompt vectors for the LLM."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from recipe_chain.config import RecipeConfig

__all__ = ["PromptEncoder", "RunningStandardizer"]


class RunningStandardizer(nn.Module):
    """Per-feature standardisation of keys with running statistics (no learned parameters).

    Trained keys share a large common direction (every key must score against the
    sentinel and the queries on the same scale), so two keys differ in a few per cent of
    their norm. A per-vector ``LayerNorm`` keeps that common direction; subtracting the
    running per-feature mean and dividing by the running std removes it, so the prompt
    encoder sees what distinguishes one edit from another.

    In training mode each batch first updates the statistics (a cumulative average for
    the first ``1 / min_momentum`` batches, then an exponential moving average), then the
    batch is standardised with them, so training and inference apply the same function.
    The statistics are buffers: checkpoints store them, gradients do not flow into them.
    """

    def __init__(self, dim: int, *, min_momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.min_momentum = min_momentum
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, keys: torch.Tensor) -> None:
        flat = keys.reshape(-1, keys.shape[-1]).float()  # (N, R)
        if flat.shape[0] < 2:
            return
        momentum = max(1.0 / float(self.num_batches + 1), self.min_momentum)
        self.running_mean.lerp_(flat.mean(0), momentum)
        self.running_var.lerp_(flat.var(0), momentum)
        self.num_batches += 1

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._update(keys)
        return (keys - self.running_mean) / torch.sqrt(self.running_var + self.eps)  # (..., R)


class PromptEncoder(nn.Module):
    """Maps keys ``(N, rep_dim)`` to prompt vectors ``(N, prompt_len, llm_hidden_size)``.

    With ``code_dim > 0`` it reads only the last ``code_dim`` entries of each key (the
    prompt code, see :class:`~recipe_chain.encoder.KnowledgeEncoder`).

    The vectors live in the LLM's input-embedding space (the output space of
    ``llm.get_input_embeddings()``, which already includes any scaling an architecture
    such as Gemma applies).

    Two forms:

    * ``mode="mlp"`` (the paper's): standardised key -> MLP -> ``prompt_len`` vectors.
      The last layer starts at the scale of the LLM's embeddings.
    * ``mode="vocab"``: the first ``context_len`` vectors are learned *context* vectors
      shared by every edit (plus a key-dependent correction); each of the remaining
      ``prompt_len - context_len`` *token slots* is a softmax mixture of the LLM's own
      token embeddings, ``softmax(s · W q(k)) W``, where ``q(k)`` is a linear query read
      from the key and ``W`` the frozen embedding matrix. A token slot can therefore
      write the new target's tokens into the prefix in a form the LLM already reads,
      and the slot logits can be supervised with the target's token ids (the trainer's
      ``prompt_tokens`` loss). On SmolLM2-135M, two tuned context vectors followed by the
      target's own token embeddings score 0.926 token accuracy on held-out CounterFact
      edits (``benchmarks/bench_prefix_oracle.py``), where the MLP form trained to 0.12;
      the shipped checkpoint's vocab encoder, reading a separate prompt code, reaches
      0.89 (``benchmarks/results/training/attempts.md``, run I). The embedding matrix is
      not part of the checkpoint: :meth:`attach_vocabulary` binds it
      (``RecipeEditor.attach_llm`` does).

    With ``target_slots > 0`` the key's vectors are followed by the input embeddings of
    the first ``target_slots`` tokens of the edit's own new target
    (:meth:`append_targets`), so an answer of several tokens reaches the LLM whole; the
    key's vectors then only need to tell the LLM how to use them (docs/prompt-vectors.md).

    Args:
        rep_dim: Width of the keys.
        llm_hidden_size: Width of the LLM's input embeddings.
        prompt_len: Prompt vectors per key.
        hidden_dim: Width of the hidden layer.
        init_std: Std of the LLM's input embeddings.
        input_norm: ``"running"`` standardises keys with running per-feature statistics
            (:class:`RunningStandardizer`); ``"layer"`` applies a per-vector ``LayerNorm``
            (checkpoints written before the running statistics existed).
        mode: ``"mlp"`` or ``"vocab"`` (above).
        context_len: Context vectors in ``"vocab"`` mode (``< prompt_len``, or ``<=``
            with target slots).
        code_dim: Read only the last ``code_dim`` key entries (0: the whole key).
        target_slots: Token slots read from the edit's target (``"vocab"`` mode; 0: none).
    """

    def __init__(
        self,
        rep_dim: int,
        llm_hidden_size: int,
        prompt_len: int,
        hidden_dim: int,
        init_std: float,
        input_norm: Literal["running", "layer"] = "running",
        mode: Literal["mlp", "vocab"] = "mlp",
        context_len: int = 1,
        code_dim: int = 0,
        target_slots: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= code_dim <= rep_dim:
            raise ValueError(f"code_dim must be in [0, rep_dim={rep_dim}]; got {code_dim}")
        self.code_dim = code_dim
        rep_dim = code_dim or rep_dim  # the width actually read
        if target_slots and mode != "vocab":
            raise ValueError("target_slots needs mode='vocab'")
        if mode == "vocab" and not 0 <= context_len <= prompt_len - (0 if target_slots else 1):
            raise ValueError(f"context_len must be in [0, prompt_len={prompt_len}); got {context_len}")
        self.target_slots = target_slots
        self.prompt_len = prompt_len
        self.llm_hidden_size = llm_hidden_size
        self.mode = mode
        self.context_len = context_len if mode == "vocab" else 0
        self.token_slots = prompt_len - self.context_len if mode == "vocab" else 0
        norm: nn.Module = RunningStandardizer(rep_dim) if input_norm == "running" else nn.LayerNorm(rep_dim)
        self.net = nn.Sequential(
            norm,
            nn.Linear(rep_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, prompt_len * llm_hidden_size),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.bias)
        if mode == "mlp":
            # With standardised inputs and GELU the hidden activations have O(1) scale;
            # choose the weight std so the output std starts near the LLM embedding std.
            nn.init.normal_(last.weight, std=init_std / (hidden_dim**0.5) * 2.0)
            return
        # "vocab": the MLP is a key-dependent correction that starts at zero.
        nn.init.zeros_(last.weight)
        self.context = nn.Parameter(torch.randn(self.context_len, llm_hidden_size) * init_std)  # (C, D)
        self.token_query = nn.Linear(rep_dim, self.token_slots * llm_hidden_size) if self.token_slots else None
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self._vocab: torch.Tensor | None = None  # (V, D) float32, the frozen LLM's embedding matrix
        self._vocab_scale = 1.0  # the embedding module's output / its weight (Gemma scales by sqrt(D))

    # ------------------------------------------------------------------ vocabulary
    @property
    def has_vocabulary(self) -> bool:
        """Whether ``"vocab"`` mode has its embedding matrix (always True for ``"mlp"``)."""
        return self.mode == "mlp" or self._vocab is not None

    @torch.no_grad()
    def attach_vocabulary(self, embedding: nn.Embedding) -> None:
        """Bind the frozen LLM's input-embedding module (a no-op in ``"mlp"`` mode).

        Args:
            embedding: ``llm.get_input_embeddings()``; its weight is read, never trained
                and never saved with the prompt encoder.

        Raises:
            ValueError: If the embedding width is not ``llm_hidden_size``.
        """
        if self.mode != "vocab":
            return
        weight = embedding.weight
        if weight.shape[-1] != self.llm_hidden_size:
            raise ValueError(f"Embedding width {weight.shape[-1]} != llm_hidden_size {self.llm_hidden_size}")
        probe = torch.arange(min(16, weight.shape[0]), device=weight.device)
        out = embedding(probe).float()
        self._vocab_scale = float(out.norm() / weight[probe].float().norm().clamp_min(1e-12))
        self._vocab = weight.detach().float()  # (V, D); a view when the LLM is already float32

    @torch.no_grad()
    def init_context_from_vocabulary(self, embedding: nn.Embedding) -> None:
        """Start the context vectors as random real tokens (the usual prompt-tuning init; global RNG)."""
        if self.mode == "vocab" and self.context_len:
            rows = torch.randint(embedding.num_embeddings, (self.context_len,))
            self.context.copy_(embedding(rows.to(embedding.weight.device)).float())  # (C, D)

    @classmethod
    def from_config(cls, config: RecipeConfig) -> PromptEncoder:
        """The prompt encoder a :class:`~recipe_chain.config.RecipeConfig` describes (untrained)."""
        return cls(
            config.rep_dim,
            config.llm_hidden_size,
            config.prompt_len,
            config.prompt_hidden_dim,
            config.prompt_init_std,
            input_norm=config.prompt_input_norm,
            mode=config.prompt_encoder,
            context_len=config.prompt_context_len,
            code_dim=config.prompt_code_dim,
            target_slots=config.prompt_target_slots,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.forward_with_token_logits(keys)[0]

    def forward_with_token_logits(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt vectors and, in ``"vocab"`` mode, each token slot's vocabulary logits.

        Args:
            keys: ``(N, rep_dim)`` (only the last ``code_dim`` entries are read when ``code_dim > 0``).

        Returns:
            ``(vectors (N, P, D), logits (N, S, V) or None)`` with ``S = prompt_len - context_len``.

        Raises:
            RuntimeError: In ``"vocab"`` mode before :meth:`attach_vocabulary`.
        """
        lead = keys.shape[:-1]
        if self.code_dim:
            keys = keys[..., -self.code_dim :]  # (..., C) the prompt code
        x = self.net[0](keys)  # (..., R or C) standardised
        correction = self.net[1:](x).view(*lead, self.prompt_len, self.llm_hidden_size)  # (..., P, D)
        if self.mode == "mlp":
            return correction, None
        if self._vocab is None:
            raise RuntimeError(
                "This prompt encoder mixes the LLM's token embeddings (mode='vocab') and has none attached: "
                "load the editor with RecipeEditor.from_pretrained(path, llm=llm) or call editor.attach_llm(llm)"
            )
        context = self.context.expand(*lead, self.context_len, self.llm_hidden_size)  # (..., C, D)
        if self.token_query is None:  # every token slot comes from the target (append_targets)
            return context + correction, None
        vocab = self._vocab.to(keys.device)
        query = self.token_query(x).view(*lead, self.token_slots, self.llm_hidden_size)  # (..., S, D)
        # vocab @ query^T, not query @ vocab^T: the same products, but with a few query rows CPU GEMM
        # kernels stream the (V, D) table far faster this way round (one key on a 2-core AVX-512 CPU: 2.5 vs 15 ms).
        flat = query.reshape(-1, self.llm_hidden_size)  # (N*S, D)
        logits = (vocab @ flat.T).T.reshape(*lead, self.token_slots, -1)  # (..., S, V)
        logits = logits * self.log_temperature.exp()
        slots = torch.softmax(logits, dim=-1) @ vocab * self._vocab_scale  # (..., S, D)
        return torch.cat([context, slots], dim=-2) + correction, logits

    def append_targets(self, vectors: torch.Tensor, target_ids: list[list[int]]) -> list[torch.Tensor]:
        """Each key's vectors followed by its target's first ``target_slots`` token embeddings.

        Args:
            vectors: ``(N, P, D)`` from :meth:`forward`.
            target_ids: Per row, the LLM token ids of the new target (non-empty).

        Returns:
            N tensors ``(P + min(len(ids), target_slots), D)``; without target slots, the
            rows of ``vectors`` unchanged.

        Raises:
            ValueError: If the lengths disagree or a target has no tokens.
            RuntimeError: Before :meth:`attach_vocabulary`.
        """
        if len(target_ids) != vectors.shape[0]:
            raise ValueError(f"{vectors.shape[0]} prompt vector rows but {len(target_ids)} targets")
        if not self.target_slots:
            return list(vectors)
        if self._vocab is None:
            raise RuntimeError("append_targets needs the LLM's token embeddings: call editor.attach_llm(llm)")
        out = []
        for row, ids in zip(vectors, target_ids):
            if not ids:
                raise ValueError("a target with no tokens has no token slots")
            index = torch.tensor(ids[: self.target_slots], device=self._vocab.device)
            tokens = (self._vocab[index] * self._vocab_scale).to(device=row.device, dtype=row.dtype)  # (S_i, D)
            out.append(torch.cat([row, tokens]))  # (P + S_i, D)
        return out
