"""Experiment: the lifelong evaluation with *statements* encoded in int8 too.

The library encodes statements (keys and prompt codes) in float32 only; ``int8_queries``
applies to queries. This script measures what int8 statements would cost in quality:
it runs ``recipe-chain eval`` with the given arguments after swapping the encoder's
statement pass for the int8 paired graph (``CompiledBertBackbone(paired=True,
int8=True)``, the same layer as int8 queries), then marks the results as such.

Run (the command behind benchmarks/results/eval/cf-T1000-int8-statements):
    .venv/bin/python benchmarks/eval_int8_statements.py --data ../shared/data/counterfact/eval.json \\
        --edits 1000 --seed 0 --methods recipe \\
        --checkpoint recipe_chain/checkpoints/smollm2-135m-minilm-l6 \\
        --dev-data ../shared/data/counterfact/train.json --duplicate-facts supersede \\
        --checkpoint-sample 1000 --gen-sample 100 --latency-samples 20 --threads 2 \\
        --t-grid 1,10,100,1000 --no-progress --int8-queries \\
        --out benchmarks/results/eval/cf-T1000-int8-statements
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from recipe_chain.cli import main
from recipe_chain.encoder import KnowledgeEncoder

MARK = (
    "**Experiment, not a library setting:** statements (keys and prompt codes) were encoded with the int8 "
    "paired graph by `benchmarks/eval_int8_statements.py`, which ran the command below with that change."
)


def int8_statement_features(
    self: KnowledgeEncoder, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:meth:`KnowledgeEncoder.statement_features` with the int8 paired graph where the compiled one is used."""
    paired = self._compiled_backbone("paired", int8=True) if self.code_reads_base_features else None
    if paired is None:
        return float32_statement_features(self, batch)
    hidden = self._run_compiled(paired, batch)  # (2B, T, H): with adapters, then without
    return self._pool(hidden, batch, copies=2).chunk(2)  # type: ignore[return-value]


float32_statement_features = KnowledgeEncoder.statement_features


def mark_results(out: Path) -> None:
    """Put :data:`MARK` under the title of the run's results.md."""
    path = out / "results.md"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", MARK, *lines[1:]]) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["eval"]:
        args = args[1:]
    if "--out" not in args:
        raise SystemExit("give --out: the results directory to mark as an int8-statement run")
    KnowledgeEncoder.statement_features = int8_statement_features  # type: ignore[method-assign]
    code = main(["eval", *args])
    if code == 0:
        mark_results(Path(args[args.index("--out") + 1]))
    sys.exit(code)
