"""False fires against store size, gate only, for several gate designs side by side (T up to 100,000).

Probe edits are the ROME-form CounterFact records (`counterfact/rome_portability.json`,
all from `counterfact/eval.json`): each brings its edit prompt, two paraphrases and ten
neighbourhood prompts (same relation, other subject: they must not fire). The store holds
the probe edits plus filler: every other statement of `counterfact/train.json` and
`eval.json`, then, beyond those ~20,000, synthetic statements that put CounterFact
subjects into CounterFact relation templates with that relation's targets (subjects that
appear in a probe's neighbourhood prompt are left out, so a neighbour never has a stored
answer). General text: Natural Questions and HalluEditBench dev-subject questions
(entity-rich; never trained on).

Retrieval here is exact top-k over all keys (the store's Chroma search is approximate
HNSW, re-scored exactly), so the figures isolate the gate. Designs:

* ``sentinel``: today's rule, ``best > sentinel``;
* ``sentinel +m``: a fixed extra margin;
* ``sentinel calibrated``: at each T the smallest margin that keeps dev false fires
  (CounterFact *train* neighbours, in the same store) at or under 2 %;
* ``verifier``: the two-stage gate (:mod:`recipe_chain.verifier`) with its shipped settings;
* ``verifier k=1``: the same reading only the top candidate.

Run:  .venv/bin/python benchmarks/bench_gate_scale.py [--sizes 100,1000,10000,100000]
Writes benchmarks/results/gate_scale.{json,md} and gate_scale.png. Encodings are cached
under --cache (keyed by the checkpoint fingerprint), so a rerun skips them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402

import torch  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def load_probes(n: int) -> list[dict]:
    records = json.loads((DATA / "counterfact" / "rome_portability.json").read_text())
    probes = []
    for r in records[:n]:
        rw = r["requested_rewrite"]
        prompt = rw["prompt"].format(rw["subject"])
        probes.append({
            "case_id": r["case_id"], "subject": rw["subject"], "relation": rw["relation_id"], "template": rw["prompt"],
            "target": rw["target_new"]["str"], "statement": f"{prompt} {rw['target_new']['str']}", "prompt": prompt,
            "paraphrases": list(r["paraphrase_prompts"][:2]), "neighbours": list(r["neighborhood_prompts"]),
        })
    return probes


def load_filler(probes: list[dict], total: int, seed: int) -> tuple[list[str], list[dict]]:
    """Statements other than the probes': real CounterFact first, then synthetic, up to ``total``.

    Returns the statements and the dev records (CounterFact train edits with a neighbour).
    """
    from recipe_chain.data import load_edit_examples

    probe_ids = {str(p["case_id"]) for p in probes}
    neighbour_text = " \n ".join(_norm(q) for p in probes for q in p["neighbours"])
    seen = {_norm(p["prompt"]) for p in probes}
    real, dev, subjects = [], [], []
    for name in ("train.json", "eval.json"):
        for ex in load_edit_examples(DATA / "counterfact" / name):
            if ex.case_id in probe_ids or _norm(ex.prompt) in seen:
                continue
            seen.add(_norm(ex.prompt))
            real.append(ex.statement)
            if ex.subject:
                subjects.append(ex.subject)
            if name == "train.json" and ex.locality and len(dev) < 500:
                dev.append({"statement": ex.statement, "neighbour": ex.locality[0].prompt})
    rng = random.Random(seed)
    rng.shuffle(real)
    templates: dict[str, list[str]] = {}
    targets: dict[str, list[str]] = {}
    for r in json.loads((DATA / "counterfact" / "rome_portability.json").read_text()):
        rw = r["requested_rewrite"]
        templates.setdefault(rw["relation_id"], []).append(rw["prompt"])
        targets.setdefault(rw["relation_id"], []).append(rw["target_new"]["str"])
        targets[rw["relation_id"]].append(rw["target_true"]["str"])
    usable = sorted({s for s in subjects if _norm(s) not in neighbour_text})
    relations = sorted(templates)
    synthetic: list[str] = []
    while len(real) + len(synthetic) < total:
        rel = rng.choice(relations)
        prompt = rng.choice(templates[rel]).format(rng.choice(usable))
        if _norm(prompt) in seen:
            continue
        seen.add(_norm(prompt))
        synthetic.append(f"{prompt} {rng.choice(targets[rel])}")
    return (real + synthetic)[:total], dev


def general_questions(n: int) -> dict[str, list[str]]:
    from recipe_chain.data import load_edit_examples, load_questions, split_by_subject

    nq = [q.prompt for q in load_questions(DATA / "general" / "nq-open.jsonl")][:n]
    hal = load_edit_examples(DATA / "questions" / "hallueditbench.json", on_invalid="skip")
    _, dev = split_by_subject(hal)
    questions = sorted({e.prompt for e in dev})
    random.Random(0).shuffle(questions)
    return {"nq": nq, "hallueditbench_dev": questions[:n]}


class Encoded:
    """Query representations and retrieval keys, cached on disk by checkpoint fingerprint."""

    def __init__(self, editor, cache: Path) -> None:  # noqa: ANN001
        self.editor = editor
        self.path = cache / f"{editor.fingerprint}.pt"
        self.store: dict[str, dict[str, torch.Tensor]] = {"q": {}, "k": {}}
        if self.path.is_file():
            self.store = torch.load(self.path, weights_only=False)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.store, self.path)

    def _encode(self, kind: str, texts: list[str]) -> torch.Tensor:
        from tqdm.auto import tqdm

        enc = self.editor.encoder
        missing = sorted({t for t in texts if t not in self.store[kind]})
        batch = 128
        with torch.no_grad():
            for a in tqdm(range(0, len(missing), batch), desc=f"encode {kind}", disable=not missing):
                part = missing[a : a + batch]
                if kind == "q":
                    reps = self.editor.encode_queries(part, batch_size=batch)
                else:  # the retrieval part of each key; the prompt code (zero in queries) never moves q·k
                    feats = enc.features(enc.tokenize(part))
                    reps = torch.nn.functional.pad(enc.knowledge_head(feats), (0, enc.prompt_code_dim))
                for t, r in zip(part, reps.float()):
                    self.store[kind][t] = r.clone()
            if missing:
                self.save()
        return torch.stack([self.store[kind][t] for t in texts]) if texts else torch.zeros(0)

    def queries(self, texts: list[str]) -> torch.Tensor:
        return self._encode("q", texts)

    def keys(self, texts: list[str]) -> torch.Tensor:
        return self._encode("k", texts)


def main() -> None:  # noqa: PLR0915 - a benchmark script, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--general", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=8, help="top-k the gate re-scores (the store's candidate_k)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "recipe-chain" / "bench-gate-scale"))
    parser.add_argument("--name", default="gate_scale")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()

    from recipe_chain import load_default_editor
    from recipe_chain.gate import shortlist, verified_choice

    editor = load_default_editor()
    verifier = editor.gate_verifier
    sizes = [int(s) for s in args.sizes.split(",")]
    probes = load_probes(args.probes)
    filler, dev = load_filler(probes, max(sizes), args.seed)
    general = general_questions(args.general)
    enc = Encoded(editor, Path(args.cache))
    sq = math.sqrt(editor.config.rep_dim)
    sentinel = editor.sentinel_key().detach().float()

    probe_keys = enc.keys([p["statement"] for p in probes])
    dev_keys = enc.keys([d["statement"] for d in dev])
    filler_keys = enc.keys(filler)
    query_sets = {
        "prompt": [(p["prompt"], i) for i, p in enumerate(probes)],
        "paraphrase": [(q, i) for i, p in enumerate(probes) for q in p["paraphrases"]],
        "neighbour": [(q, -1) for p in probes for q in p["neighbours"]],
        "dev_neighbour": [(d["neighbour"], -1) for d in dev],
        **{name: [(q, -1) for q in qs] for name, qs in general.items()},
    }
    reps = {name: enc.queries([q for q, _ in qs]) for name, qs in query_sets.items()}
    statements_all = [p["statement"] for p in probes] + [d["statement"] for d in dev] + filler
    keys_all = torch.cat([probe_keys, dev_keys, filler_keys])  # (N, d)
    n_probe, n_dev = len(probes), len(dev)
    prob_cache: dict[tuple[str, str], float] = {}

    def verify(pairs: list[tuple[str, str]]) -> list[float]:
        todo = sorted({p for p in pairs if p not in prob_cache})
        for a in range(0, len(todo), 256):
            part = todo[a : a + 256]
            for pair, prob in zip(part, verifier.probabilities([q for q, _ in part], [s for _, s in part]).tolist()):
                prob_cache[pair] = prob
        return [prob_cache[p] for p in pairs]

    rows = []
    for T in sizes:
        n_p = min(n_probe, T)
        # the store: n_p probe edits, the dev edits (from T >= 1000), filler up to T
        n_d = n_dev if T >= 1000 else 0
        idx = list(range(n_p)) + list(range(n_probe, n_probe + n_d))
        idx += list(range(n_probe + n_dev, n_probe + n_dev + max(0, T - len(idx))))
        index = torch.tensor(idx)
        keys = keys_all[index]
        selected = {
            "prompt": [k for k, (_, i) in enumerate(query_sets["prompt"]) if i < n_p],
            "paraphrase": [k for k, (_, i) in enumerate(query_sets["paraphrase"]) if i < n_p],
            "neighbour": list(range(10 * n_p)) if n_p < n_probe else list(range(len(query_sets["neighbour"]))),
            "dev_neighbour": list(range(len(query_sets["dev_neighbour"]))) if n_d else [],
            "nq": list(range(len(query_sets["nq"]))),
            "hallueditbench_dev": list(range(len(query_sets["hallueditbench_dev"]))),
        }
        scored = {}
        for name, chosen in selected.items():
            if not chosen:
                continue
            q = reps[name][chosen]  # (Q, d)
            sims = q @ keys.T / sq  # (Q, T)
            top = sims.topk(min(args.candidates, T), dim=1)
            sent = (q @ sentinel) / sq  # (Q,)
            own = [query_sets[name][c][1] for c in chosen]
            scored[name] = (top.values, index[top.indices], sent, own, [query_sets[name][c][0] for c in chosen])

        def sentinel_fire(name: str, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
            values, ids, sent, _, _ = scored[name]
            return values[:, 0] > sent + margin, ids[:, 0]

        def verifier_fire(name: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            values, ids, sent, _, texts = scored[name]
            cfg = verifier.config
            jobs = []
            for r in range(values.shape[0]):
                for j in shortlist(values[r].tolist(), float(sent[r]), margin=cfg.prefilter_margin, k=k):
                    jobs.append((r, j))
            probs = verify([(texts[r], statements_all[int(ids[r, j])]) for r, j in jobs])
            table = [[None] * values.shape[1] for _ in range(values.shape[0])]
            for (r, j), p in zip(jobs, probs):
                table[r][j] = p
            fire, pick = torch.zeros(values.shape[0], dtype=torch.bool), ids[:, 0].clone()
            for r in range(values.shape[0]):
                choice = verified_choice(table[r], cfg.threshold)
                if choice is not None:
                    fire[r], pick[r] = True, ids[r, choice]
            return fire, pick

        margin_cal = 0.0
        if "dev_neighbour" in scored:
            values, _, sent, _, _ = scored["dev_neighbour"]
            gaps = (values[:, 0] - sent).sort().values
            margin_cal = max(0.0, float(gaps[int(math.ceil(0.98 * len(gaps))) - 1]))  # at most 2 % above it
        designs = {
            "sentinel": lambda n: sentinel_fire(n, 0.0),
            "sentinel +1": lambda n: sentinel_fire(n, 1.0),
            "sentinel +2": lambda n: sentinel_fire(n, 2.0),
            "sentinel calibrated": lambda n: sentinel_fire(n, margin_cal),
        }
        if verifier is not None:
            designs["verifier"] = lambda n: verifier_fire(n, verifier.config.candidate_k)
            designs["verifier k=1"] = lambda n: verifier_fire(n, 1)
        for design, fn in designs.items():
            row = {"T": T, "design": design, "margin": margin_cal if design == "sentinel calibrated" else None}
            for name in ("prompt", "paraphrase"):
                fire, pick = fn(name)
                own = torch.tensor(scored[name][3])
                row[f"admitted_{name}"] = round(float((fire & (pick == own)).float().mean()), 4)
            for name in ("neighbour", "nq", "hallueditbench_dev"):
                fire, _ = fn(name)
                row[f"false_fire_{name}"] = round(float(fire.float().mean()), 4)
                row[f"n_{name}"] = int(fire.numel())
            rows.append(row)
            print(row, flush=True)

    payload = {
        "command": "python benchmarks/bench_gate_scale.py " + " ".join(sys.argv[1:]),
        "checkpoint_fingerprint": editor.fingerprint,
        "verifier": verifier.config.model_dump(mode="json") if verifier is not None else None,
        "probes": len(probes), "real_filler": min(len(filler), 20000), "rows": rows,
        "machine": machine_info(), "seconds": round(time.perf_counter() - start, 1),
    }
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(payload, RESULTS / f"{args.name}.md")
    plot(rows, RESULTS / f"{args.name}.png")


def write_markdown(payload: dict, path: Path) -> None:
    lines = [
        "# Gate false fires against store size (gate only)", "",
        f"`{payload['command']}`, checkpoint `{payload['checkpoint_fingerprint']}`, {payload['seconds'] / 60:.1f} min, "
        f"{payload['machine']['date']}.", "",
        f"{payload['probes']} probe edits (ROME-form CounterFact, from eval.json) with their prompt, 2 paraphrases and 10 "
        "neighbourhood prompts each; filler: the other CounterFact train + eval statements, then synthetic statements "
        "(CounterFact subjects in CounterFact relation templates). Exact top-k retrieval over all keys. "
        "General text: NQ questions and HalluEditBench dev-subject questions.", "",
        "| T | design | admitted right: prompt | paraphrase | false fires: neighbours | NQ | HalluEditBench dev |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        design = r["design"] + (f" (margin {r['margin']:.2f})" if r["margin"] is not None else "")
        lines.append(
            f"| {r['T']:,} | {design} | {r['admitted_prompt']:.3f} | {r['admitted_paraphrase']:.3f} | "
            f"{100 * r['false_fire_neighbour']:.2f} % | {100 * r['false_fire_nq']:.2f} % | "
            f"{100 * r['false_fire_hallueditbench_dev']:.2f} % |"
        )
    if payload["verifier"]:
        v = payload["verifier"]
        lines += ["", f"Verifier: {v['num_layers']} MiniLM layers, threshold {v['threshold']:.4f}, "
                      f"candidate_k {v['candidate_k']}, prefilter margin {v['prefilter_margin']}."]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for design in dict.fromkeys(r["design"] for r in rows):
        mine = [r for r in rows if r["design"] == design]
        ts = [r["T"] for r in mine]
        ax1.plot(ts, [100 * r["false_fire_neighbour"] for r in mine], marker="o", label=design)
        ax2.plot(ts, [r["admitted_paraphrase"] for r in mine], marker="o", label=design)
    for ax, title in ((ax1, "false fires on neighbours (%)"), (ax2, "right edit admitted (paraphrases)")):
        ax.set_xscale("log")
        ax.set_xlabel("edits in the store (T)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.axhline(2.0, color="grey", linestyle="--", linewidth=1)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
