# Quick start: `make demo` (train and restore on the CPU) and `make test` (the test suite).
# Both create .venv and install the package with its dependencies first.
#
# TORCH_SPEC pins the PyTorch build. The default is the CPU build that CI uses; on a GPU
# node install the CUDA build you want into the venv, then run with TORCH_SPEC=torch.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS ?= --disable-pip-version-check --no-input
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint format mutants bench bench-restore bench-rddm bench-diffir bench-da bench-deqir gpu-check install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/pip install $(PIP_FLAGS) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ir-lightning demo

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# style: the formatter's and the linter's verdicts (pyproject.toml [tool.ruff]); `make format` applies them
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Mutation check (not in CI): named one-line breaks of the code (tests/mutants.py), each applied to a
# scratch copy; the fast tests that claim to check the line must fail. MUTANTS_ARGS="--jobs 2", "--only fid".
MUTANTS_ARGS ?=
mutants: $(STAMP)
	$(BIN)/python tests/mutants.py $(MUTANTS_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/ddp.py

# the restore's own memory from 512^2 to 8192^2 (a fresh process per size) and narrow vs square tiles
bench-restore: $(STAMP)
	$(BIN)/python bench/restore_throughput.py
	$(BIN)/python bench/restore_narrow.py

bench-rddm: $(STAMP)
	$(BIN)/python bench/rddm_steps.py

bench-diffir: $(STAMP)
	$(BIN)/python bench/diffir_cost.py

# Denoising as Adaptation: the ideal D's loss against the real outputs' residual noise (no checkpoint
# needed); bench/da_alignment.py needs DA training checkpoints (see bench/README.md)
bench-da: $(STAMP)
	$(BIN)/python bench/da_slot_posterior.py

# DeqIR: the joint fixed point's rounds with exact Gaussian priors (needs only the demo shards);
# bench/deqir_parallel.py needs the demo prior (see bench/README.md)
bench-deqir: $(STAMP)
	test -f demo_out/shards/val-000000.tar || $(BIN)/ir-lightning demo --no-train --no-eval
	$(BIN)/python bench/deqir_gaussian_prior.py

clean:
	rm -rf $(VENV) demo_out *.egg-info

# the GPU smoke check (bench/README.md): one command of at most 8 minutes on one CUDA GPU
gpu-check: $(STAMP)
	timeout 480 $(BIN)/python bench/gpu_check.py --out gpu_check_out
