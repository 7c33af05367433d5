"""``recipe-chain eval-suite``: every evaluation set in one resumable run.

Example::

    recipe-chain eval-suite --out benchmarks/results/suite

Each set of :func:`recipe_chain.evaluation.suite.default_sets` runs with the same
methods and settings (T = 1,000, or the whole set when smaller); a set already finished
with the same settings is not run again, an interrupted one resumes. ``OUT/SUMMARY.md``
and ``OUT/summary.json`` hold one row per set and method.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from pathlib import Path

from recipe_chain.commands.argtypes import non_negative_int, positive_int

__all__ = ["register", "run_suite_command"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval-suite`` subcommand."""
    p = subparsers.add_parser(
        "eval-suite",
        help="Every evaluation set (CounterFact, ZsRE, KnowEdit recent, HalluEditBench dev) plus portability, "
        "one summary table.",
        description="Run the lifelong-editing benchmark on every evaluation set with the same methods and settings, "
        "then portability (CounterFact one-hop, MQuAKE); write OUT/SUMMARY.md and OUT/summary.json. Resumable: "
        "finished sets are not run again.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="Output directory.")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="The shared data folder (default: shared/data found beside the project).")
    p.add_argument("--sets", default=None, metavar="NAME,...",
                   help="Only these sets (default: counterfact,zsre,knowedit-recent,hallueditbench-dev).")
    p.add_argument("--methods", default=None, metavar="METHOD,...",
                   help="Methods to run (default: no-edit,recipe,text-rag,text-rag-top1,text-rag-oracle).")
    p.add_argument("--edits", type=positive_int, default=None, metavar="T", help="Edits per set (default 1000).")
    p.add_argument("--seed", type=int, default=0, help="Seed (default 0).")
    p.add_argument("--final-sample", type=positive_int, default=None, metavar="N",
                   help="Edits measured teacher-forced at the final T (default 500).")
    p.add_argument("--gen-sample", type=positive_int, default=None, metavar="N",
                   help="Edits whose generated answers are measured (default 200).")
    p.add_argument("--general-n", type=non_negative_int, default=None, metavar="N",
                   help="NQ questions for the general false-fire rate (default 500).")
    p.add_argument("--portability-cases", type=non_negative_int, default=None, metavar="N",
                   help="Cases per portability set (default 100; 0: skip).")
    p.add_argument("--latency-samples", type=non_negative_int, default=None, metavar="N",
                   help="Queries timed per method (default 10).")
    p.add_argument("--checkpoint", default=argparse.SUPPRESS, metavar="DIR",
                   help="RECIPE checkpoint directory (default: the shipped one).")
    p.add_argument("--llm", default=None, metavar="default|PATH", help="The LLM (default: the checkpoint's).")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads.")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    p.set_defaults(func=run_suite_command)


def run_suite_command(args: argparse.Namespace) -> int:
    """Handler of ``recipe-chain eval-suite``; returns the exit code."""
    import torch

    from recipe_chain.models import load_models
    from recipe_chain.evaluation.suite import SuiteSettings, default_sets, run_suite, summary_markdown

    started = time.perf_counter()
    if args.data_dir is not None:
        data_dir = Path(args.data_dir).expanduser()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"--data-dir: no folder at {data_dir}")
    else:
        from recipe_chain.demo import find_shared_data

        data_dir = find_shared_data("README.md").parent
    sets = default_sets()
    if args.sets:
        wanted = [n for n in args.sets.replace(" ", "").split(",") if n]
        known = {s.name for s in sets}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ValueError(f"--sets: unknown set(s) {unknown}; choose from {sorted(known)}")
        sets = [s for s in sets if s.name in wanted]
    values = {
        k: getattr(args, k)
        for k in ("edits", "final_sample", "gen_sample", "general_n", "portability_cases", "latency_samples")
        if getattr(args, k) is not None
    }
    if args.methods:
        from recipe_chain.commands.evaluate import _methods

        values["methods"] = _methods([args.methods])
    settings = SuiteSettings(seed=args.seed, **values)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = getattr(args, "checkpoint", None)
    models = load_models(checkpoint, llm=args.llm, allow_untrained=getattr(args, "allow_untrained", False))
    llm, tokenizer, editor = models.llm, models.tokenizer, models.editor
    info = {"checkpoint": models.checkpoint, "trained": models.trained}
    parts = ["recipe-chain", "eval-suite", "--out", args.out]
    for flag in ("data_dir", "sets", "methods", "edits", "final_sample", "gen_sample", "general_n", "portability_cases",
                 "latency_samples", "llm", "threads"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if checkpoint is not None:
        parts += ["--checkpoint", checkpoint]
    run_info = {"command": shlex.join(parts), "checkpoint": info["checkpoint"], "trained": info["trained"]}
    summary = run_suite(args.out, llm, tokenizer, editor, settings, sets, data_dir=data_dir, run_info=run_info,
                        progress=not args.no_progress)
    print(summary_markdown(summary))
    print(f"wall time {time.perf_counter() - started:.1f} s; summary in {Path(args.out) / 'SUMMARY.md'}")
    return 0
