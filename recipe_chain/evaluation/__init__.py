"""Lifelong-editing evaluation: RECIPE vs text RAG vs the unedited model, side by side.

* :mod:`recipe_chain.evaluation.metrics` -- pure metric functions (Reliability,
  Generality, Locality, exact match, rates, percentiles).
* :mod:`recipe_chain.evaluation.harness` -- :class:`LifelongEvaluator`: sequential
  editing into a fresh knowledge store, measurement of every method at each ``T``
  checkpoint, efficiency figures, resumable partial results.
* :mod:`recipe_chain.evaluation.report` -- ``results.json``, ``results.md`` and plots.

The command line is ``recipe-chain eval`` (:mod:`recipe_chain.commands.evaluate`).

Example:
    >>> from recipe_chain.evaluation import EvalConfig, LifelongEvaluator, write_report
    >>> evaluator = LifelongEvaluator(llm, tok, editor, EvalConfig(edits=100))  # doctest: +SKIP
    >>> write_report(evaluator.run(examples, questions=questions), "out/")  # doctest: +SKIP
"""

from recipe_chain.evaluation.harness import (
    METHODS,
    CheckpointResult,
    EvalConfig,
    EvalResults,
    LifelongEvaluator,
    Method,
    MethodMetrics,
    Selection,
    TextRagThreshold,
    best_threshold,
    make_store_factory,
    select_examples,
)
from recipe_chain.evaluation.report import markdown_report, write_report

__all__ = [
    "METHODS",
    "Method",
    "EvalConfig",
    "EvalResults",
    "CheckpointResult",
    "MethodMetrics",
    "Selection",
    "TextRagThreshold",
    "LifelongEvaluator",
    "best_threshold",
    "make_store_factory",
    "select_examples",
    "markdown_report",
    "write_report",
]
