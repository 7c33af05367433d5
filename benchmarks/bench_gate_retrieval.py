"""Gate retrieval quality of the store with the shipped checkpoint at T sequential-store size.

Adds T CounterFact edits (seeded shuffle of eval.json) to an in-memory store, gates each
edit prompt, its paraphrase and its locality (neighbour) prompt, and reports how often the
right edit is the top candidate, how often it fires, and how often a neighbour fires.

Run:  .venv/bin/python benchmarks/bench_gate_retrieval.py [--edits 1000]
Writes benchmarks/results/gate_retrieval.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import counterfact_eval_sample, machine_info, write_results  # noqa: E402

from recipe_chain import RecipeKnowledgeStore, load_default_editor, load_default_llm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    llm, _ = load_default_llm()
    editor = load_default_editor(llm)
    examples = counterfact_eval_sample(args.edits, args.seed)
    store = RecipeKnowledgeStore(editor, ephemeral=True, namespace="gate-retrieval")
    ids = [r.edit_id for r in store.add_edits(
        [{"prompt": e.prompt, "target_new": e.target_new} for e in examples], progress=False)]

    def gate(texts: list[str]):
        out = []
        for a in range(0, len(texts), 100):
            out += store.gate_batch(texts[a : a + 100])
        return out

    prompts = gate([e.prompt for e in examples])
    paraphrases = gate([e.paraphrases[0] for e in examples])
    neighbours = gate([e.locality[0].prompt for e in examples])
    n = len(examples)

    def top1(results):
        return sum(1 for r, i in zip(results, ids) if r.candidates and r.candidates[0].record.edit_id == i) / n

    def fired_right(results):
        return sum(1 for r, i in zip(results, ids) if r.hit and r.hit.edit_id == i) / n

    figures = {
        "top1_prompt": top1(prompts), "top1_paraphrase": top1(paraphrases),
        "correct_fire_prompt": fired_right(prompts), "correct_fire_paraphrase": fired_right(paraphrases),
        "false_fire_neighbour": sum(1 for r in neighbours if r.hit) / n,
    }
    payload = {"command": "python benchmarks/bench_gate_retrieval.py " + " ".join(sys.argv[1:]),
               "edits": n, "checkpoint_fingerprint": editor.fingerprint, "figures": figures,
               "wall_s": round(time.perf_counter() - start, 1), "machine": machine_info()}
    md = [f"# Gate retrieval at T = {n} (store + shipped checkpoint)", "",
          f"`{payload['command'].strip()}`, checkpoint `{editor.fingerprint}`.", "",
          "| figure | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in figures.items()]
    write_results("gate_retrieval", payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
