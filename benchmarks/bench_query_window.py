"""Long inputs: does the gate still find the edit when the question comes after ~2,000 tokens of context?

A store holds N CounterFact edits (seeded sample of eval.json, shipped checkpoint, the
default gate). Each edit prompt and paraphrase is gated bare, and at the end of a long
LCEL-style input: an instruction, then background sentences (Natural Questions turned
into "Q: ... A: ..." lines, none about the edits) up to about ``--context-tokens``
MiniLM tokens. The same long inputs ending in an unrelated NQ question must not fire.

Two windowing rules are compared: the library's (the last sentence) and filling the
encoder's window with as many whole trailing sentences as fit.

Run:  .venv/bin/python benchmarks/bench_query_window.py [--edits 300]
Writes benchmarks/results/query_window.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, counterfact_eval_sample, machine_info  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INSTRUCTION = "You are a helpful assistant. Use the context below if it helps, and answer in a few words."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=300)
    parser.add_argument("--context-tokens", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()

    from recipe_chain import RecipeKnowledgeStore, load_default_editor
    from recipe_chain.data import load_questions
    from recipe_chain.query_window import split_sentences

    editor = load_default_editor()
    examples = counterfact_eval_sample(args.edits, args.seed)
    nq = load_questions(DATA / "general" / "nq-open.jsonl")
    rng = random.Random(args.seed)
    store = RecipeKnowledgeStore(editor, ephemeral=True, namespace="query-window")
    ids = [r.edit_id for r in store.add_edits(
        [{"prompt": e.prompt, "target_new": e.target_new} for e in examples], progress=False)]
    count = editor.encoder.count_tokens
    limit = editor.encoder.max_length

    def fill_window(text: str) -> str:  # the alternative rule: whole trailing sentences while they fit
        sentences = split_sentences(text)
        kept: list[str] = []
        for sentence in reversed(sentences):
            if count([" ".join([sentence, *kept])])[0] > limit:
                break
            kept.insert(0, sentence)
        return " ".join(kept) if kept else sentences[-1]

    def context() -> str:
        parts = [INSTRUCTION]
        total = count([INSTRUCTION])[0]
        while total < args.context_tokens:
            q = rng.choice(nq)
            line = f"Q: {q.prompt.rstrip('?')}? A: {q.answer or 'unknown'}."
            parts.append(line)
            total += count([line])[0] - 2
        return "\n".join(parts)

    cases = {"prompt": [(e.prompt, i) for i, e in enumerate(examples)],
             "paraphrase": [(e.paraphrases[0], i) for i, e in enumerate(examples) if e.paraphrases]}
    unrelated = [q.prompt for q in rng.sample(nq, args.edits)]
    figures: dict[str, float] = {}
    lengths = []

    def rate(results, own) -> float:  # noqa: ANN001
        return sum(1 for r, i in zip(results, own) if r.hit is not None and r.hit.edit_id == ids[i]) / len(own)

    for kind, rows in cases.items():
        texts = [t for t, _ in rows]
        own = [i for _, i in rows]
        long = [f"{context()}\n{t}" for t in texts]
        lengths += count(long)
        figures[f"right_edit_bare_{kind}"] = rate(store.gate_batch(texts), own)
        figures[f"right_edit_long_{kind}"] = rate([store.gate(t) for t in long], own)
        figures[f"right_edit_long_fill_window_{kind}"] = rate([store.gate(fill_window(t)) for t in long], own)
    long_unrelated = [f"{context()}\n{q}" for q in unrelated]
    figures["false_fire_bare_unrelated"] = sum(r.hit is not None for r in store.gate_batch(unrelated)) / len(unrelated)
    figures["false_fire_long_unrelated"] = sum(store.gate(t).hit is not None for t in long_unrelated) / len(unrelated)
    figures["false_fire_long_fill_window_unrelated"] = sum(
        store.gate(fill_window(t)).hit is not None for t in long_unrelated) / len(unrelated)
    lengths.sort()
    payload = {
        "command": "python benchmarks/bench_query_window.py " + " ".join(sys.argv[1:]),
        "edits": len(examples), "checkpoint_fingerprint": editor.fingerprint,
        "verifier": store.verifier is not None, "input_tokens_median": lengths[len(lengths) // 2],
        "figures": {k: round(v, 4) for k, v in figures.items()},
        "machine": machine_info(), "seconds": round(time.perf_counter() - start, 1),
    }
    (RESULTS / "query_window.json").write_text(json.dumps(payload, indent=2) + "\n")
    f = payload["figures"]
    lines = [
        "# Long inputs: the gate reads the asking part", "",
        f"`{payload['command']}`: {payload['edits']} CounterFact edits in one store, shipped checkpoint "
        f"(`{payload['checkpoint_fingerprint']}`, gate verifier {'on' if payload['verifier'] else 'off'}); long inputs "
        f"are an instruction plus NQ Q/A lines, median {payload['input_tokens_median']} MiniLM tokens, then the query. "
        f"{payload['seconds'] / 60:.1f} min.", "",
        "| input | right edit fires: prompt | paraphrase | unrelated question fires |",
        "|---|---|---|---|",
        f"| bare query | {f['right_edit_bare_prompt']:.3f} | {f['right_edit_bare_paraphrase']:.3f} | "
        f"{f['false_fire_bare_unrelated']:.3f} |",
        f"| long input, the library's rule (last sentence) | {f['right_edit_long_prompt']:.3f} | "
        f"{f['right_edit_long_paraphrase']:.3f} | {f['false_fire_long_unrelated']:.3f} |",
        f"| long input, whole trailing sentences that fit the window | {f['right_edit_long_fill_window_prompt']:.3f} | "
        f"{f['right_edit_long_fill_window_paraphrase']:.3f} | {f['false_fire_long_fill_window_unrelated']:.3f} |",
    ]
    (RESULTS / "query_window.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
