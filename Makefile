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

# Until `med42ray run` chains them with caching and a report, the demo runs every stage that
# exists: prepare + decontaminate the data, fine-tune fully and with LoRA, score all three.
demo: venv
	$(BIN)/med42ray doctor $(CONFIG) --out $(OUT)/doctor
	$(BIN)/med42ray data prepare $(CONFIG) --out $(OUT)/data
	$(BIN)/med42ray train $(CONFIG) --out $(OUT)/full --strategy full
	$(BIN)/med42ray train $(CONFIG) --out $(OUT)/lora --strategy lora
	$(BIN)/med42ray eval $(CONFIG) --out $(OUT)/eval-base
	$(BIN)/med42ray eval $(CONFIG) --out $(OUT)/eval-full --model $(OUT)/full/model
	$(BIN)/med42ray eval $(CONFIG) --out $(OUT)/eval-lora --adapter $(OUT)/lora/adapter

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

format: venv
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
