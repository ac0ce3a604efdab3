#!/usr/bin/env bash
# The baselines' environments, beside the project's `.venv` (which stays as
# scripts/setup_venv.sh makes it):
#
#   bash perf/setup_bench.sh          both of the below
#   bash perf/setup_bench.sh data     .venv-bench for perf/data_bench.py
#   bash perf/setup_bench.sh trl      .venv-trl for perf/train_bench.py and perf/gpu_train.py
#
# data: datatrove (its MinHash pipeline and n-gram decontamination step) in a venv of its own,
# `.venv-bench` (datatrove pins xxhash<4, the project uses xxhash 4). spaCy: datatrove's English
# word tokenizer (`spacy.blank("en")`, no model download); pyarrow: its Parquet reader.
# lighteval is not needed: the bench hands the benchmark items to the n-gram indexer as
# documents.
#
# trl: TRL 1.16.0 installed with --no-deps into the folder `.venv-trl`, which the training
# benches put on PYTHONPATH of the TRL baseline's process only. Its requirements (accelerate,
# datasets, transformers, pandas, ...) are already in `.venv`; the check below says which, if
# any, `.venv` does not satisfy.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}

setup_data() {
  local venv=${BENCH_VENV:-.venv-bench} py=${PYTHON:-python3}
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
    echo '*' > "$venv/.gitignore"  # a venv that ignores itself (Python >= 3.13 does this too)
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "datatrove[io]==0.10.1" "xxhash<4" "regex" "spacy>=3.8,<4" "pyarrow" "tokenizers"
  "$venv/bin/python" -c "import datatrove, spacy; spacy.blank('en'); print('datatrove', \
__import__('importlib.metadata').metadata.version('datatrove'), 'ready in $venv')"
}

setup_trl() {
  local target=.venv-trl
  if [ ! -x .venv/bin/python ]; then
    echo "no .venv: run scripts/setup_venv.sh first (TRL uses its torch and transformers)" >&2
    exit 1
  fi
  mkdir -p "$target"
  echo '*' > "$target/.gitignore"  # a folder that ignores itself
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --upgrade \
    --target "$target" "trl==1.16.0"
  PYTHONPATH="$target" .venv/bin/python - <<'PY'
from importlib.metadata import PackageNotFoundError, distribution, version

from packaging.requirements import Requirement

missing = []
for text in distribution("trl").requires or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an extra's requirement
    try:
        have = version(req.name)
    except PackageNotFoundError:
        missing.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(have, prereleases=True):
        missing.append(f"{req} (have {have})")
if missing:
    raise SystemExit("TRL's requirements not met by .venv: " + "; ".join(missing))
from trl import SFTConfig, SFTTrainer  # noqa: F401

print("trl", version("trl"), "ready in .venv-trl (requirements met by .venv)")
PY
}

case "$what" in
  data) setup_data ;;
  trl) setup_trl ;;
  all) setup_data; setup_trl ;;
  *) echo "usage: bash perf/setup_bench.sh [data|trl|all]" >&2; exit 2 ;;
esac
