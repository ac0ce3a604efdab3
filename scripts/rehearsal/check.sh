#!/usr/bin/env bash
# Run check.py as a Ray job on the rehearsal head (driver in the head's namespace), from the host.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${BASE:=${TMPDIR:-/tmp}/med42ray-rehearsal}" "${REPO:=$(cd "$HERE/../.." && pwd)}"
. "$BASE/cluster.env"
d=$(mktemp -d); cp "$HERE/check.py" "$d/"
cd "$d" && "$REPO/.venv/bin/ray" job submit --address "$RAY_DASHBOARD" --working-dir . \
  --runtime-env-json "{\"env_vars\": {\"AWS_ENDPOINT_URL_S3\": \"$AWS_ENDPOINT_URL_S3\", \"S3_BUCKET\": \"$S3_BUCKET\", \"REHEARSAL_REPO\": \"$REPO\"}}" \
  -- python check.py "$@"
rc=$?; rm -rf "$d"; exit $rc
