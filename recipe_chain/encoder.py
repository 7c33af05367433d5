"""The knowledge encoder: a transformer backbone with RECIPE pooling and two heads.

Statements ("<prompt> <target_new>") go through the *knowledge* head and become keys;
inputs go through the *query* head. Both share the backbone and its pooling
(first token ‖ mean ‖ max ‖ min over real tokens, as in RECIPE, plus by default the last
content token: the end of a statement is its new target, which the other four pools
dilute among the prompt's tokens).

With ``prompt_code_dim > 0`` a key is ``[retrieval part ‖ prompt code]``: the prompt code
comes from its own head, and a query's last ``prompt_code_dim`` entries are zero, so
``q·k`` (retrieval, the sentinel gate) reads only the retrieval part while the prompt
encoder reads only the code. Retrieval and prompt learning then stop competing for the
same key dimensions. By default the code head reads the features of the backbone
*without* its LoRA adapters: retrieval training teaches the adapters to make a statement
look like its question, which has no target (on the shipped checkpoint, two statements
that differ only in the target have standardised feature cosine 0.98 with the adapters
and 0.69 without), and the target is what the prompt must carry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain.compiled_backbone import CompiledBertBackbone, supports, weights_stamp
from recipe_chain.lora import LoRALinear, adapters_disabled
from recipe_chain.query_window import asking_window

__all__ = ["ResidualMLPHead", "KnowledgeEncoder", "pool_features"]

logger = logging.getLogger(__name__)


def pool_features(hidden: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
    """RECIPE pooling of backbone states.

    Args:
        hidden: ``(B, T, H)`` last hidden states.
        mask: ``(B, T)`` attention mask, 1 for real tokens.
        last_index: ``(B,)`` position of each row's last content token, to append its
            state; ``None`` for the four RECIPE pools only.

    Returns:
        ``(B, 4H)``: first token, mean, max and min over real tokens, concatenated; with
        ``last_index``, ``(B, 5H)`` with the last content token's state appended.
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    first = hidden[:, 0]  # (B, H)
    mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H)
    big = torch.finfo(hidden.dtype).max
    maxed = hidden.masked_fill(m == 0, -big).amax(1)  # (B, H)
    mined = hidden.masked_fill(m == 0, big).amin(1)  # (B, H)
    pools = [first, mean, maxed, mined]
    if last_index is not None:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pools.append(hidden[rows, last_index.to(hidden.device)])  # (B, H)
    return torch.cat(pools, dim=-1)  # (B, 4H or 5H)


def _plain_backend(tokenizer: PreTrainedTokenizerBase) -> Tokenizer | None:
    """A private copy of a fast tokenizer's Rust backend with padding and truncation off;
    ``None`` (use the tokenizer itself) for a slow tokenizer, left padding or no pad token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer) or tokenizer.padding_side != "right" or tokenizer.pad_token_id is None:
        return None
    plain = Tokenizer.from_str(backend.to_str())  # the tokenizer's own backend changes with every call's options
    plain.no_padding()
    plain.no_truncation()
    return plain


class ResidualMLPHead(nn.Module):
    """``(B, in_dim) -> (B, out_dim)``: a projection followed by pre-norm residual MLP blocks."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, blocks: int) -> None:
        super().__init__()
        self.in_norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(out_dim),
                nn.Linear(out_dim, hidden_dim),
                nn.GELU(),
                nn.Linear(hidden_dim, out_dim),
            )
            for _ in range(blocks)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.in_norm(features))  # (B, out)
        for block in self.blocks:
            x = x + block(x)
        return x


class KnowledgeEncoder(nn.Module):
    """Backbone + pooling + knowledge head + query head.

    Args:
        backbone: A Hugging Face encoder (BERT-like ``AutoModel``).
        tokenizer: Its tokenizer.
        rep_dim: Output width of both heads.
        head_hidden_dim: Width of the residual MLP blocks.
        head_blocks: Number of residual blocks per head.
        max_length: Token limit. A longer statement raises ``ValueError`` instead of
            being silently truncated (it would drop its new target); a longer query is
            cut to its asking part (:meth:`query_windows`).
        pool_last_token: Also pool the last content (non-special) token's state.
        prompt_code_dim: Width of the prompt code at the end of each key (0: none; the
            knowledge head then fills the whole key, as in the paper).
        prompt_code_from_base: Compute the prompt code from the backbone without its LoRA
            adapters (a second, gradient-free backbone pass per statement batch; no effect
            without adapters).

    Attributes:
        compiled_inference: Outside training, on a CPU, run a BERT backbone through a
            :class:`~recipe_chain.compiled_backbone.CompiledBertBackbone` (same states up to
            float rounding, about half the time per query). ``True`` by default; set it
            to ``False`` to always run the Hugging Face forward.
        int8_queries: Encode *queries* through a compiled backbone with int8 weights and
            8-bit activations quantised per token (``CompiledBertBackbone(int8=True,
            per_token=True)``): 6.7 ms instead of 9.7 ms per query in the store benchmark,
            and the same false fires and admissions as float32 in the gate benchmark
            (``benchmarks/results/gate_scale-int8-queries.md``). It does not touch
            statements, so a store's keys do not depend on this switch. ``True`` by
            default: it keeps the gate within its latency budget at 100,000 edits
            (``benchmarks/results/store-default-100k.md``).
        int8_statements: Encode *statements* (keys and prompt codes) through the int8
            compiled backbone too: about half the backbone time of a one-statement
            ``add_edit``. At T=1,000 CounterFact edits with int8 queries, Reliability,
            Generality and Locality stayed within 0.4 points of float32
            (``benchmarks/results/eval/cf-T1000-int8-statements``). Keys written this way
            differ from float32 keys by the quantisation error, so a store records each
            key's precision (see :meth:`statement_precision`). ``False`` by default.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        rep_dim: int,
        head_hidden_dim: int,
        head_blocks: int,
        max_length: int,
        pool_last_token: bool = True,
        prompt_code_dim: int = 0,
        prompt_code_from_base: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pool_last_token = pool_last_token
        self._special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self._backend = _plain_backend(tokenizer)
        self.compiled_inference = True
        self.int8_queries = True
        self.int8_statements = False
        # ("adapters" / "base" / "paired" (both in one pass), int8, per-token scales) -> (weights stamp, graph)
        self._compiled: dict[tuple[str, bool, bool], tuple[tuple[int, ...], CompiledBertBackbone]] = {}
        self.prompt_code_from_base = prompt_code_from_base
        self._backbone_params: list[nn.Parameter] | None = None  # listed once: walking the modules costs ~1 ms
        # LoRA is applied before the encoder is built (RecipeEditor does), so this is fixed
        self._has_adapters = any(isinstance(m, LoRALinear) for m in backbone.modules())
        self._compile_failed = False
        self._int8_failed = False
        self._compilable = supports(backbone)  # the backbone module is fixed for the encoder's life
        feat = (5 if pool_last_token else 4) * backbone.config.hidden_size
        if not 0 <= prompt_code_dim < rep_dim:
            raise ValueError(f"prompt_code_dim must be in [0, rep_dim={rep_dim}); got {prompt_code_dim}")
        self.rep_dim = rep_dim
        self.prompt_code_dim = prompt_code_dim
        retrieval_dim = rep_dim - prompt_code_dim
        self.knowledge_head = ResidualMLPHead(feat, retrieval_dim, head_hidden_dim, head_blocks)
        self.query_head = ResidualMLPHead(feat, retrieval_dim, head_hidden_dim, head_blocks)
        self._head_shape = (head_hidden_dim, head_blocks)
        self.prompt_code_head: nn.Module | None = None
        self.set_prompt_code(prompt_code_dim)

    def set_prompt_code(self, dim: int) -> None:
        """Give keys a new, untrained prompt code of width ``dim`` (0 removes it); the other heads stay.

        ``rep_dim`` becomes the retrieval part's width plus ``dim``.
        """
        retrieval_dim = self.rep_dim - self.prompt_code_dim
        if dim < 0:
            raise ValueError(f"prompt code width must be >= 0; got {dim}")
        self.prompt_code_dim = dim
        self.rep_dim = retrieval_dim + dim
        self.prompt_code_head = None
        if dim:
            feat = self.knowledge_head.proj.in_features
            self.prompt_code_head = nn.Sequential(
                ResidualMLPHead(feat, dim, *self._head_shape),
                # a fixed per-key scale: the cosine HNSW index sees every code at the same norm
                nn.LayerNorm(dim, elementwise_affine=False),
            ).to(self.knowledge_head.proj.weight.device)

    @property
    def device(self) -> torch.device:
        return next(self.knowledge_head.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize with padding; raise if any text exceeds ``max_length`` tokens.

        A fast (Rust) tokenizer is called directly, through a private copy of its backend
        with padding and truncation off: the same ids, mask and token types as
        ``tokenizer(texts, padding=True)`` in about half the time (0.15 ms instead of 0.3 ms for one query).
        """
        if self._backend is not None:
            # encode_batch hands the texts to a thread pool: worth it for big batches only
            encodings = self._backend.encode_batch(texts) if len(texts) > 8 else [self._backend.encode(t) for t in texts]
            lengths = [len(e.ids) for e in encodings]
            self._check_lengths(lengths, texts)
            width = max(lengths)
            pad_id = self.tokenizer.pad_token_id
            batch = {
                "input_ids": torch.tensor([e.ids + [pad_id] * (width - len(e.ids)) for e in encodings]),  # (B, T)
                "token_type_ids": torch.tensor([e.type_ids + [0] * (width - len(e.ids)) for e in encodings]),
                "attention_mask": torch.tensor([e.attention_mask + [0] * (width - len(e.ids)) for e in encodings]),
            }
            if "token_type_ids" not in self.tokenizer.model_input_names:
                del batch["token_type_ids"]
        else:
            batch = dict(self.tokenizer(texts, padding=True, truncation=False, return_tensors="pt"))
            self._check_lengths(batch["attention_mask"].sum(1).tolist(), texts)
        device = self.device
        return batch if device.type == "cpu" else {k: v.to(device) for k, v in batch.items()}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of ``texts`` with the special tokens, as :meth:`tokenize` counts them."""
        if self._backend is not None:
            return [len(e.ids) for e in self._backend.encode_batch(list(texts))]
        return [len(ids) for ids in self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]

    def _tail_tokens(self, text: str, n: int) -> str:
        if self._backend is not None:  # no "longer than the maximum sequence length" warning
            ids = self._backend.encode(text, add_special_tokens=False).ids
        else:
            ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return self.tokenizer.decode(ids[-n:])

    def query_windows(self, texts: Sequence[str]) -> list[str]:
        """What the query head reads of each text: the text, or its asking part when too long.

        See :mod:`recipe_chain.query_window`: the last sentence of a text over
        ``max_length``. Statements never pass through here: a cut statement
        would lose its new target, so they keep the length error.
        """
        # Every token covers at least one character: a text of at most max_length - 2
        # characters fits without being tokenized twice (most queries).
        long = [i for i, t in enumerate(texts) if len(t) + 2 > self.max_length]
        if not long:
            return list(texts)
        counts = [0] * len(texts)
        for i, c in zip(long, self.count_tokens([texts[i] for i in long])):
            counts[i] = c
        return [
            t if c <= self.max_length else asking_window(t, self.count_tokens, self.max_length, self._tail_tokens)
            for t, c in zip(texts, counts)
        ]

    def _check_lengths(self, lengths: list[int], texts: list[str]) -> None:
        for i, length in enumerate(lengths):
            if length > self.max_length:
                raise ValueError(
                    f"Text {i} has {length} tokens; the knowledge encoder accepts at most {self.max_length}. "
                    f"Shorten it (a statement is '<prompt> <target_new>'). Text: {texts[i][:80]!r}"
                )

    def features(
        self, batch: dict[str, torch.Tensor], *, adapters: bool = True, int8: bool = False, per_token: bool = False
    ) -> torch.Tensor:
        """``(B, 4H)`` or ``(B, 5H)`` pooled backbone features of a tokenized batch.

        Args:
            batch: The output of :meth:`tokenize`.
            adapters: ``False`` runs the backbone without its LoRA adapters (no gradient
                reaches them then).
            int8: Use the int8 compiled backbone where a compiled one is used.
            per_token: With ``int8``, activation scales per token.
        """
        compiled = self._compiled_backbone("adapters" if adapters else "base", int8=int8, per_token=per_token)
        if compiled is not None:
            hidden = self._run_compiled(compiled, batch)  # (B, T, H)
        elif adapters:
            hidden = self.backbone(**batch).last_hidden_state  # (B, T, H)
        else:
            with adapters_disabled(self.backbone):
                hidden = self.backbone(**batch).last_hidden_state  # (B, T, H)
        return self._pool(hidden, batch)

    def _pool(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor], copies: int = 1) -> torch.Tensor:
        """:func:`pool_features` of ``(copies * B, T, H)`` states: ``copies`` runs of ``batch`` stacked."""
        mask = batch["attention_mask"].repeat(copies, 1)  # (copies * B, T)
        last = self._last_content_index(batch).repeat(copies) if self.pool_last_token else None
        return pool_features(hidden, mask, last)

    @staticmethod
    def _run_compiled(compiled: CompiledBertBackbone, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        types = batch.get("token_type_ids")
        if types is None:
            types = torch.zeros_like(batch["input_ids"])
        return compiled(batch["input_ids"], types, batch["attention_mask"])

    def statement_features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(features, code_features)`` of a tokenized statement batch: what
        :meth:`keys_from_features` reads.

        When the prompt code reads the backbone without its adapters and the compiled
        forward is usable, both come from one paired pass (about 80 % of the time of two
        passes on a CPU: 22 vs 27 ms for one statement on one thread); otherwise from :meth:`features` and :meth:`code_features`.
        """
        int8 = bool(self.int8_statements)
        paired = self._compiled_backbone("paired", int8=int8) if self.code_reads_base_features else None
        if paired is None:
            features = self.features(batch, int8=int8)
            return features, self.code_features(batch, features, int8=int8)
        hidden = self._run_compiled(paired, batch)  # (2B, T, H): with adapters, then without
        return self._pool(hidden, batch, copies=2).chunk(2)  # type: ignore[return-value]

    @property
    def code_reads_base_features(self) -> bool:
        """Whether the prompt code needs its own, adapter-free backbone pass."""
        return bool(self.prompt_code_dim and self.prompt_code_from_base and self._has_adapters)

    def code_features(
        self, batch: dict[str, torch.Tensor], features: torch.Tensor, *, int8: bool = False
    ) -> torch.Tensor | None:
        """What the prompt-code head reads for ``batch``: ``None`` means ``features`` itself."""
        if not self.code_reads_base_features:
            return None
        with torch.no_grad():  # the base backbone is frozen
            return self.features(batch, adapters=False, int8=int8)

    @torch.no_grad()
    def statement_precision(self) -> Literal["float32", "int8"]:
        """``"int8"`` if statements encoded now go through the int8 compiled backbone.

        That takes :attr:`int8_statements`, a backbone the compiled forward supports, a
        CPU, eval mode and int8 kernels that compiled (a failed int8 compile falls back
        to float32, and this then says so).
        """
        if not self.int8_statements or self.training:
            return "float32"
        compiled = self._compiled_backbone("paired" if self.code_reads_base_features else "adapters", int8=True)
        return "int8" if compiled is not None and compiled.int8 else "float32"

    def _compiled_backbone(
        self, mode: Literal["adapters", "base", "paired"], *, int8: bool = False, per_token: bool = False
    ) -> CompiledBertBackbone | None:
        """The compiled backbone for this call, or ``None`` to run the Hugging Face forward.

        Args:
            mode: ``"adapters"``, ``"base"`` (adapters off) or ``"paired"`` (both in one pass).
            int8: The int8 graph (float32 if int8 compiling failed before).
            per_token: With ``int8``, activation scales per token (queries).
        """
        usable = (
            self.compiled_inference
            and not self._compile_failed
            and not self.training
            and not torch.is_grad_enabled()
            and self.device.type == "cpu"
            and self._compilable
        )
        if not usable:
            return None
        if self._backbone_params is None:
            self._backbone_params = list(self.backbone.parameters())
        stamp = weights_stamp(self._backbone_params)
        int8 = int8 and not self._int8_failed
        per_token = per_token and int8
        cached = self._compiled.get((mode, int8, per_token))
        if cached is None or cached[0] != stamp:
            try:
                compiled = CompiledBertBackbone(
                    self.backbone, adapters=mode != "base", paired=mode == "paired", int8=int8, per_token=per_token
                )
            except Exception:  # noqa: BLE001 - any failure only costs speed
                if int8:
                    logger.warning("Compiling an int8 backbone failed; using float32", exc_info=True)
                    self._int8_failed = True
                    return self._compiled_backbone(mode)
                logger.warning("Compiling the backbone failed; using the Hugging Face forward", exc_info=True)
                self._compile_failed = True
                return None
            cached = (stamp, compiled)
            self._compiled[(mode, int8, per_token)] = cached
        return cached[1]

    def _last_content_index(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B,)``: position of each row's last real, non-special token (``[SEP]`` and padding skipped)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, T), (B, T)
        content = mask.bool() & ~torch.isin(ids, self._special_ids.to(ids.device))  # (B, T)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # (B, T)
        last = torch.where(content, positions, -1).amax(1)  # (B,)
        # a row of special tokens only (no content) falls back to its last real token
        return torch.where(last >= 0, last, mask.sum(1) - 1)

    def features_from_embeds(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Features of raw backbone input embeddings ``(B, T, H)`` (all tokens real, the last is content)."""
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        out = self.backbone(inputs_embeds=inputs_embeds, attention_mask=mask)
        last = torch.full((inputs_embeds.shape[0],), inputs_embeds.shape[1] - 1, device=inputs_embeds.device)
        return pool_features(out.last_hidden_state, mask, last if self.pool_last_token else None)

    def keys_from_features(self, features: torch.Tensor, code_features: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, F) -> (B, rep_dim)`` statement keys: the knowledge head's output ‖ the prompt code.

        Args:
            features: Pooled backbone features (:meth:`features`).
            code_features: What the prompt-code head reads (:meth:`code_features`);
                ``None``: ``features``.
        """
        keys = self.knowledge_head(features)  # (B, rep_dim - C)
        if self.prompt_code_head is None:
            return keys
        code = self.prompt_code_head(features if code_features is None else code_features)  # (B, C)
        return torch.cat([keys, code], dim=-1)  # (B, rep_dim)

    def queries_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F) -> (B, rep_dim)`` query representations: the query head's output ‖ zeros."""
        queries = self.query_head(features)  # (B, rep_dim - C)
        if not self.prompt_code_dim:
            return queries
        return torch.nn.functional.pad(queries, (0, self.prompt_code_dim))  # (B, rep_dim)

    def encode_statement_batch(self, texts: list[str]) -> torch.Tensor:
        """``(B, rep_dim)`` keys of statements, with gradients."""
        return self.keys_from_features(*self.statement_features(self.tokenize(texts)))

    def encode_query_batch(self, texts: list[str]) -> torch.Tensor:
        """``(B, rep_dim)`` query representations, with gradients."""
        batch = self.tokenize(self.query_windows(texts))
        int8 = bool(self.int8_queries)
        return self.queries_from_features(self.features(batch, int8=int8, per_token=int8))
