# mosaics-lab: `make help` lists the targets. Every target sets up the project-local venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel by default; GPU users: make install TORCH_SPEC="torch==2.9.1" (or any build they want).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
RECIPE ?= recipes/quickstart.yaml
PYTEST_ARGS ?=
SIZE ?= cpu
STUDY ?=
STUDIES := mqar regbench manyshot multidoc_qa induction stories
DEVICE ?= cuda
ARGS ?=

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	$(PY) -m mosaics_lab.envcheck --fix
	touch $(STAMP)

install: $(STAMP) ## create .venv and install mosaics-lab with the CPU torch (TORCH_SPEC overrides)

train: $(STAMP) ## train the default recipe (RECIPE=recipes/quickstart.yaml) on embedded data
	$(VENV)/bin/mosaics-lab train $(RECIPE)

test: $(STAMP) ## run the fast test suite (excludes slow tests)
	$(PY) -m pytest -q -m "not slow and not postgres" $(PYTEST_ARGS)

test-full: $(STAMP) ## run every test, slow and PostgreSQL ones included
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-postgres: $(STAMP) ## run the PostgreSQL sweep tests (starts a throwaway server; needs Debian's postgresql)
	$(PY) -m pytest -q -m postgres $(PYTEST_ARGS)

sweep-demo: $(STAMP) ## 4 trials of sweeps/lr_search.yaml, shortened for a CPU, then `compare` (runs/sweep_demo/)
	$(VENV)/bin/mosaics-lab sweep sweeps/lr_search.yaml --study sweep_demo --n-trials 4 --jobs 2 \
		model.n_layer=2 model.block_size=64 train.max_steps=60 eval.every_n_steps=20 eval.batches=2
	$(VENV)/bin/mosaics-lab compare runs/sweep_demo --metric val/loss

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check mosaics_lab tests
	$(VENV)/bin/ruff format --check mosaics_lab tests

format: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix mosaics_lab tests
	$(VENV)/bin/ruff format mosaics_lab tests

tensorboard: $(STAMP) ## serve runs/ on http://localhost:6006
	$(VENV)/bin/tensorboard --logdir runs --host localhost --port 6006

bench: $(STAMP) ## CPU benchmarks: ops and training throughput, table + bench/*.json
	$(VENV)/bin/mosaics-lab bench all

gpu-check: $(STAMP) ## prove the CUDA path on one GPU in <8 min: table + bench/gpu_check.json, exit 1 on a failure (CPU smoke: DEVICE=cpu ARGS=--quick)
	$(VENV)/bin/mosaics-lab bench gpu-check --device $(DEVICE) $(ARGS)

reproduce: $(STAMP) ## rerun the papers' claims: every study of sweeps/reproduce/ (STUDY=mqar one; SIZE=smoke|cpu|gpu, default cpu); re-running continues
	@for s in $(if $(STUDY),$(STUDY),$(STUDIES)); do \
		$(VENV)/bin/mosaics-lab reproduce $$s --size $(SIZE) $(ARGS) || exit $$?; done

clean: ## remove caches (keeps runs/ and data/)
	rm -rf .pytest_cache .ruff_cache lightning_logs

.PHONY: help install train test test-full lint format tensorboard bench gpu-check reproduce clean test-postgres sweep-demo
