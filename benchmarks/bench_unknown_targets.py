"""How much of real edit targets the knowledge encoder cannot read, and what the store's rule refuses.

The store refuses a target when more than half of its word pieces are unknown to the
knowledge encoder's vocabulary (``recipe_chain.edit_text``). This measures that rule on
every target of the editing data in ``../shared/data`` (what users edit in practice) and
on hand-written probes (what the rule is for: emoji, other scripts, an overlong word).

Run:  .venv/bin/python benchmarks/bench_unknown_targets.py
Writes benchmarks/results/unknown_targets.{json,md}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_results  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {
    "CounterFact eval": "counterfact/eval.json",
    "CounterFact train": "counterfact/train.json",
    "ZsRE train-1k": "zsre/train-1k.json",
    "KnowEdit WikiData_counterfact": "knowedit/wiki_counterfact_train.json",
    "KnowEdit WikiData_recent": "knowedit/wiki_recent_train.json",
    "HalluEditBench (true answers)": "questions/hallueditbench.json",
}
PROBES = ["😀", "🎉", "🍕", "x" * 100_000, "東京", "Москва", "Αθήνα", "Wile E. Coyote", "1969", "Ł. Kowalski 😀"]


def main() -> None:
    from recipe_chain.data import load_edit_examples
    from recipe_chain.edit_text import MAX_UNKNOWN_SHARE, unknown_pieces
    from recipe_chain.loading import load_default_encoder

    start = time.perf_counter()
    _, tokenizer = load_default_encoder()
    rows = []
    for name, rel in SETS.items():
        targets = [e.target_new for e in load_edit_examples(DATA / rel, on_invalid="skip")]
        counts = unknown_pieces(tokenizer, targets)
        rows.append({
            "set": name, "targets": len(targets),
            "any_unknown": sum(u > 0 for u, _ in counts),
            "refused": sum(t > 0 and u / t > MAX_UNKNOWN_SHARE for u, t in counts),
            "refused_examples": [targets[i] for i, (u, t) in enumerate(counts) if t and u / t > MAX_UNKNOWN_SHARE][:5],
        })
        print(rows[-1], flush=True)
    probes = [
        {"target": p if len(p) < 40 else f"{p[:5]}... ({len(p):,} characters)", "unknown": u, "pieces": t,
         "refused": bool(t and u / t > MAX_UNKNOWN_SHARE)}
        for p, (u, t) in zip(PROBES, unknown_pieces(tokenizer, PROBES))
    ]
    payload = {"command": "python benchmarks/bench_unknown_targets.py", "rule": f"unknown share > {MAX_UNKNOWN_SHARE}",
               "rows": rows, "probes": probes, "machine": machine_info(), "seconds": round(time.perf_counter() - start, 1)}
    md = [
        "# Targets the knowledge encoder cannot read", "",
        f"`{payload['command']}`, {payload['machine']['date']}. Tokenizer: the default knowledge encoder's "
        "(all-MiniLM-L6-v2, WordPiece, `[UNK]` for what its vocabulary lacks). A target is read alone, "
        f"without special tokens. Rule of the store: refuse a target whose unknown share is > {MAX_UNKNOWN_SHARE}.", "",
        "| data | targets | with any unknown piece | refused by the rule |", "|---|---|---|---|",
    ]
    for r in rows:
        md.append(f"| {r['set']} | {r['targets']:,} | {r['any_unknown']:,} ({100 * r['any_unknown'] / r['targets']:.2f} %) "
                  f"| {r['refused']:,} ({100 * r['refused'] / r['targets']:.2f} %) |")
    md += ["", "| probe | unknown / pieces | refused |", "|---|---|---|"]
    md += [f"| {p['target']!r} | {p['unknown']} / {p['pieces']} | {'yes' if p['refused'] else 'no'} |" for p in probes]
    refused = [x for r in rows for x in r["refused_examples"]]
    if refused:
        md += ["", "Refused real targets (first of each set): " + ", ".join(repr(x) for x in refused)]
    write_results("unknown_targets", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
