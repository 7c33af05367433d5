# %% [markdown]
# # 04 · A Chroma server, two teams, two knowledge bases
#
# **What you will learn**
#
# - how to start a real Chroma server (`chroma run`) from Python with the
#   `recipe_chain.integrations.ChromaServer` adapter, and connect knowledge stores to it with
#   `client=server.client()`;
# - how namespaces keep two teams' knowledge bases apart: each namespace is its own
#   Chroma collection, so one team's edits never reach the other team's answers, even
#   when both edit the same fact differently;
# - how another process would connect (`recipe_chain.integrations.connect(url)`);
# - how to shut the server down cleanly.
#
# **How long it takes on a CPU** (2 cores): about 30 seconds with the full budget, about
# 20 seconds with the CI budget (`RECIPE_COOKBOOK_BUDGET=ci` only makes the generated
# answers shorter).
#
# It uses the default LLM (SmolLM2-135M-Instruct) and the shipped RECIPE checkpoint, and
# the `chroma` command installed with `chromadb`. The server listens on 127.0.0.1 only, on
# a free port. Nothing is downloaded; the server's data and log go to a temporary
# directory that the last cell removes after the server has stopped.

# %% [markdown]
# ## Set-up

# %%
import os
import shutil
import tempfile
from pathlib import Path

BUDGET = os.environ.get("RECIPE_COOKBOOK_BUDGET", "full").strip().lower()
if BUDGET not in ("full", "ci"):
    raise ValueError(f"RECIPE_COOKBOOK_BUDGET must be 'full' or 'ci', got {BUDGET!r}")
MAX_NEW_TOKENS = 4 if BUDGET == "ci" else 12  # greedy tokens per answer

WORKDIR = Path(tempfile.mkdtemp(prefix="recipe-cookbook-04-"))
print(f"budget: {BUDGET}; scratch directory: {WORKDIR}")

# %% [markdown]
# ## Start the server
#
# `ChromaServer(path)` runs `chroma run --path <path>` as a child process in its own
# process group, on a free port of 127.0.0.1, and `start()` returns once the server
# answers its heartbeat. In a script, prefer the context manager, which stops the server
# even when an exception escapes:
#
# ```python
# with ChromaServer(path) as server:
#     store = RecipeKnowledgeStore(editor, client=server.client(), namespace="team-a")
#     ...
# ```
#
# A notebook spreads the work over several cells, so here we call `start()` now and
# `stop()` in the last cells. (The adapter also stops a still-running server when the
# Python process exits.)

# %%
from recipe_chain.integrations.chroma_server import ChromaServer, connect

server = ChromaServer(WORKDIR / "chroma-data")
server.start()
print("server:", server.url, "| pid", server.pid, "| heartbeat", server.heartbeat())

# %% [markdown]
# ## One knowledge base per team
#
# Two teams share the server and the models. Each gets a `RecipeKnowledgeStore` with its
# own namespace. Both edit Danielle Darrieux's mother tongue, to different values; each
# team also edits one fact the other team does not.

# %%
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from recipe_chain import RecipeEditedLLM, load_default_llm
from recipe_chain.defaults import load_default_editor
from recipe_chain.store import RecipeKnowledgeStore

model, tokenizer = load_default_llm()
editor = load_default_editor(model)
client = server.client()

teams = {
    "team-alpha": RecipeKnowledgeStore(editor, client=client, namespace="team-alpha"),
    "team-beta": RecipeKnowledgeStore(editor, client=client, namespace="team-beta"),
}
teams["team-alpha"].add_edit("The mother tongue of Danielle Darrieux is", "English", subject="Danielle Darrieux")
teams["team-alpha"].add_edit("Windows Embedded CE 6.0 is a product of", "IBM", subject="Windows Embedded CE 6.0")
teams["team-beta"].add_edit("The mother tongue of Danielle Darrieux is", "German", subject="Danielle Darrieux")
teams["team-beta"].add_edit("Emilio Lussu speaks", "French", subject="Emilio Lussu")

for name, store in teams.items():
    print(f"{name}: {store.identity}")
    for record in store.list_edits():
        print(f"    {record.namespace}: {record.statement}")
print("collections on the server:", sorted(c.name for c in client.list_collections()))

# %% [markdown]
# ## Same questions, two answers
#
# Each team's chain is an ordinary LCEL chain over its own store. A store's gate only
# ever searches its own collection: every candidate it considers belongs to its own
# namespace, which the cell checks. The lines after the answers name the statement each
# team's gate let through; the answer is what the LLM makes of that edit's prompt vectors.

# %%
QUESTIONS = [
    "The mother tongue of Danielle Darrieux is",
    "Windows Embedded CE 6.0 is a product of",
    "Emilio Lussu speaks",
]
plain = RecipeEditedLLM(llm=model, tokenizer=tokenizer, editor=editor, max_new_tokens=MAX_NEW_TOKENS)
chains = {"no edits": PromptTemplate.from_template("{question}") | plain | StrOutputParser()}
for name, store in teams.items():
    llm = RecipeEditedLLM(store=store, llm=model, tokenizer=tokenizer, max_new_tokens=MAX_NEW_TOKENS)
    chains[name] = PromptTemplate.from_template("{question}") | llm | StrOutputParser()

answers = {name: chain.batch([{"question": q} for q in QUESTIONS]) for name, chain in chains.items()}
for i, question in enumerate(QUESTIONS):
    print(question)
    for name in chains:
        print(f"    {name:10} {answers[name][i]!r}")

for name, store in teams.items():
    for result in store.gate_batch(QUESTIONS):
        assert all(c.record.namespace == name for c in result.candidates), "a store saw another namespace's edit"
        if result.fired:
            print(f"{name}: {result.query!r} -> {result.hit.statement!r}")
print("\nno store ever saw an edit of the other namespace")

# %% [markdown]
# The Windows Embedded CE edit exists only in `team-alpha`: in `team-beta` the gate can only compare
# the question with beta's own edits, and the sentinel should reject them.

# %%
for name, store in teams.items():
    g = store.gate("Windows Embedded CE 6.0 is a product of")
    best = g.candidates[0]
    print(f"{name:10} best: {best.record.statement!r:55} {best.similarity:6.2f} vs sentinel {g.sentinel_similarity:6.2f}"
          f" -> {'fires' if g.fired else 'no edit'}")

# %% [markdown]
# ## A second client, as another process would connect
#
# Any process that can reach the server connects with `connect(url)` (a
# `chromadb.HttpClient`) and opens the namespace it needs. The edits are on the server,
# not in this process: the new client sees team-beta's edits, and only those.

# %%
other = RecipeKnowledgeStore(editor, client=connect(server.url), namespace="team-beta")
print("team-beta through a new client:", [r.statement for r in other.list_edits()])
assert other.count() == teams["team-beta"].count() == 2

# %% [markdown]
# ## Shut down cleanly
#
# Close the stores, stop the server (SIGTERM to its process group, SIGKILL if it does
# not exit in time) and check that it is gone before removing its data directory.

# %%
other.close()
for store in teams.values():
    store.close()
pid = server.pid
server.stop()
print(f"server pid {pid} running: {server.is_running}")
assert not server.is_running

try:
    connect(server.url).heartbeat()
except Exception as exc:  # the port is closed now
    print("heartbeat after stop fails as it should:", type(exc).__name__)
else:
    raise AssertionError("the server still answers after stop()")

shutil.rmtree(WORKDIR, ignore_errors=True)
print("removed", WORKDIR, "->", not WORKDIR.exists())

# %% [markdown]
# **Next:** `05_train_your_own.ipynb` trains a RECIPE checkpoint for another LLM.
#
# From the command line the same server works with every `recipe-chain` command:
# `recipe-chain --server http://127.0.0.1:PORT --namespace team-alpha ask "..."`.
