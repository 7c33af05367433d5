# %% [markdown]
# # 03 · Lifelong editing: 1,000 facts, one after another
#
# **What you will learn**
#
# - how to run a *lifelong* editing session: CounterFact edits are added to one store
#   one at a time, and the metrics are measured again as the store grows;
# - how reliability, generality and locality of RECIPE hold up with store size, and why
#   the Knowledge Sentinel matters (compared with always using the nearest edit);
# - how to inspect the gate's decisions on the prompts it must leave alone: CounterFact
#   locality prompts (same relation, another subject) and general questions (NQ-open).
#
# **How long it takes on a CPU** (2 cores): roughly 30 to 60 minutes with the full budget
# (1,000 edits, measured at 1, 10, 50, 100, 250, 500 and 1,000; an estimate scaled up
# from the smaller runs, not timed end to end); about 1.5 minutes with the CI budget
# (`RECIPE_COOKBOOK_BUDGET=ci`: 50 edits, measured at 1, 10, 25 and 50).
#
# It uses the default LLM (SmolLM2-135M-Instruct), the shipped RECIPE checkpoint and the
# shared benchmark data (`../shared/data` next to the project). It downloads nothing and
# writes only into a temporary directory that the last cell removes.

# %% [markdown]
# ## Set-up

# %%
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BUDGET = os.environ.get("RECIPE_COOKBOOK_BUDGET", "full").strip().lower()
if BUDGET not in ("full", "ci"):
    raise ValueError(f"RECIPE_COOKBOOK_BUDGET must be 'full' or 'ci', got {BUDGET!r}")
CI = BUDGET == "ci"
N_EDITS = 50 if CI else 1000  # sequential edits
T_GRID = (1, 10, 25, 50) if CI else (1, 10, 50, 100, 250, 500, 1000)  # store sizes at which we measure
N_GENERAL = 100 if CI else 1000  # NQ-open questions for the false-fire rate
GEN_SAMPLE = 10 if CI else 200  # edits whose greedy generations are measured per checkpoint
GEN_TOKENS = 4 if CI else 8  # greedy tokens per generation
SEED = 0



WORKDIR = Path(tempfile.mkdtemp(prefix="recipe-cookbook-03-"))
print(f"budget: {BUDGET}; {N_EDITS} edits; scratch directory: {WORKDIR}")

# Show the harness's one-line summary after each measurement.
harness_log = logging.getLogger("recipe_chain.evaluation.harness")
harness_log.setLevel(logging.INFO)
if not harness_log.handlers:
    harness_log.addHandler(logging.StreamHandler(sys.stdout))

# %% [markdown]
# ## Models and data

# %%
from recipe_chain import load_models
from recipe_chain.data import load_edit_examples, load_questions
from recipe_chain.demo import find_shared_data

models = load_models()  # the default LLM and the checkpoint shipped for it
model, tokenizer, editor = models.llm, models.tokenizer, models.editor
examples = load_edit_examples(find_shared_data("counterfact/eval.json"))
questions = load_questions(find_shared_data("general/nq-open.jsonl"), limit=N_GENERAL)
print(f"{len(examples)} CounterFact examples, {len(questions)} NQ-open questions")

# %% [markdown]
# ## Edit sequentially, measure as the store grows
#
# `LifelongEvaluator.run` shuffles the examples (seeded), keeps one edit per fact, and
# adds the edits to a fresh store **one at a time** with `store.add_edit`. When the store
# holds `t` edits for a `t` in `T_GRID`, it measures every method on the `t` edits made
# so far (and on the NQ questions):
#
# - `recipe`: the Knowledge Sentinel gate + the hit's continuous prompt;
# - `recipe-no-gate`: the nearest edit's prompt, always (an ablation: no sentinel);
# - `no-edit`: the LLM alone, the reference for locality.
#
# The store lives in our scratch directory (`make_store_factory(..., path=...)`), so we
# can open it again afterwards and look at individual decisions.

# %%
from recipe_chain.evaluation import EvalConfig, LifelongEvaluator, make_store_factory

config = EvalConfig(
    edits=N_EDITS,
    seed=SEED,
    methods=("no-edit", "recipe", "recipe-no-gate"),
    dev_size=0,
    general_n=N_GENERAL,
    t_grid=T_GRID,
    gen_sample=GEN_SAMPLE,
    gen_tokens=GEN_TOKENS,
    latency_samples=0,
    gate_latency_samples=5 if CI else 20,
)
store_path = WORKDIR / "chroma"
evaluator = LifelongEvaluator(
    model, tokenizer, editor, config, store_factory=make_store_factory(editor, config, path=store_path), progress=False
)
t0 = time.perf_counter()
results = evaluator.run(examples, questions=questions)
print(f"\n{N_EDITS} sequential edits and {len(results.checkpoints)} measurements in {time.perf_counter() - t0:.0f}s")
print("edit latency (add_edit):", {k: round(v, 4) if isinstance(v, float) else v for k, v in results.edit_latency_s.items()})

# %% [markdown]
# ## The metrics against store size

# %%
def fmt(value) -> str:
    return "  -  " if value is None else f"{value:5.3f}"


print(f"{'t':>6} {'method':15} {'reliab.':>8} {'general.':>8} {'locality':>8} {'EM':>8} {'FF loc.':>8} {'FF NQ':>8}")
for c in results.checkpoints:
    for name in ("recipe", "recipe-no-gate"):
        m = c.methods[name]
        print(
            f"{c.t:>6} {name:15} {fmt(m.reliability):>8} {fmt(m.generality):>8} {fmt(m.locality):>8} "
            f"{fmt(m.em_prompt):>8} {fmt(m.gate.false_fire_locality):>8} {fmt(m.gate.false_fire_general):>8}"
        )

# %%
import matplotlib.pyplot as plt

ts = [c.t for c in results.checkpoints]
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for key, color in (("reliability", "#1f77b4"), ("generality", "#2ca02c"), ("locality", "#d62728")):
    axes[0].plot(ts, [getattr(c.methods["recipe"], key) for c in results.checkpoints], "o-", color=color, label=f"recipe {key}")
    axes[0].plot(ts, [getattr(c.methods["recipe-no-gate"], key) for c in results.checkpoints], "x--", color=color,
                 alpha=0.6, label=f"no gate {key}")
axes[0].set_title("Edit quality as the store grows")
axes[0].set_ylim(0, 1.05)
axes[0].legend(fontsize=7)

for name, style in (("recipe", "o-"), ("recipe-no-gate", "x--")):
    axes[1].plot(ts, [c.methods[name].gate.false_fire_locality for c in results.checkpoints], style, color="#d62728",
                 label=f"{name}: locality prompts")
    axes[1].plot(ts, [c.methods[name].gate.false_fire_general for c in results.checkpoints], style, color="#9467bd",
                 label=f"{name}: NQ questions")
axes[1].plot(ts, [c.methods["recipe"].gate.correct_hit_prompt for c in results.checkpoints], "o-", color="#1f77b4",
             label="recipe: correct hit on edit prompts")
axes[1].set_title("Which edit fired (share of queries)")
axes[1].set_ylim(-0.02, 1.05)
axes[1].legend(fontsize=7)

sizes = [p.store_size for p in results.gate_latency]
axes[2].plot(sizes, [p.p50_s * 1000 for p in results.gate_latency], "o-", label="p50")
axes[2].plot(sizes, [p.p95_s * 1000 for p in results.gate_latency], "x--", label="p95")
axes[2].set_ylim(bottom=0)
axes[2].set_title("Gate latency (ms) against store size")
axes[2].legend()
for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("edits in the store")
fig.tight_layout()
plt.show()

# %% [markdown]
# Without the sentinel, the nearest edit is used on *every* question, so once the store
# holds edits of the same relation every locality prompt and NQ question gets some
# edit's prompt vectors, and locality suffers. With the sentinel, the false-fire rates
# stay low as the store grows, because each question is compared with a threshold of its
# own, not with a fixed cut-off.

# %% [markdown]
# ## Inspecting the gate's decisions
#
# We open the store the run filled (namespace `eval`) and gate the prompts that no edit
# should touch. For each one, the best stored edit, its similarity and the sentinel's:
# the gate fires only when the best edit beats the sentinel.

# %%
from recipe_chain.store import RecipeKnowledgeStore

store = RecipeKnowledgeStore(editor, path=store_path, namespace="eval")
edited = evaluator.select(examples).eval_examples  # the same seeded selection as the run
print("edits in the store:", store.count())

groups = {
    "edit prompts": [e.prompt for e in edited],
    "paraphrases": [p for e in edited for p in e.paraphrases],
    "locality prompts": [loc.prompt for e in edited for loc in e.locality],
    "NQ questions": [q.prompt for q in questions if len(editor.encoder.tokenizer(q.prompt)["input_ids"]) <= editor.config.max_length],
}
gates = {name: store.gate_batch(texts) for name, texts in groups.items()}
for name, results_ in gates.items():
    fired = sum(g.fired for g in results_)
    print(f"{name:17} fired on {fired:4d} of {len(results_):4d}")


def show(results_, n: int = 6) -> None:
    for g in results_[:n]:
        best = g.candidates[0]
        print(
            f"  {'FIRE' if g.fired else 'keep':4}  {g.query[:55]!r:58} best: {best.record.statement[:50]!r:53} "
            f"{best.similarity:6.2f} vs sentinel {g.sentinel_similarity:6.2f}"
        )


print("\nlocality prompts:")
show(gates["locality prompts"])
print("\nNQ questions:")
show(gates["NQ questions"])

# %% [markdown]
# The distance of each query's best edit to the sentinel, `hit − sentinel`, shows the
# gate at work: to the right of 0 it fires. Edit prompts and paraphrases should sit on
# the right, locality prompts and general questions on the left.

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
for name, color in zip(groups, ("#1f77b4", "#2ca02c", "#d62728", "#9467bd")):
    margins = [g.candidates[0].similarity - g.sentinel_similarity for g in gates[name]]
    ax.hist(margins, bins=30, alpha=0.5, color=color, label=name)
ax.axvline(0.0, color="black", linewidth=1)
ax.set_xlabel("best edit similarity − sentinel similarity  (fires when > 0)")
ax.set_ylabel("queries")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# When the gate does fire on a locality prompt, does the answer change? The neighbour
# shares the relation with an edit ("The mother tongue of X is"), so these are the
# hardest cases. Greedy answers of the LLM alone and with the edits:

# %%
from recipe_chain import RecipeEditedLLM

false_fires = [g.query for g in gates["locality prompts"] if g.fired][:3]
if false_fires:
    plain = RecipeEditedLLM(store=store, llm=model, tokenizer=tokenizer, max_new_tokens=GEN_TOKENS, use_edits=False)
    edited_llm = RecipeEditedLLM(store=store, llm=model, tokenizer=tokenizer, max_new_tokens=GEN_TOKENS)
    for question, a, b in zip(false_fires, plain.batch(false_fires), edited_llm.batch(false_fires)):
        print(f"{question!r}\n    LLM alone {a!r}   with edits {b!r}")
else:
    print("The gate fired on none of the locality prompts.")

# %% [markdown]
# ## Clean up

# %%
store.close()
shutil.rmtree(WORKDIR, ignore_errors=True)
print("removed", WORKDIR, "->", not WORKDIR.exists())

# %% [markdown]
# **Next:** `04_chroma_server.ipynb` runs the store on a Chroma server, with one
# namespace per team.
