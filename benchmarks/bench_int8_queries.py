"""What ``int8_queries=True`` costs and saves: gate quality and query-encoding latency.

Adds T CounterFact edits (seeded shuffle of eval.json) to an in-memory store with the
shipped checkpoint (keys are always float32), then gates every edit prompt, its first
paraphrase and its first locality (neighbour) prompt twice: with float32 queries and with
int8 ones (``editor.int8_queries = True``). Reports per setting:

* top-1: the right edit is the best candidate;
* correct fire: the gate admits the right edit;
* fired: the gate admits anything (for neighbours this is a false fire);
* agreement between the settings: same gate decision, same top-1 edit.

Latency: p50 wall time of encoding one query (``editor.encode_queries``, batch of 1),
after warm-up, with torch's default threads.

Run:  GOMP_SPINCOUNT=10000 .venv/bin/python benchmarks/bench_int8_queries.py [--edits 1000]
Writes benchmarks/results/int8_queries.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import counterfact_eval_sample, machine_info, write_results  # noqa: E402

KINDS = ("prompt", "paraphrase", "neighbour")


def latency_ms(fn: Any, calls: int) -> float:
    for _ in range(5):
        fn()
    walls = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        walls.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(walls), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=200, help="timed encode calls per setting")
    args = parser.parse_args()
    import torch

    from recipe_chain import RecipeKnowledgeStore, load_default_editor, load_default_llm

    start = time.perf_counter()
    llm, _ = load_default_llm()
    editor = load_default_editor(llm)
    examples = counterfact_eval_sample(args.edits, args.seed)
    texts = {
        "prompt": [e.prompt for e in examples],
        "paraphrase": [e.paraphrases[0] for e in examples],
        "neighbour": [e.locality[0].prompt for e in examples],
    }
    n = len(examples)
    store = RecipeKnowledgeStore(editor, ephemeral=True, namespace="int8-queries-bench")
    records = store.add_edits([{"prompt": e.prompt, "target_new": e.target_new} for e in examples], progress=False)
    index = {r.edit_id: i for i, r in enumerate(records)}  # edit id -> example number
    runs: dict[str, dict[str, Any]] = {}
    for setting, int8 in (("float32", False), ("int8", True)):
        editor.int8_queries = int8
        results: dict[str, list[tuple[int | None, int | None]]] = {}  # kind -> (top-1, admitted) example numbers
        for kind in KINDS:
            out = []
            for a in range(0, n, 100):
                for r in store.gate_batch(texts[kind][a : a + 100]):
                    top = index[r.candidates[0].record.edit_id] if r.candidates else None
                    out.append((top, index[r.hit.edit_id] if r.hit else None))
            results[kind] = out
        query = texts["paraphrase"][0]
        with torch.no_grad():
            latency = {"encode_query_p50_ms": latency_ms(lambda: editor.encode_queries([query]), args.calls)}
        figures = {}
        for kind in KINDS:
            pairs = results[kind]
            figures[kind] = {
                "top1": sum(top == i for i, (top, _) in enumerate(pairs)) / n,
                "correct_fire": sum(hit == i for i, (_, hit) in enumerate(pairs)) / n,
                "fired": sum(hit is not None for _, hit in pairs) / n,
            }
        runs[setting] = {"figures": figures, "latency": latency, "results": results}
    editor.int8_queries = False
    store.close()

    agreement = {}
    for kind in KINDS:
        a, b = runs["float32"]["results"][kind], runs["int8"]["results"][kind]
        agreement[kind] = {
            "same_gate_decision": sum((x[1] is None) == (y[1] is None) for x, y in zip(a, b)) / n,
            "same_top1": sum(x[0] == y[0] for x, y in zip(a, b)) / n,
        }
    command = "GOMP_SPINCOUNT=10000 .venv/bin/python benchmarks/bench_int8_queries.py " + " ".join(sys.argv[1:])
    payload = {
        "command": command.strip(),
        "edits": n,
        "seed": args.seed,
        "checkpoint_fingerprint": editor.fingerprint,
        "torch_threads": torch.get_num_threads(),
        "environment": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_NUM_THREADS") if os.environ.get(k)},
        "settings": {k: {"figures": v["figures"], "latency": v["latency"]} for k, v in runs.items()},
        "agreement": agreement,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine_info(),
    }
    f32, i8 = runs["float32"], runs["int8"]
    md = [
        f"# int8 vs float32 query encoding, T = {n} CounterFact edits",
        "",
        f"`{payload['command']}`; checkpoint `{editor.fingerprint}`; {payload['torch_threads']} torch threads; "
        f"{payload['machine']['date']}.",
        "",
        "One store, float32 keys; the queries are encoded with the setting of their column. Neighbour rows: "
        "`fired` is a false fire.",
        "",
        "| gated text | figure | float32 | int8 | same decision / same top-1 |",
        "|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for figure in ("top1", "correct_fire", "fired"):
            same = ""
            if figure == "top1":
                same = f"{agreement[kind]['same_gate_decision']:.3f} / {agreement[kind]['same_top1']:.3f}"
            md.append(
                f"| {kind} | {figure} | {f32['figures'][kind][figure]:.3f} | {i8['figures'][kind][figure]:.3f} | {same} |"
            )
    md += [
        "",
        "| latency (p50, one text) | float32 ms | int8 ms |",
        "|---|---|---|",
        f"| encode one query | {f32['latency']['encode_query_p50_ms']} | {i8['latency']['encode_query_p50_ms']} |",
    ]
    write_results("int8_queries", payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
