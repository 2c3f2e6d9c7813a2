# One command for everything CI does: `make test`. `make help` lists the rest.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The CPU build of torch goes in first: left to choose, pip would pull gigabytes of CUDA packages.
# Elsewhere, point pip at a CPU wheel, e.g. TORCH_PIP_ARGS="--index-url <your CPU wheel index>".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# pip itself, pinned like the rest (deploy/Dockerfile pins the same release).
PIP_SPEC ?= pip==26.3
export HF_HUB_OFFLINE ?= 1
# The locks, pinned with hashes by `make lock` (pip-tools, for Python 3.11 on Linux): requirements.txt
# holds the runtime dependencies (what the image installs), requirements-dev.txt those plus the stack
# and dev extras (what `make install` installs), with the same pins. torch stays out of both (its wheel
# differs by variant: CPU, CUDA) but its own dependencies are in; it is installed first, by TORCH_SPEC.
RUNTIME_LOCK := requirements.txt
DEV_LOCK := requirements-dev.txt
# `make lock`'s own tools, in a virtualenv of their own; LOCK_ARGS=--upgrade (or
# --upgrade-package NAME) takes newer releases, else every pin that still fits pyproject.toml stays.
# LOCK_PIP_ARGS: where pip-compile must see torch's CPU wheel, e.g. "--extra-index-url <CPU index>".
LOCK_VENV ?= $(VENV)/lock-tools
LOCK_TOOLS ?= $(PIP_SPEC) pip-tools==7.7.0
LOCK_ARGS ?=
LOCK_PIP_ARGS ?=
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes \
	--strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --unsafe-package torch \
	--constraint $(LOCK_VENV)/torch.txt $(if $(LOCK_PIP_ARGS),--pip-args "$(LOCK_PIP_ARGS)") $(LOCK_ARGS)
# `make bench`'s backfill and R2 size; 100k rows embed for hours on a 2-core CPU, minutes on a GPU.
BENCH_ROWS ?= 100000

.PHONY: help install lock lint typecheck test test-fast bench bench-quick bench-profile bench-rollout bench-slots bench-cluster bench-embedding demo stack-down clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv with everything (torch CPU first, then requirements-dev.txt)

# Every package but torch comes from the lock, hash-checked; vecmirror itself is built with the
# lock's setuptools (no build isolation) and installed without dependencies; pip check proves the set.
$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(PIP_SPEC)"
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --require-hashes --requirement $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

lock: ## Refresh requirements.txt and requirements-dev.txt from pyproject.toml (LOCK_ARGS=--upgrade: newest)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet $(LOCK_TOOLS)
	printf '%s\n' "$(TORCH_SPEC)" > $(LOCK_VENV)/torch.txt
	$(PIP_COMPILE) --extra stack --extra dev --output-file $(DEV_LOCK) pyproject.toml
	$(PIP_COMPILE) --constraint $(DEV_LOCK) --output-file $(RUNTIME_LOCK) pyproject.toml
	@if grep -E '^(nvidia-|triton)' $(RUNTIME_LOCK) $(DEV_LOCK); then \
		echo "CUDA packages above: point pip-compile at torch's CPU wheel (LOCK_PIP_ARGS)" >&2; exit 1; fi
	@echo "torch is left out of the locks on purpose: make install and the image put it in first."

lint: install ## ruff (lint + format check)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench

typecheck: install ## mypy --strict
	$(BIN)/mypy

test: lint typecheck ## Install, lint, type-check and run every test on real servers
	$(BIN)/pytest

test-fast: install ## Unit tests only (no servers, no model)
	$(BIN)/pytest tests/unit

bench: install ## Full benchmark (BENCH_ROWS=100000: hours on a CPU) -> bench/RESULTS.md
	$(BIN)/python bench/harness.py --rows $(BENCH_ROWS)

bench-quick: install ## The same benchmark at small sizes, in under two minutes -> bench/RESULTS.md
	$(BIN)/python bench/harness.py --quick

bench-profile: install ## py-spy profiles of the insert and update syncs (a few minutes) -> bench/PROFILE.md
	$(BIN)/python bench/profile_sync.py

bench-rollout: install ## A template change online (vecmirror) against drop, create, re-embed -> bench/ROLLOUT.md
	$(BIN)/python bench/rollout.py --rows 2000

bench-slots: install ## Versioned writes by hash slot vs before slots and raw HSETs -> bench/SLOT_WRITES.md
	$(BIN)/python bench/slot_writes.py --documents 5000

bench-embedding: install ## Embedding end to end vs plain sentence-transformers on three corpora (a few minutes)
	$(BIN)/python bench/embedding_speed.py

bench-cluster: install ## One shard's memory per document and HNSW insert rate -> bench/CLUSTER_SIZING.md
	$(BIN)/python bench/cluster_sizing.py --docs 20000

demo: install ## Embedded Postgres + Redis, a demo table, a live mirror and queries (Ctrl-C stops)
	$(BIN)/vecmirror demo

stack-down: install ## Stop the demo's embedded servers
	$(BIN)/vecmirror stack down

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
