"""``recipe-chain train-verifier``: train the gate's second stage (see :mod:`recipe_chain.verifier`).

Example::

    recipe-chain train-verifier --out runs/verifier \\
        --data ../shared/data/counterfact/train.json ../shared/data/knowedit/wiki_counterfact_train.json \\
               ../shared/data/questions/hallueditbench.json ../shared/data/questions/pokemqa_edit2questions.json

``--data`` takes ``PATH`` or ``PATH:LIMIT``. A HalluEditBench file contributes its *train*
subjects only. Never pass the evaluation sets (``zsre/train-1k.json``,
``knowedit/wiki_recent_train.json``, ``counterfact/eval.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from recipe_chain.commands.argtypes import positive_int

__all__ = ["register", "run_train_verifier"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-verifier", help="Train the gate verifier (second stage) on hard negatives.",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, metavar="PATH[:LIMIT]", help="Training files.")
    p.add_argument("--out", required=True, help="Directory to write the verifier to.")
    p.add_argument("--layers", type=positive_int, default=3, help="Backbone layers the cross-encoder keeps.")
    p.add_argument("--steps", type=positive_int, default=3000)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--mine-queries", type=positive_int, default=30000,
                   help="Mine the retriever's top wrong hits for at most this many queries.")
    p.add_argument("--mined-per-query", type=int, default=2)
    p.add_argument("--min-recall", type=float, default=0.97, help="Threshold: admit this share of dev positives.")
    p.add_argument("--threshold", type=float, default=None,
                   help="Admission threshold to store instead of the --min-recall one (e.g. the one benchmarks/"
                        "bench_gate_scale.py chose on its dev split).")
    p.add_argument("--candidate-k", type=positive_int, default=2)
    p.add_argument("--prefilter-margin", type=float, default=-2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(func=run_train_verifier)


def run_train_verifier(args: argparse.Namespace) -> int:
    import torch

    from recipe_chain.data import check_trainable
    from recipe_chain.defaults import load_default_editor
    from recipe_chain.editor import RecipeEditor
    from recipe_chain.loading import DEFAULT_ENCODER_ID, load_default_encoder
    from recipe_chain.training.verifier_data import HardNegativeSampler, build_pairs, load_verifier_sources
    from recipe_chain.training.verifier_trainer import (
        VerifierTrainingConfig,
        pair_metrics,
        split_pairs,
        train_verifier,
        tune_threshold,
    )
    from recipe_chain.verifier import EditVerifier

    for spec in args.data:
        check_trainable(spec.split(":")[0])
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    checkpoint = getattr(args, "checkpoint", None)
    editor = RecipeEditor.from_pretrained(checkpoint) if checkpoint else load_default_editor()
    facts = load_verifier_sources(args.data)
    count = editor.encoder.count_tokens
    facts = [f for f, n in zip(facts, count([f.statement for f in facts])) if n <= editor.config.max_length]
    logger.info("%d facts from %d files", len(facts), len(args.data))

    def rank(queries: list[str], statements: list[str]) -> torch.Tensor:
        keys = editor.encode_statements(statements, batch_size=64)  # (S, d)
        reps = editor.encode_queries(queries, batch_size=128)  # (Q, d)
        return reps @ keys.T

    sampler = HardNegativeSampler(facts, rank, mined_per_query=args.mined_per_query, max_queries=args.mine_queries,
                                  seed=args.seed)
    mined_seconds = time.perf_counter() - start
    pairs = build_pairs(sampler)
    train, dev = split_pairs(pairs, dev_share=0.05, seed=args.seed)
    backbone, tokenizer = load_default_encoder()
    verifier = EditVerifier.from_backbone(backbone, tokenizer, backbone_id=DEFAULT_ENCODER_ID, seed=args.seed,
                                          num_layers=args.layers, candidate_k=args.candidate_k,
                                          prefilter_margin=args.prefilter_margin)
    config = VerifierTrainingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                    min_recall=args.min_recall)
    log = train_verifier(verifier, train, config)
    tuned = tune_threshold(verifier, dev, args.min_recall)
    threshold = tuned if args.threshold is None else args.threshold
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {threshold}")
    verifier.config = verifier.config.model_copy(update={"threshold": threshold})
    metrics = pair_metrics(verifier, dev)
    out = verifier.save_pretrained(args.out)
    report = {
        "data": list(args.data), "facts": len(facts), "train_pairs": len(train), "dev_pairs": len(dev),
        "config": verifier.config.model_dump(mode="json"), "training": config.model_dump(),
        "threshold_min_recall": tuned, "dev_metrics": metrics, "mining_seconds": round(mined_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1), "log": log,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("Verifier written to %s (threshold %.4f); dev %s", out, verifier.config.threshold, metrics)
    return 0
