"""What the gate verifier costs per query: `store.gate` with and without it, and the verifier alone.

An embedded store holds N CounterFact edits (public `add_edits`, shipped checkpoint). Gate
calls alternate between the two-stage gate and the sentinel alone on the same store, for
paraphrases of stored edits (nearly all shortlisted: the verifier runs) and NQ questions
(rarely shortlisted: it does not). The verifier's own cost, which does not depend on the
store size, is timed for one and two pairs in float32 and int8.

Run:  .venv/bin/python benchmarks/bench_gate_latency.py [--edits 2000]
Writes benchmarks/results/gate_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import counterfact_eval_sample, machine_info, percentile, write_results  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()

    from recipe_chain import RecipeKnowledgeStore, load_default_editor
    from recipe_chain.data import load_questions

    editor = load_default_editor()
    verifier = editor.gate_verifier
    if verifier is None:
        raise SystemExit("the shipped checkpoint has no gate verifier")
    examples = counterfact_eval_sample(args.edits, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="gate-latency-"))
    store = RecipeKnowledgeStore(editor, path=workdir / "store", namespace="latency")
    store.add_edits([{"prompt": e.prompt, "target_new": e.target_new} for e in examples], progress=False)
    paraphrases = [e.paraphrases[0] for e in examples if e.paraphrases][: args.calls]
    nq = [q.prompt for q in load_questions(DATA / "general" / "nq-open.jsonl")][: args.calls]

    def timed_gates(texts: list[str]) -> dict[str, object]:
        on, off, shortlisted = [], [], 0
        for text in texts[:10]:  # warm-up: compiled graphs, caches
            store.gate(text)
        for text in texts:
            store.verifier = verifier
            t = time.perf_counter()
            result = store.gate(text)
            on.append(1000 * (time.perf_counter() - t))
            shortlisted += result.verifier_probability is not None
            store.verifier = None
            t = time.perf_counter()
            store.gate(text)
            off.append(1000 * (time.perf_counter() - t))
        store.verifier = verifier
        return {"with_verifier_p50": round(percentile(on, 0.5), 2), "with_verifier_p95": round(percentile(on, 0.95), 2),
                "sentinel_only_p50": round(percentile(off, 0.5), 2), "sentinel_only_p95": round(percentile(off, 0.95), 2),
                "shortlisted_share": round(shortlisted / len(texts), 3), "calls": len(texts)}

    gates = {}
    for int8 in (True, False):
        verifier.int8_inference = int8
        suffix = " (verifier int8, the default)" if int8 else " (verifier float32)"
        gates["paraphrases of stored edits" + suffix] = timed_gates(paraphrases)
    verifier.int8_inference = True
    gates["NQ questions"] = timed_gates(nq)
    pair_q = paraphrases[0]
    pair_s = examples[0].statement
    alone = {}
    default_int8 = verifier.int8_inference
    for int8 in (False, True):
        verifier.int8_inference = int8
        for n in (1, 2):
            verifier.probabilities([pair_q] * n, [pair_s] * n)
            times = []
            for _ in range(100):
                t = time.perf_counter()
                verifier.probabilities([pair_q] * n, [pair_s] * n)
                times.append(1000 * (time.perf_counter() - t))
            alone[f"{'int8' if int8 else 'float32'}, {n} pair(s)"] = round(percentile(times, 0.5), 2)
    verifier.int8_inference = default_int8
    store.close()
    payload = {
        "command": "python benchmarks/bench_gate_latency.py " + " ".join(sys.argv[1:]),
        "edits": args.edits, "checkpoint_fingerprint": editor.fingerprint, "verifier_layers": verifier.config.num_layers,
        "gate_ms": gates, "verifier_alone_p50_ms": alone, "machine": machine_info(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    lines = [
        "# Gate latency with and without the verifier", "",
        f"`{payload['command']}`: embedded store of {args.edits:,} CounterFact edits, shipped checkpoint "
        f"(`{payload['checkpoint_fingerprint']}`), verifier of {payload['verifier_layers']} MiniLM layers, calls alternating "
        f"between the two gates on the same store; {payload['machine']['cpu_count']} CPUs, {payload['machine']['date']}.", "",
        "| queries | shortlisted (verifier runs) | gate p50 ms, two-stage | p95 | gate p50 ms, sentinel only | p95 |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in gates.items():
        lines.append(f"| {name} | {100 * g['shortlisted_share']:.1f} % | {g['with_verifier_p50']} | {g['with_verifier_p95']} "
                     f"| {g['sentinel_only_p50']} | {g['sentinel_only_p95']} |")
    lines += ["", "| verifier alone, p50 ms | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in alone.items()]
    write_results("gate_latency", payload, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
