# Two commands from a fresh clone: `make demo` (the main job on the embedded tiny default)
# and `make test` (lint + tests). Both create .venv at the repository root when missing.
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/tiny.yaml
OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: venv demo test lint format clean

venv:
	@bash scripts/setup_venv.sh

demo: venv
	$(BIN)/med42ray doctor $(CONFIG) --out $(OUT)

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

format: venv
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
