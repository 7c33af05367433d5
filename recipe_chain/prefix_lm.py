"""Prefix-injected generation and teacher-forced scoring for any HF causal LM.

RECIPE prefixes an edit's continuous prompt vectors to the LLM's input embeddings.
:class:`PrefixedCausalLM` builds ``inputs_embeds`` for a batch whose rows may carry no
prefix or prefixes of different lengths, left-pads it with correct attention masks and
position ids, and offers:

* :meth:`PrefixedCausalLM.generate` / :meth:`PrefixedCausalLM.stream`: greedy or
  sampled decoding with ``max_new_tokens`` and stop strings that may span tokens;
* :meth:`PrefixedCausalLM.score_targets`: teacher-forced per-token log-probs and argmax
  of a given continuation (what the RECIPE metrics use);
* :meth:`PrefixedCausalLM.target_logits`: the differentiable version (what training uses),
  which runs the LM head only at the target positions.

Layout of one row (``P`` prefix vectors, ``L`` prompt tokens, left padding)::

    [pad ... pad][BOS?][p_1 ... p_P][t_1 ... t_L]

The prefix goes right after a leading BOS token when the tokenizer adds one (Gemma,
Llama-2 style), so the model still sees its usual first token. Embeddings always come
from ``model.get_input_embeddings()``, which includes any scaling an architecture
applies inside its embedding layer (Gemma multiplies by ``√d``), so prefix vectors and
token embeddings share one space.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain.edit_text import check_texts
from recipe_chain.loading import llm_id_of

__all__ = ["PrefixedCausalLM", "PrefixBatch", "TargetScore", "Prefix"]

logger = logging.getLogger(__name__)

Prefix = torch.Tensor | None  # (P, D) or None


@dataclass
class PrefixBatch:
    """A left-padded batch ready for the LM.

    Attributes:
        inputs_embeds: ``(B, T, D)``.
        attention_mask: ``(B, T)``, 0 on padding.
        position_ids: ``(B, T)``, counting real positions from 0.
        token_starts: Per row, the column of its first text token (after BOS and prefix).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    token_starts: list[int]


@dataclass
class TargetScore:
    """Teacher-forced score of one target continuation.

    Attributes:
        target_ids: The target's token ids.
        logprobs: Log-probability of each target token given everything before it.
        argmax_ids: The model's argmax token at each target position.
    """

    target_ids: list[int]
    logprobs: list[float]
    argmax_ids: list[int]

    @property
    def token_accuracy(self) -> float:
        """Share of target tokens the model predicts exactly (the RECIPE metric)."""
        hits = sum(int(a == t) for a, t in zip(self.argmax_ids, self.target_ids))
        return hits / len(self.target_ids)

    @property
    def total_logprob(self) -> float:
        return float(sum(self.logprobs))


class PrefixedCausalLM:
    """Runs a frozen HF causal LM with optional per-row continuous prompt prefixes.

    Args:
        model: Any ``AutoModelForCausalLM`` (tested: Llama/SmolLM2, Gemma3, GPT-2, Qwen2).
        tokenizer: Its tokenizer.

    Example:
        >>> from recipe_chain import PrefixedCausalLM, load_default_llm
        >>> lm = PrefixedCausalLM(*load_default_llm())  # doctest: +SKIP
        >>> lm.generate(["The capital of France is"], max_new_tokens=4)  # doctest: +SKIP
        [' Paris.\\n\\n']
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.embedding = model.get_input_embeddings()
        self.hidden_size: int = self.embedding.embedding_dim
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id: int = int(pad)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids: set[int] = set(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        # A leading BOS stays in front of the prefix only if the tokenizer itself adds one
        # (Gemma, Llama-2). SmolLM2's bos_token <|im_start|> is never added, but its chat
        # template starts with it: there the prefix goes at the very start of the input.
        self._bos_id = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
        self._softcap = getattr(model.config, "final_logit_softcapping", None)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def llm_id(self) -> str:
        return llm_id_of(self.model)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids per text, without padding.

        Raises:
            ValueError: On an empty batch.
            TypeError: On a non-string item.
        """
        texts = check_texts(texts)
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]

    def tokenize_targets(self, targets: Sequence[str]) -> list[list[int]]:
        """Ids of target continuations, with a leading space, without special tokens."""
        targets = check_texts(targets, what="target")
        ids = [self.tokenizer(" " + t.lstrip(), add_special_tokens=False)["input_ids"] for t in targets]
        for t, row in zip(targets, ids):
            if not row:
                raise ValueError(f"Target {t!r} tokenizes to nothing")
        return [list(r) for r in ids]

    def _split_bos(self, ids: list[int]) -> tuple[list[int], list[int]]:
        if self._bos_id is not None and ids and ids[0] == self._bos_id:
            return ids[:1], ids[1:]
        return [], ids

    # ------------------------------------------------------------------ batching
    def check_prefixes(self, prefixes: Sequence[Prefix] | None, batch_size: int) -> list[Prefix]:
        """Validate per-row prefixes; ``None`` means no prefix for any row.

        Raises:
            ValueError: Wrong count, rank or hidden size.
            TypeError: Not a tensor, or a non-floating dtype, or another device/dtype.
        """
        if prefixes is None:
            return [None] * batch_size
        if isinstance(prefixes, torch.Tensor):
            if prefixes.dim() != 3:
                raise ValueError(f"A prefix tensor for a batch must be (B, P, D); got shape {tuple(prefixes.shape)}")
            prefixes = list(prefixes)
        prefixes = list(prefixes)
        if len(prefixes) != batch_size:
            raise ValueError(f"Got {len(prefixes)} prefixes for {batch_size} texts; pass one (or None) per text")
        for i, p in enumerate(prefixes):
            if p is None:
                continue
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"Prefix {i} is {type(p).__name__}; expected a torch.Tensor of shape (P, D) or None")
            if p.dim() != 2:
                raise ValueError(f"Prefix {i} must have rank 2 (P, {self.hidden_size}); got shape {tuple(p.shape)}")
            if p.shape[-1] != self.hidden_size:
                raise ValueError(
                    f"Prefix {i} has hidden size {p.shape[-1]}; this LLM's input embeddings have {self.hidden_size}"
                )
            if not p.is_floating_point():
                raise TypeError(f"Prefix {i} has dtype {p.dtype}; expected a floating dtype ({self.dtype})")
            if p.dtype != self.dtype:
                raise TypeError(f"Prefix {i} has dtype {p.dtype}; the LLM runs in {self.dtype}; cast it first")
            if p.device != self.device:
                raise TypeError(f"Prefix {i} is on {p.device}; the LLM is on {self.device}; move it first")
        return prefixes

    def build_batch(self, token_ids: Sequence[list[int]], prefixes: Sequence[Prefix] | None = None) -> PrefixBatch:
        """Left-padded ``inputs_embeds``/mask/positions for rows of ids with optional prefixes.

        Args:
            token_ids: Per row, its token ids (as :meth:`tokenize` returns them).
            prefixes: Per row, ``(P, D)`` prompt vectors or ``None``.

        Returns:
            A :class:`PrefixBatch`. Gradients flow into the prefixes.
        """
        if not token_ids:
            raise ValueError("Expected at least one row, got an empty batch")
        prefixes = self.check_prefixes(prefixes, len(token_ids))
        rows: list[torch.Tensor] = []
        starts: list[int] = []
        for ids, prefix in zip(token_ids, prefixes):
            bos, rest = self._split_bos(list(ids))
            parts = []
            if bos:
                parts.append(self.embedding(torch.tensor(bos, device=self.device)))  # (1, D)
            if prefix is not None:
                parts.append(prefix)  # (P, D)
            parts.append(self.embedding(torch.tensor(rest, dtype=torch.long, device=self.device)))  # (L, D)
            row = torch.cat(parts)  # (n_i, D)
            rows.append(row)
            starts.append(row.shape[0] - len(rest))
        width = max(r.shape[0] for r in rows)
        pad_emb = self.embedding(torch.tensor([self.pad_token_id], device=self.device))  # (1, D)
        embeds, masks = [], []
        token_starts = []
        for row, start in zip(rows, starts):
            n_pad = width - row.shape[0]
            embeds.append(torch.cat([pad_emb.expand(n_pad, -1), row]) if n_pad else row)
            masks.append(torch.cat([torch.zeros(n_pad, dtype=torch.long), torch.ones(row.shape[0], dtype=torch.long)]))
            token_starts.append(n_pad + start)
        attention_mask = torch.stack(masks).to(self.device)  # (B, T)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # (B, T)
        return PrefixBatch(torch.stack(embeds), attention_mask, position_ids, token_starts)

    def _forward(self, batch: PrefixBatch, **kwargs: object):  # noqa: ANN202
        return self.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            **kwargs,
        )

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def next_token_logits(self, texts: Sequence[str], prefixes: Sequence[Prefix] | None = None) -> torch.Tensor:
        """``(B, V)`` logits of the token after each text (with its prefix)."""
        batch = self.build_batch(self.tokenize(texts), prefixes)
        return self._forward(batch, use_cache=False).logits[:, -1, :].float()

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def target_logits(
        self,
        prompt_ids: Sequence[list[int]],
        target_ids: Sequence[list[int]],
        prefixes: Sequence[Prefix] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable logits at the target positions only.

        Args:
            prompt_ids: Per row, prompt token ids (with special tokens).
            target_ids: Per row, target token ids (see :meth:`tokenize_targets`).
            prefixes: Per row, ``(P, D)`` prompt vectors or ``None``; gradients flow into them.

        Returns:
            ``(logits (B, Lt, V), targets (B, Lt), mask (B, Lt))`` where ``Lt`` is the
            longest target; ``mask`` is 1 on real target tokens.
        """
        if len(prompt_ids) != len(target_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(target_ids)} targets")
        full = [list(p) + list(t) for p, t in zip(prompt_ids, target_ids)]
        batch = self.build_batch(full, prefixes)
        hidden = self.model.base_model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).last_hidden_state  # (B, T, D)
        width = max(len(t) for t in target_ids)
        b = len(full)
        rows = torch.zeros(b, width, dtype=torch.long)
        cols = torch.zeros(b, width, dtype=torch.long)
        targets = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.bool)
        t_total = batch.inputs_embeds.shape[1]
        for i, t in enumerate(target_ids):
            first_target_col = t_total - len(t)  # targets are the last len(t) columns
            for j in range(len(t)):
                rows[i, j] = i
                cols[i, j] = first_target_col + j - 1  # the position that predicts target j
                targets[i, j] = t[j]
                mask[i, j] = True
        picked = hidden[rows, cols]  # (B, Lt, D)
        logits = self._head(picked)  # (B, Lt, V)
        return logits, targets.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def score_targets(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        prefixes: Sequence[Prefix] | None = None,
        *,
        batch_size: int = 16,
    ) -> list[TargetScore]:
        """Teacher-forced log-probs and argmax of ``target`` after ``prompt`` (+ prefix).

        Args:
            prompts: Prompts, e.g. ``"The mother tongue of Danielle Darrieux is"``.
            targets: Continuations, e.g. ``"English"`` (a leading space is added).
            prefixes: Per row, ``(P, D)`` prompt vectors or ``None``.
            batch_size: Rows per forward pass.

        Returns:
            One :class:`TargetScore` per row; ``.token_accuracy`` is the RECIPE metric.
        """
        prompts = check_texts(prompts)
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        prefixes = self.check_prefixes(prefixes, len(prompts))
        prompt_ids = self.tokenize(prompts)
        target_ids = self.tokenize_targets(targets)
        scores: list[TargetScore] = []
        for s in range(0, len(prompts), batch_size):
            sl = slice(s, s + batch_size)
            logits, tgt, mask = self.target_logits(prompt_ids[sl], target_ids[sl], prefixes[sl])
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (b, Lt)
            arg = logits.argmax(-1)  # (b, Lt)
            for i in range(tgt.shape[0]):
                n = int(mask[i].sum())
                scores.append(TargetScore(tgt[i, :n].tolist(), tok_lp[i, :n].tolist(), arg[i, :n].tolist()))
        return scores

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        texts: Sequence[str],
        prefixes: Sequence[Prefix] | None = None,
        *,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[str]:
        """Continue each text; the output never includes the prompt.

        Args:
            texts: Prompts.
            prefixes: Per row, ``(P, D)`` prompt vectors or ``None``.
            max_new_tokens: Upper bound on generated tokens.
            do_sample: Sample instead of greedy decoding.
            temperature: Sampling temperature (``do_sample`` only).
            top_p: Nucleus sampling mass (``do_sample`` only).
            stop: Strings that end generation; the output is cut before the first one.
                They may span several tokens.
            seed: Seed for sampling.
            add_special_tokens: Let the tokenizer add BOS etc. (off for chat-templated text).

        Returns:
            The generated continuation per row.
        """
        texts = check_texts(texts)
        results = ["" for _ in texts]
        for results in self._decode(
            texts, prefixes, max_new_tokens, do_sample, temperature, top_p, stop, seed, add_special_tokens
        ):
            pass
        return results

    @torch.no_grad()
    def stream(
        self,
        text: str,
        prefix: Prefix = None,
        *,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        add_special_tokens: bool = True,
    ) -> Iterator[str]:
        """Yield text deltas of one continuation; they join to :meth:`generate`'s output.

        Text that could still turn into a stop string is held back until it cannot.
        """
        emitted = ""
        for (current,) in self._decode(
            [text], [prefix], max_new_tokens, do_sample, temperature, top_p, stop, seed, add_special_tokens,
            hold_back=True,
        ):
            if len(current) > len(emitted) and current.startswith(emitted):
                yield current[len(emitted):]
                emitted = current

    def _decode(
        self,
        texts: list[str],
        prefixes: Sequence[Prefix] | None,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        stop: Sequence[str] | None,
        seed: int | None,
        add_special_tokens: bool,
        hold_back: bool = False,
    ) -> Iterator[list[str]]:
        """Core KV-cached decoding loop; yields the visible text of every row after each step."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        stops = [s for s in (stop or []) if s]
        batch = self.build_batch(self.tokenize(texts, add_special_tokens=add_special_tokens), prefixes)
        generator = None
        if do_sample:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed if seed is not None else torch.seed())
        b = len(texts)
        generated: list[list[int]] = [[] for _ in range(b)]
        visible = ["" for _ in range(b)]
        done = [False] * b
        if max_new_tokens == 0:
            yield visible
            return
        out = self._forward(batch, use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()  # (B, V)
        mask = batch.attention_mask
        positions = batch.position_ids[:, -1:]  # (B, 1)
        for step in range(max_new_tokens):
            next_ids = self._choose(logits, do_sample, temperature, top_p, generator)  # (B,)
            for i in range(b):
                if done[i]:
                    continue
                tok = int(next_ids[i])
                if tok in self.eos_token_ids:
                    done[i] = True
                    continue
                generated[i].append(tok)
                text = self.tokenizer.decode(generated[i], skip_special_tokens=True)
                cut = _first_stop(text, stops)
                if cut is not None:
                    text, done[i] = text[:cut], True
                visible[i] = text if (done[i] or not hold_back) else _hold_back(text, stops)
            if step == max_new_tokens - 1 or all(done):
                if hold_back:
                    visible = [
                        self.tokenizer.decode(g, skip_special_tokens=True)[: _first_stop_or_len(g, self, stops)]
                        for g in generated
                    ]
                yield visible
                return
            yield visible
            feed = torch.where(
                torch.tensor(done, device=self.device), torch.full_like(next_ids, self.pad_token_id), next_ids
            )
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=mask.device)], dim=1)
            positions = positions + 1
            out = self.model(
                input_ids=feed.unsqueeze(-1),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()

    @staticmethod
    def _choose(
        logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
        if top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer(text)`` (with special tokens) starts with its BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _first_stop_or_len(ids: list[int], lm: PrefixedCausalLM, stops: list[str]) -> int:
    text = lm.tokenizer.decode(ids, skip_special_tokens=True)
    cut = _first_stop(text, stops)
    return len(text) if cut is None else cut


def _hold_back(text: str, stops: list[str]) -> str:
    """Drop a suffix of ``text`` that is a proper prefix of some stop string."""
    keep = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = min(keep, len(text) - k)
                break
    return text[:keep]
