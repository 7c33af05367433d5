"""Why the store sets Chroma's HNSW ``sync_threshold`` to 100: single-record write latency.

Chroma's local HNSW segment persists its index once every ``sync_threshold`` records
(default 1000). This benchmark fills a persistent collection with ``--size`` records shaped
like the store's (768-d float32 embedding, a statement document and the store's ten
metadata fields; random vectors: the write path does not depend on their values), then
adds ``--adds`` records one ``add`` call at a time, as ``add_edit`` does, and reports the
latency of those calls in windows of 50, once per ``sync_threshold`` setting (each on its
own copy of the filled collection, in a directory under ``--workdir``).

Run:  GOMP_SPINCOUNT=10000 .venv/bin/python benchmarks/bench_chroma_sync_threshold.py
Writes benchmarks/results/chroma_sync_threshold.{json,md}.
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
from common import machine_info, write_results  # noqa: E402

DIM = 768
WINDOW = 50


def record_metadata(i: int) -> dict[str, Any]:
    """The ten metadata fields the store writes for an edit."""
    prompt = f"Synthetic entity {i} is located in"
    return {
        "edit_id": uuid.uuid4().hex,
        "namespace": "main",
        "prompt": prompt,
        "prompt_norm": prompt.lower(),
        "target_new": f"City {i % 997}",
        "subject": f"Synthetic entity {i}",
        "created_at": "2026-11-22T00:00:00+00:00",
        "active": True,
        "previous_targets": "[]",
        "encoder_fingerprint": "0123456789abcdef",
    }


def fill(path: Path, size: int, rng: Any) -> None:
    import chromadb

    client = chromadb.PersistentClient(str(path))
    collection = client.create_collection("sync-bench", configuration={"hnsw": {"space": "cosine"}})
    for start in range(0, size, 1000):
        n = min(1000, size - start)
        metas = [record_metadata(start + j) for j in range(n)]
        collection.add(
            ids=[m["edit_id"] for m in metas],
            embeddings=rng.standard_normal((n, DIM)).astype("float32"),
            metadatas=metas,
            documents=[f"{m['prompt']} {m['target_new']}" for m in metas],
        )


def single_adds(path: Path, sync_threshold: int, adds: int, rng: Any) -> list[float]:
    import chromadb

    client = chromadb.PersistentClient(str(path))
    collection = client.get_collection("sync-bench")
    collection.modify(configuration={"hnsw": {"sync_threshold": sync_threshold}})
    walls = []
    for i in range(adds):
        meta = record_metadata(10_000_000 + i)
        embedding = rng.standard_normal((1, DIM)).astype("float32")
        start = time.perf_counter()
        collection.add(ids=[meta["edit_id"]], embeddings=embedding, metadatas=[meta],
                       documents=[f"{meta['prompt']} {meta['target_new']}"])
        walls.append((time.perf_counter() - start) * 1000)
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="records before the timed adds")
    parser.add_argument("--adds", type=int, default=600, help="timed single-record adds per setting")
    parser.add_argument("--thresholds", type=int, nargs="+", default=[1000, 100])
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    import chromadb
    import numpy as np

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sync-"))
    base = workdir / "filled"
    start = time.perf_counter()
    fill(base, args.size, np.random.default_rng(0))
    fill_s = time.perf_counter() - start
    settings: dict[str, Any] = {}
    for threshold in args.thresholds:
        copy = workdir / f"sync-{threshold}"
        shutil.copytree(base, copy)
        walls = single_adds(copy, threshold, args.adds, np.random.default_rng(threshold))
        windows = [walls[i : i + WINDOW] for i in range(0, len(walls), WINDOW)]
        settings[str(threshold)] = {
            "p50_ms": round(statistics.median(walls), 2),
            "p95_ms": round(float(np.percentile(walls, 95)), 2),
            "max_ms": round(max(walls), 2),
            "window_p50_ms": [round(statistics.median(w), 2) for w in windows],
        }
        shutil.rmtree(copy)
        print(threshold, settings[str(threshold)], flush=True)
    shutil.rmtree(base)
    command = "GOMP_SPINCOUNT=10000 .venv/bin/python benchmarks/bench_chroma_sync_threshold.py " + " ".join(sys.argv[1:])
    payload = {"command": command.strip(), "size": args.size, "adds": args.adds, "window": WINDOW,
               "chromadb": chromadb.__version__, "fill_s": round(fill_s, 1), "settings": settings,
               "machine": machine_info()}
    md = [
        f"# Chroma single-record add latency vs HNSW sync_threshold ({args.size:,} records, persistent)",
        "",
        f"`{payload['command']}`; chromadb {chromadb.__version__}; {payload['machine']['date']}. "
        f"{args.adds} one-record `add` calls per setting, each on its own copy of the same filled collection.",
        "",
        "| sync_threshold | p50 ms | p95 ms | max ms | p50 per window of 50 adds, in order |",
        "|---|---|---|---|---|",
    ]
    for threshold, r in settings.items():
        md.append(f"| {threshold} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | "
                  f"{' / '.join(str(x) for x in r['window_p50_ms'])} |")
    write_results("chroma_sync_threshold", payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
