#!/usr/bin/env bash
# Rehearsal cluster on ONE machine, shaped like a shared-nothing multi-node GPU cluster:
#   * S3 (moto_server) on 127.0.0.1:$S3_PORT, bucket $S3_BUCKET
#   * head node (127.0.0.11) and worker nodes a (127.0.0.12), b (127.0.0.13), each in its own
#     mount + PID namespace: private /tmp (Ray temp dir, node-local scratch, HOME),
#     private /dev/shm (object store), repository mounted read-only, own /proc.
#   * workers carry {"fake_gpu": 1, "node:a"/"node:b"-style custom labels}.
# Nodes share only the network (loopback). Stop with down.sh. Needs root (unshare/mount).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${REPO:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"                        # code the nodes run (read-only inside nodes)
: "${RAY_BIN:=$REPO/.venv/bin/ray}"
: "${S3_PY:=$REPO/.venv-rehearsal/bin}"                   # venv holding moto[server]
: "${BASE:=${TMPDIR:-/tmp}/med42ray-rehearsal}"                 # node dirs (socket paths live in each node's own /tmp/ray)
: "${S3_PORT:=9010}" "${S3_BUCKET:=rehearsal}"
: "${GCS_PORT:=6390}" "${DASH_PORT:=8275}"
# node IPs: loopback aliases, NOT 127.0.0.1/localhost (Ray rewrites those to the routable eth0 IP)
: "${IP_PREFIX:=127.0.0.}" "${HEAD_HOST:=11}"
HEAD_IP="$IP_PREFIX$HEAD_HOST"
: "${WORKERS:=a b}"
: "${SHM_SIZE:=512m}" "${OBJ_MEM:=100000000}"   # per node; tmpfs only costs what is written
export RAY_USAGE_STATS_ENABLED=0
export PATH="$(dirname "$RAY_BIN"):$PATH"       # `python` in job entrypoints = the venv's (as on an image)
# credentials the nodes hold (as an instance profile would); endpoint is non-secret
export AWS_ACCESS_KEY_ID=rehearsal AWS_SECRET_ACCESS_KEY=rehearsal AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true   # never let the AWS SDK probe 169.254.169.254
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$S3_PORT"
# no hub access on these nodes (datasets and models come from the mirror in the bucket): say so,
# or every hub probe (e.g. Ray Data's from_huggingface looking for the hub's Parquet copy of a
# dataset) retries for ~23 s before it gives up
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# faster dead-node detection (read by the GCS on the head; harmless elsewhere)
if [ "${FAST_HEALTH:-1}" = 1 ]; then
  export RAY_health_check_initial_delay_ms=1000 RAY_health_check_period_ms=1000 \
         RAY_health_check_timeout_ms=1000 RAY_health_check_failure_threshold=3
fi

mkdir -p "$BASE"
t0=$(date +%s.%N)
el() { python3 -c "import sys;print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$t0" "$(date +%s.%N)"; }

# ---- S3 ----------------------------------------------------------------------------------
# (without the caller's open files beyond stdin/out/err, e.g. a `flock` lock: it outlives us)
( for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null
  exec setsid "$S3_PY/moto_server" -H 127.0.0.1 -p "$S3_PORT" ) >"$BASE/s3.log" 2>&1 &
echo $! >"$BASE/s3.pid"
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$S3_PORT/moto-api/" -o /dev/null && break; sleep 0.05; done
curl -sf -X PUT "http://127.0.0.1:$S3_PORT/$S3_BUCKET" -o /dev/null
echo "s3 up + bucket: $(el)s"

# ---- nodes -------------------------------------------------------------------------------
# start_node NAME IP PORT_BASE ray-start-args...  (node.sh does the namespaces)
# The node's arguments are kept in $BASE/NAME.args: restart_node.sh NAME starts it again the
# same way (as an autoscaler replaces a lost node). The environment above is in $BASE/node.env.
start_node() {
  mkdir -p "$BASE/$1"
  printf '%q ' "$@" >"$BASE/$1.args"
  BASE="$BASE" REPO="$REPO" RAY_BIN="$RAY_BIN" SHM_SIZE="$SHM_SIZE" OBJ_MEM="$OBJ_MEM" \
    setsid "$HERE/node.sh" "$@" >>"$BASE/$1.log" 2>&1 &
  echo $! >"$BASE/$1.pid"
}
export REPO RAY_BIN SHM_SIZE OBJ_MEM
export -p | grep -E ' (RAY_|AWS_|HF_|TRANSFORMERS_|PATH=|REPO=|SHM_SIZE=|OBJ_MEM=)' >"$BASE/node.env"

# the head runs no Ray work, as on the real cluster (cluster/aws.yaml: `CPU: 0`): the job's
# driver needs none; data tasks, training workers and evaluation actors go to the workers
start_node head "$HEAD_IP" 20000 --head --port "$GCS_PORT" --num-cpus "${HEAD_CPUS:-0}" \
  --dashboard-host "$HEAD_IP" --dashboard-port "$DASH_PORT" --ray-client-server-port 10011 \
  --resources '{"head": 1}'
# wait for the GCS before starting workers
for _ in $(seq 300); do (exec 3<>/dev/tcp/$HEAD_IP/$GCS_PORT) 2>/dev/null && break
  kill -0 "$(cat "$BASE/head.pid")" 2>/dev/null || { cat "$BASE/head.log"; exit 1; }; sleep 0.1; done
echo "head gcs port open: $(el)s"
i=1
for w in $WORKERS; do
  i=$((i+1))
  start_node "$w" "$IP_PREFIX$((HEAD_HOST+i-1))" $((20000 + 1000*(i-1))) --address "$HEAD_IP:$GCS_PORT" \
    --num-cpus 1 --resources "{\"fake_gpu\": 1, \"node_$w\": 1}"
done

# wait until all nodes are alive (dashboard API, from the host namespace)
want=$((1 + $(wc -w <<<"$WORKERS")))
for _ in $(seq 600); do
  n=$(curl -sf "http://$HEAD_IP:$DASH_PORT/nodes?view=summary" 2>/dev/null |
      python3 -c 'import json,sys;d=json.load(sys.stdin);print(sum(1 for n in d["data"]["summary"] if n["raylet"]["state"]=="ALIVE"))' 2>/dev/null || echo 0)
  [ "$n" -ge "$want" ] && break; sleep 0.2
done
echo "cluster up ($n/$want nodes alive): $(el)s"
[ "$n" -ge "$want" ]

cat >"$BASE/cluster.env" <<ENV
RAY_GCS_ADDRESS=$HEAD_IP:$GCS_PORT
RAY_DASHBOARD=http://$HEAD_IP:$DASH_PORT
HEAD_NS_PID=$(pgrep -P "$(cat "$BASE/head.pid")")
AWS_ENDPOINT_URL_S3=$AWS_ENDPOINT_URL_S3
S3_BUCKET=$S3_BUCKET
ENV
cat "$BASE/cluster.env"
