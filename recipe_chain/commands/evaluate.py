"""``recipe-chain eval``: the lifelong-editing benchmark (RECIPE vs text RAG vs no edit).

Example::

    recipe-chain eval --data ../shared/data/counterfact/eval.json --edits 1000 --seed 0 \\
        --out benchmarks/results/eval/cf-T1000

    # smoke run without a trained checkpoint (numbers are meaningless):
    recipe-chain eval --data ../shared/data/counterfact/eval.json --quick --allow-untrained --out /tmp/ev

The run reads any file :func:`recipe_chain.data.load_edit_examples` understands
(invalid records are skipped with a warning), shuffles it with ``--seed``, takes
``--edits`` examples (and a disjoint dev split for the text-RAG threshold), edits them
one at a time into a fresh store under ``OUT/store`` and measures every method (see
:mod:`recipe_chain.evaluation.harness`). ``OUT`` receives ``results.json``,
``results.md`` and PNG plots; ``results.partial.json`` after each ``T`` checkpoint, from
which ``--resume`` continues.

Models: ``--checkpoint DIR`` (also accepted before the subcommand), else the checkpoint
shipped in the package; its recorded LLM is loaded unless ``--llm default|PATH`` says
otherwise. Without any checkpoint the command fails, unless ``--allow-untrained`` asks
for a randomly initialised editor (smoke runs only).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from recipe_chain.commands.argtypes import non_negative_int, positive_int

__all__ = ["register", "run_eval", "config_from_args", "QUICK_SETTINGS"]

logger = logging.getLogger(__name__)

DEFAULT_T_GRID = "1,10,100,1000,10000"
QUICK_SETTINGS: dict[str, int] = {
    "edits": 20,
    "dev_size": 40,
    "general_n": 100,
    "latency_samples": 10,
    "gate_latency_samples": 5,
    "checkpoint_sample": 200,
}
"""What ``--quick`` sets, for every option the user did not give."""






def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _methods(values: list[str]) -> tuple[str, ...]:
    from recipe_chain.evaluation.config import METHODS

    names = [part for value in values for part in value.replace(" ", "").split(",") if part]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return tuple(dict.fromkeys(names))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = subparsers.add_parser(
        "eval",
        help="Lifelong-editing benchmark: RECIPE vs text RAG vs the unedited LLM, side by side.",
        description="Edit T examples of a benchmark file one at a time into a fresh knowledge store and measure "
        "Reliability, Generality, Locality, user-visible exact match, gate statistics and cost for every method "
        "(no-edit, recipe, recipe-no-gate, text-rag, text-rag-top1, text-rag-recipe-sim, text-rag-oracle).",
    )
    p.add_argument("--data", required=True, metavar="FILE",
                   help="Edit data: CounterFact (flat or ROME), ZsRE (MEND) or KnowEdit, .json or .jsonl.")
    p.add_argument("--edits", type=positive_int, default=None, metavar="T",
                   help="Number of sequential edits and evaluated examples (required unless --quick: 20).")
    p.add_argument("--seed", type=int, default=0, help="Shuffle/sampling seed (default 0).")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="Methods to report, space- or comma-separated (default: all seven).")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="Output directory (default: eval-results/<data>-T<T>-seed<S>).")
    p.add_argument("--checkpoint", default=argparse.SUPPRESS, metavar="DIR",
                   help="RECIPE checkpoint directory (default: the one shipped in the package).")
    p.add_argument("--llm", default=None, metavar="default|PATH",
                   help="The LLM: 'default' (SmolLM2-135M-Instruct) or a local HF directory / GGUF file "
                   "(default: the checkpoint's LLM).")
    p.add_argument("--allow-untrained", action="store_true", default=argparse.SUPPRESS,
                   help="Without any checkpoint, use a randomly initialised editor (smoke runs only; also "
                   "accepted before the subcommand).")
    p.add_argument("--dev-size", type=non_negative_int, default=None, metavar="N",
                   help="Dev examples for the text-RAG threshold (default 200).")
    p.add_argument("--dev-data", default=None, metavar="FILE",
                   help="Take the dev split from this file (default: the records of --data not evaluated).")
    p.add_argument("--general-questions", default=None, metavar="FILE",
                   help="NQ-open style questions for the general false-fire rate "
                   "(default: ../shared/data/general/nq-open.jsonl).")
    p.add_argument("--general-n", type=non_negative_int, default=None, metavar="N",
                   help="Use the first N general questions (default 1000; 0: none).")
    p.add_argument("--t-grid", type=_int_list, default=None, metavar="T1,T2,...",
                   help=f"Store sizes measured on the way to T (default {DEFAULT_T_GRID}).")
    p.add_argument("--checkpoint-sample", type=positive_int, default=None, metavar="N",
                   help="Most examples measured at an intermediate T checkpoint (default 1000).")
    p.add_argument("--final-sample", type=positive_int, default=None, metavar="N",
                   help="Most examples measured at the final T, a seeded subsample of the T edits in the store "
                   "(default: all).")
    p.add_argument("--gen-sample", type=positive_int, default=None, metavar="N",
                   help="Measure the greedy-generation metrics on a seeded subsample of at most N examples per "
                   "checkpoint (default: all; generation is most of the cost at large T).")
    p.add_argument("--latency-samples", type=non_negative_int, default=None, metavar="N",
                   help="Queries timed per method at batch size 1 (default 50).")
    p.add_argument("--gate-latency-samples", type=non_negative_int, default=None, metavar="N",
                   help="Gate calls timed per store-size probe (default 20).")
    p.add_argument("--gen-tokens", type=positive_int, default=None, metavar="N",
                   help="New tokens per greedy generation (default 16).")
    p.add_argument("--batch-size", type=positive_int, default=None, help="Teacher-forced scoring batch (default 16).")
    p.add_argument("--gen-batch-size", type=positive_int, default=None, help="Generation batch (default 16).")
    p.add_argument("--gate-margin", type=float, default=None, help="Extra margin of the sentinel gate (default 0).")
    p.add_argument("--candidate-k", type=positive_int, default=None,
                   help="Candidates re-scored per query (default 8).")
    p.add_argument("--duplicate-facts", choices=("skip", "supersede"), default=None,
                   help="Examples whose prompt repeats an already taken one: 'skip' them (default: T distinct "
                   "facts) or 'supersede' (edit them too, as corrections; the superseded examples are not "
                   "measured). counterfact/eval.json has 9,917 distinct prompts, so T=10000 needs 'supersede'.")
    p.add_argument("--dev-general-n", type=non_negative_int, default=None, metavar="N",
                   help="General questions after the measured ones used as text-rag's dev negatives (default 200).")
    p.add_argument("--text-rag-format", choices=("auto", "plain", "chat"), default=None,
                   help="text-RAG prompt format: statement in front of the query ('plain'), the chat template "
                   "with the statement in the system message ('chat'), or the better on dev ('auto', default).")
    p.add_argument("--format-dev-sample", type=positive_int, default=None, metavar="N",
                   help="Dev examples whose generations choose the text-RAG format (default 100).")
    p.add_argument("--general-answer-n", type=non_negative_int, default=None, metavar="N",
                   help="General questions whose greedy answers are scored at the final T (general ability; "
                   "default 0).")
    p.add_argument("--chat-path", action="store_true", default=None,
                   help="At the final T also ask the generated examples' prompts and paraphrases through the LLM's "
                   "chat template, as RecipeEditedChatModel does, and score the answers.")
    p.add_argument("--ephemeral-store", action="store_true",
                   help="Keep the store in memory instead of OUT/store (no --resume then).")
    p.add_argument("--resume", action="store_true",
                   help="Continue from OUT/results.partial.json if it was written with the same settings.")
    p.add_argument("--quick", action="store_true",
                   help="Smoke-run settings for options not given: "
                   + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK_SETTINGS.items()) + ".")
    p.add_argument("--no-plots", action="store_true", help="Skip the PNG plots.")
    p.add_argument("--no-progress", action="store_true", help="No progress bars (they go to stderr).")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads.")
    p.add_argument("--float32-queries", action="store_true",
                   help="Encode queries with float32 MiniLM weights instead of the default int8 "
                   "(RecipeEditor.int8_queries = False; not with --resume).")
    p.add_argument("--int8-statements", action="store_true",
                   help="Encode statements (keys) with int8 MiniLM weights (RecipeEditor.int8_statements; "
                   "not with --resume).")
    p.set_defaults(func=run_eval)


def config_from_args(args: argparse.Namespace):  # noqa: ANN201
    """The :class:`~recipe_chain.evaluation.config.EvalConfig` an argument namespace describes.

    Raises:
        ValueError: ``--edits`` missing (without ``--quick``), an unknown method, or an
            out-of-range setting.
    """
    from recipe_chain.evaluation.config import EvalConfig

    values: dict[str, Any] = {}
    if args.quick:
        values.update(QUICK_SETTINGS)
    for name in ("edits", "dev_size", "general_n", "t_grid", "checkpoint_sample", "final_sample", "gen_sample",
                 "latency_samples",
                 "gate_latency_samples", "gen_tokens", "batch_size", "gen_batch_size", "gate_margin", "candidate_k",
                 "duplicate_facts", "dev_general_n", "text_rag_format", "format_dev_sample", "general_answer_n",
                 "chat_path"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if "edits" not in values:
        raise ValueError("--edits T is required (or --quick for a 20-edit smoke run)")
    values["seed"] = args.seed
    if args.methods:
        values["methods"] = _methods(args.methods)
    return EvalConfig(**values)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _file_info(path: Path, **extra: Any) -> dict[str, Any]:
    from recipe_chain.evaluation.selection import file_sha256

    return {"path": str(path), "sha256": file_sha256(path), **extra}


def _command_line(args: argparse.Namespace, cfg: Any, out: Path, checkpoint: str | None) -> str:
    parts = ["recipe-chain", "eval", "--data", args.data, "--edits", str(cfg.edits), "--seed", str(cfg.seed)]
    if args.methods:
        parts += ["--methods", ",".join(cfg.methods)]
    if checkpoint is not None:
        parts += ["--checkpoint", checkpoint]
    for flag in ("llm", "dev_data", "general_questions", "duplicate_facts", "text_rag_format"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    for flag in ("dev_size", "general_n", "checkpoint_sample", "final_sample", "gen_sample", "latency_samples", "gate_latency_samples",
                 "gen_tokens", "batch_size", "gen_batch_size", "gate_margin", "candidate_k", "threads",
                 "dev_general_n", "format_dev_sample", "general_answer_n"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    if args.t_grid is not None:
        parts += ["--t-grid", ",".join(map(str, args.t_grid))]
    for flag in ("quick", "allow_untrained", "ephemeral_store", "resume", "no_plots", "no_progress", "float32_queries",
                 "int8_statements", "chat_path"):
        if getattr(args, flag, False):
            parts.append(f"--{flag.replace('_', '-')}")
    parts += ["--out", str(out)]
    return shlex.join(parts)


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``recipe-chain eval``; returns the exit code."""
    import torch

    from recipe_chain.data import load_edit_examples, load_questions
    from recipe_chain.evaluation.harness import LifelongEvaluator, make_store_factory
    from recipe_chain.evaluation.report import markdown_report, write_report
    from recipe_chain.models import load_models

    started = time.perf_counter()
    cfg = config_from_args(args)
    if args.resume and args.ephemeral_store:
        raise ValueError("--resume needs the on-disk store; drop --ephemeral-store")
    for flag, what in (("float32_queries", "queries"), ("int8_statements", "statements")):
        if args.resume and getattr(args, flag):
            raise ValueError(
                f"--{flag.replace('_', '-')} cannot --resume: the partial results do not record how {what} were encoded"
            )
    data = Path(args.data).expanduser()
    if not data.is_file():
        raise FileNotFoundError(f"No data file at {data}")
    dev_data = Path(args.dev_data).expanduser() if args.dev_data else None
    if dev_data is not None and not dev_data.is_file():
        raise FileNotFoundError(f"No dev data file at {dev_data}")
    questions_path: Path | None = None
    if cfg.general_n > 0 or ("text-rag" in cfg.methods and cfg.dev_general_n > 0):
        if args.general_questions:
            questions_path = Path(args.general_questions).expanduser()
            if not questions_path.is_file():
                raise FileNotFoundError(f"No questions file at {questions_path}")
        else:
            from recipe_chain.demo import find_shared_data

            try:
                questions_path = find_shared_data("general/nq-open.jsonl")
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{exc}; or pass --general-questions FILE, or --general-n 0") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).expanduser() if args.out else Path("eval-results") / f"{data.stem}-T{cfg.edits}-seed{cfg.seed}"

    examples = load_edit_examples(data, on_invalid="skip")
    if not examples:
        raise ValueError(f"{data} holds no valid edit examples")
    dev_pool = load_edit_examples(dev_data, on_invalid="skip") if dev_data is not None else None
    questions = (
        load_questions(questions_path, limit=cfg.general_n + cfg.dev_general_n) if questions_path is not None else []
    )

    checkpoint = getattr(args, "checkpoint", None)
    models = load_models(checkpoint, llm=args.llm, allow_untrained=getattr(args, "allow_untrained", False))
    llm, tokenizer, editor = models.llm, models.tokenizer, models.editor
    model_info = {"checkpoint": models.checkpoint, "trained": models.trained}
    editor.int8_queries = not args.float32_queries
    editor.int8_statements = bool(args.int8_statements)
    factory = make_store_factory(editor, cfg, path=None if args.ephemeral_store else out / "store")
    run_info = {
        "command": _command_line(args, cfg, out, checkpoint),
        "data": _file_info(data, format=examples[0].source_format, n_records=len(examples)),
        "dev_data": _file_info(dev_data, n_records=len(dev_pool or [])) if dev_data is not None else None,
        "general_questions": (
            _file_info(questions_path, n=min(len(questions), cfg.general_n)) if questions_path is not None else None
        ),
        "checkpoint": model_info["checkpoint"],
        "trained": model_info["trained"],
        "llm_spec": args.llm,
        "int8_queries": editor.int8_queries,
        "int8_statements": bool(args.int8_statements),
        "store": "ephemeral" if args.ephemeral_store else str(out / "store"),
        "git_commit": _git_commit(),
    }
    evaluator = LifelongEvaluator(llm, tokenizer, editor, cfg, store_factory=factory, progress=not args.no_progress)
    results = evaluator.run(
        examples,
        questions=questions,
        dev_pool=dev_pool,
        dev_source=str(dev_data) if dev_data is not None else f"rest of {data.name}",
        run_info=run_info,
        out_dir=out,
        resume=args.resume,
    )
    paths = write_report(results, out, plots=not args.no_plots)
    print(markdown_report(results).split("## Gate statistics")[0].rstrip())
    print()
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"wall time {time.perf_counter() - started:.1f} s")
    return 0
