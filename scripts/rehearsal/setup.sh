#!/usr/bin/env bash
# The S3 server the rehearsal cluster uses (moto's, on 127.0.0.1), in a venv of its own
# (.venv-rehearsal at the repository root; ~140 MB, ~15 s), so the project's .venv stays as
# scripts/setup_venv.sh made it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ -x "$root/.venv-rehearsal/bin/moto_server" ]] && exit 0
"${PYTHON:-python3}" -m venv "$root/.venv-rehearsal"
"$root/.venv-rehearsal/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
  -q 'moto[s3]' flask flask-cors
