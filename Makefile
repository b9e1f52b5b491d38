# install: system packages, .venv and the project (idempotent, quiet when nothing changed)
# run:     the main job: a demo engineering task on the embedded stack
# test:    the whole test suite, quick bridge throughput, engineering and deploy overhead, CLI
#          start-up and task burst checks, then lint and type checks
# lint:    ruff, mypy and the import contracts of ARCHITECTURE.md (import-linter)
.PHONY: install run test lint

VENV := .venv
BIN := $(VENV)/bin

install:
	@bash scripts/install.sh

run: install
	$(BIN)/orchestrator demo

test: install
	$(BIN)/pytest
	$(BIN)/python bench/bridge_throughput.py --quick
	$(BIN)/python bench/engineering_overhead.py --quick
	$(BIN)/python bench/deploy_overhead.py --quick
	$(BIN)/python bench/cli_startup.py --quick
	$(BIN)/python bench/task_burst.py --quick
	$(BIN)/python bench/package_install.py --quick
	$(BIN)/python bench/app_health_tick.py --quick
	$(MAKE) --no-print-directory lint

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
