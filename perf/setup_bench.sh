#!/usr/bin/env bash
# The baselines' environment for perf/data_bench.py: datatrove (its MinHash pipeline and n-gram
# decontamination step) in a venv of its own, `.venv-bench`, so the project's `.venv` stays as
# scripts/setup_venv.sh makes it (datatrove pins xxhash<4, the project uses xxhash 4).
# spaCy: datatrove's English word tokenizer (`spacy.blank("en")`, no model download); pyarrow:
# its Parquet reader. lighteval is not needed: the bench hands the benchmark items to the
# n-gram indexer as documents.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-.venv-bench}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  echo '*' > "$VENV/.gitignore"  # a venv that ignores itself (Python >= 3.13 does this too)
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "datatrove[io]==0.10.1" "xxhash<4" "regex" "spacy>=3.8,<4" "pyarrow" "tokenizers"
"$VENV/bin/python" -c "import datatrove, spacy; spacy.blank('en'); print('datatrove', \
__import__('importlib.metadata').metadata.version('datatrove'), 'ready in $VENV')"
