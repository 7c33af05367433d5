"""``recipe-chain train``: train a RECIPE editor for a frozen causal LM.

Example::

    recipe-chain train --data ../shared/data/counterfact/train.json --llm default --out runs/cf \\
        --extra-locality ../shared/data/general/nq-open.jsonl --steps 2000

Options left out take :class:`~recipe_chain.training.TrainingConfig`'s defaults. A run
directory that already holds a run is resumed unless ``--no-resume`` is given.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from recipe_chain.commands.argtypes import positive_int
from recipe_chain.commands.model_options import add_model_options, model_values
from recipe_chain.training.config import TrainingConfig

__all__ = ["register", "run_train", "config_from_args"]

logger = logging.getLogger(__name__)

# TrainingConfig fields the command reads its own way: the files (``--data FILE[:WEIGHT]``,
# ``--extra-locality``), the hinge ("none" turns it off), and what --init-from decides.
_OWN_OPTIONS = ("data", "data_weights", "extra_locality", "editor_options", "tie_head_init", "hinge_threshold")


def _hinge(value: str) -> float | None:
    if value.lower() in {"none", "off", "0"}:
        return None
    number = float(value)
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1) or 'none', got {value}")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="Train a RECIPE editor (retriever, sentinel, prompt encoder) for a frozen LLM.",
        description="Jointly train the knowledge encoder, the Knowledge Sentinel and the prompt encoder "
        "against a frozen causal LM on knowledge-editing data (any format the loaders read).",
    )
    p.add_argument("--data", action="append", required=True, metavar="FILE[:WEIGHT]",
                   help="Edit data file (repeatable); WEIGHT: how many times each of its examples is drawn per "
                   "epoch (default 1; fractions draw a seeded share). The evaluation sets are refused.")
    p.add_argument("--llm", required=True, metavar="PATH|default",
                   help="'default' (SmolLM2-135M-Instruct) or a local HF model directory / GGUF file.")
    p.add_argument("--gguf-file", default=None, metavar="NAME", help="GGUF file name inside the --llm directory.")
    p.add_argument("--out", required=True, metavar="DIR", help="Run directory (checkpoint, logs, plot).")
    p.add_argument("--extra-locality", action="append", default=None, metavar="FILE",
                   help="NQ-open style questions used as extra locality queries (repeatable).")
    p.add_argument("--hinge-threshold", type=_hinge, default=argparse.SUPPRESS, metavar="P|none",
                   help="Stop the retrieval/sentinel loss of rows whose correct class has probability > P "
                   "(default 0.95; none: never).")
    p.set_defaults(config_fields=add_model_options(p, TrainingConfig, skip=_OWN_OPTIONS))
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="Start a new run from this checkpoint's weights (e.g. a second phase with other loss "
                   "settings); its architecture is kept. A run resumed from --out ignores it.")
    p.add_argument("--init-encoder-from", default=None, metavar="CHECKPOINT",
                   help="Start a new run from this checkpoint's knowledge encoder and sentinel with a new prompt "
                   "encoder (the --prompt-* options). A run resumed from --out ignores it.")
    p.add_argument("--no-resume", action="store_true", help="Start over even if --out holds a run.")
    p.add_argument("--stop-after", type=positive_int, default=None, metavar="STEP",
                   help="Stop after this global step, with a checkpoint, as if interrupted (rerun to resume).")
    p.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace):  # noqa: ANN201
    """The :class:`~recipe_chain.training.TrainingConfig` an argument namespace describes.

    Raises:
        FileNotFoundError: A ``--data`` or ``--extra-locality`` file does not exist.
        pydantic.ValidationError: An option is out of range (a ``ValueError``).
    """
    from recipe_chain.data import check_trainable

    files, weights = zip(*(_file_and_weight(spec) for spec in args.data))
    for path in files:
        check_trainable(path)
    for path in [*files, *(args.extra_locality or [])]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"No data file at {path}")
    fields = model_values(args, args.config_fields)
    if hasattr(args, "hinge_threshold"):
        fields["hinge_threshold"] = args.hinge_threshold
    if any(w is not None for w in weights):
        fields["data_weights"] = [1.0 if w is None else w for w in weights]
    return TrainingConfig(data=[Path(p) for p in files], extra_locality=args.extra_locality or [], **fields)


def _file_and_weight(spec: str) -> tuple[str, float | None]:
    """``"FILE:WEIGHT"`` -> ``(FILE, WEIGHT)``; a suffix that is not a number stays part of the path."""
    path, sep, suffix = spec.rpartition(":")
    if sep and path:
        try:
            weight = float(suffix)
        except ValueError:
            return spec, None
        if not weight > 0:
            raise ValueError(f"--data {spec}: the weight must be a positive number")
        return path, weight
    return spec, None


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``recipe-chain train``."""
    from recipe_chain.loading import load_default_llm, load_llm
    from recipe_chain.training import train

    config = config_from_args(args)
    if args.llm == "default":
        if args.gguf_file:
            raise ValueError("--gguf-file needs --llm PATH, not 'default'")
        llm, tokenizer = load_default_llm()
    else:
        llm, tokenizer = load_llm(args.llm, args.gguf_file)
    editor = None
    if args.init_from and args.init_encoder_from:
        raise ValueError("Give --init-from or --init-encoder-from, not both")
    start_from = args.init_from or args.init_encoder_from
    if start_from:
        from recipe_chain.config import RecipeConfig
        from recipe_chain.editor import RecipeEditor

        editor = RecipeEditor.from_pretrained(start_from, llm=llm)
        config = config.model_copy(update={"tie_head_init": False})  # keep its trained query head
        logger.info("Starting from %s (fingerprint %s)", start_from, editor.fingerprint)
    if args.init_encoder_from:
        defaults = RecipeConfig.model_fields
        prompt_fields = {  # the options given, else RecipeConfig's defaults (not the checkpoint's)
            "prompt_len": config.prompt_len or defaults["prompt_len"].default,
            "prompt_encoder": config.prompt_encoder or defaults["prompt_encoder"].default,
            "prompt_context_len": config.prompt_context_len,
            "prompt_code_dim": config.prompt_code_dim or 0,
            "prompt_target_slots": config.prompt_target_slots or 0,
        }
        editor.replace_prompt_encoder(llm, seed=config.seed, **prompt_fields)
        logger.info("New prompt encoder %s on its knowledge encoder and sentinel", prompt_fields)
    start = time.perf_counter()
    result = train(config, llm, tokenizer, editor, out_dir=args.out, resume=not args.no_resume,
                   until_step=args.stop_after)
    wall = time.perf_counter() - start
    logger.info("Checkpoint written to %s", result.checkpoint)
    logger.info(
        "Wall time %.1f s (%d steps, %.3f steps/s; %.1f s of training in total over all sessions)",
        wall, result.steps, result.steps_per_s, result.wall_time_s,
    )
    if result.eval:
        logger.info("Held-out sanity metrics: %s", ", ".join(f"{k}={v:.3f}" for k, v in result.eval.items()))
    return 0
