"""Prove the rehearsal cluster is shared-nothing and that every node reaches S3.

Run it as a driver on the head node, either
  nsenter -t $HEAD_NS_PID -m -p -- env ... python check.py          (driver in head namespace)
or
  ray job submit --address $RAY_DASHBOARD --working-dir . -- python check.py
Options: --train also runs a 2-worker TorchTrainer on the fake_gpu nodes with
RunConfig(storage_path="s3://<bucket>/train") and checks the checkpoint in S3.
"""

import os
import sys
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import ray

BUCKET = os.environ.get("S3_BUCKET", "rehearsal")
TOKEN = uuid.uuid4().hex[:8]
FAILS = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILS.append(msg)


def whoami():
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "mnt_ns": os.readlink("/proc/self/ns/mnt"),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "tmp": os.environ.get("TMPDIR"),
    }


@ray.remote(num_cpus=0)
def write_local(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data)
    return whoami()


@ray.remote(num_cpus=0)
def exists(path):
    return os.path.exists(path), whoami()


@ray.remote(num_cpus=0)
def try_write_repo(repo):
    try:
        with open(os.path.join(repo, f".rehearsal-write-{TOKEN}"), "w") as f:
            f.write("x")
        return "writable"
    except OSError as e:
        return f"refused: {e.strerror}"


@ray.remote(num_cpus=0)
def s3_put_get(key, other_key):
    fs, path = pafs.FileSystem.from_uri(f"s3://{BUCKET}/{key}")  # endpoint from AWS_ENDPOINT_URL_S3
    with fs.open_output_stream(path) as f:
        f.write(key.encode())
    seen = None
    if other_key:
        for _ in range(50):
            try:
                with fs.open_input_stream(f"{BUCKET}/{other_key}") as f:
                    seen = f.read().decode()
                break
            except OSError:
                time.sleep(0.1)
    return seen, whoami()


@ray.remote(num_cpus=0)
def make_blob(n):
    import numpy as np

    return np.arange(n, dtype=np.int64)


@ray.remote(num_cpus=0)
def sum_blob(blob):
    return int(blob.sum()), whoami()


def on(node):  # pin a task to worker node `node` via its custom resource
    return {"resources": {f"node_{node}": 0.001}}


def main():
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print("driver:", whoami())
    for n in nodes:
        print(
            "node:",
            n["NodeManagerAddress"],
            {
                k: v
                for k, v in n["Resources"].items()
                if not k.startswith(("node:", "memory", "object"))
            },
        )
    check(len(nodes) >= 3, f"{len(nodes)} alive nodes")
    check(sum(n["Resources"].get("fake_gpu", 0) for n in nodes) == 2, "2 fake_gpu nodes")
    check(len({n["NodeManagerAddress"] for n in nodes}) == len(nodes), "distinct node IPs")

    # 1. node-local disk: /tmp/node-local and /dev/shm are private to each node
    for base in ("/tmp/node-local", "/dev/shm"):
        path = f"{base}/marker-{TOKEN}"
        wa = ray.get(write_local.options(**on("a")).remote(path, "from a"))
        seen_b, wb = ray.get(exists.options(**on("b")).remote(path))
        seen_a, _ = ray.get(exists.options(**on("a")).remote(path))
        check(seen_a, f"{path} visible on node a after writing it there")
        check(not seen_b, f"{path} written on node a is invisible on node b")
        check(
            not os.path.exists(path), f"{path} written on node a is invisible to the driver (head)"
        )
        check(
            wa["mnt_ns"] != wb["mnt_ns"] != whoami()["mnt_ns"],
            "a, b, head: distinct mount namespaces",
        )

    # 2. the code is read-only on worker nodes
    repo = os.environ["REHEARSAL_REPO"]
    res = ray.get(try_write_repo.options(**on("a")).remote(repo))
    check(res.startswith("refused"), f"repo {repo} read-only on worker: {res}")

    # 3. object store across nodes (plasma on each node's private /dev/shm)
    blob = make_blob.options(**on("a")).remote(4_000_000)  # 32 MB, lives in a's object store
    total, wb = ray.get(sum_blob.options(**on("b")).remote(blob))
    check(total == sum(range(4_000_000)), "32 MB object made on a, consumed on b")

    # 4. S3: both workers write, each reads the other's object; the driver lists them
    ka, kb = f"check/{TOKEN}/a.txt", f"check/{TOKEN}/b.txt"
    ra = s3_put_get.options(**on("a")).remote(ka, kb)
    rb = s3_put_get.options(**on("b")).remote(kb, ka)
    (seen_by_a, _), (seen_by_b, _) = ray.get([ra, rb])
    check(seen_by_a == kb and seen_by_b == ka, "nodes a and b exchange objects through S3")
    fs, path = pafs.FileSystem.from_uri(f"s3://{BUCKET}/check/{TOKEN}")
    listed = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path)))
    check(listed == ["a.txt", "b.txt"], f"driver lists s3://{BUCKET}/check/{TOKEN}: {listed}")

    if "--train" in sys.argv:
        train_check()
    print(f"{'PASSED' if not FAILS else 'FAILED'}: {len(FAILS)} failure(s)")
    return 1 if FAILS else 0


def train_check():
    import tempfile

    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    def loop(config):
        import torch.distributed as dist

        ctx = ray.train.get_context()
        t = torch.ones(1) * (ctx.get_world_rank() + 1)
        dist.all_reduce(t)
        with tempfile.TemporaryDirectory() as d:  # node-local temp dir
            with open(os.path.join(d, "info.txt"), "w") as f:
                f.write(
                    f"{ctx.get_world_rank()} {ctx.get_node_rank()} {ctx.get_local_rank()} "
                    f"{ray.util.get_node_ip_address()} {t.item()}"
                )
            ray.train.report({"sum": t.item()}, checkpoint=ray.train.Checkpoint.from_directory(d))

    t0 = time.time()
    trainer = TorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1, "fake_gpu": 1}
        ),
        run_config=ray.train.RunConfig(name=f"train-{TOKEN}", storage_path=f"s3://{BUCKET}/train"),
    )
    result = trainer.fit()
    check(
        result.metrics.get("sum") == 3.0, f"all_reduce over 2 nodes = {result.metrics.get('sum')}"
    )
    check(
        result.checkpoint is not None and result.checkpoint.path.startswith(f"{BUCKET}/train"),
        f"checkpoint in S3: {result.checkpoint and result.checkpoint.path}",
    )
    with result.checkpoint.as_directory() as d:
        print(
            "checkpoint info (rank node_rank local_rank ip sum):",
            Path(d, "info.txt").read_text(),
        )
    print(f"train took {time.time() - t0:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
