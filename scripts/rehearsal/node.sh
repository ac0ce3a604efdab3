#!/usr/bin/env bash
# node.sh NAME IP PORT_BASE [ray start args...]: run ONE Ray node in the foreground (exec), in
# its own mount + PID namespace: /tmp -> $BASE/NAME/tmp (Ray temp dir, node-local scratch,
# HOME), private tmpfs /dev/shm (object store), $REPO read-only, own /proc. SIGKILL to this
# process (unshare --kill-child) ends every process of the node. Env: BASE, REPO, RAY_BIN,
# SHM_SIZE, OBJ_MEM, KEEP_BASE=1 (head running an autoscaler that launches nested nodes).
set -euo pipefail
# a node outlives whoever started it: keep none of their open files (a caller's `flock` lock,
# pipes) beyond stdin/out/err (255: the script bash is reading)
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && [ "$fd" != 255 ] && eval "exec $fd>&-"; done 2>/dev/null || true
name=$1 ip=$2 pb=$3; shift 3
: "${BASE:?}" "${REPO:?}" "${RAY_BIN:=$REPO/.venv/bin/ray}" "${SHM_SIZE:=512m}" "${OBJ_MEM:=100000000}"
d="$BASE/$name"; rm -rf "$d"; mkdir -p "$d/tmp" /run/rehearsal-keep/repo /run/rehearsal-keep/base
export NODE_DIR="$d" REPO BASE SHM_SIZE KEEP_BASE="${KEEP_BASE:-0}"
exec unshare --mount --pid --fork --kill-child=SIGKILL --mount-proc --propagation private \
  bash -c '
    set -e
    # stage what must stay visible outside /tmp (the repo may live under /tmp in CI)
    mount --bind "$REPO" /run/rehearsal-keep/repo
    [ "$KEEP_BASE" = 1 ] && mount --bind "$BASE" /run/rehearsal-keep/base
    mount --bind "$NODE_DIR/tmp" /tmp
    mount -t tmpfs -o size="$SHM_SIZE" tmpfs /dev/shm
    mkdir -p "$REPO" 2>/dev/null || true
    mount --bind /run/rehearsal-keep/repo "$REPO"; mount -o remount,bind,ro "$REPO"
    if [ "$KEEP_BASE" = 1 ]; then mkdir -p "$BASE"; mount --bind /run/rehearsal-keep/base "$BASE"; fi
    mkdir -p /tmp/node-local /tmp/home
    export HOME=/tmp/home TMPDIR=/tmp
    cd /tmp/home   # cwd of the caller may be hidden by the /tmp overlay
    exec "$0" "$@"
  ' "$RAY_BIN" start --block --disable-usage-stats --node-ip-address "$ip" \
    --node-manager-port $((pb)) --object-manager-port $((pb+1)) \
    --metrics-export-port $((pb+2)) --dashboard-agent-listen-port $((pb+3)) \
    --dashboard-agent-grpc-port $((pb+4)) --runtime-env-agent-port $((pb+5)) \
    --min-worker-port $((pb+100)) --max-worker-port $((pb+199)) \
    --object-store-memory "$OBJ_MEM" "$@"
