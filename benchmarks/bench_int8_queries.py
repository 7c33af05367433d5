"""What ``int8_queries=True`` costs and saves: gate quality and query-encoding latency.

Adds T CounterFact edits (seeded shuffle of eval.json) to an in-memory store with the
shipped checkpoint (keys are always float32), then gates every edit prompt, its first
paraphrase and its first locality (neighbour) prompt with the queries encoded three ways:

* ``float32``;
* ``int8``: the shipped int8 layer (7-bit per-channel weights, 8-bit activations);
* ``int8-7bit-act``: PyTorch's own dynamic int8 ``Linear`` (8-bit weights, activations
  reduced to 7 bits), which the previous release used.

Reports per setting:

* top-1: the right edit is the best candidate;
* correct fire: the gate admits the right edit;
* fired: the gate admits anything (for neighbours this is a false fire);
* query error: mean ``|q - q_float32| / |q_float32|`` of the query representations;
* agreement with float32: same gate decision, same top-1 edit.

Latency: p50 wall time of encoding one query (``editor.encode_queries``, batch of 1),
after warm-up, with torch's default threads, float32 and int8 calls interleaved so that
host drift hits both alike.

Run:  GOMP_SPINCOUNT=10000 .venv/bin/python benchmarks/bench_int8_queries.py [--edits 1000]
Writes benchmarks/results/int8_queries.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import counterfact_eval_sample, machine_info, write_results  # noqa: E402

KINDS = ("prompt", "paraphrase", "neighbour")


SETTINGS = ("float32", "int8", "int8-7bit-act")


def interleaved_latency_ms(calls: dict[str, Any], rounds: int) -> dict[str, float]:
    """p50 wall ms of each zero-argument call, the calls taking turns ``rounds`` times."""
    for fn in calls.values():
        for _ in range(5):
            fn()
    walls: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            walls[name].append((time.perf_counter() - start) * 1000)
    return {name: round(statistics.median(w), 2) for name, w in walls.items()}


@contextlib.contextmanager
def torch_default_int8_layers(editor: Any) -> Iterator[None]:
    """Compile int8 graphs with PyTorch's dynamic ``Linear`` (8-bit per-channel weights,
    ``reduce_range``: 7-bit activations) instead of the library's int8 layer."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as TorchDynamicLinear

    from recipe_chain import compiled_backbone

    def torch_layer(weight: torch.Tensor, bias: torch.Tensor, per_token: bool = False) -> torch.nn.Module:
        scales = (weight.abs().amax(dim=1) / 127.5).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zero = torch.zeros(weight.shape[0], dtype=torch.long)
            qweight = torch.quantize_per_channel(weight.float(), scales, zero, 0, torch.qint8)
            layer = TorchDynamicLinear(weight.shape[1], weight.shape[0], dtype=torch.qint8)
            layer.set_weight_bias(qweight, bias.float())
        return layer

    shipped = compiled_backbone._int8_linear
    editor.encoder._compiled.clear()  # graphs compile lazily with whichever layer is in place
    compiled_backbone._int8_linear = torch_layer
    try:
        yield
    finally:
        compiled_backbone._int8_linear = shipped
        editor.encoder._compiled.clear()


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
    every_text = [t for kind in KINDS for t in texts[kind]]

    def gate_all() -> dict[str, Any]:
        results: dict[str, list[tuple[int | None, int | None]]] = {}  # kind -> (top-1, admitted) example numbers
        for kind in KINDS:
            out = []
            for a in range(0, n, 100):
                for r in store.gate_batch(texts[kind][a : a + 100]):
                    top = index[r.candidates[0].record.edit_id] if r.candidates else None
                    out.append((top, index[r.hit.edit_id] if r.hit else None))
            results[kind] = out
        figures = {}
        for kind in KINDS:
            pairs = results[kind]
            figures[kind] = {
                "top1": sum(top == i for i, (top, _) in enumerate(pairs)) / n,
                "correct_fire": sum(hit == i for i, (_, hit) in enumerate(pairs)) / n,
                "fired": sum(hit is not None for _, hit in pairs) / n,
            }
        with torch.no_grad():
            queries = editor.encode_queries(every_text)  # (3T, d)
        return {"figures": figures, "results": results, "queries": queries}

    runs: dict[str, dict[str, Any]] = {}
    editor.int8_queries = False
    runs["float32"] = gate_all()
    editor.int8_queries = True
    with torch_default_int8_layers(editor):
        runs["int8-7bit-act"] = gate_all()
    runs["int8"] = gate_all()
    reference = runs["float32"]["queries"]
    for run in runs.values():
        run["query_error"] = round(float(((run["queries"] - reference).norm(dim=-1) / reference.norm(dim=-1)).mean()), 4)

    def encoder_with(int8: bool) -> Any:
        def encode() -> None:
            editor.int8_queries = int8
            editor.encode_queries([texts["paraphrase"][0]])

        return encode

    with torch.no_grad():
        latency = interleaved_latency_ms({"float32": encoder_with(False), "int8": encoder_with(True)}, args.calls)
    editor.int8_queries = False
    store.close()

    agreement = {}
    for setting in SETTINGS[1:]:
        agreement[setting] = {}
        for kind in KINDS:
            a, b = runs["float32"]["results"][kind], runs[setting]["results"][kind]
            agreement[setting][kind] = {
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
        "settings": {k: {"figures": runs[k]["figures"], "query_error": runs[k]["query_error"]} for k in SETTINGS},
        "agreement_with_float32": agreement,
        "encode_query_p50_ms": latency,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine_info(),
    }
    md = [
        f"# int8 vs float32 query encoding, T = {n} CounterFact edits",
        "",
        f"`{payload['command']}`; checkpoint `{editor.fingerprint}`; {payload['torch_threads']} torch threads; "
        f"{payload['machine']['date']}.",
        "",
        "One store, float32 keys; the queries are encoded with the setting of their column. `int8` is the "
        "library's int8 layer (7-bit per-channel weights, 8-bit activations); `int8-7bit-act` is PyTorch's dynamic "
        "int8 `Linear` (8-bit weights, 7-bit activations), which the previous release used. Neighbour rows: "
        "`fired` is a false fire. Agreement columns compare each int8 setting with float32.",
        "",
        "| gated text | figure | float32 | int8 | int8-7bit-act |",
        "|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for figure in ("top1", "correct_fire", "fired"):
            cells = " | ".join(f"{runs[k]['figures'][kind][figure]:.3f}" for k in SETTINGS)
            md.append(f"| {kind} | {figure} | {cells} |")
        for what, label in (("same_gate_decision", "same gate decision"), ("same_top1", "same top-1")):
            cells = " | ".join(f"{agreement[k][kind][what]:.3f}" for k in SETTINGS[1:])
            md.append(f"| {kind} | {label} as float32 | | {cells} |")
    md += [
        "| all | query error vs float32 | 0 | " + " | ".join(f"{runs[k]['query_error']:.4f}" for k in SETTINGS[1:]) + " |",
        "",
        "| latency (p50, one text, calls interleaved) | float32 ms | int8 ms |",
        "|---|---|---|",
        f"| encode one query | {latency['float32']} | {latency['int8']} |",
    ]
    write_results("int8_queries", payload, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
