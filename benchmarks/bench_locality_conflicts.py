"""Which CounterFact locality prompts fire in a store of 10,000 eval edits, and on what?

A flat CounterFact locality prompt asks the same relation about another subject. In a
store that holds all of `eval.json`, that other subject may have been edited too, and then
firing is right. This script reopens the store `make bench-scale` left behind, gates the
locality prompts of a seeded sample of eval records, and splits them the way the
harness does (`recipe_chain/evaluation/edited_facts.py`): prompts that ask a fact an edit
in the store changed (same subject, old answer = the prompt's reference answer), where
firing is right, and the rest, where any fire is false; false fires are split again by
whether the admitted edit is about a subject the prompt names (another fact of it).

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
from common import RESULTS, machine_info, write_results  # noqa: E402

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
    from recipe_chain.evaluation.edited_facts import EditedFacts

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
    everything = load_edit_examples(DATA / "counterfact" / "eval.json")
    facts = EditedFacts(everything)  # the run put every eval.json edit into the store
    examples = [e for e in everything if e.locality]
    random.Random(args.seed).shuffle(examples)
    examples = examples[: args.sample]
    counts = {"asks_edited_fact": 0, "fired_on_edited_fact": 0, "false_fire_same_subject": 0,
              "false_fire_otherwise": 0}
    rows = []
    for a in range(0, len(examples), 64):
        part = examples[a : a + 64]
        for ex, g in zip(part, store.gate_batch([e.locality[0].prompt for e in part])):
            loc = ex.locality[0]
            edited = facts.asks_edited_fact(loc.prompt, loc.answer)
            counts["asks_edited_fact"] += edited
            if g.hit is None:
                continue
            subject = g.hit.subject or ""
            named = bool(subject) and _norm(subject) in _norm(loc.prompt)
            kind = "fired_on_edited_fact" if edited else "false_fire_same_subject" if named else "false_fire_otherwise"
            counts[kind] += 1
            if len(rows) < 30:
                rows.append({"locality_prompt": loc.prompt, "reference": loc.answer, "fired_statement": g.hit.statement,
                             "kind": kind})
    n = len(examples)
    n_edited = counts["asks_edited_fact"]
    payload = {
        "command": "python benchmarks/bench_locality_conflicts.py " + " ".join(sys.argv[1:]),
        "store_edits": store.count(), "locality_prompts": n,
        "shares": {
            "asks_edited_fact": n_edited / n,
            "fires_when_it_asks_an_edited_fact": counts["fired_on_edited_fact"] / max(n_edited, 1),
            "false_fires": (counts["false_fire_same_subject"] + counts["false_fire_otherwise"]) / max(n - n_edited, 1),
            "false_fires_same_subject": counts["false_fire_same_subject"] / max(n - n_edited, 1),
            "false_fires_otherwise": counts["false_fire_otherwise"] / max(n - n_edited, 1),
        },
        "counts": counts, "examples": rows, "machine": machine_info(), "seconds": round(time.perf_counter() - start, 1),
    }
    lines = [
        "# Locality prompts that fire, and on what", "",
        f"`{payload['command']}`: the store `make bench-scale` left ({payload['store_edits']:,} active edits of "
        f"CounterFact eval.json), the flat locality prompts of {n:,} seeded eval records, gated again "
        f"with the two-stage gate. {payload['seconds'] / 60:.1f} min.", "",
        "A prompt *asks an edited fact* when the store holds an edit of a subject it names whose old answer is "
        "its reference answer (`recipe_chain/evaluation/edited_facts.py`): there the edited answer is right. "
        "Every other fire is false; those on an edit whose subject the prompt names are another fact of that "
        "subject.", "",
        "| locality prompts that ask an edited fact | of those, fired | false fires on the other prompts | "
        "of which on another fact of a subject the prompt names | otherwise |",
        "|---|---|---|---|---|",
        "| " + " | ".join(f"{100 * payload['shares'][k]:.2f} %" for k in (
            "asks_edited_fact", "fires_when_it_asks_an_edited_fact", "false_fires", "false_fires_same_subject",
            "false_fires_otherwise")) + " |", "",
        f"Counts of {n:,} prompts: {counts}.", "",
        "First fires (prompt [reference] → admitted statement, kind):", "",
    ]
    lines += [f"* {r['locality_prompt']!r} [{r['reference']}] → {r['fired_statement']!r} ({r['kind']})" for r in rows]
    write_results(str(RUN.relative_to(RESULTS) / "locality_conflicts"), payload, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
