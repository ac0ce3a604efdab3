#!/usr/bin/env bash
# rehearse.sh [--json PATH] [rehearse.py options]: issue 17's acceptance test in one command
# (`make rehearsal`). Brings up the one-machine cluster (S3, head, worker nodes a and b in
# private namespaces), runs the paper recipe on it as a Ray job from the host with a node
# killed during training and the job stopped and resubmitted during evaluation, checks the
# outcome from S3, runs the LoRA sweep on an autoscaling cluster, and ALWAYS tears everything
# down (trap: down.sh, by pid files; never `ray stop`). Writes $BASE/rehearsal.json. Root only.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
: "${BASE:=${TMPDIR:-/tmp}/med42ray-rehearsal}"
export BASE REPO
[ "$(id -u)" = 0 ] || { echo "rehearse.sh: needs root (unshare, mount)" >&2; exit 2; }
[ -x "$REPO/.venv/bin/med42ray" ] || bash "$REPO/scripts/setup_venv.sh"
cleanup() { BASE="$BASE" bash "$HERE/down.sh" >/dev/null 2>&1; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# a fresh BASE; what an earlier run left running is stopped first (its pid files)
[ -d "$BASE" ] && cleanup
rm -rf "$BASE"; mkdir -p "$BASE"
"$REPO/.venv/bin/python" "$HERE/rehearse.py" --base "$BASE" "$@"
