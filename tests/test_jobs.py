"""Real Ray clusters of their own, next to the shared test session: job submission over the
dashboard's HTTP API, and an autoscaling cluster (fake multi-node provider) that adds nodes.

Each test starts its own head with `ray start --head --block` on loopback, on free ports and
its own `--temp-dir`, in its own process group, and ends exactly that group afterwards: never
`ray stop`, which would end every Ray on the machine (the shared session included). The pytest
process talks to these clusters only over HTTP (jobs) or through a subprocess (autoscaling):
`ray.init` in-process already holds the shared session.

`ray.cluster_utils.AutoscalingCluster` is not used as is: its `start()` runs
`ray stop --force` and its template (`fake_multi_node/example.yaml`) is not in the wheel. The
head is started the way it starts it (`--autoscaling-config`, `RAY_FAKE_CLUSTER=1`,
`AUTOSCALER_UPDATE_INTERVAL_S=1`), with the same generated config.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.conftest import REPO

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
FIXTURE = REPO / "tests" / "fixtures" / "train" / "chat.jsonl"
OFFLINE_ENV = {
    # Ray 2.59+ turns token authentication on for a new local head when ~/.ray/auth_token
    # exists, and a client joining by address needs RAY_AUTH_MODE=token then; these
    # loopback-only test clusters and their clients run without it.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Head:
    address: str  # GCS, for ray.init / RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:PORT, for the Job Submission SDK
    log: Path


@contextlib.contextmanager
def local_head(
    num_cpus: int, *, dashboard: bool = True, autoscaling: dict | None = None, timeout: float = 120
):
    """A Ray head on 127.0.0.1 in its own process group; the group is ended on exit."""
    temp_dir = Path(tempfile.mkdtemp(prefix="m42r-", dir="/tmp"))  # short: socket paths
    port, dashboard_port = free_port(), free_port()
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--num-cpus={num_cpus}",
        f"--include-dashboard={str(dashboard).lower()}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("RAY_ADDRESS", None)
    if autoscaling is not None:
        config = temp_dir / "autoscaling.json"
        autoscaling["provider"]["gcs_address"] = f"127.0.0.1:{port}"
        config.write_text(json.dumps(autoscaling))
        cmd.append(f"--autoscaling-config={config}")
        env.update({"AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"})
    log = temp_dir / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    head = Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}:\n{log.read_text()}")
            if up(head, dashboard):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Ray head at {head.address}:\n{log.read_text()}")
            time.sleep(0.25)
        yield head
    finally:
        stop_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def up(head: Head, dashboard: bool) -> bool:
    if not dashboard:
        return "Ray runtime started" in head.log.read_text()
    try:
        with urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=2):
            return True
    except OSError:
        return False


def stop_group(proc: subprocess.Popen, grace: float = 5) -> None:
    """End a head that `local_head` started: SIGTERM to the blocking `ray start` (it ends the
    processes it started, a normal head's within ~2 s), up to `grace` seconds for that, then
    SIGKILL to its process group and to any of its processes that left the group. `ray start`
    itself lingers 15-30 s on its way out, and an autoscaling head's processes as long:
    nothing of these throwaway clusters is worth waiting for."""
    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while proc.poll() is None and any(map(running, started)) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for process in filter(running, started):
        with contextlib.suppress(psutil.Error):
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------------- autoscaling
def fake_multinode_config(head_cpus: int, worker_cpus: int, max_workers: int) -> dict:
    """What `AutoscalingCluster(head_resources, worker_node_types)` generates."""
    return {
        "cluster_name": "med42ray-fake",
        "max_workers": max_workers,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": head_cpus},
                "node_config": {},
                "max_workers": 0,
            },
            "cpu_worker": {
                "resources": {"CPU": worker_cpus},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


WORKLOAD = textwrap.dedent(
    """
    import json, sys
    import ray, ray.train
    from ray.train.torch import TorchTrainer

    def alive():
        return sum(1 for n in ray.nodes() if n["Alive"])

    def loop(config):
        import tempfile
        import torch, torch.distributed as dist
        rank = ray.train.get_context().get_world_rank()
        x = torch.ones(1) * (rank + 1)
        dist.all_reduce(x)
        with tempfile.TemporaryDirectory() as folder:  # Train V2 keeps checkpointed metrics
            ckpt = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report({"sum": float(x)}, checkpoint=ckpt)

    ray.init(address=sys.argv[1])
    before = alive()
    trainer = TorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="autoscale", storage_path=sys.argv[2]),
    )
    result = trainer.fit()
    print("RESULT", json.dumps({"before": before, "after": alive(), "metrics": result.metrics}))
    """
)


def test_autoscaling_cluster_adds_nodes_for_a_two_worker_trainer(tmp_path):
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    config = fake_multinode_config(head_cpus=0, worker_cpus=1, max_workers=2)
    with local_head(num_cpus=0, dashboard=False, autoscaling=config) as head:
        run = subprocess.run(
            [sys.executable, str(script), head.address, str(tmp_path / "storage")],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **OFFLINE_ENV},
        )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    outcome = json.loads(line.removeprefix("RESULT "))
    assert outcome["before"] == 1  # the head alone: no CPU for the two workers
    assert outcome["after"] == 3  # two cpu_worker nodes added by the autoscaler
    assert outcome["metrics"]["sum"] == 3.0  # 1 + 2: both workers joined the all-reduce
