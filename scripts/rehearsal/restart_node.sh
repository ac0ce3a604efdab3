#!/usr/bin/env bash
# restart_node.sh NAME: start node NAME again exactly as up.sh started it (same address, ports,
# resources and environment: $BASE/NAME.args, $BASE/node.env), as an autoscaler replaces a lost
# node. Its private /tmp starts empty (node.sh recreates $BASE/NAME): a new machine.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${BASE:=${TMPDIR:-/tmp}/med42ray-rehearsal}"
name=$1
[ -e "$BASE/$name.args" ] || { echo "no $BASE/$name.args: was $name started by up.sh?" >&2; exit 2; }
if [ -e "$BASE/$name.pid" ] && kill -0 "$(cat "$BASE/$name.pid")" 2>/dev/null; then
  echo "node $name still running (pid $(cat "$BASE/$name.pid"))" >&2; exit 2
fi
. "$BASE/node.env"
: "${REPO:=$(cd "$HERE/../.." && pwd)}" "${RAY_BIN:=$REPO/.venv/bin/ray}" "${SHM_SIZE:=512m}" "${OBJ_MEM:=100000000}"
eval "args=($(cat "$BASE/$name.args"))"
echo "--- restarted $(date +%T)" >>"$BASE/$name.log"
BASE="$BASE" REPO="$REPO" RAY_BIN="$RAY_BIN" SHM_SIZE="$SHM_SIZE" OBJ_MEM="$OBJ_MEM" \
  setsid "$HERE/node.sh" "${args[@]}" >>"$BASE/$name.log" 2>&1 &
echo $! >"$BASE/$name.pid"
echo "node $name restarted (pid $!)"
