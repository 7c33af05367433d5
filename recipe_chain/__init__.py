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
    RecipeChainError,
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
    "__version__",
]
