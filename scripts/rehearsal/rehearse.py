"""Issue 17's acceptance test: the paper recipe on a cluster shaped like the real one, with its
faults, checked from object storage. Run through `rehearse.sh` (= `make rehearsal`), which
tears everything down whatever happens; `--help` for the options.

Parts, each timed (`$BASE/rehearsal.json`, and `--json PATH`):
  setup      S3 server venv (scripts/rehearsal/setup.sh, once)
  up         S3 + head + worker nodes a, b in private namespaces (up.sh)
  mirror     hub mirror (datasets + the tiny model as `med42ray/tiny-llama`) -> s3://BUCKET/mirror
  validate   `med42ray config validate --deep RECIPE --set-file OVERLAY` against the mirror
  run        `ray job submit ... -- med42ray run RECIPE --set-file OVERLAY --out s3://.../7b`
             from the host; during train-full, once a checkpoint is in S3, node b is SIGKILLed
             (its whole namespace), Ray marks it dead, node b is started again (restart_node.sh);
             during an evaluation stage, once it has scored parts in S3, `ray job stop`
  resubmit   the same command again: data and train stages cached, the stopped evaluation
             resumes from its parts, the rest runs, the report is written
  checks     from S3: run.json, report, distinct Ray Train runs, no export/ in checkpoints,
             resumed_from > 0, every step once in metrics, eval resumed > 0, transfers; and
             nothing of the run on the workers' private disks
  sweep      main cluster down (S3 kept); a head with the autoscaler from zero workers
             (autoscale_up.sh); the LoRA sweep as a job; nodes 0 -> n -> 0, every trial done
  down       everything stopped by pid (down.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = REPO / ".venv" / "bin"
RECIPE = "configs/llama2-7b-full.yaml"
OVERLAY = "configs/overlays/rehearsal.yaml"
SWEEP = "sweeps/med42-lora-rank-lr.yaml"
STAGES = ["data", "train-full", "train-lora", "eval-base", "eval-full", "eval-lora"]
#: A stage line of `med42ray run`'s console (`med42ray.console`): `[2/6] train-full  running  ...`
STAGE_LINE = re.compile(r"^\[\d+/\d+\] (\S+) +(running|cached) ", re.M)


# ----------------------------------------------------------------------------- bookkeeping
class Rehearsal:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.base = Path(args.base)
        self.bucket = args.bucket
        self.s3_port = args.s3_port
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.dashboard = "http://127.0.0.11:8275"
        self.t0 = time.time()
        self.times: dict[str, float] = {}
        self.stage_seen: dict[str, list[tuple[float, str, str]]] = {}  # job: (when seen, ...)
        self.checks: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}
        self.env = dict(
            os.environ,
            BASE=str(self.base),
            REPO=str(REPO),
            AWS_ACCESS_KEY_ID="rehearsal",
            AWS_SECRET_ACCESS_KEY="rehearsal",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_ENDPOINT_URL_S3=self.endpoint,
            S3_PORT=str(self.s3_port),
            S3_BUCKET=self.bucket,
            MED42RAY_CACHE=str(self.base / "host-cache"),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            RAY_USAGE_STATS_ENABLED="0",
            PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        )
        os.environ.update({k: self.env[k] for k in self.env if k.startswith(("AWS_", "HF_"))})

    # -- output
    def log(self, msg: str) -> None:
        print(f"[rehearsal {time.time() - self.t0:7.1f}s] {msg}", flush=True)

    def check(self, name: str, ok: bool, detail: Any = "") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        self.log(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail != "" else ""))
        return bool(ok)

    @contextlib.contextmanager
    def part(self, name: str):
        start = time.time()
        self.log(f"--- {name}")
        try:
            yield
        finally:
            self.times[name] = round(time.time() - start, 1)
            self.log(f"--- {name}: {self.times[name]}s")

    def sh(self, *cmd: str, timeout: float = 600, check: bool = True, **kw) -> str:
        """Run a command, echo the end of its output, return its stdout."""
        proc = subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout, **kw
        )
        both = (proc.stdout or "") + (proc.stderr or "")
        for line in both.strip().splitlines()[-15:]:
            print("    " + line, flush=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])}... exited {proc.returncode}")
        return proc.stdout or ""

    def result(self) -> dict[str, Any]:
        failed = [c["name"] for c in self.checks if not c["ok"]]
        return {
            "ok": not failed and bool(self.checks),
            "failed": failed,
            "total_s": round(time.time() - self.t0, 1),
            "times_s": self.times,
            "checks": self.checks,
            **self.facts,
        }

    def write(self) -> None:
        text = json.dumps(self.result(), indent=2, default=str)
        for path in {self.base / "rehearsal.json", *(Path(p) for p in self.args.json or [])}:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    # -- S3 (pyarrow, from the host)
    def fs(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            scheme="http",
            access_key="rehearsal",
            secret_key="rehearsal",
            region="us-east-1",
        )

    def ls(self, prefix: str, recursive: bool = False) -> dict[str, int]:
        """{path relative to prefix: size} of files (dirs as -1) under s3://BUCKET/prefix."""
        import pyarrow.fs as pafs

        root = f"{self.bucket}/{prefix.strip('/')}"
        try:
            infos = self.fs().get_file_info(
                pafs.FileSelector(root, recursive=recursive, allow_not_found=True)
            )
        except OSError:
            return {}
        return {
            i.path[len(root) + 1 :]: (i.size if i.type == pafs.FileType.File else -1) for i in infos
        }

    def read(self, key: str) -> bytes | None:
        try:
            with self.fs().open_input_stream(f"{self.bucket}/{key.strip('/')}") as fh:
                return fh.read()
        except (OSError, FileNotFoundError):
            return None

    def read_json(self, key: str) -> Any:
        data = self.read(key)
        return json.loads(data) if data is not None else None

    # -- Ray: dashboard and jobs
    def nodes(self) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{self.dashboard}/nodes?view=summary", timeout=5) as r:
                summary = json.load(r)["data"]["summary"]
        except Exception:
            return []
        # "ip" comes from a node's reporter agent: a node that died, or whose agent has not
        # reported yet, has only the raylet's own address
        return [
            {
                "ip": n.get("ip") or n["raylet"].get("nodeManagerAddress", ""),
                "state": n["raylet"]["state"],
                "resources": n["raylet"].get("resourcesTotal") or {},
            }
            for n in summary
        ]

    def alive_workers(self) -> int:
        return sum(1 for n in self.nodes() if n["state"] == "ALIVE" and "fakeGpu" in n["resources"])

    def node_state(self, ip: str) -> str:
        states = [n["state"] for n in self.nodes() if n["ip"] == ip]
        return "ALIVE" if "ALIVE" in states else (states[-1] if states else "NONE")

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)

    def submit(self, submission_id: str, workdir: Path, entrypoint: list[str]) -> None:
        """`ray job submit --no-wait` as a user does, from the host."""
        runtime_env = {"env_vars": {"AWS_ENDPOINT_URL_S3": self.endpoint}}
        self.sh(
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            self.dashboard,
            "--no-wait",
            "--submission-id",
            submission_id,
            "--working-dir",
            str(workdir),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            *entrypoint,
        )
        self.facts.setdefault("commands", []).append(
            f"ray job submit --address {self.dashboard} --working-dir {workdir} "
            f"--runtime-env-json '{json.dumps(runtime_env)}' -- {' '.join(entrypoint)}"
        )

    def job_status(self, job: str) -> str:
        try:
            return str(self.jobs().get_job_status(job).value)
        except Exception:
            return "UNKNOWN"

    def job_logs(self, job: str) -> str:
        try:
            return self.jobs().get_job_logs(job)
        except Exception:
            return ""

    def save_logs(self, job: str) -> str:
        logs = self.job_logs(job)
        (self.base / f"job-{job}.log").write_text(logs)
        return logs


def stage_lines(logs: str) -> list[tuple[str, str]]:
    """(stage, running|cached) for each stage line of a job log, in order."""
    return STAGE_LINE.findall(logs)


ERROR_LINE = re.compile(r"^(?:\S+ )?([A-Za-z_][\w.]*(?:Error|Exception)): .+$", re.M)


def error_line(logs: str) -> str:
    """The last `SomeError: message` line of a job log (its root cause, usually)."""
    found = [m.group(0) for m in ERROR_LINE.finditer(logs)]
    return found[-1][-400:] if found else ""


def run_entrypoint(out: str, extra: str = "") -> list[str]:
    return ["med42ray", "run", RECIPE, "--set-file", OVERLAY, *shlex.split(extra), "--out", out]


# ------------------------------------------------------------------------------ the parts
def setup_and_up(r: Rehearsal) -> None:
    with r.part("setup"):
        r.sh("bash", str(HERE / "setup.sh"))
    with r.part("up"):
        r.sh("bash", str(HERE / "up.sh"), timeout=300)
    nodes = [(n["ip"], n["state"]) for n in r.nodes()]
    r.check("cluster: head + 2 worker nodes alive", r.alive_workers() == 2, nodes)


def publish_mirror(r: Rehearsal) -> None:
    with r.part("mirror"):
        out = r.sh(
            str(BIN / "python"),
            str(HERE / "publish_mirror.py"),
            "--local",
            str(r.base / "mirror"),
            "--dest",
            f"s3://{r.bucket}/mirror",
        )
    summary = json.loads(out.strip().splitlines()[-1])
    r.facts["mirror"] = summary
    r.check(
        "mirror: datasets and model published",
        "model.safetensors" in summary["model_files"] and summary["files"] > 20,
        f"{summary['files']} files, {summary['bytes'] / 1e6:.1f} MB",
    )


def job_workdir(r: Rehearsal) -> Path:
    """The repository's files (tracked and untracked-not-ignored, as git lists them) plus the
    recipe's user-provided USMLE files (tests' fixtures in the published forms)."""
    work = r.base / "job"
    shutil.rmtree(work, ignore_errors=True)
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.hub_mirror import place_usmle_files  # the tests' fixtures, in published forms

    return place_usmle_files(work)


def validate(r: Rehearsal, work: Path) -> None:
    with r.part("validate"):
        proc = subprocess.run(
            [str(BIN / "med42ray"), "config", "validate", "--deep", RECIPE, "--set-file", OVERLAY],
            cwd=work,
            env=r.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    last = (proc.stdout.strip().splitlines() or [proc.stderr.strip()[-300:]])[-1]
    r.check("recipe + overlay validate --deep against the mirror", proc.returncode == 0, last)


def worker_disk(r: Rehearsal, node: str, in_flight: bool = False) -> dict[str, list[str]]:
    """What of a run lies on a worker's private disk ($BASE/NODE/tmp): Ray Train result
    folders, checkpoints, prepared shards, stage outputs, run copies, evaluation parts.

    A checkpoint being written is staged in a temp folder (`med42ray-ckpt-*`) and uploaded by
    `ray.train.report`, which removes it: `in_flight` (a node killed mid-run) lists such folders
    apart, as scratch; once the run is over, any left is a leak."""
    root = r.base / node / "tmp"
    found: dict[str, list[str]] = {}
    patterns = {
        "checkpoint staging": lambda p: p.name.startswith("med42ray-ckpt-") and p.is_dir(),
        "ray_results": lambda p: p.name == "ray_results" and p.is_dir(),
        "checkpoint": lambda p: p.name.startswith("checkpoint_") and p.is_dir(),
        "stage outputs": lambda p: (
            p.name in ("stage.json", "train_result.json", "run.json", "metrics.jsonl", "eval.json")
        ),
        "run copies": lambda p: p.name == "runs" and p.parent.name == "med42ray",
        "exported weights": lambda p: (
            p.name in ("model.safetensors", "adapter_model.safetensors")
            and "storage" not in p.parts
        ),
        "shards/parts": lambda p: (
            p.suffix == ".parquet" and "storage" not in p.parts and "datasets" not in p.parts
        ),
    }
    if not root.is_dir():
        return {"missing": [str(root)]}
    for path in root.rglob("*"):
        if {"logs", "runtime_resources", "sockets"} & set(path.parts):
            continue  # Ray's logs, sockets and the job's code
        staged = any(part.startswith("med42ray-ckpt-") for part in path.parent.parts)
        for what, match in patterns.items():
            with contextlib.suppress(OSError):
                if match(path) and not (staged and what != "checkpoint staging"):
                    found.setdefault(what, []).append(str(path.relative_to(root)))
    if in_flight and "checkpoint staging" in found:
        found["scratch (in flight)"] = found.pop("checkpoint staging")
    return found


def main_run(r: Rehearsal, work: Path) -> None:
    out = f"s3://{r.bucket}/runs/7b"
    run_prefix = "runs/7b"
    job1 = "rehearsal-run-1"
    stop_stage = None
    killed = recovered = None
    timeline: dict[str, float] = {}
    with r.part("run"):
        r.submit(job1, work, run_entrypoint(out, r.args.run_args))
        deadline = time.time() + r.args.run_timeout
        status = "PENDING"
        seen: tuple[float, int] = (0.0, 0)
        while time.time() < deadline:
            status = r.job_status(job1)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            seen = report_stages(r, job1, seen)
            if killed is None:
                registered = registered_checkpoint(r, f"{run_prefix}/ray_results", "full")
                if registered and registered[1] < r.args.max_steps:
                    killed = kill_node(r, "b", registered, timeline)
                elif registered:
                    r.log(f"train-full: first registered checkpoint at the last step {registered}")
                    killed = {"too_late": registered}
            elif (
                recovered is None
                and "too_late" not in killed
                and (
                    latest_step(r, f"{run_prefix}/ray_results", "full") > killed["step"]
                    or finished(r, run_prefix, "train-full")
                )
            ):
                recovered = time.time()
                timeline["first checkpoint after restart"] = recovered
                r.log("train-full: a checkpoint written after the restart")
            if stop_stage is None and killed is not None:
                stop_stage = stop_during_eval(r, run_prefix, job1, timeline)
                if stop_stage:
                    break
            time.sleep(0.5)
        for _ in range(120):
            status = r.job_status(job1)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(0.5)
        logs1 = r.save_logs(job1)
    r.facts["job1"] = {"id": job1, "status": status}
    if killed:
        r.times["node kill -> marked dead"] = round(timeline["b dead"] - timeline["b killed"], 1)
        r.times["node kill -> node back"] = round(timeline["b alive"] - timeline["b killed"], 1)
        if recovered:
            r.times["node kill -> training checkpoints again"] = round(
                recovered - timeline["b killed"], 1
            )
    r.check(
        "node b killed during train-full after a checkpoint",
        killed is not None and "too_late" not in killed,
        killed,
    )
    r.check("job stopped during an evaluation stage", stop_stage is not None, stop_stage or status)
    r.check(f"job {job1} did not fail", status != "FAILED", error_line(logs1) or status)
    if status == "FAILED" or stop_stage is None:
        print("\n".join(logs1.splitlines()[-60:]))
        r.facts["job1_tail"] = logs1.splitlines()[-40:]
        return

    job2 = "rehearsal-run-2"
    with r.part("resubmit"):
        r.submit(job2, work, run_entrypoint(out, r.args.run_args))
        status = wait_job(r, job2, r.args.run_timeout)
        logs2 = r.save_logs(job2)
    r.facts["job2"] = {"id": job2, "status": status}
    if not r.check("resubmitted job succeeded", status == "SUCCEEDED", error_line(logs2) or status):
        print("\n".join(logs2.splitlines()[-80:]))
        r.facts["job2_tail"] = logs2.splitlines()[-40:]
    cached2 = {s for s, what in stage_lines(logs2) if what == "cached"}
    want_cached = {"data", "train-full", "train-lora"}
    r.check("resubmit: data and train stages cached", want_cached <= cached2, sorted(cached2))
    stage_times(r, [(job1, logs1), (job2, logs2)], run_prefix)
    r.facts["stopped_stage"] = stop_stage
    outcome_checks(r, run_prefix, stop_stage, killed)


def registered_checkpoint(r: Rehearsal, results: str, strategy: str) -> tuple[str, int] | None:
    """(checkpoint folder, step) of the latest checkpoint Ray Train has registered for the
    `strategy` run (its controller's `checkpoint_manager_snapshot.json` in S3): what a restarted
    worker group resumes from. A checkpoint only uploaded is not yet one."""
    for name, size in r.ls(results).items():
        if size != -1 or not re.match(rf".+-{strategy}-[0-9a-f]+$", name):
            continue
        snap = r.read_json(f"{results}/{name}/checkpoint_manager_snapshot.json") or {}
        latest = snap.get("latest_checkpoint_result") or {}
        step = (latest.get("metrics") or {}).get("step")
        if latest.get("checkpoint_dir_name") and step:
            return f"{name}/{latest['checkpoint_dir_name']}", int(step)
    return None


def latest_step(r: Rehearsal, results: str, strategy: str) -> int:
    found = registered_checkpoint(r, results, strategy)
    return found[1] if found else 0


def report_stages(r: Rehearsal, job: str, seen: tuple[float, int]) -> tuple[float, int]:
    """Print the job's new stage lines (every 3 s at most) and note when each was first seen
    (`r.stage_seen`: the console's lines carry no time)."""
    last, count = seen
    if time.time() - last < 3:
        return seen
    lines = stage_lines(r.job_logs(job))
    for stage, what in lines[count:]:
        r.stage_seen.setdefault(job, []).append((time.time(), stage, what))
        r.log(f"job {job}: stage {stage}: {what}")
    return time.time(), len(lines)


def finished(r: Rehearsal, run_prefix: str, stage: str) -> str | None:
    """The folder of `stage` if it is finished in S3 (stage.json)."""
    folders = [n for n, size in r.ls(run_prefix).items() if size == -1]
    done = [
        n for n in folders if n.startswith(f"{stage}-") and r.read(f"{run_prefix}/{n}/stage.json")
    ]
    return done[0] if done else None


def kill_node(r: Rehearsal, node: str, registered: tuple[str, int], timeline: dict[str, float]):
    """SIGKILL worker node `node` (its unshare process: --kill-child ends the namespace), wait
    until Ray marks it dead, note what was on its disk, start it again, wait until alive."""
    checkpoint, step = registered
    pid = int((r.base / f"{node}.pid").read_text())
    ip = "127.0.0.13" if node == "b" else "127.0.0.12"
    timeline["b killed"] = time.time()
    os.kill(pid, signal.SIGKILL)
    r.log(f"node {node} (pid {pid}) SIGKILLed; registered checkpoint {checkpoint} (step {step})")
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    for _ in range(600):
        if r.node_state(ip) != "ALIVE":
            break
        time.sleep(0.1)
    timeline["b dead"] = time.time()
    dead_after = timeline["b dead"] - timeline["b killed"]
    r.log(f"node {node} marked {r.node_state(ip)} after {dead_after:.1f}s")
    r.facts[f"disk_{node}_before_restart"] = worker_disk(r, node, in_flight=True)
    r.sh("bash", str(HERE / "restart_node.sh"), node)
    for _ in range(1200):
        if r.node_state(ip) == "ALIVE":
            break
        time.sleep(0.1)
    timeline["b alive"] = time.time()
    r.log(f"node {node} alive again after {timeline['b alive'] - timeline['b killed']:.1f}s")
    return {"checkpoint": checkpoint, "step": step}


def stop_during_eval(r: Rehearsal, run_prefix: str, job: str, timeline: dict[str, float]):
    """Once an evaluation stage that is not finished has scored parts in S3: `ray job stop`."""
    for name, size in r.ls(run_prefix).items():
        if size != -1 or not name.startswith("eval-"):
            continue
        parts = [k for k in r.ls(f"{run_prefix}/{name}/parts", recursive=True) if "part-" in k]
        if parts and not r.read(f"{run_prefix}/{name}/stage.json"):
            timeline["stop"] = time.time()
            r.log(f"{name}: {len(parts)} parts in S3; ray job stop {job}")
            r.sh(str(BIN / "ray"), "job", "stop", "--address", r.dashboard, job, check=False)
            st = wait_job(r, job, 120)
            r.times["job stop"] = round(time.time() - timeline["stop"], 1)
            n_after = len(
                [k for k in r.ls(f"{run_prefix}/{name}/parts", recursive=True) if "part-" in k]
            )
            r.facts["stop"] = {
                "stage": name,
                "parts_at_stop": len(parts),
                "parts_after_stop": n_after,
                "status": st,
            }
            return name
    return None


def wait_job(r: Rehearsal, job: str, timeout: float) -> str:
    deadline, seen = time.time() + timeout, (0.0, 0)
    status = "UNKNOWN"
    while time.time() < deadline:
        status = r.job_status(job)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        seen = report_stages(r, job, seen)
        time.sleep(1)
    return status


def stage_times(r: Rehearsal, jobs: list[tuple[str, str]], run_prefix: str) -> None:
    """Per stage: its time in the job (from when its `running` line was first seen, polled
    every 3 s, to the next stage line, or to the job's end; summed over both jobs: the stopped
    evaluation ran in each), and its `wall_s` from stage.json (the job that finished it)."""
    spans: dict[str, list[dict[str, Any]]] = {}
    for job, _logs in jobs:
        lines = r.stage_seen.get(job, [])
        try:
            end_ms = r.jobs().get_job_info(job).end_time
        except Exception:
            end_ms = None
        job_end = end_ms / 1000 if end_ms else None
        for i, (t, stage, what) in enumerate(lines):
            end = lines[i + 1][0] if i + 1 < len(lines) else job_end
            span = round(end - t, 1) if end else None
            spans.setdefault(stage, []).append({"job": job, "what": what, "log_s": span})
            if what == "running" and span is not None:
                key = f"stage {stage} (job logs)"
                r.times[key] = round(r.times.get(key, 0) + span, 1)
    index = r.read_json(f"{run_prefix}/run.json") or {}
    for stage, folder in (index.get("stages") or {}).items():
        record = r.read_json(f"{run_prefix}/{folder}/stage.json") or {}
        r.times[f"stage {stage} (stage.json wall_s)"] = record.get("wall_s")
    r.facts["stage_log_spans"] = spans


def outcome_checks(r: Rehearsal, run: str, stop_stage: str | None, killed) -> None:
    index = r.read_json(f"{run}/run.json") or {}
    stages = index.get("stages") or {}
    r.check("run.json lists every stage", set(STAGES) <= set(stages), sorted(stages))
    r.check("report/report.md in S3", r.read(f"{run}/report/report.md") is not None)
    results = {k for k, v in r.ls(f"{run}/ray_results").items() if v == -1}
    full = [k for k in results if re.match(r".+-full-[0-9a-f]+$", k)]
    lora = [k for k in results if re.match(r".+-lora-[0-9a-f]+$", k)]
    r.check(
        "two distinct Ray Train runs <name>-full-<key>, <name>-lora-<key>",
        len(full) == 1 and len(lora) == 1,
        sorted(results),
    )
    for run_dir in full + lora:
        listing = r.ls(f"{run}/ray_results/{run_dir}", recursive=True)
        exports = sorted({k.split("/")[0] for k in listing if "/export/" in f"/{k}"})
        r.check(f"{run_dir}: no export/ in its checkpoints", not exports, exports)
    _train_checks(r, run, stages, killed)
    _eval_checks(r, run, stages, stop_stage)
    for node in ("a", "b"):
        found = worker_disk(r, node)
        r.facts[f"disk_{node}"] = found
        r.check(f"nothing of the run on worker {node}'s private disk", not found, found)
    before = r.facts.get("disk_b_before_restart")
    if before is not None:
        kept = {k: v for k, v in before.items() if k != "scratch (in flight)"}
        r.check("nothing of the run on worker b's disk when it was killed", not kept, before)


def _train_checks(r: Rehearsal, run: str, stages: dict, killed) -> None:
    """Resume point, every step once, exports beside the checkpoints, bytes moved."""
    transfers = {}
    for strategy in ("full", "lora"):
        folder = stages.get(f"train-{strategy}")
        if not folder:
            continue
        result = r.read_json(f"{run}/{folder}/train_result.json") or {}
        state = result.get("state") or {}
        transfers[strategy] = result.get("transfers") or state.get("transfers")
        resumed = state.get("resumed_from", result.get("resumed_from"))
        if strategy == "full":
            r.check(
                "train-full resumed from a checkpoint (resumed_from > 0)",
                bool(resumed) and resumed > 0,
                resumed,
            )
            if killed and "step" in killed:
                r.check(
                    "train-full resumed from the checkpoint registered before the kill "
                    "(or a later one)",
                    bool(resumed) and resumed >= killed["step"],
                    f"resumed_from {resumed}, registered at the kill: step {killed['step']}",
                )
        metrics = r.read(f"{run}/{folder}/metrics.jsonl")
        steps = [json.loads(x).get("step") for x in (metrics or b"").decode().splitlines() if x]
        want = list(range(1, max(steps) + 1)) if steps else []
        r.check(
            f"train-{strategy}: metrics hold every step exactly once",
            bool(steps) and sorted(steps) == want,
            f"{len(steps)} rows, steps {steps}",
        )
        exports = [
            k
            for k in r.ls(f"{run}/{folder}", recursive=True)
            if k.startswith(("model/", "adapter/"))
        ]
        r.check(f"train-{strategy}: export in the stage folder", bool(exports), len(exports))
    r.facts["transfers"] = transfers
    r.check("train_result.json carries transfer figures", all(transfers.values()), transfers)
    full = transfers.get("full") or {}
    ckpt, fetched = full.get("checkpoint_bytes"), full.get("resume_fetched_bytes") or []
    driver = (full.get("driver") or {}).get("downloaded_bytes")
    r.log(
        f"transfers, train-full: checkpoint {ckpt} bytes; on resume the workers fetched "
        f"{fetched} bytes; export uploaded {full.get('export_uploaded_bytes')} bytes; the "
        f"driver downloaded {driver} bytes"
    )
    r.check(
        "resume: each worker fetched only its part of the checkpoint",
        bool(ckpt) and len(fetched) == 2 and all(0 < f < ckpt for f in fetched),
        f"{fetched} of {ckpt} bytes",
    )
    r.check(
        "the driver moved no weights (< 1 MB downloaded per train stage)",
        all(
            (t or {}).get("driver", {}).get("downloaded_bytes", 1e9) < 1e6
            for t in transfers.values()
        ),
        {k: (t or {}).get("driver") for k, t in transfers.items()},
    )


def _eval_checks(r: Rehearsal, run: str, stages: dict, stop_stage: str | None) -> None:
    """The stopped evaluation resumed from its parts; every evaluation cut by eval.limit."""
    if stop_stage:
        stage = stop_stage.rsplit("-", 1)[0]
        folder = stages.get(stage)
        ev = r.read_json(f"{run}/{folder}/eval.json") if folder else None
        resumed = (ev or {}).get("resumed")
        r.check(
            f"{stage} (stopped midway) resumed from its parts (eval.json resumed > 0)",
            bool(resumed) and resumed > 0,
            resumed,
        )
    for stage in ("eval-base", "eval-full", "eval-lora"):
        folder = stages.get(stage)
        ev = (r.read_json(f"{run}/{folder}/eval.json") or {}) if folder else {}
        record = (r.read_json(f"{run}/{folder}/stage.json") or {}) if folder else {}
        items = (record.get("summary") or {}).get("items")
        r.facts.setdefault("eval", {})[stage] = {
            "items": items,
            "resumed": ev.get("resumed"),
            "requests": ev.get("requests"),
            "transfers": ev.get("transfers"),
            "placement": ev.get("placement"),
        }
        r.check(f"{stage}: eval.limit 20 -> at most 240 items", bool(items) and items <= 240, items)


def sweep(r: Rehearsal, work: Path) -> None:
    index = r.read_json("runs/7b/run.json") or {}
    data = (index.get("stages") or {}).get("data")
    with r.part("swap to autoscaling cluster"):
        env = dict(r.env, KEEP_S3="1")
        subprocess.run(["bash", str(HERE / "down.sh")], env=env, timeout=120, check=False)
        env = dict(r.env, IDLE_TIMEOUT_MINUTES=str(r.args.idle_timeout_minutes))
        proc = subprocess.run(
            ["bash", str(HERE / "autoscale_up.sh")],
            env=env,
            timeout=300,
            capture_output=True,
            text=True,
        )
        print(proc.stdout[-500:], proc.stderr[-500:])
    if not r.check(
        "autoscaling head up with 0 workers",
        proc.returncode == 0 and r.alive_workers() == 0,
        f"{r.alive_workers()} worker nodes",
    ):
        return
    if not data:
        r.check("sweep: the run's prepared data in S3", False, index)
        return
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            timeline.append((round(time.time() - r.t0, 1), r.alive_workers()))
            stop.wait(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = f"s3://{r.bucket}/sweeps/lora"
    entry = [
        "med42ray",
        "sweep",
        SWEEP,
        "--set-file",
        OVERLAY,
        "--out",
        out,
        "--data",
        f"s3://{r.bucket}/runs/7b/{data}/train",
        "--eval-data",
        f"s3://{r.bucket}/runs/7b/{data}/eval",
        *shlex.split(r.args.sweep_args),
    ]
    job = "rehearsal-sweep"
    try:
        with r.part("sweep"):
            r.submit(job, work, entry)
            status = wait_job(r, job, r.args.sweep_timeout)
            logs = r.save_logs(job)
        r.check("sweep job succeeded", status == "SUCCEEDED", error_line(logs) or status)
        if status != "SUCCEEDED":
            print("\n".join(logs.splitlines()[-60:]))
            r.facts["sweep_tail"] = logs.splitlines()[-40:]
        with r.part("scale down to 0"):
            deadline = time.time() + r.args.scale_down_timeout
            while time.time() < deadline and r.alive_workers() > 0:
                time.sleep(1)
    finally:
        stop.set()
        watcher.join(5)
        timeline.append((round(time.time() - r.t0, 1), r.alive_workers()))
    counts = [n for _, n in timeline]
    changes = timeline[:1] + [p for a, p in itertools.pairwise(timeline) if p[1] != a[1]]
    r.facts["sweep_nodes_timeline"] = changes
    peak = max(counts, default=0)
    r.check("autoscaler: worker nodes rose above 0", peak > 0, peak)
    back = bool(counts) and counts[-1] == 0
    r.check("autoscaler: worker nodes back to 0 when idle", back, changes)
    for node in sorted(p.name for p in r.base.glob("as*") if p.is_dir()):
        found = worker_disk(r, node)
        r.facts[f"disk_{node}"] = found
        r.check(
            f"nothing of the sweep on autoscaled worker {node}'s private disk", not found, found
        )
    r.check(
        "sweep: trials table in S3 (--out)",
        r.read("sweeps/lora/trials.csv") is not None,
        sorted(r.ls("sweeps/lora"))[:10],
    )
    r.facts["sweep_best"] = best = r.read_json("sweeps/lora/best/best.json")
    r.check(
        "sweep: the best trial recorded in S3 (best/best.json, its export's location)",
        bool(best) and bool(best.get("exported")),
        best or "no best/best.json",
    )
    table = sweep_table(r, logs if status == "SUCCEEDED" else "")
    r.facts["sweep_trials"] = table
    statuses = [t.get("status") for t in table]
    r.check(
        "sweep: every trial TERMINATED",
        bool(statuses) and set(statuses) == {"TERMINATED"},
        statuses,
    )


def sweep_table(r: Rehearsal, logs: str) -> list[dict[str, str]]:
    """trials.csv from S3, else the trials.md table the job printed."""
    data = r.read("sweeps/lora/trials.csv")
    if data:
        import csv
        import io

        return list(csv.DictReader(io.StringIO(data.decode())))
    rows = [line for line in logs.splitlines() if line.startswith("|")]
    if len(rows) < 3:
        return []
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    return [
        dict(zip(head, (c.strip() for c in row.strip("|").split("|")), strict=False))
        for row in rows[2:]
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=os.environ.get("BASE", "/tmp/med42ray-rehearsal"))
    parser.add_argument("--json", action="append", help="also write the result here")
    parser.add_argument("--bucket", default="rehearsal")
    parser.add_argument("--s3-port", type=int, default=9010)
    parser.add_argument("--run-timeout", type=float, default=600)
    parser.add_argument("--sweep-timeout", type=float, default=600)
    parser.add_argument(
        "--scale-down-timeout",
        type=float,
        default=240,
        help="seconds to wait for 0 workers after the sweep (Ray Train's autoscaling requests "
        "expire after 180 s when a trial's controller does not withdraw them)",
    )
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.2)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument(
        "--max-steps", type=int, default=6, help="the overlay's train.max_steps (kill window)"
    )
    parser.add_argument(
        "--sweep-args",
        default="--set tune.num_samples=1 --set resources.num_workers=1 --set "
        "'tune.search_space={train.lora.r: {grid: [8, 16]}, train.lora.alpha: {choice: [16, 32]}, "
        "train.optimizer.lr: {loguniform: [5.0e-5, 5.0e-4]}}' --set tune.scheduler=fifo",
        help="extra `med42ray sweep` arguments (default: the sweep's space with the rank grid "
        "cut to [8, 16], one sample: 2 trials of 1 worker each, side by side; FIFO: with 2 "
        "trials ASHA may or may not stop one at step 4 depending on which reports first, and a "
        "stopped trial leaves its checkpoint staging folder on its node and its autoscaling "
        "request for 180 s: see README)",
    )
    parser.add_argument("--run-args", default="", help="extra `med42ray run` arguments")
    args = parser.parse_args()
    r = Rehearsal(args)
    try:
        setup_and_up(r)
        publish_mirror(r)
        work = job_workdir(r)
        validate(r, work)
        main_run(r, work)
        if not args.no_sweep:
            sweep(r, work)
    except Exception as err:  # recorded as a failed check, then the JSON
        import traceback

        traceback.print_exc()
        r.check(f"rehearsal ran to the end ({type(err).__name__})", False, str(err)[:500])
    finally:
        with r.part("down"):
            subprocess.run(["bash", str(HERE / "down.sh")], env=r.env, timeout=120, check=False)
        r.write()
    res = r.result()
    print(
        json.dumps(
            {"times_s": res["times_s"], "failed": res["failed"], "transfers": res.get("transfers")},
            indent=1,
        )
    )
    print(
        f"{'PASSED' if res['ok'] else 'FAILED'}: {len(res['failed'])} failed check(s); "
        f"{res['total_s']}s; {args.base}/rehearsal.json"
    )
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
