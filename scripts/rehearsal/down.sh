#!/usr/bin/env bash
# Stop the rehearsal cluster started by up.sh: workers, then head, then S3.
# Each node is a PID namespace: SIGTERM its init (`ray start --block`, which stops the node's
# Ray processes), wait, then SIGKILL the `unshare` parent (--kill-child takes the whole
# namespace down with it). Only processes started by up.sh are touched.
# KEEP_S3=1 leaves the S3 server (and its bucket) running: the rehearsal swaps clusters on it.
set -uo pipefail
: "${BASE:=${TMPDIR:-/tmp}/med42ray-rehearsal}" "${GRACE:=5}"
t0=$(date +%s.%N)
el() { python3 -c "import sys;print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$t0" "$(date +%s.%N)"; }
nodes=$(for f in "$BASE"/*.pid; do [ -e "$f" ] && basename "$f" .pid; done | grep -vx -e head -e s3; [ -e "$BASE/head.pid" ] && echo head)
stop_group() {  # pids... : TERM the ns inits, wait, KILL the unshare parents
  local pids=("$@") p c
  for p in "${pids[@]}"; do
    c=$(pgrep -P "$p" | head -1); [ -n "$c" ] && kill -TERM "$c" 2>/dev/null
  done
  for _ in $(seq $((GRACE*10))); do
    local alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return; sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null && echo "SIGKILL node pid $p"; done
}
w=(); for n in $nodes; do [ "$n" != head ] && w+=("$(cat "$BASE/$n.pid")"); done
[ ${#w[@]} -gt 0 ] && stop_group "${w[@]}"; echo "workers down: $(el)s"
[ -e "$BASE/head.pid" ] && stop_group "$(cat "$BASE/head.pid")"; echo "head down: $(el)s"
if [ "${KEEP_S3:-0}" != 1 ] && [ -e "$BASE/s3.pid" ]; then kill -TERM "$(cat "$BASE/s3.pid")" 2>/dev/null; sleep 0.3
  kill -KILL "$(cat "$BASE/s3.pid")" 2>/dev/null; rm -f "$BASE/s3.pid"; fi
for n in $nodes; do rm -f "$BASE/$n.pid"; done
echo "all down: $(el)s"
