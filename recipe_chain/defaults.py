"""The shipped default: SmolLM2-135M-Instruct + all-MiniLM-L6-v2 + the trained RECIPE checkpoint."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from transformers import PreTrainedModel

from recipe_chain.editor import RecipeEditor
from recipe_chain.loading import load_default_llm

__all__ = ["DEFAULT_CHECKPOINT_NAME", "default_checkpoint_path", "load_default_editor"]

DEFAULT_CHECKPOINT_NAME = "smollm2-135m-minilm-l6"


def default_checkpoint_path() -> Path:
    """Directory of the checkpoint shipped inside the package."""
    return Path(str(files("recipe_chain").joinpath("checkpoints", DEFAULT_CHECKPOINT_NAME)))


def load_default_editor(llm: PreTrainedModel | None = None) -> RecipeEditor:
    """Load the shipped RECIPE checkpoint for the default LLM.

    Args:
        llm: The default LLM, to check the checkpoint against; loaded if omitted.

    Raises:
        FileNotFoundError: If this build ships no checkpoint.

    Example:
        >>> from recipe_chain.defaults import load_default_editor
        >>> editor = load_default_editor()  # doctest: +SKIP
    """
    path = default_checkpoint_path()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"No shipped RECIPE checkpoint at {path}. Train one with "
            "`recipe-chain train --data ../shared/data/counterfact/train.json --llm default --out DIR`."
        )
    if llm is None:
        llm, _ = load_default_llm()
    return RecipeEditor.from_pretrained(path, llm=llm)
