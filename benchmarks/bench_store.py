"""Knowledge-store benchmark: add_edit latency, add_edits throughput, gate latency at 1k-100k edits.

Uses the real default models: SmolLM2-135M-Instruct (for the prompt-vector width) and
the all-MiniLM-L6-v2 knowledge encoder. The editor is the shipped trained checkpoint when
one exists, otherwise ``RecipeEditor.from_backbone(llm)`` with randomly initialised heads
(the store's speed does not depend on training); the results say which.

Edits: real CounterFact statements from ``../shared/data/counterfact/{train,eval}.json``
(up to 20k, one per normalised prompt), then synthetic statements ("Synthetic entity 12345
... is ...") up to the largest size. Gate queries: CounterFact rephrase prompts of stored
edits and NQ-open questions (half each), all distinct.

How the big stores are built: the keys of all statements are computed in bulk with
``editor.encode_statements`` (cached under ``$RECIPE_CHAIN_CACHE/bench`` for reruns) and
inserted through the store's internal batch writer ``RecipeKnowledgeStore._write_batch``
(1,000 edits per Chroma call), i.e. the same write path as ``add_edits`` minus encoding.
``add_edit`` latency and ``add_edits`` throughput are measured through the public API.

Per store size and backend (embedded ``PersistentClient``; a ``chroma run`` server via
``HttpClient``):
* gate latency (``store.gate``) p50/p95 wall time, p50 process CPU time, and a p50
  breakdown: query encoding, the Chroma query, the rest (exact re-scoring, records,
  prompt vectors);
* ``add_edit`` latency p50/p95 (one edit, encoding included).
Plus ``add_edits`` throughput into an empty namespace (encoding included) per backend.

Options that change the store's settings: ``--float32-queries`` and ``--int8-statements``
(the editor's switches, int8 queries and float32 statements by default; the pre-filled
keys stay float32, so only the timed edits are int8) and ``--write-behind`` (embedded store with ``write_behind=True``: ``add_edit``
returns once its journal entry is committed and a background thread writes Chroma while
the next calls run; the results add how long the final flush took and the largest
backlog seen).

torch runs with ``--threads`` intra-op threads (default: torch's own, one per core). The
OpenMP environment matters on a small machine: with two threads, OpenMP's worker spins
after each parallel region by default and takes the core Chroma's query needs next. The
recommended serving setting, ``GOMP_SPINCOUNT=10000`` (see the README), is what
``make bench-store`` uses; the results record the environment they ran under.

Run:  .venv/bin/python benchmarks/bench_store.py [--quick]
Writes benchmarks/results/store.{json,md} (``--quick`` writes store-quick.{json,md}).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_description, machine_info, percentile, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME")
SUBJECTS = ["Aldren", "Borvik", "Celandine", "Dovras", "Elmira", "Fenwick", "Galrod", "Hestia", "Ivoren", "Jorund"]
RELATIONS = [
    ("The mother tongue of {s} is", ["English", "French", "Swahili", "Tamil", "Basque"]),
    ("{s} was born in", ["Lisbon", "Osaka", "Lagos", "Quito", "Tromsø"]),
    ("The occupation of {s} is", ["pilot", "baker", "surgeon", "poet", "architect"]),
    ("{s} is a citizen of", ["Chile", "Norway", "Kenya", "Vietnam", "Canada"]),
    ("The favourite instrument of {s} is the", ["cello", "sitar", "oboe", "banjo", "organ"]),
]


def synthetic(i: int) -> tuple[str, str, str]:
    """A distinct synthetic edit ``(prompt, target, subject)`` for index ``i``."""
    subject = f"{SUBJECTS[i % len(SUBJECTS)]} {i}"
    template, targets = RELATIONS[(i // len(SUBJECTS)) % len(RELATIONS)]
    return template.format(s=subject), targets[i % len(targets)], subject


def load_pool(n: int, n_queries: int) -> tuple[list[tuple[str, str, str | None]], list[str], int]:
    """``n`` edits (real CounterFact first, then synthetic), distinct queries, and the real count."""
    from recipe_chain.data import load_edit_examples, load_questions
    from recipe_chain.store import normalize_prompt

    edits: list[tuple[str, str, str | None]] = []
    paraphrases: list[str] = []
    seen: set[str] = set()
    for name in ("train.json", "eval.json"):
        for ex in load_edit_examples(DATA / "counterfact" / name):
            norm = normalize_prompt(ex.prompt)
            if norm in seen or len(edits) >= min(n, 20_000):
                continue
            seen.add(norm)
            edits.append((ex.prompt, ex.target_new, ex.subject))
            if ex.paraphrases:
                paraphrases.append(ex.paraphrases[0])
    real = len(edits)
    i = 0
    while len(edits) < n:
        edits.append(synthetic(i))
        i += 1
    questions = [q.prompt for q in load_questions(DATA / "general" / "nq-open.jsonl")]
    rng = random.Random(0)
    half = n_queries // 2
    queries = rng.sample(paraphrases[: max(half, min(len(paraphrases), 1000))], half)
    queries += rng.sample(questions, n_queries - half)
    rng.shuffle(queries)
    return edits, queries, real


def bulk_keys(editor: Any, statements: Sequence[str], cache: Path | None) -> Any:
    """``(N, d)`` keys of ``statements`` (sorted by length for less padding), cached on disk."""
    import torch
    from tqdm.auto import tqdm

    if cache is not None and cache.is_file():
        keys = torch.load(cache)
        if keys.shape[0] >= len(statements):
            print(f"keys: loaded {len(statements)} from {cache}", flush=True)
            return keys[: len(statements)]
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # bulk encoding uses every core; latencies use --threads
    order = sorted(range(len(statements)), key=lambda i: len(statements[i]))
    keys = torch.empty(len(statements), editor.config.rep_dim)
    step = 1024
    start = time.perf_counter()
    for lo in tqdm(range(0, len(order), step), desc="Encoding statements", unit="batch"):
        idx = order[lo : lo + step]
        keys[idx] = editor.encode_statements([statements[i] for i in idx], batch_size=128)
    torch.set_num_threads(threads)
    rate = len(statements) / (time.perf_counter() - start)
    print(f"keys: encoded {len(statements)} statements at {rate:.0f}/s", flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(keys, cache)
    return keys


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def stats_ms(values: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "mean_ms": round(sum(ms) / len(ms), 2),
        "n": len(ms),
    }


def measure_gate(store: Any, queries: Sequence[str]) -> dict[str, Any]:
    """``store.gate`` timings, then a profile: the same steps ``gate`` runs, timed one by one."""
    from recipe_chain.gate import admits, sentinel_similarity

    for q in queries[:5]:  # warm-up
        store.gate(q)
    walls, cpus = [], []
    for q in queries:
        wall, cpu = timed(lambda: store.gate(q))
        walls.append(wall)
        cpus.append(cpu)
    vector_walls = []
    for q in queries:  # prompt vectors are computed on first access of a fired result
        result = store.gate(q)
        if result.fired:
            wall, _ = timed(lambda: result.prompt_vectors)
            vector_walls.append(wall)
    parts: dict[str, list[float]] = {"encode_query": [], "chroma_search": [], "rescore_and_records": [],
                                     "verifier": []}
    shortlisted = 0
    for q in queries:
        t0 = time.perf_counter()
        rep = store._encode_queries([q])  # (1, d)
        t1 = time.perf_counter()
        found = store._search(rep, store.candidate_k)[0]
        t2 = time.perf_counter()
        scored = store._scored(rep[0], found)
        sent = sentinel_similarity(rep[0], store._sentinel_key())
        admits(scored[0][0].similarity if scored[0] else None, sent, margin=store.gate_margin, use_gate=store.use_gate)
        t3 = time.perf_counter()
        if store.verifier is not None:  # the second stage runs on the shortlisted candidates only
            probabilities = store._verify([q], [scored], [sent])[0]
            shortlisted += any(p is not None for p in probabilities)
        t4 = time.perf_counter()
        parts["encode_query"].append(t1 - t0)
        parts["chroma_search"].append(t2 - t1)
        parts["rescore_and_records"].append(t3 - t2)
        parts["verifier"].append(t4 - t3)
    out = stats_ms(walls)
    out["prompt_vectors"] = stats_ms(vector_walls) if vector_walls else None
    out["cpu_p50_ms"] = round(percentile([c * 1000 for c in cpus], 0.5), 2)
    out["breakdown_p50_ms"] = {k: round(percentile(v, 0.5) * 1000, 2) for k, v in parts.items()}
    out["verifier_mean_ms"] = round(1000 * sum(parts["verifier"]) / len(parts["verifier"]), 2)
    out["shortlisted_share"] = round(shortlisted / len(queries), 3)
    return out


def measure_add_edit(store: Any, edits: Sequence[tuple[str, str, str | None]]) -> dict[str, Any]:
    """``store.add_edit`` timings; the last third of the edits go in step by step, as a profile."""
    from recipe_chain.store import normalize_prompt

    split = len(edits) * 2 // 3
    walls, cpus = [], []
    backlog = 0
    for prompt, target, subject in edits[:split]:
        wall, cpu = timed(lambda: store.add_edit(prompt, target, subject=subject))
        walls.append(wall)
        cpus.append(cpu)
        backlog = max(backlog, store.pending_writes)
    start = time.perf_counter()
    store.flush()  # write-behind: what the background writer has not written yet
    final_flush = time.perf_counter() - start
    parts: dict[str, list[float]] = {"encode_statement": [], "supersession_lookup": [], "write": [], "chroma_add_alone": []}
    floor = chroma_floor_collection(store)
    for prompt, target, subject in edits[split:]:
        item = store._prepare(prompt, target, subject)
        t0 = time.perf_counter()
        keys = store._encode_statements(store.editor, [item.statement])
        t1 = time.perf_counter()
        store._stored_heads([normalize_prompt(prompt)])  # the lookup _write_batch runs, timed alone
        t2 = time.perf_counter()
        store._write_batch([item], keys)  # verify collection + the same lookup + one upsert (or journal commit)
        t3 = time.perf_counter()
        store.flush()  # write-behind: the record must be in Chroma to be copied below
        parts["encode_statement"].append(t1 - t0)
        parts["supersession_lookup"].append(t2 - t1)
        parts["write"].append(t3 - t2)
        # the floor: Chroma adding one record of the same shape, nothing else
        record = store._collection.get(ids=[item.edit_id], include=["metadatas", "documents", "embeddings"])
        t4 = time.perf_counter()
        floor.add(ids=[f"floor-{item.edit_id}"], embeddings=record["embeddings"], metadatas=record["metadatas"],
                  documents=record["documents"])
        parts["chroma_add_alone"].append(time.perf_counter() - t4)
    store._client.delete_collection(floor.name)  # leave the store as the benchmark found it
    out = stats_ms(walls)
    out["cpu_p50_ms"] = round(percentile([c * 1000 for c in cpus], 0.5), 2)
    out["breakdown_p50_ms"] = {k: round(percentile(v, 0.5) * 1000, 2) for k, v in parts.items()}
    if store._queue is not None:
        out["write_behind"] = {"largest_backlog": backlog, "final_flush_ms": round(final_flush * 1000, 2)}
    out["key_precision"] = store.editor.statement_precision()
    return out


def speed_check_ms() -> float:
    """p50 ms of a fixed CPU workload: MiniLM-L6's 24 weight matrices applied to 13 token rows
    in fp32 on one thread. This machine's host speed drifts (two back-to-back checks once read
    16.4 and 13.8 ms), so every size records it beside its latencies."""
    import torch

    gen = torch.Generator().manual_seed(0)
    shapes = [(1152, 384), (384, 384), (1536, 384), (384, 1536)] * 6
    weights = [torch.randn(o, i, generator=gen) * 0.05 for o, i in shapes]
    inputs = {i: torch.randn(13, i, generator=gen) for i in (384, 1536)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(60):
            start = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return round(percentile([t * 1000 for t in times[10:]], 0.5), 2)


def chroma_floor_collection(store: Any) -> Any:
    """An empty side collection on the store's Chroma client, with the store's HNSW space, for
    timing a bare one-record ``add`` (the floor under ``add_edit``'s write)."""
    client = store._client
    name = f"bench-floor-{time.monotonic_ns()}"
    return client.create_collection(name, metadata={"hnsw:space": "cosine"})


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_backend(
    name: str, open_store: Callable[[str], Any], editor: Any, edits: list, keys: Any, queries: list[str],
    sizes: list[int], n_add: int, n_throughput: int, extra: list,
) -> dict[str, Any]:
    result: dict[str, Any] = {"sizes": {}}
    # add_edits throughput into an empty namespace, through the public API (encoding included).
    store = open_store("throughput")
    batch = [{"prompt": p, "target_new": t, "subject": s} for p, t, s in extra[:n_throughput]]
    start = time.perf_counter()
    store.add_edits(batch, batch_size=256, progress=False)
    elapsed = time.perf_counter() - start
    result["add_edits_throughput"] = {
        "edits": len(batch), "seconds": round(elapsed, 2), "edits_per_s": round(len(batch) / elapsed, 1),
        "batch_size": 256, "load_average": load_average(),
    }
    print(f"[{name}] add_edits: {len(batch) / elapsed:.1f} edits/s", flush=True)
    store.clear()
    store.close()

    store = open_store("main")
    filled, insert_seconds = 0, 0.0
    add_offset = n_throughput
    int8_statements = editor.int8_statements
    for size in sizes:
        start = time.perf_counter()
        editor.int8_statements = False  # the bulk keys are float32, and their records must say so
        try:
            while filled < size:
                hi = min(size, filled + 1000)
                items = [store._prepare(p, t, s) for p, t, s in edits[filled:hi]]
                store._write_batch(items, keys[filled:hi])
                filled = hi
            store.flush()
        finally:
            editor.int8_statements = int8_statements
        insert_seconds += time.perf_counter() - start
        assert store.count() >= size, (store.count(), size)
        entry: dict[str, Any] = {
            "stored_edits": store.count(),
            "bulk_insert_edits_per_s": round(filled / insert_seconds, 1),
            "load_average_before": load_average(),
            "speed_check_ms_before": speed_check_ms(),
        }
        entry["gate"] = measure_gate(store, queries)
        print(f"[{name}] {size}: gate {entry['gate']}", flush=True)
        entry["add_edit"] = measure_add_edit(store, extra[add_offset : add_offset + n_add])
        add_offset += n_add
        print(f"[{name}] {size}: add_edit {entry['add_edit']}", flush=True)
        entry["load_average_after"] = load_average()
        entry["speed_check_ms_after"] = speed_check_ms()
        result["sizes"][str(size)] = entry
    store.close()
    return result


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    lines = [
        "# Knowledge-store benchmark",
        "",
        f"`{payload['command']}` on {m['cpu_count']} CPUs ({cpu_description(m)}), torch {m['torch']} with "
        f"{payload['torch_threads']} intra-op thread(s), chromadb {payload['chromadb']}, {m['date']}.",
        "OpenMP/MKL environment: "
        + (", ".join(f"`{k}={v}`" for k, v in payload.get("environment", {}).items() if v is not None) or "none set")
        + ".",
        "",
        f"Editor: {payload['editor']}; MiniLM weights: {weights_line(payload)}. "
        f"Embedded store: {'`write_behind=True`' if payload.get('write_behind') else 'direct writes (the default)'}. "
        f"Edits: {payload['real_statements']} real CounterFact statements, "
        "synthetic ones beyond. Keys of the pre-filled edits were computed in bulk and written through the "
        "store's batch writer (1,000 per Chroma call); add_edit and add_edits go through the public API.",
        f"1-minute load average {payload['load_average_start']} at the start, {payload['load_average_end']} at "
        f"the end ({m['cpu_count']} cores; above ~1 means other work shared the machine). CPU times count this "
        "process only.",
        "",
        "## Gate latency (`store.gate`, one query: encode + Chroma top-k + exact re-score + the sentinel "
        "shortlist + the verifier on the shortlisted candidates)",
        "",
        "Half the queries paraphrase a stored edit (shortlisted: the verifier runs), half are NQ questions "
        "(rarely shortlisted). The verifier columns: its p50 and mean over all queries, and the share of "
        "queries on which it ran.",
        "",
        "A fired result computes its prompt vectors when `result.prompt_vectors` is first read (what an LLM "
        "call does); the last column times that read, over the fired queries.",
        "",
        "The speed check is a fixed CPU workload (MiniLM-L6's 24 weight matrices on 13 token rows, fp32, one "
        "thread), run before and after each size: this machine's host speed drifts, and a slower check means "
        "every latency on that row ran on a slower machine.",
        "",
        "| backend | stored edits | p50 ms | p95 ms | CPU p50 ms | profile p50: encode query | Chroma search | re-score + records | verifier p50 / mean (share run) | prompt vectors on first read p50 ms (n) | speed check ms (before / after) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, res in payload["backends"].items():
        for size, e in res["sizes"].items():
            g, b = e["gate"], e["gate"]["breakdown_p50_ms"]
            pv = g.get("prompt_vectors")
            vectors = f"{pv['p50_ms']} ({pv['n']})" if pv else "-"
            lines.append(
                f"| {backend} | {int(size):,} | {g['p50_ms']} | {g['p95_ms']} | {g['cpu_p50_ms']} | "
                f"{b['encode_query']} | {b['chroma_search']} | {b['rescore_and_records']} | "
                f"{b.get('verifier', '-')} / {g.get('verifier_mean_ms', '-')} ({g.get('shortlisted_share', '-')}) | "
                f"{vectors} | "
                f"{e.get('speed_check_ms_before', '-')} / {e.get('speed_check_ms_after', '-')} |"
            )
    lines += [
        "",
        "## `add_edit` latency (one edit: validate, encode, supersession lookup, one Chroma upsert)"
        if not payload.get("write_behind") else
        "## `add_edit` latency (one edit: validate, encode, supersession lookup, one journal commit; "
        "`write_behind=True`)",
        "",
        *([
            "With write-behind the call ends at the journal commit; a background thread writes Chroma in groups "
            "while the next calls run (its CPU time counts in the CPU column, which measures this process). The "
            "profile's write column is the lookup plus the journal commit.",
            "",
        ] if payload.get("write_behind") else []),
        "The last column is the floor under the write: Chroma adding one record of the same shape (key, "
        "statement, metadata) to a small side collection on the same client, with nothing else around it.",
        "",
        "| backend | stored edits | p50 ms | p95 ms | CPU p50 ms | calls | profile p50: encode statement | supersession lookup | write (checks + lookup + upsert) | Chroma add of one record alone |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, res in payload["backends"].items():
        for size, e in res["sizes"].items():
            a, b = e["add_edit"], e["add_edit"]["breakdown_p50_ms"]
            lines.append(
                f"| {backend} | {int(size):,} | {a['p50_ms']} | {a['p95_ms']} | {a['cpu_p50_ms']} | {a['n']} | "
                f"{b['encode_statement']} | {b['supersession_lookup']} | {b['write']} | {b.get('chroma_add_alone', '-')} |"
            )
    lines += [
        "",
        "## Throughput",
        "",
        "| backend | `add_edits` edits/s (encode + write, batch 256, empty store) | bulk insert edits/s (precomputed keys) |",
        "|---|---|---|",
    ]
    for backend, res in payload["backends"].items():
        last = list(res["sizes"].values())[-1]
        lines.append(
            f"| {backend} | {res['add_edits_throughput']['edits_per_s']} ({res['add_edits_throughput']['edits']} edits) | "
            f"{last['bulk_insert_edits_per_s']} (to {int(list(res['sizes'])[-1]):,}) |"
        )
    if payload.get("bulk_encode_edits_per_s"):
        lines.append("")
        lines.append(
            f"Bulk statement encoding (`editor.encode_statements`, batch 128; with a prompt code read from MiniLM "
            f"without adapters, in the same paired backbone pass): {payload['bulk_encode_edits_per_s']} statements/s."
        )
    targets = payload["targets"]
    lines += [
        "",
        "## Targets",
        "",
        f"- add_edit p50 <= 20 ms (embedded), at every size: the slowest p50 is {targets['add_edit_p50_ms']} ms, "
        f"at {targets['add_edit_at']:,} stored edits -> {'met' if targets['add_edit_met'] else 'missed'}.",
        f"- gate p50 <= 15 ms at 100k (embedded): measured {targets['gate_p50_ms']} ms at "
        f"{targets['gate_at']:,} stored edits -> {'met' if targets['gate_met'] else 'missed'}.",
    ]
    if payload.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(lines)


def weights_line(payload: dict[str, Any]) -> str:
    """Which MiniLM weights encoded queries and the timed statements."""
    queries = "int8 (`int8_queries=True`)" if payload.get("int8_queries") else "float32"
    statements = "int8 (`int8_statements=True`)" if payload.get("int8_statements") else "float32"
    return f"queries {queries}, timed statements {statements}, pre-filled keys float32"


def auto_notes(payload: dict[str, Any]) -> list[str]:
    """Observations that follow from the numbers (where the time goes)."""
    notes = []
    for backend, res in payload["backends"].items():
        sizes = res["sizes"]
        if not sizes:
            continue
        big = max(sizes, key=int)
        g, b = sizes[big]["gate"], sizes[big]["gate"]["breakdown_p50_ms"]
        notes.append(
            f"{backend}, {int(big):,} edits, gate profile p50: encoding the query (MiniLM-L6 + query head; "
            f"independent of the store size) {b['encode_query']} ms, the Chroma top-{payload['candidate_k']} "
            f"search {b['chroma_search']} ms, exact re-scoring + records {b['rescore_and_records']} ms, "
            f"the verifier {b.get('verifier', '-')} ms (mean {g.get('verifier_mean_ms', '-')} ms; it ran on "
            f"{g.get('shortlisted_share', '-')} of the queries) (gate p50 {g['p50_ms']} ms)."
        )
        a, c = sizes[big]["add_edit"], sizes[big]["add_edit"]["breakdown_p50_ms"]
        notes.append(
            f"{backend}, {int(big):,} edits, add_edit profile p50: encoding {c['encode_statement']} ms, the "
            f"supersession lookup {c['supersession_lookup']} ms, the whole "
            f"write (lookup + one upsert) {c['write']} ms (add_edit p50 {a['p50_ms']} ms)."
        )
        if a.get("write_behind"):
            w = a["write_behind"]
            notes.append(
                f"{backend}, {int(big):,} edits, write-behind: the write is the lookup plus a journal commit; "
                f"during the {a['n']} timed add_edit calls the background writer's backlog peaked at "
                f"{w['largest_backlog']} record(s), and the flush after the last call took {w['final_flush_ms']} ms."
            )
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few calls (a smoke run)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="store sizes (default 1000 10000 100000)")
    parser.add_argument("--backends", nargs="+", default=["embedded", "server"], choices=["embedded", "server"])
    parser.add_argument("--gates", type=int, default=None, help="timed gate calls per size (default 200)")
    parser.add_argument("--adds", type=int, default=None, help="timed add_edit calls per size (default 100)")
    parser.add_argument("--throughput", type=int, default=None, help="edits for the add_edits run (default 2000)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own default, one per core)")
    parser.add_argument("--name", default=None, help="results file name (default store, or store-quick)")
    parser.add_argument("--workdir", default=None, help="where the stores are built (default: a temp dir)")
    parser.add_argument("--no-key-cache", action="store_true", help="do not cache bulk-encoded keys")
    parser.add_argument("--float32-queries", action="store_true",
                        help="encode queries with int8_queries=False (float32 MiniLM weights; default: int8)")
    parser.add_argument("--int8-statements", action="store_true",
                        help="encode the timed add_edit statements with int8_statements=True (default: float32)")
    parser.add_argument("--write-behind", action="store_true",
                        help="open the embedded store with write_behind=True (journaled writes)")
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes or ([1000, 5000] if args.quick else [1000, 10_000, 100_000]))
    n_gates = args.gates or (30 if args.quick else 200)
    n_add = args.adds or (20 if args.quick else 100)
    n_throughput = args.throughput or (300 if args.quick else 2000)

    os.environ.setdefault("RECIPE_CHAIN_CACHE", str(Path(tempfile.gettempdir()) / "rc-cache"))
    import chromadb
    import torch

    from recipe_chain import RecipeEditor, load_default_llm
    from recipe_chain.defaults import load_default_editor
    from recipe_chain.editor import statement_of
    from recipe_chain.loading import cache_dir
    from recipe_chain.store import RecipeKnowledgeStore

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = load_average()
    llm, _ = load_default_llm()
    try:
        editor = load_default_editor(llm)
        editor_kind = "trained checkpoint (recipe_chain/checkpoints)"
    except FileNotFoundError:
        editor = RecipeEditor.from_backbone(llm)
        editor_kind = "RecipeEditor.from_backbone(SmolLM2) with randomly initialised heads (no trained checkpoint yet)"
    editor.int8_queries = not args.float32_queries
    editor.int8_statements = args.int8_statements
    print(f"editor: {editor_kind}; fingerprint {editor.fingerprint}; int8 queries {editor.int8_queries}; int8 "
          f"statements {args.int8_statements}; write-behind {args.write_behind}", flush=True)

    n_extra = n_throughput + n_add * len(sizes)
    edits, queries, real = load_pool(max(sizes) + n_extra, n_gates)
    base, extra = edits[: max(sizes)], edits[max(sizes) :]
    key_file = f"store-keys-{editor.fingerprint}-{max(sizes)}.pt"
    cache = None if args.no_key_cache else cache_dir() / "bench" / key_file
    encode_start = time.perf_counter()
    keys = bulk_keys(editor, [statement_of(p, t) for p, t, _ in base], cache)
    encode_seconds = time.perf_counter() - encode_start

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-store-"))
    payload: dict[str, Any] = {
        "command": ".venv/bin/python benchmarks/bench_store.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "environment": {k: os.environ.get(k) for k in THREAD_ENV},
        "chromadb": chromadb.__version__,
        "editor": editor_kind,
        "editor_fingerprint": editor.fingerprint,
        "int8_queries": editor.int8_queries,
        "int8_statements": args.int8_statements,
        "write_behind": args.write_behind,
        "rep_dim": editor.config.rep_dim,
        "candidate_k": 8,
        "real_statements": min(real, max(sizes)),
        "queries": {"count": n_gates, "kinds": "CounterFact rephrase prompts and NQ-open questions, half each"},
        "load_average_start": load_start,
        "backends": {},
    }
    if cache is None or encode_seconds > 5:
        payload["bulk_encode_edits_per_s"] = round(len(base) / encode_seconds, 1)

    for backend in args.backends:
        server = None
        if backend == "embedded":
            def open_store(namespace: str, _path: Path = workdir / "embedded") -> Any:
                return RecipeKnowledgeStore(editor, path=_path, namespace=namespace, write_behind=args.write_behind)
        else:
            from recipe_chain.integrations.chroma_server import ChromaServer

            server = ChromaServer(workdir / "server", startup_timeout=120).start()

            def open_store(namespace: str, _server: Any = server) -> Any:
                return RecipeKnowledgeStore(editor, client=_server.client(), namespace=namespace)

        try:
            payload["backends"][backend] = run_backend(
                backend, open_store, editor, base, keys, queries, sizes, n_add, n_throughput, extra
            )
        finally:
            if server is not None:
                server.stop()
    payload["load_average_end"] = load_average()

    embedded = payload["backends"].get("embedded", {}).get("sizes", {})
    last = max(embedded, key=int) if embedded else None
    worst = max(embedded, key=lambda size: embedded[size]["add_edit"]["p50_ms"]) if embedded else None
    payload["targets"] = {  # add_edit: the slowest p50 over all sizes
        "add_edit_p50_ms": embedded[worst]["add_edit"]["p50_ms"] if worst else None,
        "add_edit_at": int(worst) if worst else 0,
        "add_edit_met": bool(worst) and embedded[worst]["add_edit"]["p50_ms"] <= 20,
        "gate_p50_ms": embedded[last]["gate"]["p50_ms"] if last else None,
        "gate_at": int(last) if last else 0,
        "gate_met": bool(last) and int(last) >= 100_000 and embedded[last]["gate"]["p50_ms"] <= 15,
    }
    payload["notes"] = auto_notes(payload)
    name = args.name or ("store-quick" if args.quick else "store")
    json_path, md_path = write_results(name, payload, markdown(payload))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
