# Two commands from a fresh clone: `make demo` (the main job on the embedded tiny default)
# and `make test` (lint + tests). Both create .venv at the repository root when missing.
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/tiny.yaml
OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: venv demo study doctor test lint format clean rehearsal

venv:
	@bash scripts/setup_venv.sh

# The whole experiment on the embedded default: data, base pre-training (cached), full and LoRA
# fine-tuning, evaluation of all three, report (OUT/report/report.md). Rerunning reuses stages.
demo: venv
	$(BIN)/med42ray run $(CONFIG) --out $(OUT)

# The comparison with three seeds per strategy (configs/overlays/study.yaml): mean and spread
# across seeds, paired intervals pooled over them (outputs/study/report/report.md).
study: venv
	$(BIN)/med42ray run $(CONFIG) --set-file configs/overlays/study.yaml --out outputs/study

doctor: venv
	$(BIN)/med42ray doctor $(CONFIG) --out $(OUT)/doctor

# Issue 17's acceptance test (root): a one-machine cluster shaped like the real one (S3, head,
# worker nodes in private namespaces), the paper recipe on it with a node killed and the job
# stopped and resubmitted, an autoscaling sweep; torn down always. See scripts/rehearsal/.
rehearsal: venv
	bash scripts/rehearsal/rehearse.sh $(REHEARSAL_ARGS)

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

format: venv
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
