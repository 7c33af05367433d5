# %% [markdown]
# # 01 · Quickstart: edit three facts, see why an edit fired, undo one
#
# **What you will learn**
#
# - how to create an embedded knowledge store (a Chroma directory on disk) and edit three
#   facts with `store.add_edit`;
# - how to use `RecipeEditedLLM` in an ordinary LangChain (LCEL) chain:
#   `prompt | llm | StrOutputParser()`;
# - how to tell which edit fired and why: the similarity of the best stored edit against
#   the Knowledge Sentinel's similarity, read from `generation_info`;
# - how to undo an edit with `store.delete_edit` and get the model's own answer back.
#
# **How long it takes on a CPU** (2 cores, after `make install`): about 30 seconds with
# the full budget, about 20 seconds with the CI budget (`RECIPE_COOKBOOK_BUDGET=ci` only
# makes the generated answers shorter).
#
# It uses the default LLM (SmolLM2-135M-Instruct) and the RECIPE checkpoint shipped with
# the package. It downloads nothing and writes only into a temporary directory that the
# last cell removes.

# %% [markdown]
# ## Set-up
#
# `RECIPE_COOKBOOK_BUDGET` selects the budget: `full` (the default) or `ci` (what the
# test suite runs).

# %%
import os
import shutil
import tempfile
from pathlib import Path

BUDGET = os.environ.get("RECIPE_COOKBOOK_BUDGET", "full").strip().lower()
if BUDGET not in ("full", "ci"):
    raise ValueError(f"RECIPE_COOKBOOK_BUDGET must be 'full' or 'ci', got {BUDGET!r}")
MAX_NEW_TOKENS = 4 if BUDGET == "ci" else 12  # greedy tokens per answer

WORKDIR = Path(tempfile.mkdtemp(prefix="recipe-cookbook-01-"))
print(f"budget: {BUDGET}; scratch directory: {WORKDIR}")

# %% [markdown]
# ## An edited LLM with an embedded store
#
# `RecipeEditedLLM.from_defaults` loads the frozen LLM, the trained RECIPE editor (its
# knowledge encoder, Knowledge Sentinel and prompt encoder) and opens a persistent Chroma
# store at `store_path`. The store is where edits live; the LLM itself is never changed.

# %%
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from recipe_chain import RecipeEditedLLM

llm = RecipeEditedLLM.from_defaults(store_path=WORKDIR / "store", max_new_tokens=MAX_NEW_TOKENS)
store = llm.store
chain = PromptTemplate.from_template("{question}") | llm | StrOutputParser()
print(store)
print("edits in the store:", store.count())

# %% [markdown]
# Our questions: the three facts we are going to edit (they come from the CounterFact
# benchmark, which edits true facts into counterfactual ones), two paraphrases, and
# three prompts that no edit should touch: two *neighbours* of edited facts (same
# relation, another subject) and an unrelated fact.

# %%
EDITS = [
    # (prompt, new target, subject)
    ("The mother tongue of Danielle Darrieux is", "English", "Danielle Darrieux"),
    ("Windows Embedded CE 6.0 is a product of", "IBM", "Windows Embedded CE 6.0"),
    ("Emilio Lussu speaks", "French", "Emilio Lussu"),
]
QUESTIONS = [
    EDITS[0][0],
    EDITS[1][0],
    EDITS[2][0],
    "Danielle Darrieux's mother tongue is",  # paraphrase of edit 0
    "Windows Embedded CE 6.0 is sold by",  # paraphrase of edit 1
    "The mother tongue of Michel Rocard is",  # neighbour of edit 0: same relation, other person
    "Windows XP is a product of",  # neighbour of edit 1
    "The capital of Japan is",  # unrelated
]
inputs = [{"question": q} for q in QUESTIONS]

before = chain.batch(inputs)
for question, answer in zip(QUESTIONS, before):
    print(f"{question!r:70} -> {answer!r}")

# %% [markdown]
# ## Edit three facts
#
# `store.add_edit(prompt, target_new)` encodes the statement "prompt target_new" into a
# key with the knowledge encoder and writes it to Chroma. No weights change and nothing
# is retrained: an edit takes milliseconds.

# %%
records = [store.add_edit(prompt, target, subject=subject) for prompt, target, subject in EDITS]
for record in records:
    print(record.edit_id, "|", record.statement)
print("edits in the store:", store.count())

# %% [markdown]
# ## Ask again, and record why each answer came out as it did
#
# Every generation of `RecipeEditedLLM` carries a `generation_info` dict with the gate's
# decision. Inside a chain we catch it with a small LangChain callback handler: the
# prompts arrive in `on_llm_start`, the generations (with their `generation_info`) in
# `on_llm_end`, and both carry the same `run_id`.

# %%
from langchain_core.callbacks import BaseCallbackHandler


class GateLog(BaseCallbackHandler):
    """Collects ``prompt -> generation_info`` of every LLM call in a chain run."""

    def __init__(self) -> None:
        self.prompts: dict = {}
        self.info: dict[str, dict] = {}

    def on_llm_start(self, serialized, prompts, *, run_id, **kwargs) -> None:
        self.prompts[run_id] = prompts

    def on_llm_end(self, response, *, run_id, **kwargs) -> None:
        for prompt, generations in zip(self.prompts.pop(run_id), response.generations):
            self.info[prompt] = generations[0].generation_info


log = GateLog()
after = chain.batch(inputs, config={"callbacks": [log]})

for question, old, new in zip(QUESTIONS, before, after):
    info = log.info[question]
    fired = f"edit fired: {info['statement']!r}" if info["edit_fired"] else "no edit"
    print(f"{question!r}\n    before {old!r} -> after {new!r}   ({fired})")

# %% [markdown]
# ## Why did an edit fire?
#
# For each question the gate retrieves the nearest stored edit and compares two exact
# similarities (`q·k/√d`, with `q` the question's query representation):
#
# - `hit_similarity`: to the best stored edit's key;
# - `sentinel_similarity`: to the **Knowledge Sentinel**, a learned key that stands for
#   "none of the stored edits is about this". It gives every question its own threshold.
#
# The edit is used only if `hit_similarity > sentinel_similarity + margin` (the margin is
# 0 by default). `store.gate` returns the same decision with the candidates it
# considered, so we can also name the best edit when it was rejected.

# %%
for question in QUESTIONS:
    info = log.info[question]
    gate = store.gate(question)
    assert gate.fired == info["edit_fired"]  # the chain and the store agree
    hit, sentinel = info["hit_similarity"], info["sentinel_similarity"]
    decision = "FIRE" if info["edit_fired"] else "no edit: the LLM answers on its own"
    print(f"{question!r}\n    best edit {gate.candidates[0].record.statement!r}")
    print(f"    hit {hit:.2f} vs sentinel {sentinel:.2f} (difference {hit - sentinel:+.2f}) -> {decision}")

# %% [markdown]
# A word on what to expect: with 1,000 CounterFact edits in one store, the shipped
# checkpoint gives the new target a teacher-forced token accuracy of 0.83 on the edit
# prompts and 0.84 on paraphrases, and keeps 0.945 of the unedited model's tokens on
# neighbouring prompts (see "Benchmarks" in the README). Greedy answers start with the new
# target about three times in four; a 135M model still sometimes wanders after it.
#
# The edited facts (and, if the encoder generalises, their paraphrases) should show a hit
# similarity above the sentinel's; the neighbour and the unrelated prompt should fall
# below it, so the LLM answers them untouched.
#
# When an edit fires, its continuous prompt, `prompt_len` vectors in the LLM's input
# embedding space, is put in front of the question's token embeddings. No text is added
# to the prompt:

# %%
fired_question = next(q for q in QUESTIONS if log.info[q]["edit_fired"])
vectors = store.gate(fired_question).prompt_vectors  # (prompt_len, LLM hidden size)
print(f"{fired_question!r}: {tuple(vectors.shape)} prompt vectors, 0 extra text tokens")

# %% [markdown]
# ## Undo an edit
#
# `store.delete_edit(edit_id)` removes the edit. The next question about that fact finds
# no edit that beats the sentinel, so the LLM runs untouched and gives exactly the answer
# it gave before the edit (greedy decoding is deterministic).

# %%
undone = store.delete_edit(records[0].edit_id)
print("deleted:", undone.statement, "| edits left:", store.count())

question = EDITS[0][0]
log = GateLog()
answer = chain.invoke({"question": question}, config={"callbacks": [log]})
info = log.info[question]
original = before[QUESTIONS.index(question)]
print(f"{question!r} -> {answer!r}  (edit fired: {info['edit_fired']}; before the edit: {original!r})")
assert not info["edit_fired"], "no edit should fire once the Danielle Darrieux edit is deleted"
assert answer == original, "without an edit the answer must be the model's own"

# %% [markdown]
# The other two edits are still in force:

# %%
for question, answer in zip(QUESTIONS[1:3], chain.batch(inputs[1:3])):
    print(f"{question!r} -> {answer!r}")

# %% [markdown]
# ## Clean up
#
# Close the store (it releases the Chroma client) and remove the scratch directory.

# %%
store.close()
shutil.rmtree(WORKDIR, ignore_errors=True)
print("removed", WORKDIR, "->", not WORKDIR.exists())

# %% [markdown]
# **Next:** `02_recipe_vs_text_rag.ipynb` compares RECIPE with putting the edits into the
# prompt as text, on 200 real CounterFact edits.
