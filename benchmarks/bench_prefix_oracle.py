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

With ``--multi-token`` it measures the same bound for answers of several tokens, on
each evaluation set (CounterFact eval, ZsRE, KnowEdit recent, HalluEditBench dev
subjects): shared vectors tuned on the training sources only, followed by the first
2, 8 or 16 target tokens, plus greedy exact match of the whole answer.

Run:  .venv/bin/python benchmarks/bench_prefix_oracle.py [--multi-token]
Writes benchmarks/results/prefix_oracle.{json,md} (prefix_oracle_multitoken.{json,md}).
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
SHARED = DATA.parent
EVAL_SETS = {  # never trained on (the generalisation issue's evaluation sets)
    "counterfact/eval.json": "counterfact/eval.json",
    "zsre/train-1k.json": "zsre/train-1k.json",
    "knowedit/wiki_recent_train.json": "knowedit/wiki_recent_train.json",
    "hallueditbench dev subjects": "questions/hallueditbench.json",
}
TRAIN_SETS = ("counterfact/train.json", "knowedit/wiki_counterfact_train.json", "questions/hallueditbench.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=120, help="held-out eval edits (default 120)")
    parser.add_argument("--context", type=int, default=2, help="tuned shared vectors (default 2)")
    parser.add_argument("--slots", type=int, default=2, help="target tokens after them (default 2)")
    parser.add_argument("--steps", type=int, default=60, help="tuning steps, batch 8 (default 60)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--multi-token", action="store_true",
                        help="answers of several tokens, every evaluation set (prefix_oracle_multitoken.md)")
    args = parser.parse_args()
    if args.multi_token:
        multi_token(args)
        return

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

    tuning_s = tune(lm, train, tuned, optimizer, args.steps)
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


def tune(lm, train: list, prefix_of, optimizer, steps: int) -> float:  # noqa: ANN001
    """Adam steps (batch 8, seeded) on the target's cross-entropy with ``prefix_of(example)`` in front; seconds."""
    import torch

    start = time.perf_counter()
    for step in range(steps):
        batch = random.Random(step).sample(train, 8)
        logits, targets, mask = lm.target_logits(
            lm.tokenize([e.prompt for e in batch]), lm.tokenize_targets([e.target_new for e in batch]),
            [prefix_of(e) for e in batch],
        )
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def _load(path: str, part: str) -> list:
    """A data file's examples; HalluEditBench is split by subject (``part`` picks train or dev)."""
    from recipe_chain.data import load_edit_examples, split_by_subject

    examples = load_edit_examples(SHARED / path, on_invalid="skip")
    if "hallueditbench" in path:
        train, dev = split_by_subject(examples)
        examples = dev if part == "dev" else train
    return examples


def multi_token(args: argparse.Namespace) -> None:  # noqa: PLR0915 - a benchmark script, read top to bottom
    """Context vectors + the first S target tokens, for S in 1..16, on every evaluation set."""
    import torch

    from recipe_chain import PrefixedCausalLM, load_default_llm

    torch.set_num_threads(args.threads)
    model, tokenizer = load_default_llm()
    model.requires_grad_(False)
    lm = PrefixedCausalLM(model, tokenizer)
    table = lm.embedding.weight  # (V, D)
    slot_caps = (2, 8, 16)
    steps = args.steps

    def ids(text: str) -> list[int]:
        return tokenizer(" " + text.strip(), add_special_tokens=False).input_ids

    train = [e for path in TRAIN_SETS for e in _load(path, "train")]
    random.Random(1).shuffle(train)
    sets = {}
    for name, path in EVAL_SETS.items():
        examples = _load(path, "dev")
        random.Random(0).shuffle(examples)
        sets[name] = examples[: args.examples]

    def evaluate(name: str, prefix_of) -> dict:  # noqa: ANN001
        examples = sets[name]
        out = {}
        for kind in ("prompt", "paraphrase"):
            rows = [e for e in examples if kind == "prompt" or e.paraphrases]
            if not rows:  # KnowEdit recent has no paraphrases
                out[f"token_accuracy_{kind}"] = None
                continue
            prompts = [e.prompt if kind == "prompt" else e.paraphrases[0] for e in rows]
            targets = [e.target_new for e in rows]
            prefixes = None if prefix_of is None else [prefix_of(e) for e in rows]
            scores = lm.score_targets(prompts, targets, prefixes, batch_size=24)
            out[f"token_accuracy_{kind}"] = round(sum(s.token_accuracy for s in scores) / len(scores), 4)
            if kind == "prompt":
                outputs = []
                for a in range(0, len(rows), 24):
                    outputs += lm.generate(prompts[a : a + 24], None if prefixes is None else prefixes[a : a + 24],
                                           max_new_tokens=max(len(ids(t)) for t in targets[a : a + 24]) + 1)
                hits = [o.strip().lower().startswith(t.strip().lower()) for o, t in zip(outputs, targets)]
                out["exact_match_prompt"] = round(sum(hits) / len(hits), 4)
        return out

    rows: list[dict] = []
    with torch.no_grad():
        for name in sets:
            for label, prefix_of in (("none (unedited model)", None),
                                     ("statement as text", lambda e: table[ids(e.statement)])):
                rows.append({"set": name, "prefix": label, **evaluate(name, prefix_of)})
                print(rows[-1], flush=True)
    fit = {name: {cap: round(sum(len(ids(e.target_new)) <= cap for e in ex) / len(ex), 3) for cap in slot_caps}
           for name, ex in sets.items()}
    tuning_s = {}
    for cap in slot_caps:
        torch.manual_seed(0)
        shared = torch.nn.Parameter(table[torch.randint(table.shape[0], (args.context,))].detach().clone())  # (C, D)
        optimizer = torch.optim.Adam([shared], lr=1e-2)

        def tuned(example, _cap: int = cap) -> torch.Tensor:  # noqa: ANN001
            return torch.cat([shared, table[ids(example.target_new)][:_cap].detach()])  # (C + S, D)

        tuning_s[cap] = round(tune(lm, train, tuned, optimizer, steps), 1)
        with torch.no_grad():
            for name in sets:
                rows.append({"set": name, "prefix": f"{args.context} tuned shared vectors + first {cap} target tokens",
                             "slots": cap, **evaluate(name, tuned)})
                print(rows[-1], flush=True)

    payload = {"machine": machine_info(), "args": vars(args), "steps": steps, "tuning_seconds": tuning_s,
               "train_sets": list(TRAIN_SETS), "targets_fitting": fit, "rows": rows}
    lines = [
        "# What a prefix can do for answers of several tokens",
        "",
        f"`.venv/bin/python benchmarks/bench_prefix_oracle.py {' '.join(sys.argv[1:])}` ({payload['machine']['date']}): "
        f"{args.examples} seeded records of each evaluation set (never trained on; HalluEditBench: dev subjects). "
        "The right prefix is given: no retrieval, no RECIPE checkpoint. Token accuracy: teacher-forced accuracy "
        "of the new target after the prompt (Reliability) and after its first paraphrase (Generality); EM: the "
        "greedy continuation of the prompt starts with the whole new target (case folded). Shared vectors: "
        f"{args.context}, tuned per row for {steps} Adam steps (batch 8, lr 1e-2) on {', '.join(TRAIN_SETS)} "
        "(HalluEditBench train subjects), the LLM frozen.",
        "",
        "| set | prefix | token acc. prompt | token acc. paraphrase | EM prompt |",
        "|---|---|---|---|---|",
        *[f"| {r['set']} | {r['prefix']} | {r['token_accuracy_prompt']:.3f} | "
          + ("–" if r["token_accuracy_paraphrase"] is None else f"{r['token_accuracy_paraphrase']:.3f}")
          + f" | {r['exact_match_prompt']:.3f} |" for r in rows],
        "",
        "Share of the measured targets that fit in S token slots:",
        "",
        "| set | " + " | ".join(f"S = {c}" for c in slot_caps) + " |",
        "|---|" + "---|" * len(slot_caps),
        *[f"| {name} | " + " | ".join(f"{fit[name][c]:.3f}" for c in slot_caps) + " |" for name in sets],
    ]
    write_results("prefix_oracle_multitoken", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
