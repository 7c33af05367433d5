"""The floor under ``add_edit``: the two things no durable one-edit write can skip.

An edit's key must be encoded (the shipped checkpoint's statement pass: MiniLM with the
retrieval LoRA for the key and without it for the prompt code, one paired float32 pass),
and Chroma must store a record with that key. This benchmark fills a persistent
collection with ``--size`` records shaped like the store's (768-d float32 keys, random:
Chroma's write path does not depend on their values; the store's HNSW settings), then,
``--calls`` times, in turn:

* ``encode``: ``editor.encode_statements([statement])`` for a real CounterFact statement;
* ``paired backbone pass``: only the compiled MiniLM pass inside ``encode``
  (:class:`~recipe_chain.compiled_backbone.CompiledBertBackbone` with ``paired=True``), in
  float32 (the default) and in int8 (what ``int8_statements=True`` runs);
* ``add (id + key)``: Chroma adds a record with nothing but its id and key;
* ``add (+ statement)``: the same with the statement as its document;
* ``add (+ statement + metadata)``: the same with the store's ten metadata fields, as
  ``add_edit`` writes it.

The calls take turns so that host drift hits every part alike. The floor is the p50 of
``encode`` plus the p50 of the barest add: what an ``add_edit`` would cost with no
validation, no supersession lookup and no metadata at all.

Run:  GOMP_SPINCOUNT=10000 .venv/bin/python benchmarks/bench_add_edit_floor.py
Writes benchmarks/results/add_edit_floor.{json,md} (``--name`` picks another name).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chroma_sync_threshold import DIM, fill, record_metadata  # noqa: E402
from common import counterfact_eval_sample, cpu_description, machine_info, percentile, write_results  # noqa: E402

TARGET_MS = 20.0
PARTS = ("encode", "paired backbone pass, float32", "paired backbone pass, int8", "add (id + key)", "add (+ statement)", "add (+ statement + metadata)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="records in the collection before the timed calls")
    parser.add_argument("--calls", type=int, default=200, help="timed calls of each part")
    parser.add_argument("--workdir", default=None, help="where the collection is built (default: a temp dir)")
    parser.add_argument("--name", default="add_edit_floor", help="results file name (default add_edit_floor)")
    args = parser.parse_args()
    import chromadb
    import numpy as np
    import torch

    from recipe_chain import load_default_editor, load_default_llm
    from recipe_chain.compiled_backbone import CompiledBertBackbone
    from recipe_chain.editor import statement_of
    from recipe_chain.store import _HNSW_SPACE, _HNSW_SYNC_THRESHOLD

    llm, _ = load_default_llm()
    editor = load_default_editor(llm)
    if editor.config.rep_dim != DIM:
        raise SystemExit(f"the filled collection is {DIM}-d; the checkpoint's keys are {editor.config.rep_dim}-d")
    examples = counterfact_eval_sample(args.calls + 10, seed=0)
    statements = [statement_of(e.prompt, e.target_new) for e in examples]
    backbone = editor.encoder.backbone
    passes = {
        "paired backbone pass, float32": CompiledBertBackbone(backbone, paired=True),
        "paired backbone pass, int8": CompiledBertBackbone(backbone, paired=True, int8=True),
    }

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-floor-"))
    path = workdir / "filled"
    start = time.perf_counter()
    fill(path, args.size, np.random.default_rng(0))
    fill_s = time.perf_counter() - start
    client = chromadb.PersistentClient(str(path))
    collection = client.get_collection("sync-bench")
    collection.modify(configuration={"hnsw": {"sync_threshold": _HNSW_SYNC_THRESHOLD}})
    space = collection.configuration_json["hnsw"]["space"]
    if space != _HNSW_SPACE:
        raise SystemExit(f"the filled collection's space is {space!r}; the store's is {_HNSW_SPACE!r}")

    walls: dict[str, list[float]] = {part: [] for part in PARTS}
    with torch.no_grad():
        for statement in statements[:10]:  # warm-up: compiled graphs, tokenizer, Chroma
            editor.encode_statements([statement])
            batch = editor.encoder.tokenize([statement])
            for compiled in passes.values():
                compiled(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        for i, statement in enumerate(statements[10:]):
            t0 = time.perf_counter()
            key = editor.encode_statements([statement]).numpy()  # (1, d)
            t1 = time.perf_counter()
            walls["encode"].append(t1 - t0)
            batch = editor.encoder.tokenize([statement])
            for part, compiled in passes.items():
                t0 = time.perf_counter()
                compiled(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
                walls[part].append(time.perf_counter() - t0)
            meta = record_metadata(20_000_000 + i)
            records: dict[str, dict[str, Any]] = {
                "add (id + key)": {},
                "add (+ statement)": {"documents": [statement]},
                "add (+ statement + metadata)": {"documents": [statement], "metadatas": [meta]},
            }
            for part, extra in records.items():
                t0 = time.perf_counter()
                collection.add(ids=[uuid.uuid4().hex], embeddings=key, **extra)
                walls[part].append(time.perf_counter() - t0)
    shutil.rmtree(workdir)

    parts = {
        part: {"p50_ms": round(statistics.median(w) * 1000, 2), "p95_ms": round(percentile(w, 0.95) * 1000, 2)}
        for part, w in walls.items()
    }
    floor = round(parts["encode"]["p50_ms"] + parts["add (id + key)"]["p50_ms"], 2)
    int8_floor = round(parts["paired backbone pass, int8"]["p50_ms"] + parts["add (id + key)"]["p50_ms"], 2)
    as_written = round(parts["encode"]["p50_ms"] + parts["add (+ statement + metadata)"]["p50_ms"], 2)
    command = "GOMP_SPINCOUNT=10000 .venv/bin/python benchmarks/bench_add_edit_floor.py " + " ".join(sys.argv[1:])
    payload = {
        "command": command.strip(),
        "size": args.size,
        "calls": args.calls,
        "checkpoint_fingerprint": editor.fingerprint,
        "torch_threads": torch.get_num_threads(),
        "chromadb": chromadb.__version__,
        "fill_s": round(fill_s, 1),
        "parts": parts,
        "floor_p50_ms": floor,
        "int8_backbone_pass_plus_barest_add_p50_ms": int8_floor,
        "encode_plus_full_record_p50_ms": as_written,
        "target_p50_ms": TARGET_MS,
        "machine": machine_info(),
    }
    md = [
        f"# The floor under `add_edit`, {args.size:,} stored records",
        "",
        f"`{payload['command']}`; checkpoint `{editor.fingerprint}`; {payload['torch_threads']} torch threads; "
        f"chromadb {chromadb.__version__}; {payload['machine']['date']}; CPU: {cpu_description(payload['machine'])}.",
        "",
        f"{args.calls} calls of each part, taking turns. `encode` is the store's float32 statement pass for one "
        "real CounterFact statement; the backbone passes are the compiled MiniLM pass inside it (float32, the default; int8, what `int8_statements=True` runs); each `add` is one Chroma `add` call of one record into the filled persistent "
        "collection (the store's HNSW settings).",
        "",
        "| part | p50 ms | p95 ms |",
        "|---|---|---|",
    ]
    md += [f"| {part} | {r['p50_ms']} | {r['p95_ms']} |" for part, r in parts.items()]
    md += [
        "",
        f"* Floor (encode + the barest add): **{floor} ms** p50, against the target of {TARGET_MS:g} ms.",
        f"* An int8 paired backbone pass alone + the barest add: {int8_floor} ms.",
        f"* Encode + the record as `add_edit` writes it: {as_written} ms (before validation and the supersession "
        "lookup).",
    ]
    write_results(args.name, payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
