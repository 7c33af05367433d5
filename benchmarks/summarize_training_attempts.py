"""Summarise the training attempts' logs into ``benchmarks/results/training/attempts.md``.

Each attempt is a ``recipe-chain train`` run whose ``metrics.jsonl`` and
``training_config.json`` were copied to ``benchmarks/results/training/attempts/`` as
``NAME.jsonl`` / ``NAME.training_config.json``; the first shipped checkpoint's two phases are
``benchmarks/results/training/metrics.jsonl`` and ``phase2/metrics.jsonl``. The held-out sanity eval (64 training-set
edits never trained on) gives: the own edit retrieved top-1 for its prompt / paraphrase,
locality prompts rejected by the sentinel, and the teacher-forced token accuracy of the
new target *with the right edit's prompt vectors* (reliability / generality).

Run:  python benchmarks/summarize_training_attempts.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results" / "training"
SHIPPED = ("shipped phase 1 (paper's MLP prompt encoder, 3 vectors; shipped alone before I)", ROOT / "metrics.jsonl",
           ROOT / "training_config.json")
# The shipped checkpoint's second phase is run I; its log lives beside phase 1's.
PHASE2 = ("I-prompt-code-base-features (shipped phase 2)", ROOT / "phase2" / "metrics.jsonl",
          ROOT / "phase2" / "training_config.json")
BASELINE = json.loads((ROOT / "training_config.json").read_text())
KEYS = ("prompt_len", "prompt_encoder", "prompt_context_len", "prompt_code_dim", "freeze_retriever", "prompt_key_grad",
        "rep_dim", "backbone_tuning", "weight_retrieval", "weight_sentinel", "weight_prompt_tokens", "steps",
        "warmup_steps", "tie_head_init")


COMMON = (
    "recipe-chain train --data ../shared/data/counterfact/train.json "
    "--extra-locality ../shared/data/general/nq-open.jsonl --llm default"
)
NOTES = [
    "",
    "## How each run was made",
    "",
    "Runs A-F were made while `\"vocab\"` was briefly the default prompt encoder, so their saved settings "
    "leave `prompt_encoder` unset; rerunning them today needs `--prompt-encoder vocab` (included below). "
    "A and B ran side by side on one thread each, as did D and E; C's first 30 steps shared the machine too.",
    "",
    f"* A: `{COMMON} --prompt-encoder vocab --prompt-len 3 --prompt-context-len 1 --steps 700 --threads 1 "
    "--eval-interval 60 --checkpoint-interval 30 --stop-after 120 --out runs/A`",
    f"* B: `{COMMON} --prompt-encoder vocab --prompt-len 4 --prompt-context-len 2 --steps 700 --threads 1 "
    "--eval-interval 60 --checkpoint-interval 30 --stop-after 150 --out runs/B`, then the same with "
    "`--steps 550 --threads 2 --stop-after 240` (resumes; the schedule then ends at 550).",
    "* C: as B's first phase with `--prompt-key-grad 0 --stop-after 72`.",
    "* D: as B's first phase with `--backbone-tuning frozen --stop-after 80`; "
    "E: the same with `--rep-dim 256 --stop-after 73`.",
    f"* F: `{COMMON} --init-from runs/B/checkpoint --steps 200 --warmup-steps 20 --prompt-key-grad 0.1 "
    "--threads 2 --eval-interval 50 --checkpoint-interval 25 --stop-after 62 --out runs/F` (B's step-240 "
    "checkpoint; the query head was not re-tied).",
    f"* G: `{COMMON} --init-encoder-from recipe_chain/checkpoints/smollm2-135m-minilm-l6 --prompt-encoder vocab "
    "--prompt-len 4 --prompt-context-len 2 --weight-retrieval 0 --weight-sentinel 0 --prompt-key-grad 0 "
    "--steps 300 --threads 2 --eval-interval 50 --checkpoint-interval 25 --stop-after 105 --out runs/G` "
    "(the shipped retriever and sentinel, frozen; only a new prompt encoder trains).",
    f"* H: `{COMMON} --init-encoder-from recipe_chain/checkpoints/smollm2-135m-minilm-l6 --freeze-retriever "
    "--prompt-encoder vocab --prompt-len 4 --prompt-context-len 2 --prompt-code-dim 256 --steps 850 --threads 2 "
    "--eval-interval 100 --checkpoint-interval 50 --out runs/H`, stopped by hand after step 240. A separate "
    "256-d prompt code (queries are zero there) from its own head, on the shipped retriever kept frozen. It was "
    "made before `prompt_code_from_base` existed, so its code head read the features of the backbone *with* "
    "the retrieval adapters (today: `prompt_code_from_base=False`); those features barely depend on the new "
    "target (standardised cosine 0.98 between two statements that differ only in the target, 0.69 without "
    "the adapters), which is why it learned as slowly as G.",
    f"* I (the shipped checkpoint's second phase): `{COMMON} --init-encoder-from "
    "recipe_chain/checkpoints/smollm2-135m-minilm-l6 --freeze-retriever --prompt-encoder vocab --prompt-len 4 "
    "--prompt-context-len 2 --prompt-code-dim 256 --steps 750 --stop-after 700 --threads 2 --eval-interval 100 "
    "--checkpoint-interval 50 --out runs/I`: as H, with the code head reading the backbone without its "
    "adapters (the default now). Its `--init-encoder-from` checkpoint is the MLP checkpoint shipped before it "
    "(fingerprint f646894e2775a29c, in the git history), whose run is the first row. The run was stopped by "
    "hand after its step-700 checkpoint (`--stop-after 700` reproduces that), to keep both phases within the "
    "90-minute training budget; its first ~120 steps shared the machine with test runs.",
    "",
    "Runs stopped early where the trend was clear, to keep the session's CPU time for the others; each "
    "100 steps costs 6-10 minutes on the 2-core machine.",
]


def rows(path: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]


def window(train: list[dict], name: str, lo: int, hi: int) -> str:
    values = [r[name] for r in train if lo <= r["step"] <= hi and name in r]
    return f"{sum(values) / len(values):.2f}" if values else "-"


def main() -> None:
    runs = [SHIPPED, PHASE2] + [
        (p.stem, p, p.with_name(p.stem + ".training_config.json")) for p in sorted((ROOT / "attempts").glob("*.jsonl"))
    ]
    lines = [
        "# Training attempts",
        "",
        "Generated by `python benchmarks/summarize_training_attempts.py` from the run logs in this folder. "
        "Every run trains on `../shared/data/counterfact/train.json` (+ NQ-open extra locality queries) against "
        "the frozen SmolLM2-135M-Instruct with all-MiniLM-L6-v2, seed 0, batch 8. Held-out eval: 64 "
        "training-set edits never trained on, the right edit's prompt vectors given for reliability/generality.",
        "",
        "## Held-out sanity evals",
        "",
        "| run | settings that differ from phase 1 | step | retrieval prompt / paraphrase | "
        "locality rejected | reliability | generality | LLM agreement on locality prompts with a prefix |",
        "|---|---|---|---|---|---|---|---|",
    ]
    losses = [
        "",
        "## Training losses (mean over steps 41-60 and over the run's last 20 steps)",
        "",
        "| run | last step | retrieval 41-60 / last | reliability NLL 41-60 / last | prompt-token CE 41-60 / last |",
        "|---|---|---|---|---|",
    ]
    for name, log, config_path in runs:
        train, evals = rows(log)
        config = json.loads(config_path.read_text())
        diff = ", ".join(
            f"{k}={config.get(k)}" for k in KEYS if k in config and config.get(k) != BASELINE.get(k) and k != "steps"
        ) or "-"
        for e in evals:
            lines.append(
                f"| {name} | {diff} | {e['step']} | {e['retrieval_acc_prompt']:.3f} / "
                f"{e['retrieval_acc_paraphrase']:.3f} | {e['locality_rejected']:.3f} | {e['reliability_acc']:.3f} | "
                f"{e['generality_acc']:.3f} | {e['locality_agreement_with_prefix']:.3f} |"
            )
        last = max(r["step"] for r in train)
        losses.append(
            f"| {name} | {last} | {window(train, 'retrieval', 41, 60)} / {window(train, 'retrieval', last - 19, last)} | "
            f"{window(train, 'reliability', 41, 60)} / {window(train, 'reliability', last - 19, last)} | "
            f"{window(train, 'prompt_tokens', 41, 60)} / {window(train, 'prompt_tokens', last - 19, last)} |"
        )
    (ROOT / "attempts.md").write_text("\n".join(lines + losses + NOTES) + "\n")
    print(ROOT / "attempts.md")


if __name__ == "__main__":
    main()
