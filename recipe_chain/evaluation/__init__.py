"""Lifelong-editing evaluation: RECIPE vs text RAG vs the unedited model, side by side.

* :mod:`recipe_chain.evaluation.metrics` -- pure metric functions (Reliability,
  Generality, Locality, exact match, rates, percentiles).
* :mod:`recipe_chain.evaluation.config` -- the compared methods and :class:`EvalConfig`.
* :mod:`recipe_chain.evaluation.selection` -- which edits are evaluated and tuned on.
* :mod:`recipe_chain.evaluation.harness` -- :class:`LifelongEvaluator`: sequential
  editing into a fresh knowledge store, measurement of every method at each ``T``
  checkpoint, efficiency figures.
* :mod:`recipe_chain.evaluation.thresholds` -- tuning the text-RAG thresholds on dev.
* :mod:`recipe_chain.evaluation.results` -- the result models (``results.json``).
* :mod:`recipe_chain.evaluation.resume` -- partial results of an interrupted run.
* :mod:`recipe_chain.evaluation.report` -- ``results.json``, ``results.md`` and plots.

The command line is ``recipe-chain eval`` (:mod:`recipe_chain.commands.evaluate`).

Example:
    >>> from recipe_chain.evaluation import EvalConfig, LifelongEvaluator, write_report
    >>> evaluator = LifelongEvaluator(llm, tok, editor, EvalConfig(edits=100))  # doctest: +SKIP
    >>> write_report(evaluator.run(examples, questions=questions), "out/")  # doctest: +SKIP
"""

from recipe_chain.evaluation.config import METHODS, EvalConfig, Method
from recipe_chain.evaluation.harness import LifelongEvaluator, make_store_factory
from recipe_chain.evaluation.results import CheckpointResult, EvalResults, MethodMetrics, TextRagThreshold
from recipe_chain.evaluation.selection import Selection, select_examples
from recipe_chain.evaluation.thresholds import best_threshold
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
