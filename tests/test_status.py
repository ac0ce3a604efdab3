"""`med42ray status`: run folders made with the real stage API (no Ray, no training), read while
a stage runs, after the run finished, failed, or its driver was killed with SIGKILL."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from med42ray.cli import app, main
from med42ray.stages import (
    FAILED_FILE,
    RUNNING_FILE,
    finish_index,
    new_index,
    record_stage,
    run_stage,
)
from med42ray.status import PROGRESS_FILE, format_status, run_status

from .conftest import REPO

runner = CliRunner()
PLANNED = ["data", "train-full", "eval-base", "eval-full"]

# A driver in its own process: the data stage, then a train stage that blocks inside `work`
# (having said so with a `ready` file) until the test creates OUT/go, then the evaluations.
DRIVER = """
import sys, time
from pathlib import Path
from med42ray.stages import finish_index, new_index, record_stage, run_stage

out = Path(sys.argv[1])
index = new_index(out, "demo", ["full"], planned=sys.argv[2].split(","))

def data(folder):
    (folder / "rows.jsonl").write_text("{}\\n")
    return {"rows": 1}

def train(folder):
    (folder / "ready").write_text("")
    while not (out / "go").exists():
        time.sleep(0.05)
    return {"steps": 100}

record_stage(out, index, run_stage(out, "data", {"d": 1}, data))
record_stage(out, index, run_stage(out, "train-full", {"t": 1}, train))
for label in ("base", "full"):
    record_stage(out, index, run_stage(out, f"eval-" + label, {"e": label}, lambda f: {}))
finish_index(out, index)
"""


def start_driver(out: Path) -> tuple[subprocess.Popen, Path]:
    """The driver above, once it is inside the train stage's work; and that stage's folder."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), ",".join(PLANNED)], cwd=REPO)
    deadline = time.time() + 60
    while not (ready := list(out.glob("train-full-*/ready"))):
        assert proc.poll() is None, f"driver exited with {proc.returncode}"
        assert time.time() < deadline, "driver never reached the train stage"
        time.sleep(0.05)
    return proc, ready[0].parent


def by_name(status: dict) -> dict[str, dict]:
    return {s["name"]: s for s in status["stages"]}


def write_progress(folder: Path, step: int, loss: float) -> None:
    record = {"step": step, "total_steps": 100, "loss": loss, "tokens_per_s": 1234.0}
    (folder / PROGRESS_FILE).write_text(json.dumps({**record, "updated_at": time.time()}))


def test_a_finished_run_lists_every_stage_done(tmp_path: Path) -> None:
    index = new_index(tmp_path, "demo", ["full"], planned=PLANNED)
    for name in PLANNED:
        record_stage(tmp_path, index, run_stage(tmp_path, name, {"n": name}, lambda f: {}))
    finish_index(tmp_path, index)
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["planned"] == PLANNED and written["started"] == written["stages"]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "data.log").write_text("log\n")

    status = run_status(tmp_path)
    assert status["name"] == "demo" and status["state"] == "finished"
    assert status["finished_at"] >= status["started_at"]
    assert [s["name"] for s in status["stages"]] == PLANNED
    for stage in status["stages"]:
        assert stage["state"] == "done" and stage["wall_s"] >= 0 and not stage["cached"]
        assert Path(stage["folder"]).name == f"{stage['name']}-{stage['key']}"
        assert not (Path(stage["folder"]) / RUNNING_FILE).exists()
    stages = by_name(status)
    assert stages["data"]["log"] == str(tmp_path / "logs" / "data.log")
    assert stages["train-full"]["log"] is None  # printed only where it exists

    result = runner.invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 0, result.output
    head, header, *rows = result.output.splitlines()
    assert head.startswith("run demo: finished  started ")
    assert header.split() == ["STAGE", "KEY", "STATE", "WALL", "FOLDER", "LOG", "DETAIL"]
    assert [r.split()[0] for r in rows] == PLANNED
    assert all(r.split()[2] == "done" for r in rows)
    assert len({r.index(" done") for r in rows}) == 1  # aligned
    assert "logs/data.log" in rows[0] and "logs/" not in rows[1]

    again = new_index(tmp_path, "demo", ["full"], planned=PLANNED)  # a rerun: all cached
    record_stage(tmp_path, again, run_stage(tmp_path, "data", {"n": "data"}, lambda f: {}))
    rerun = by_name(run_status(tmp_path))
    assert rerun["data"]["cached"] and rerun["train-full"]["state"] == "not started"


def test_a_failed_stage_says_why_and_what_did_not_run(tmp_path: Path) -> None:
    index = new_index(tmp_path, "demo", ["full"], planned=PLANNED)
    record_stage(tmp_path, index, run_stage(tmp_path, "data", {"d": 1}, lambda f: {"rows": 1}))

    def bad(folder: Path) -> dict:
        raise ValueError("bad field x\n  in record 3")

    with pytest.raises(ValueError, match="bad field x"):
        run_stage(tmp_path, "train-full", {"t": 1}, bad)
    status = run_status(tmp_path)
    stages = by_name(status)
    assert status["state"] == "failed"
    assert stages["data"]["state"] == "done"
    assert stages["train-full"]["state"] == "failed"
    assert stages["train-full"]["reason"] == "ValueError: bad field x"
    assert stages["train-full"]["wall_s"] >= 0 and stages["train-full"]["key"]
    assert [stages[n]["state"] for n in ("eval-base", "eval-full")] == ["not started"] * 2

    result = runner.invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("run demo: failed")
    line = next(r for r in result.output.splitlines() if r.startswith("train-full"))
    assert " failed " in line and line.endswith("ValueError: bad field x")

    retry = run_stage(tmp_path, "train-full", {"t": 1}, lambda f: {})  # the same folder
    assert not (retry.folder / FAILED_FILE).exists()
    assert by_name(run_status(tmp_path))["train-full"]["state"] == "done"


def test_a_killed_driver_leaves_an_interrupted_stage(tmp_path: Path) -> None:
    proc, folder = start_driver(tmp_path)
    write_progress(folder, 40, 2.5)
    proc.kill()  # SIGKILL: no cleanup
    assert proc.wait(timeout=30) < 0
    status = run_status(tmp_path)
    stages = by_name(status)
    assert status["state"] == "interrupted" and status["finished_at"] is None
    assert stages["data"]["state"] == "done"
    assert stages["train-full"]["state"] == "interrupted"
    assert stages["train-full"]["folder"] == str(folder)
    assert stages["train-full"]["progress"]["step"] == 40
    assert [stages[n]["state"] for n in ("eval-base", "eval-full")] == ["not started"] * 2
    line = next(r for r in format_status(status).splitlines() if r.startswith("train-full"))
    assert f"pid {proc.pid} on " in line and "is gone" in line and "step 40/100" in line


def test_a_running_stage_shows_its_progress_then_finishes(tmp_path: Path) -> None:
    proc, folder = start_driver(tmp_path)
    try:
        status = run_status(tmp_path)
        stages = by_name(status)
        assert status["state"] == "running"
        assert stages["data"]["state"] == "done"
        assert stages["train-full"]["state"] == "running"
        assert stages["train-full"]["pid"] == proc.pid and stages["train-full"]["wall_s"] >= 0
        assert stages["train-full"]["progress"] is None  # none reported yet
        assert stages["eval-base"]["state"] == "not started"

        write_progress(folder, 40, 2.3141)
        result = runner.invoke(app, ["status", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("run demo: running")
        line = next(r for r in result.output.splitlines() if r.startswith("train-full"))
        assert " running " in line
        assert "step 40/100, loss 2.314, 1234 tok/s" in line

        (tmp_path / "go").write_text("")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    status = run_status(tmp_path)
    assert status["state"] == "finished"
    assert [s["state"] for s in status["stages"]] == ["done"] * len(PLANNED)
    assert not (folder / RUNNING_FILE).exists()


def test_json_output_and_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    index = new_index(tmp_path, "demo", ["lora"], planned=["data", "train-lora"])
    record_stage(tmp_path, index, run_stage(tmp_path, "data", {"d": 1}, lambda f: {}))
    result = runner.invoke(app, ["status", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["name"] == "demo" and status["state"] == "running"  # this process drives it
    assert [(s["name"], s["state"]) for s in status["stages"]] == [
        ("data", "done"),
        ("train-lora", "not started"),
    ]

    with pytest.raises(SystemExit) as exit_info:
        main(["status", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2


def test_what_a_pid_alone_cannot_tell(tmp_path: Path) -> None:
    """A stage on another host cannot be checked ("running?"); a live process that started
    after the stage did reuses the pid of one that is gone. Without `planned`, the stages
    found are listed in the order they started."""
    new_index(tmp_path, "demo", ["full"])
    seen: dict[str, dict] = {}

    def work(folder: Path) -> dict:
        seen["self"] = by_name(run_status(tmp_path))["train-full"]
        running = json.loads((folder / RUNNING_FILE).read_text())
        (folder / RUNNING_FILE).write_text(json.dumps({**running, "host": "node-7"}))
        seen["elsewhere"] = by_name(run_status(tmp_path))["train-full"]
        with subprocess.Popen(["sleep", "30"]) as other:
            time.sleep(0.2)
            reused = {**running, "pid": other.pid, "started_at": time.time() - 3600}
            (folder / RUNNING_FILE).write_text(json.dumps(reused))
            seen["reused"] = by_name(run_status(tmp_path))["train-full"]
            other.kill()
        return {}

    run_stage(tmp_path, "train-full", {"t": 1}, work)
    run_stage(tmp_path, "data", {"d": 1}, lambda f: {})
    assert seen["self"]["state"] == "running"
    assert seen["elsewhere"]["state"] == "running?" and seen["elsewhere"]["host"] == "node-7"
    assert "on node-7" in format_status({**run_status(tmp_path), "stages": [seen["elsewhere"]]})
    if Path("/proc/self/stat").is_file():
        assert seen["reused"]["state"] == "interrupted"
    status = run_status(tmp_path)
    assert [s["name"] for s in status["stages"]] == ["train-full", "data"]
    assert status["state"] == "running"  # the driver (this process) is alive, not finished


def test_a_run_in_object_storage_is_read_in_place(s3_bucket, tmp_path, monkeypatch) -> None:
    """From another node (an empty cache), without downloading the run: a finished stage, a
    failed one, and a running one whose driver is on another host."""
    from med42ray import storage
    from med42ray.stages import RunFolder

    monkeypatch.setenv("MED42RAY_CACHE", str(tmp_path / "head"))
    run = RunFolder.open(f"{s3_bucket}/runs/r1")
    new_index(run, "remote", ["full"], planned=["data", "train-full", "eval-full"])
    run_stage(run, "data", {"d": 1}, lambda f: {})

    def bad(folder: Path) -> dict:
        raise RuntimeError("out of memory\nCUDA details")

    with pytest.raises(RuntimeError):
        run_stage(run, "train-full", {"t": 1}, bad)
    monkeypatch.setenv("MED42RAY_CACHE", str(tmp_path / "laptop"))
    stages = by_name(run_status(run.remote))
    assert stages["data"]["state"] == "done"
    assert stages["data"]["folder"].startswith(f"{run.remote}/data-")
    assert stages["train-full"]["state"] == "failed"
    assert stages["train-full"]["reason"] == "RuntimeError: out of memory"
    assert stages["eval-full"]["state"] == "not started"
    assert not (tmp_path / "laptop").exists()

    def work(folder: Path) -> dict:
        rel = f"{folder.name}/{RUNNING_FILE}"
        running = json.loads((folder / RUNNING_FILE).read_text())
        storage.write_text(f"{run.remote}/{rel}", json.dumps({**running, "host": "head-0"}))
        seen.update(by_name(run_status(run.remote)))
        return {}

    seen: dict[str, dict] = {}
    run_stage(run, "train-full", {"t": 1}, work)  # the retry drops the failure
    assert seen["train-full"]["state"] == "running?"
    assert by_name(run_status(run.remote))["train-full"]["state"] == "done"
    leftovers = [
        f for f in storage.list_files(run.remote) if f.endswith((RUNNING_FILE, FAILED_FILE))
    ]
    assert leftovers == []
