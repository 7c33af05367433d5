"""Upper bounds for what a 3-4 vector prefix can do to the frozen default LLM.

Why the ``"vocab"`` prompt encoder exists: this measures, on held-out CounterFact edits,
the teacher-forced token accuracy of the new target (the RECIPE Reliability metric, and
Generality on the first paraphrase) when the prefix holds

* nothing (the unedited model);
* the whole statement as text tokens (what text RAG puts in front);
* the new target's own token embeddings, alone or inside a short text template;
* ``--context`` prompt-tuned vectors shared by all edits, followed by the first
  ``--slots`` token embeddings of the new target: the form the ``"vocab"`` prompt
  encoder can express. The shared vectors are tuned with Adam on CounterFact *train*
  edits (the LLM stays frozen), then evaluated on *eval* edits.

No RECIPE checkpoint is involved: this is about the LLM and the prefix form only.

Run:  .venv/bin/python benchmarks/bench_prefix_oracle.py
Writes benchmarks/results/prefix_oracle.{json,md}.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_results  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=120, help="held-out eval edits (default 120)")
    parser.add_argument("--context", type=int, default=2, help="tuned shared vectors (default 2)")
    parser.add_argument("--slots", type=int, default=2, help="target tokens after them (default 2)")
    parser.add_argument("--steps", type=int, default=60, help="tuning steps, batch 8 (default 60)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from recipe_chain import PrefixedCausalLM, load_default_llm
    from recipe_chain.data import load_edit_examples

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_default_llm()
    model.requires_grad_(False)
    lm = PrefixedCausalLM(model, tokenizer)
    table = lm.embedding.weight  # (V, D); SmolLM2's embedding module does not rescale
    held_out = load_edit_examples(DATA / "eval.json")
    random.Random(0).shuffle(held_out)
    held_out = held_out[: args.examples]
    train = load_edit_examples(DATA / "train.json")
    random.Random(1).shuffle(train)
    train = train[:400]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    def accuracy(prefixes: list | None, paraphrase: bool) -> float:
        prompts = [(e.paraphrases[0] if paraphrase and e.paraphrases else e.prompt) for e in held_out]
        scores = lm.score_targets(prompts, [e.target_new for e in held_out], prefixes, batch_size=40)
        return round(sum(s.token_accuracy for s in scores) / len(scores), 4)

    rows: list[dict] = []

    def measure(name: str, prefixes: list | None) -> None:
        row = {"prefix": name, "reliability": accuracy(prefixes, False), "generality": accuracy(prefixes, True)}
        print(row, flush=True)
        rows.append(row)

    with torch.no_grad():
        measure("none (unedited model)", None)
        measure("statement as text: '<prompt> <target>.'",
                [table[ids(f"{e.prompt} {e.target_new}.")] for e in held_out])
        measure("target tokens only", [table[ids(" " + e.target_new)] for e in held_out])
        for template in ("Answer: {t}\n", "{t}. {t}."):
            measure(f"template {template!r}", [table[ids(template.format(t=e.target_new))] for e in held_out])

    shared = torch.nn.Parameter(table[ids(" Answer:")][: args.context].detach().clone())  # (C, D)
    if shared.shape[0] < args.context:
        shared = torch.nn.Parameter(table[torch.randint(table.shape[0], (args.context,))].detach().clone())
    optimizer = torch.optim.Adam([shared], lr=1e-2)

    def tuned(example) -> torch.Tensor:  # noqa: ANN001
        return torch.cat([shared, table[ids(" " + example.target_new)][: args.slots].detach()])  # (C + S', D)

    start = time.perf_counter()
    for step in range(args.steps):
        batch = random.Random(step).sample(train, 8)
        logits, targets, mask = lm.target_logits(
            lm.tokenize([e.prompt for e in batch]), lm.tokenize_targets([e.target_new for e in batch]),
            [tuned(e) for e in batch],
        )
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tuning_s = time.perf_counter() - start
    with torch.no_grad():
        measure(f"{args.context} tuned shared vectors + first {args.slots} target token embeddings",
                [tuned(e) for e in held_out])

    payload = {"machine": machine_info(), "args": vars(args), "tuning_seconds": round(tuning_s, 1), "rows": rows}
    lines = [
        "# What a short prefix can do to the frozen SmolLM2-135M-Instruct",
        "",
        f"`.venv/bin/python benchmarks/bench_prefix_oracle.py` ({payload['machine']['date']}): teacher-forced token "
        f"accuracy of the new target on {len(held_out)} held-out CounterFact eval edits (seeded), with the prompt "
        "(Reliability) and its first paraphrase (Generality). No retrieval and no RECIPE checkpoint: the right "
        f"prefix is given. Shared vectors tuned for {args.steps} Adam steps (batch 8, lr 1e-2) on train edits, "
        f"{tuning_s:.0f} s.",
        "",
        "| prefix | Reliability | Generality |",
        "|---|---|---|",
        *[f"| {r['prefix']} | {r['reliability']:.3f} | {r['generality']:.3f} |" for r in rows],
        "",
        "The last row is the form the `\"vocab\"` prompt encoder can produce (context vectors, then token slots "
        "that mix the LLM's own token embeddings); the paper's MLP prompt encoder trained to 0.12 Reliability "
        "on the same LLM (benchmarks/results/training/attempts.md).",
    ]
    write_results("prefix_oracle", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
