# One command for everything CI does: `make test`. `make help` lists the rest.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The CPU build of torch goes in first: left to choose, pip would pull gigabytes of CUDA packages.
# Elsewhere, point pip at a CPU wheel, e.g. TORCH_PIP_ARGS="--index-url <your CPU wheel index>".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
export HF_HUB_OFFLINE ?= 1
# `make bench`'s backfill and R2 size; 100k rows embed for hours on a 2-core CPU, minutes on a GPU.
BENCH_ROWS ?= 100000

.PHONY: help install lint typecheck test test-fast bench bench-quick bench-profile bench-rollout bench-slots bench-cluster bench-embedding demo stack-down clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv with everything (torch CPU first)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[stack,dev]'
	touch $@

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
