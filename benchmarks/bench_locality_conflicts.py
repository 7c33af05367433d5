"""Which CounterFact locality prompts fire in a store of 10,000 eval edits, and on what?

A flat CounterFact locality prompt asks the same relation about another subject. In a
store that holds all of `eval.json`, that other subject may have been edited too, and then
firing is right. This script reopens the store `make bench-scale` left behind, gates the
locality prompts of a seeded sample of eval records, and splits the fires into those
whose admitted edit is about a subject the prompt names (the prompt's own fact, or
another fact of its subject, is in the store) and the rest.

Run:  .venv/bin/python benchmarks/bench_locality_conflicts.py [--sample 2000]
Writes benchmarks/results/eval/cf-T10000-verifier/locality_conflicts.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RUN = RESULTS / "eval" / "cf-T10000-verifier"


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()

    from recipe_chain import RecipeKnowledgeStore, load_default_editor
    from recipe_chain.data import load_edit_examples

    editor = load_default_editor()
    results = json.loads((RUN / "results.json").read_text())
    namespace = results["config"].get("namespace") if isinstance(results.get("config"), dict) else None
    import chromadb

    client = chromadb.PersistentClient(path=str(RUN / "store"))
    names = [c.name for c in client.list_collections()]
    store = None
    for name in names:  # the harness names its collection <prefix>_<namespace>
        prefix, _, ns = name.partition("__")
        try:
            store = RecipeKnowledgeStore(editor, client=client, namespace=ns or namespace or "default",
                                         collection_prefix=prefix)
            if store.count() >= 9000:
                break
        except Exception:  # noqa: BLE001 - another collection of the run (text-RAG index)
            store = None
    if store is None:
        raise SystemExit(f"no RECIPE store of the run in {RUN / 'store'} (collections: {names})")
    examples = [e for e in load_edit_examples(DATA / "counterfact" / "eval.json") if e.locality]
    random.Random(args.seed).shuffle(examples)
    examples = examples[: args.sample]
    fired = about_named = 0
    rows = []
    for a in range(0, len(examples), 64):
        part = examples[a : a + 64]
        for ex, g in zip(part, store.gate_batch([e.locality[0].prompt for e in part])):
            if g.hit is None:
                continue
            fired += 1
            subject = g.hit.subject or ""
            named = bool(subject) and _norm(subject) in _norm(ex.locality[0].prompt)
            about_named += named
            if len(rows) < 30:
                rows.append({"locality_prompt": ex.locality[0].prompt, "fired_statement": g.hit.statement,
                             "names_its_subject": named})
    n = len(examples)
    payload = {
        "command": "python benchmarks/bench_locality_conflicts.py " + " ".join(sys.argv[1:]),
        "store_edits": store.count(), "locality_prompts": n, "fired": fired / n,
        "fired_on_an_edit_of_a_subject_the_prompt_names": about_named / n,
        "fired_otherwise": (fired - about_named) / n, "examples": rows,
        "machine": machine_info(), "seconds": round(time.perf_counter() - start, 1),
    }
    (RUN / "locality_conflicts.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Locality prompts that fire, and on what", "",
        f"`{payload['command']}`: the store `make bench-scale` left ({payload['store_edits']:,} active edits of "
        f"CounterFact eval.json), the flat locality prompts of {n:,} seeded eval records, gated again "
        f"with the two-stage gate. {payload['seconds'] / 60:.1f} min.", "",
        "| locality prompts that fire | on an edit whose subject the prompt names | otherwise |",
        "|---|---|---|",
        f"| {100 * payload['fired']:.2f} % | {100 * payload['fired_on_an_edit_of_a_subject_the_prompt_names']:.2f} % "
        f"| {100 * payload['fired_otherwise']:.2f} % |", "",
        "First fires (prompt → admitted statement):", "",
    ]
    lines += [f"* {r['locality_prompt']!r} → {r['fired_statement']!r}" + (" (names its subject)" if r["names_its_subject"] else "")
              for r in rows]
    (RUN / "locality_conflicts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
