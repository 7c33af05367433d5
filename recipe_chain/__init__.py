"""recipe-chain: lifelong knowledge editing for local LLMs, as LangChain components.

RECIPE (Chen et al., EMNLP 2024) turns each edit into a key in a Chroma knowledge
repository and a few continuous prompt vectors. At query time the nearest edit is
admitted only if it beats the learned Knowledge Sentinel, and its prompt vectors are
prefixed to the frozen LLM's input embeddings.
"""

from recipe_chain.config import RecipeConfig
from recipe_chain.editor import RecipeEditor, statement_of
from recipe_chain.errors import (
    CheckpointMismatchError,
    DuplicateEditError,
    EditNotFoundError,
    EncoderMismatchError,
    MissingModelPackageError,
    NamespaceNotFoundError,
    ReadOnlyStoreError,
    RecipeChainError,
    StoreBusyError,
    StorePathError,
)
from recipe_chain.loading import (
    DEFAULT_ENCODER_ID,
    DEFAULT_LLM_ID,
    cache_dir,
    load_default_encoder,
    load_default_llm,
    load_gemma3_270m,
    load_llm,
)
from recipe_chain.prefix_lm import PrefixedCausalLM, TargetScore

__version__ = "0.1.0"

__all__ = [
    "RecipeConfig",
    "RecipeEditor",
    "statement_of",
    "PrefixedCausalLM",
    "TargetScore",
    "load_default_llm",
    "load_default_encoder",
    "load_gemma3_270m",
    "load_llm",
    "cache_dir",
    "DEFAULT_LLM_ID",
    "DEFAULT_ENCODER_ID",
    "RecipeChainError",
    "MissingModelPackageError",
    "CheckpointMismatchError",
    "EncoderMismatchError",
    "EditNotFoundError",
    "DuplicateEditError",
    "StoreBusyError",
    "ReadOnlyStoreError",
    "StorePathError",
    "NamespaceNotFoundError",
    "__version__",
]

# LangChain components are imported on first use (PEP 562), so that `import recipe_chain`
# does not import langchain or chromadb. Add further lazy exports to this table.
_LAZY_EXPORTS: dict[str, str] = {
    "RecipeEditedLLM": "recipe_chain.llms",
    "RecipeEditedChatModel": "recipe_chain.chat_models",
    "KnowledgeSentinelGate": "recipe_chain.runnables",
    "GateOutput": "recipe_chain.runnables",
    "PrefixedLLMRunnable": "recipe_chain.runnables",
    "RecipeKnowledgeRetriever": "recipe_chain.retrievers",
    "RecipeEmbeddings": "recipe_chain.embeddings",
    "build_text_rag_chain": "recipe_chain.text_rag",
    "format_text_rag_prompt": "recipe_chain.text_rag",
    "SentenceEmbeddings": "recipe_chain.statement_index",
    "StatementIndex": "recipe_chain.statement_index",
    "StatementRetriever": "recipe_chain.statement_index",
    "RecipeKnowledgeStore": "recipe_chain.store",
    "EditRecord": "recipe_chain.store",
    "GateCandidate": "recipe_chain.store",
    "GateResult": "recipe_chain.store",
    "EditVerifier": "recipe_chain.verifier",
    "VerifierConfig": "recipe_chain.verifier",
    "load_default_editor": "recipe_chain.defaults",
    "default_checkpoint_path": "recipe_chain.defaults",
    "load_models": "recipe_chain.models",
    "EditingModels": "recipe_chain.models",
    "TrainingConfig": "recipe_chain.training",
    "train": "recipe_chain.training",
}
__all__ += list(_LAZY_EXPORTS)


def __getattr__(name: str) -> object:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'recipe_chain' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
