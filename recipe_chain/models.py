"""Loading the LLM, its tokenizer and the RECIPE editor: one loader for every entry point.

The CLI, ``recipe-chain demo``, ``recipe-chain eval`` and ``eval-suite``, the notebooks and
the tests all go through :func:`load_models`. A checkpoint records the LLM it was trained
for (``llm_id``: a packaged model's id or a local path), so a checkpoint alone is enough;
``llm=`` picks another LLM, which the checkpoint must fit. Without any checkpoint the call
fails before loading anything, unless ``allow_untrained=True`` asks for an untrained editor
(``recipe-chain --allow-untrained ...``): random retrieval, gate and prompt vectors, for
smoke runs only.

Example:
    >>> from recipe_chain import load_models
    >>> models = load_models()  # doctest: +SKIP
    >>> models.editor.config.llm_id, models.trained  # doctest: +SKIP
    ('HuggingFaceTB/SmolLM2-135M-Instruct', True)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from recipe_chain.defaults import default_checkpoint_path
from recipe_chain.editor import RecipeEditor
from recipe_chain.errors import CheckpointMismatchError
from recipe_chain.loading import DEFAULT_LLM_ID, GEMMA3_270M_ID, load_default_llm, load_gemma3_270m, load_llm

__all__ = ["EditingModels", "load_models", "load_llm_for"]

logger = logging.getLogger(__name__)


class EditingModels(BaseModel):
    """The three pieces an edited LLM needs.

    Attributes:
        llm: The frozen causal LM.
        tokenizer: Its tokenizer.
        editor: The RECIPE editor (trained, unless ``trained`` is False).
        trained: False for the untrained editor of ``allow_untrained``.
        checkpoint: Where the editor was loaded from (``None`` for the untrained one).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    llm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    editor: RecipeEditor
    trained: bool = True
    checkpoint: str | None = None


def load_llm_for(llm_id: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The LLM a checkpoint records: ``"default"``, a packaged model's id, or a local path.

    Raises:
        CheckpointMismatchError: Neither a packaged model nor an existing path.
    """
    if llm_id in ("default", DEFAULT_LLM_ID):
        return load_default_llm()
    if llm_id == GEMMA3_270M_ID:
        return load_gemma3_270m()
    if Path(llm_id).expanduser().exists():
        return load_llm(Path(llm_id).expanduser())
    raise CheckpointMismatchError(
        f"LLM {llm_id!r} is neither a packaged model ({DEFAULT_LLM_ID!r}, {GEMMA3_270M_ID!r}) nor a local path; "
        "pass the model's directory"
    )


def load_models(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    llm: str | os.PathLike[str] | None = None,
    allow_untrained: bool = False,
) -> EditingModels:
    """Load the LLM, its tokenizer and the RECIPE editor.

    Args:
        checkpoint: A RECIPE checkpoint directory; ``None``: the one shipped in the package.
        llm: ``"default"`` or a local model path, instead of the LLM the checkpoint records.
        allow_untrained: Without any checkpoint, use an untrained editor (with a warning)
            instead of failing.

    Returns:
        The :class:`EditingModels`.

    Raises:
        FileNotFoundError: No checkpoint at ``checkpoint``, none shipped (and not
            ``allow_untrained``), or no model at ``llm``.
        CheckpointMismatchError: The checkpoint's LLM cannot be found, or ``llm`` is not
            the LLM the checkpoint was trained for.
    """
    path: Path | None = None
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"No RECIPE checkpoint at {path} (missing config.json)")
    elif (default_checkpoint_path() / "config.json").is_file():
        path = default_checkpoint_path()
    if path is None and not allow_untrained:  # fail before loading any model
        raise FileNotFoundError(
            f"No shipped RECIPE checkpoint at {default_checkpoint_path()} and no checkpoint was given. Train one "
            "(`recipe-chain train --data ../shared/data/counterfact/train.json --llm default --out DIR`) and pass "
            "--checkpoint DIR/checkpoint, or ask for an untrained editor (`recipe-chain --allow-untrained ...`, "
            "load_models(allow_untrained=True)) for a smoke run."
        )
    if llm is not None:
        spec = str(llm)
        if spec != "default" and not Path(spec).expanduser().exists():
            raise FileNotFoundError(f"No model at {spec} (give 'default' or a local model path)")
        model, tokenizer = load_llm_for(spec)
    elif path is not None:
        try:
            llm_id = str(json.loads((path / "config.json").read_text())["llm_id"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointMismatchError(f"{path / 'config.json'} is not a RECIPE checkpoint config: {exc}") from None
        try:
            model, tokenizer = load_llm_for(llm_id)
        except CheckpointMismatchError as exc:
            raise CheckpointMismatchError(f"The checkpoint {path} was trained for {exc}") from None
    else:
        model, tokenizer = load_default_llm()
    if path is None:
        logger.warning(
            "No RECIPE checkpoint: an UNTRAINED editor is used (allow_untrained). Its retrieval, gate and prompt "
            "vectors are random: edits will not work as intended, and measured numbers are meaningless."
        )
        editor = RecipeEditor.from_backbone(model, seed=0)
        return EditingModels(llm=model, tokenizer=tokenizer, editor=editor, trained=False)
    editor = RecipeEditor.from_pretrained(path, llm=model)
    return EditingModels(llm=model, tokenizer=tokenizer, editor=editor, checkpoint=str(path))
