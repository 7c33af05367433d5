"""``RecipeEditor``: the trainable half of RECIPE in one module, plus its checkpoint format.

It bundles the knowledge encoder (backbone + knowledge head + query head), the
Knowledge Sentinel and the prompt encoder, and offers the inference API the store
and the LangChain components use:

* :meth:`RecipeEditor.encode_statements` / :meth:`RecipeEditor.encode_queries`
  (asymmetric encoding, like ``encode_document``/``encode_query``),
* :meth:`RecipeEditor.sentinel_key`,
* :meth:`RecipeEditor.prompt_vectors`,
* :meth:`RecipeEditor.similarity` (``q·k/√d``, as in the paper).

A checkpoint directory holds ``config.json`` (a :class:`RecipeConfig`) and
``model.safetensors`` with the trained tensors only: heads, sentinel, prompt encoder
and the backbone's LoRA adapters. The backbone's base weights are referenced by
``backbone_id`` (the packaged default, or a local path). With
``backbone_tuning="full"`` the whole backbone is saved inside the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain.config import CHECKPOINT_FORMAT_VERSION, RecipeConfig
from recipe_chain.encoder import KnowledgeEncoder
from recipe_chain.edit_text import check_texts
from recipe_chain.errors import CheckpointMismatchError
from recipe_chain.loading import DEFAULT_ENCODER_ID, llm_id_of, load_default_encoder, load_encoder, resolve_encoder
from recipe_chain.checkpoint_io import atomic_directory, load_trained_state
from recipe_chain.lora import apply_lora
from recipe_chain.prompt_encoder import PromptEncoder
from recipe_chain.sentinel import KnowledgeSentinel
from recipe_chain.verifier import VERIFIER_DIR, EditVerifier

__all__ = ["RecipeEditor", "statement_of", "scaled_dot"]

logger = logging.getLogger(__name__)

_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_BACKBONE_DIR = "backbone"
_LLM_TOKENIZER_DIR = "llm_tokenizer"  # with target slots: the LLM's tokenizer, so the checkpoint is self-contained
_SENTINEL_INIT_TEXT = "no relevant knowledge"


def statement_of(prompt: str, target_new: str) -> str:
    """The knowledge statement of an edit: ``"<prompt> <target_new>"``."""
    return f"{prompt.rstrip()} {target_new.strip()}"


def scaled_dot(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """RECIPE similarity ``q·k/√d``: ``(Q, d) x (K, d) -> (Q, K)``."""
    return queries @ keys.T / math.sqrt(queries.shape[-1])


class RecipeEditor(nn.Module):
    """Knowledge encoder + Knowledge Sentinel + prompt encoder.

    Build a fresh (untrained) editor with :meth:`from_backbone`, or load a trained one
    with :meth:`from_pretrained`.

    Example:
        >>> from recipe_chain import RecipeEditor, load_default_llm
        >>> llm, _ = load_default_llm()  # doctest: +SKIP
        >>> editor = RecipeEditor.from_pretrained("ckpt/", llm=llm)  # doctest: +SKIP
        >>> keys = editor.encode_statements(["The capital of France is Rome"])  # doctest: +SKIP
        >>> editor.prompt_vectors(keys).shape  # doctest: +SKIP
        torch.Size([1, 4, 576])
    """

    def __init__(self, config: RecipeConfig, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        if backbone.config.hidden_size != config.backbone_hidden_size:
            raise CheckpointMismatchError(
                f"Backbone hidden size {backbone.config.hidden_size} != config.backbone_hidden_size "
                f"{config.backbone_hidden_size} (backbone {config.backbone_id!r})"
            )
        self.config = config
        if config.backbone_tuning == "lora":
            backbone.requires_grad_(False)
            wrapped = apply_lora(backbone, config.lora_targets, config.lora_rank, config.lora_alpha)
            if not wrapped:
                raise ValueError(f"No backbone nn.Linear named any of {config.lora_targets} to adapt with LoRA")
        elif config.backbone_tuning == "frozen":
            backbone.requires_grad_(False)
        self.encoder = KnowledgeEncoder(
            backbone,
            tokenizer,
            rep_dim=config.rep_dim,
            head_hidden_dim=config.head_hidden_dim,
            head_blocks=config.head_blocks,
            max_length=config.max_length,
            pool_last_token=config.pool_last_token,
            prompt_code_dim=config.prompt_code_dim,
            prompt_code_from_base=config.prompt_code_from_base,
        )
        self.sentinel = KnowledgeSentinel.from_text(self.encoder, _SENTINEL_INIT_TEXT, config.sentinel_len)
        self.prompt_encoder = PromptEncoder.from_config(config)
        self._fingerprint: str | None = None
        self.gate_verifier = None
        self.llm_tokenizer: PreTrainedTokenizerBase | None = None  # target slots tokenize targets with it
        self.eval()

    def __setattr__(self, name: str, value: object) -> None:
        if name == "gate_verifier":  # the property below, never a registered submodule
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @property
    def gate_verifier(self) -> EditVerifier | None:
        """The gate's second stage shipped with this checkpoint (``None``: the sentinel alone).

        Kept outside the module tree: it reads texts, not keys, so it is not part of the
        editor's fingerprint and a store needs no reindex when it changes.
        """
        return self.__dict__["_gate_verifier"]

    @gate_verifier.setter
    def gate_verifier(self, verifier: EditVerifier | None) -> None:
        if verifier is not None and not isinstance(verifier, EditVerifier):
            raise TypeError(f"gate_verifier must be an EditVerifier or None, got {type(verifier).__name__}")
        self.__dict__["_gate_verifier"] = verifier  # not registered as a submodule (see the property)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        llm: PreTrainedModel,
        backbone: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        backbone_id: str | None = None,
        seed: int | None = 0,
        **config_kwargs: object,
    ) -> "RecipeEditor":
        """A fresh, randomly initialised editor for ``llm``.

        Args:
            llm: The frozen causal LM the prompt vectors will be prefixed to.
            backbone: Retriever backbone; defaults to the packaged all-MiniLM-L6-v2.
            tokenizer: The backbone's tokenizer (required with ``backbone``).
            backbone_id: Identity to record; required for a custom backbone unless the
                backbone came from a local directory (then its path is used).
            seed: Seed for the new heads' initialisation (``None`` keeps the global RNG).
            **config_kwargs: Overrides of :class:`RecipeConfig` fields.
        """
        if backbone is None:
            backbone, tokenizer = load_default_encoder()
            backbone_id = backbone_id or DEFAULT_ENCODER_ID
        if tokenizer is None:
            raise ValueError("Pass the backbone's tokenizer together with the backbone")
        backbone_id = backbone_id or getattr(backbone.config, "recipe_chain_backbone_id", None) or getattr(
            backbone.config, "_name_or_path", ""
        )
        if not backbone_id:
            raise ValueError("Pass backbone_id= to identify a custom backbone in checkpoints")
        emb = llm.get_input_embeddings()
        with torch.no_grad():
            sample = emb(torch.arange(min(4096, emb.num_embeddings), device=emb.weight.device))
        config_kwargs.setdefault("prompt_init_std", float(sample.float().std()))
        config = RecipeConfig(
            backbone_id=backbone_id,
            backbone_hidden_size=backbone.config.hidden_size,
            llm_id=llm_id_of(llm),
            llm_hidden_size=emb.embedding_dim,
            **config_kwargs,  # type: ignore[arg-type]
        )

        def build() -> "RecipeEditor":
            editor = cls(config, backbone, tokenizer)
            editor.attach_llm(llm)
            editor.prompt_encoder.init_context_from_vocabulary(emb)
            return editor

        if seed is None:
            return build()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        llm: PreTrainedModel | None = None,
        backbone: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> "RecipeEditor":
        """Load a checkpoint written by :meth:`save_pretrained`.

        Args:
            path: Checkpoint directory.
            llm: If given, checked against the checkpoint's LLM id and hidden size.
            backbone: The base backbone, when ``backbone_id`` is neither the packaged
                default nor a local directory.
            tokenizer: Its tokenizer.

        Raises:
            FileNotFoundError: If the directory has no checkpoint.
            CheckpointMismatchError: If ``llm`` differs from the one it was trained for,
                or the format version is unknown.
        """
        path = Path(path)
        config_file = path / _CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"No RECIPE checkpoint at {path} (missing {_CONFIG_FILE})")
        raw = json.loads(config_file.read_text())
        raw.pop("fingerprint", None)
        # fields added since format 1 was first written: absent means the behaviour of then
        raw.setdefault("prompt_input_norm", "layer")
        raw.setdefault("pool_last_token", False)
        raw.setdefault("prompt_encoder", "mlp")
        config = RecipeConfig.model_validate(raw)
        if config.format_version != CHECKPOINT_FORMAT_VERSION:
            raise CheckpointMismatchError(
                f"Checkpoint format {config.format_version} at {path}; this version of recipe-chain "
                f"reads format {CHECKPOINT_FORMAT_VERSION}"
            )
        if llm is not None:
            check_llm_matches(config, llm, where=str(path))
        elif config.prompt_encoder == "vocab":
            logger.info("Editor %s loaded without its LLM: prompt vectors need editor.attach_llm(llm)", path)
        if backbone is None:
            backbone, tokenizer = _resolve_backbone(config, path)
        elif tokenizer is None:
            raise ValueError("Pass the backbone's tokenizer together with the backbone")
        editor = cls(config, backbone, tokenizer)
        load_trained_state(editor, path / _WEIGHTS_FILE, editor.trainable_state_dict(), f"Checkpoint {path} of this editor")
        if (path / _LLM_TOKENIZER_DIR).is_dir():
            editor.llm_tokenizer = AutoTokenizer.from_pretrained(path / _LLM_TOKENIZER_DIR)
        if llm is not None:
            editor.attach_llm(llm)
        if (path / VERIFIER_DIR / _CONFIG_FILE).is_file():
            editor.gate_verifier = EditVerifier.from_pretrained(path / VERIFIER_DIR)
        editor.eval()
        return editor

    def attach_llm(self, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        """Bind the frozen LLM the prompt vectors are for (its token embeddings, in ``"vocab"`` mode).

        Args:
            llm: The causal LM this editor was built for.
            tokenizer: Its tokenizer. Target slots (``prompt_target_slots``) need it; a
                checkpoint with target slots carries its own copy, so pass it only when
                building or training an editor.

        Raises:
            CheckpointMismatchError: If ``llm`` is not that LLM.
        """
        check_llm_matches(self.config, llm, where="editor")
        self.prompt_encoder.attach_vocabulary(llm.get_input_embeddings())
        if tokenizer is not None:
            self.llm_tokenizer = tokenizer

    def replace_prompt_encoder(self, llm: PreTrainedModel, *, seed: int | None = 0, **fields: object) -> None:
        """Swap in a new, untrained prompt encoder; the knowledge encoder and the sentinel stay.

        For training a different prompt encoder on top of an already trained retriever
        (``recipe-chain train --init-encoder-from``). Stores written with the old
        prompt encoder no longer match this editor's fingerprint.

        Args:
            llm: The LLM the editor was built for.
            seed: Seed of the new weights (``None``: the global RNG).
            **fields: Prompt-encoder fields of :class:`RecipeConfig` to change
                (``prompt_len``, ``prompt_encoder``, ``prompt_context_len``,
                ``prompt_hidden_dim``, ``prompt_input_norm``, ``prompt_code_dim``,
                ``prompt_code_from_base``, ``prompt_target_slots``). A
                ``prompt_code_dim`` gives the keys a new, untrained prompt-code head
                (``rep_dim`` = the retrieval part + the code); the retrieval part of every
                key stays exactly as it was.

        Raises:
            ValueError: For a field that is not a prompt-encoder field.
        """
        allowed = {"prompt_len", "prompt_encoder", "prompt_context_len", "prompt_hidden_dim", "prompt_input_norm",
                   "prompt_code_dim", "prompt_code_from_base", "prompt_target_slots"}
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(f"replace_prompt_encoder changes only {sorted(allowed)}; got {unknown}")
        values = self.config.model_dump() | fields
        if "prompt_len" in fields and "prompt_context_len" not in fields:
            values["prompt_context_len"] = None  # the default for the new length
        if "prompt_code_dim" in fields:  # the retrieval part stays; the key grows or shrinks by the code
            values["rep_dim"] = self.config.rep_dim - self.config.prompt_code_dim + int(fields["prompt_code_dim"])  # type: ignore[call-overload]
        config = RecipeConfig.model_validate(values)
        emb = llm.get_input_embeddings()
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            if config.prompt_code_dim != self.config.prompt_code_dim or "prompt_code_dim" in fields:
                self.encoder.set_prompt_code(config.prompt_code_dim)
            self.encoder.prompt_code_from_base = config.prompt_code_from_base
            encoder = PromptEncoder.from_config(config)
            encoder.init_context_from_vocabulary(emb)
        self.config = config
        self.prompt_encoder = encoder.to(self.device)
        self.attach_llm(llm)
        self.invalidate_fingerprint()
        self.train(self.training)

    # ------------------------------------------------------------------ checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores (everything except a frozen/LoRA'd backbone's base)."""
        state = self.state_dict()
        if self.config.backbone_tuning == "full":
            return state
        prefix = "encoder.backbone."
        return {
            k: v for k, v in state.items() if not k.startswith(prefix) or k.endswith(("lora_a", "lora_b"))
        }

    def save_pretrained(self, path: str | os.PathLike[str], *, dtype: str | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (temp dir, then rename).

        Args:
            path: Checkpoint directory (replaced if it exists).
            dtype: ``"float16"`` or ``"bfloat16"`` stores the trained weights at that
                precision (half the size; running statistics stay float32), and
                :meth:`from_pretrained` loads them back into float32. The checkpoint's
                fingerprint is that of the rounded weights; this in-memory editor keeps
                its full-precision weights, so reload the checkpoint to use what was saved.

        Returns:
            The checkpoint directory.

        Raises:
            ValueError: For another ``dtype``.

        Example:
            >>> editor.save_pretrained("ckpt-small", dtype="float16")  # doctest: +SKIP
        """
        storage = {None: None, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if dtype not in storage:
            raise ValueError(f"dtype must be None, 'float16' or 'bfloat16'; got {dtype!r}")
        path = Path(path)
        with atomic_directory(path) as tmp:
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.trainable_state_dict().items()}
            if storage[dtype] is not None:
                parameters = {name for name, _ in self.named_parameters()}
                tensors = {k: v.to(storage[dtype]) if k in parameters and v.is_floating_point() else v
                           for k, v in tensors.items()}
            save_file(tensors, str(tmp / _WEIGHTS_FILE), metadata={"format": "pt"})
            os.chmod(tmp / _WEIGHTS_FILE, 0o644)
            fingerprint = _hash_tensors(tensors, self.config)
            self._fingerprint = fingerprint if dtype is None else None
            config = self.config.model_dump(mode="json") | {"fingerprint": fingerprint}
            (tmp / _CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            if self.config.backbone_tuning == "full":
                self.encoder.backbone.save_pretrained(tmp / _BACKBONE_DIR)
                self.encoder.tokenizer.save_pretrained(tmp / _BACKBONE_DIR)
            if self.gate_verifier is not None:
                self.gate_verifier.save_pretrained(tmp / VERIFIER_DIR)
            if self.config.prompt_target_slots:
                self._require_llm_tokenizer().save_pretrained(tmp / _LLM_TOKENIZER_DIR)
        return path

    @property
    def fingerprint(self) -> str:
        """A short hash of the config and the trained tensors; stores record it."""
        if self._fingerprint is None:
            tensors = {k: v.detach().cpu() for k, v in self.trainable_state_dict().items()}
            self._fingerprint = _hash_tensors(tensors, self.config)
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Forget the cached fingerprint (call after changing weights, e.g. in training)."""
        self._fingerprint = None

    # ------------------------------------------------------------------ inference API
    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def int8_queries(self) -> bool:
        """Encode queries with int8 MiniLM weights on a CPU (:attr:`KnowledgeEncoder.int8_queries`).

        ``True`` by default: a query encodes in about 70 % of the float32 time on a small
        CPU, and the gate's false fires and admissions stayed those of float32 queries
        (``benchmarks/results/gate_scale-int8-queries.md``). ``False`` encodes queries in
        float32. Statements, hence a store's keys and
        prompt vectors, are not affected (see :attr:`int8_statements`), so the switch can
        be flipped on an existing store. It applies where the compiled backbone does (a
        BERT backbone, on a CPU, outside training).

        Example:
            >>> editor.int8_queries = False  # doctest: +SKIP
            >>> store.gate("What is the mother tongue of Danielle Darrieux?")  # doctest: +SKIP
        """
        return bool(self.encoder.int8_queries)

    @int8_queries.setter
    def int8_queries(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"int8_queries must be a bool, got {value!r}")
        self.encoder.int8_queries = value

    @property
    def int8_statements(self) -> bool:
        """Encode statements (keys) with int8 MiniLM weights on a CPU (:attr:`KnowledgeEncoder.int8_statements`).

        ``False`` by default. ``True`` roughly halves the backbone time of a
        one-statement ``add_edit``; with int8 queries too, a lifelong run of 1,000
        CounterFact edits kept Reliability, Generality and Locality within 0.4 points of
        float32 (``benchmarks/results/eval/cf-T1000-int8-statements``). Only keys written
        after the switch change; a store records each key's precision in its metadata
        (``key_precision``), and :meth:`RecipeKnowledgeStore.reindex` re-encodes every
        statement with the setting of its editor.

        Example:
            >>> editor.int8_statements = True  # doctest: +SKIP
            >>> store.add_edit("The mother tongue of Danielle Darrieux is", "English")  # doctest: +SKIP
        """
        return bool(self.encoder.int8_statements)

    @int8_statements.setter
    def int8_statements(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"int8_statements must be a bool, got {value!r}")
        self.encoder.int8_statements = value

    def statement_precision(self) -> str:
        """``"int8"`` or ``"float32"``: how :meth:`encode_statements` encodes now (see
        :meth:`KnowledgeEncoder.statement_precision`)."""
        return self.encoder.statement_precision()

    @torch.no_grad()
    def encode_statements(self, statements: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Keys of knowledge statements through the knowledge head.

        Args:
            statements: Texts such as ``"The mother tongue of Danielle Darrieux is English"``.
            batch_size: Texts per backbone forward pass.

        Returns:
            ``(N, rep_dim)`` float32 keys.
        """
        return self._encode(statements, batch_size, self.encoder.encode_statement_batch)

    @torch.no_grad()
    def encode_queries(self, queries: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Query representations through the query head: ``(N, rep_dim)``."""
        return self._encode(queries, batch_size, self.encoder.encode_query_batch)

    def _encode(self, texts: Sequence[str], batch_size: int, fn) -> torch.Tensor:  # noqa: ANN001
        texts = check_texts(texts)
        with self._eval_mode():
            parts = [fn(list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
        return torch.cat(parts).float()

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode inside the block; afterwards every module's own mode as it was.

        Only modules in training mode are switched (and switched back), and they are found
        with a plain walk over the module tree: ``Module.modules()`` costs about 0.3-1.3 ms for
        the editor's ~200 modules, this walk about 0.1 ms.
        """
        training: list[nn.Module] = []
        stack: list[nn.Module | None] = [self]
        while stack:
            module = stack.pop()
            if module is None:  # a registered child may be None
                continue
            if module.training:
                training.append(module)
            stack.extend(module._modules.values())
        for module in training:
            module.training = False
        try:
            yield
        finally:
            for module in training:
                module.training = True

    @torch.no_grad()
    def sentinel_key(self) -> torch.Tensor:
        """``(rep_dim,)``: the Knowledge Sentinel's representation."""
        with self._eval_mode():
            return self.sentinel(self.encoder).float()

    @torch.no_grad()
    def prompt_vectors(self, keys: torch.Tensor) -> torch.Tensor:
        """``(N, rep_dim) -> (N, prompt_len, llm_hidden_size)`` continuous prompt vectors (of stored keys)."""
        if keys.dim() != 2 or keys.shape[-1] != self.config.rep_dim:
            raise ValueError(f"keys must have shape (N, {self.config.rep_dim}); got {tuple(keys.shape)}")
        return self.prompt_encoder(keys.to(self.device, torch.float32))

    def target_token_ids(self, targets: Sequence[str]) -> list[list[int]]:
        """The LLM token ids of new targets, as the LLM scores them (a leading space, no special tokens)."""
        tokenizer = self._require_llm_tokenizer()
        ids = [tokenizer(" " + t.strip(), add_special_tokens=False)["input_ids"] for t in targets]
        for t, row in zip(targets, ids):
            if not row:
                raise ValueError(f"Target {t!r} tokenizes to nothing in the LLM's tokenizer")
        return ids

    def prefix_vectors(self, keys: torch.Tensor, targets: Sequence[str]) -> list[torch.Tensor]:
        """The whole prefix of each edit: its prompt vectors, then its target's token slots.

        Args:
            keys: ``(N, rep_dim)`` stored keys.
            targets: The N edits' new targets (read only with ``prompt_target_slots``).

        Returns:
            N tensors ``(P_i, llm_hidden_size)``: ``P_i = prompt_len`` plus, with target
            slots, the target's length in LLM tokens up to ``prompt_target_slots``.

        Raises:
            ValueError: If the lengths disagree or ``keys`` has the wrong shape.
            RuntimeError: With target slots but no LLM tokenizer.
        """
        if len(targets) != keys.shape[0]:
            raise ValueError(f"{keys.shape[0]} keys but {len(targets)} targets")
        vectors = self.prompt_vectors(keys)  # (N, P, D)
        if not self.config.prompt_target_slots:
            return list(vectors)
        return self.prompt_encoder.append_targets(vectors, self.target_token_ids(targets))

    def _require_llm_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.llm_tokenizer is None:
            raise RuntimeError(
                "This editor reads token slots from each edit's target (prompt_target_slots="
                f"{self.config.prompt_target_slots}) and has no LLM tokenizer: call editor.attach_llm(llm, tokenizer)"
            )
        return self.llm_tokenizer

    @staticmethod
    def similarity(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """RECIPE similarity ``q·k/√d``: ``(Q, d) x (K, d) -> (Q, K)``."""
        return scaled_dot(queries, keys)


def check_llm_matches(config: RecipeConfig, llm: PreTrainedModel, where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` if ``llm`` is not the LLM ``config`` was built for."""
    llm_id = llm_id_of(llm)
    hidden = llm.get_input_embeddings().embedding_dim
    if llm_id != config.llm_id or hidden != config.llm_hidden_size:
        raise CheckpointMismatchError(
            f"The RECIPE {where} was trained for LLM {config.llm_id!r} (hidden size "
            f"{config.llm_hidden_size}), but was given {llm_id!r} (hidden size {hidden}). "
            "Train a checkpoint for this LLM with `recipe-chain train --llm ...`."
        )


def _resolve_backbone(config: RecipeConfig, path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if config.backbone_tuning == "full":
        return load_encoder(path / _BACKBONE_DIR)
    return resolve_encoder(config.backbone_id, where=f"Checkpoint {path}")


def _hash_tensors(tensors: dict[str, torch.Tensor], config: RecipeConfig) -> str:
    # Checkpoints written before ``prompt_input_norm`` and ``pool_last_token`` existed (a
    # LayerNorm'd prompt encoder, four pools): hash their config as it was written then, so
    # their fingerprints (and the stores built with them) stay valid.
    # Likewise before ``prompt_encoder`` / ``prompt_context_len`` (every such checkpoint is "mlp").
    exclude: set[str] = set()
    if config.prompt_input_norm == "layer":
        exclude |= {"prompt_input_norm", "pool_last_token"}
    if config.prompt_encoder == "mlp":
        exclude |= {"prompt_encoder", "prompt_context_len"}
    if config.prompt_code_dim == 0:
        exclude |= {"prompt_code_dim", "prompt_code_from_base"}
    if config.prompt_target_slots == 0:
        exclude |= {"prompt_target_slots"}
    digest = hashlib.sha256(config.model_dump_json(exclude=exclude or None).encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].float().numpy().tobytes())
    return digest.hexdigest()[:16]
