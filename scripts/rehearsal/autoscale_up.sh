#!/usr/bin/env bash
# Head only, with an autoscaler whose NamespaceNodeProvider launches private-namespace workers.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${REPO:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}" "${BASE:=${TMPDIR:-/tmp}/med42ray-rehearsal}" "${GCS_PORT:=6390}" "${DASH_PORT:=8275}"
# idle workers are removed after this many minutes (fractions work: Ray multiplies by 60)
: "${IDLE_TIMEOUT_MINUTES:=1}"
HEAD_IP=127.0.0.11; RAY_BIN="$REPO/.venv/bin/ray"
mkdir -p "$BASE"; cp "$HERE/ns_provider.py" "$HERE/node.sh" "$BASE/"
cat >"$BASE/autoscale.json" <<CFG
{"cluster_name": "rehearsal", "max_workers": 2,
 "provider": {"type": "external", "module": "ns_provider.NamespaceNodeProvider",
   "node_sh": "$BASE/node.sh", "gcs_address": "$HEAD_IP:$GCS_PORT", "first_host": 31,
   "use_node_id_as_ip": true, "disable_node_updaters": true, "disable_launch_config_check": true},
 "available_node_types": {
   "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
   "gpu_worker": {"resources": {"CPU": 1, "fake_gpu": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}},
 "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": $IDLE_TIMEOUT_MINUTES,
 "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
 "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
 "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": false,
 "rsync_exclude": [], "rsync_filter": []}
CFG
export PATH="$(dirname "$RAY_BIN"):$PATH" RAY_USAGE_STATS_ENABLED=0 RAY_FAKE_CLUSTER=1 \
  AUTOSCALER_UPDATE_INTERVAL_S=1 PYTHONPATH="$BASE" BASE REPO KEEP_BASE=1
export AWS_ACCESS_KEY_ID=rehearsal AWS_SECRET_ACCESS_KEY=rehearsal AWS_DEFAULT_REGION=us-east-1 \
  AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL_S3=http://127.0.0.1:${S3_PORT:-9010} \
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # no hub access (see up.sh)
if [ "${FAST_HEALTH:-1}" = 1 ]; then   # as in up.sh
  export RAY_health_check_initial_delay_ms=1000 RAY_health_check_period_ms=1000 \
         RAY_health_check_timeout_ms=1000 RAY_health_check_failure_threshold=3
fi
# Unlike up.sh's head, this one has a CPU: a sweep's trial actors (0.01 CPU each) live here,
# leaving each 1-CPU worker node whole for a trial's training worker.
setsid "$HERE/node.sh" head "$HEAD_IP" 20000 --head --port "$GCS_PORT" --num-cpus 1 \
  --dashboard-host "$HEAD_IP" --dashboard-port "$DASH_PORT" --ray-client-server-port 10011 \
  --autoscaling-config "$BASE/autoscale.json" >"$BASE/head.log" 2>&1 &
echo $! >"$BASE/head.pid"
for _ in $(seq 600); do curl -sf "http://$HEAD_IP:$DASH_PORT/nodes?view=summary" -o /dev/null && break; sleep 0.2; done
curl -sf "http://$HEAD_IP:$DASH_PORT/nodes?view=summary" -o /dev/null || { cat "$BASE/head.log"; exit 1; }
cat >"$BASE/cluster.env" <<ENV
RAY_GCS_ADDRESS=$HEAD_IP:$GCS_PORT
RAY_DASHBOARD=http://$HEAD_IP:$DASH_PORT
HEAD_NS_PID=$(pgrep -P "$(cat "$BASE/head.pid")")
AWS_ENDPOINT_URL_S3=$AWS_ENDPOINT_URL_S3
S3_BUCKET=${S3_BUCKET:-rehearsal}
ENV
echo "head up (autoscaler: 0-2 fake_gpu workers, idle timeout $IDLE_TIMEOUT_MINUTES min)"
