# Two commands do all the set-up: `make demo` and `make test`. Both run `setup` first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test demo demo-quick base bench clean

setup: $(STAMP)

# torch is pinned and installed first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# DeepSpeed compiles its CPU communication op on first use; build it here, once, so no training
	# run pays for it (or, interrupted half-way, leaves a lock that hangs every later run)
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder as B; B().load()" \
		|| echo "warning: could not prebuild DeepSpeed's shm comm op (needs gcc); the first training run builds it"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest tests

demo: setup
	$(BIN)/medlm demo

demo-quick: setup
	$(BIN)/medlm demo --quick

# Retrain the shipped base model (medlm/base + PROVENANCE.json) with the demo's own base stage, then
# evaluate it mask-only at the full budget and at 1/8; commit medlm/base to ship it
base: setup
	$(BIN)/medlm demo --from-scratch --base-only

# Every benchmark, ~2-2.5 h on 2 idle cores (see README "Benchmarks"); on a busy machine the numbers
# mean little (each script warns). Add QUICK=--quick for seconds-to-minutes smoke runs to *.smoke.json.
bench: setup
	$(BIN)/python benchmarks/bench_edits.py $(QUICK)
	$(BIN)/python benchmarks/bench_sampling.py $(QUICK)
	$(BIN)/python benchmarks/bench_serve.py $(QUICK)
	$(BIN)/python benchmarks/bench_train.py $(QUICK)
	$(BIN)/python benchmarks/bench_pipeline.py $(QUICK)

# Lint and types, run by CI before the tests: rules and settings in pyproject.toml ([tool.ruff], [tool.mypy]).
# The formatter is configured there but not enforced yet (why: the comment at [tool.ruff.format]).
.PHONY: lint
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy medlm

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
