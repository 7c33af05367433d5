"""How many LLM tokens the new targets of each evaluation set take.

The prompt vectors must carry the whole new target (issue: edits however they are
written). This counts the target's tokens as the LLM scores them (a leading space, no
special tokens) for every evaluation set, and the share that fits each candidate cap.

Usage: ``.venv/bin/python benchmarks/bench_target_lengths.py`` ->
``benchmarks/results/target_lengths.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_results  # noqa: E402

from recipe_chain import load_default_llm  # noqa: E402
from recipe_chain.data import load_edit_examples, split_by_subject  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {
    "counterfact/eval.json": None,
    "zsre/train-1k.json": None,
    "knowedit/wiki_recent_train.json": None,
    "questions/hallueditbench.json (dev subjects)": "questions/hallueditbench.json",
}
CAPS = (1, 2, 3, 4, 6, 8, 10, 12, 16)


def main() -> None:
    _, tokenizer = load_default_llm()
    rows = {}
    for name, path in SETS.items():
        examples = load_edit_examples(DATA / (path or name), on_invalid="skip")
        if path is not None:
            examples = split_by_subject(examples)[1]
        lengths = sorted(len(tokenizer(" " + e.target_new.strip(), add_special_tokens=False)["input_ids"])
                         for e in examples)
        n = len(lengths)
        rows[name] = {
            "n": n,
            "mean": sum(lengths) / n,
            "p50": lengths[n // 2],
            "p95": lengths[min(n - 1, int(0.95 * n))],
            "max": lengths[-1],
            "fits": {str(c): sum(v <= c for v in lengths) / n for c in CAPS},
        }
    md = ["# New-target length in LLM tokens (SmolLM2 tokenizer)", "",
          "Command: `.venv/bin/python benchmarks/bench_target_lengths.py`", "",
          "| set | targets | mean | p50 | p95 | max | " + " | ".join(f"≤ {c}" for c in CAPS) + " |",
          "|---|---|---|---|---|---|" + "---|" * len(CAPS)]
    for name, r in rows.items():
        md.append(f"| {name} | {r['n']} | {r['mean']:.2f} | {r['p50']} | {r['p95']} | {r['max']} | "
                  + " | ".join(f"{r['fits'][str(c)]:.3f}" for c in CAPS) + " |")
    write_results("target_lengths", {"machine": machine_info(), "sets": rows, "caps": list(CAPS)}, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
