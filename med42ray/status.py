"""`med42ray status OUT`: where a `med42ray run` stands, read from its folder alone.

It works while the run goes on, after it finished or failed, and after it was killed without
cleanup, because `med42ray.stages` leaves these behind (see its docstring):

- `run.json`: the stages planned (in order), the folder of each stage as it started and as it
  finished, the driver's pid and host, start and finish times;
- in each stage's folder: `stage.json` (done, with its wall time), `failed.json` (the exception
  in one line), `running.json` (pid, host, start time) and, for a training stage, the trainer's
  `progress.json` (`{"step", "total_steps", "loss", "tokens_per_s", "updated_at"}`);
- `OUT/logs/<stage>.log`, when a stage writes one.

A stage is done when its marker is there; failed when `failed.json` is newer than its start;
running when its `running.json` names a live process on this host; interrupted when that
process is gone (a kill leaves `running.json` behind); "running?" when it runs on another host,
which cannot be checked from here. Nothing is written; a run in object storage is read in place.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from med42ray import storage
from med42ray.stages import (
    FAILED_FILE,
    INDEX_FILE,
    LOGS_DIR,
    PROGRESS_FILE,
    RUNNING_FILE,
    STAGE_FILE,
    RunFolder,
)

#: How much later than a run's recorded start a process with its pid may have started and
#: still be it (clock granularity); a later one reuses the pid of a process that is gone.
_START_SLACK_S = 5.0
_LIVENESS_STATE = {"alive": "running", "elsewhere": "running?", "dead": "interrupted"}


# ------------------------------------------------------------------------------- reading
def run_status(out: str | Path, now: float | None = None) -> dict[str, Any]:
    """The state of a run folder (local or a URI) and of each of its stages, as plain data."""
    where = RunFolder.open(out).location
    index_file = storage.join(where, INDEX_FILE)
    if not storage.is_file(index_file):
        raise FileNotFoundError(f"{out}: no {INDEX_FILE}; is it a `med42ray run` folder?")
    index = json.loads(storage.read_text(index_file))
    now = time.time() if now is None else now
    stages = [
        stage_status(where, name, folder, index, now) for name, folder in stage_folders(index)
    ]
    planned = index.get("planned") or []
    unplanned = [s for s in stages if s["name"] not in planned]  # in the order they started
    unplanned.sort(key=lambda s: s["started_at"] if s["started_at"] is not None else now)
    stages = [s for s in stages if s["name"] in planned] + unplanned
    return {
        "name": index.get("name"),
        "location": where,
        "state": overall_state(index, stages),
        "started_at": index.get("started_at"),
        "finished_at": index.get("finished_at"),
        "driver": index.get("driver"),
        "checked_at": now,
        "stages": stages,
    }


def stage_folders(index: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(stage name, folder name or None) for each planned stage, then any other stage the
    index names."""
    finished, started = index.get("stages", {}), index.get("started", {})
    names = list(dict.fromkeys([*(index.get("planned") or []), *started, *finished]))
    return [(name, finished.get(name) or started.get(name)) for name in names]


def stage_status(
    where: str, name: str, rel: str | None, index: dict[str, Any], now: float
) -> dict[str, Any]:
    """One stage's state, times, folder, log and training progress."""
    log = storage.join(where, LOGS_DIR, f"{name}.log")
    row: dict[str, Any] = {
        "name": name,
        "key": rel[len(name) + 1 :] if rel and rel.startswith(f"{name}-") else None,
        "state": "not started",
        "reason": None,
        "host": None,
        "pid": None,
        "cached": False,
        "wall_s": None,
        "started_at": None,
        "finished_at": None,
        "folder": storage.join(where, rel) if rel else None,
        "log": log if storage.is_file(log) else None,
        "progress": None,
    }
    if rel is None:
        return row
    folder = row["folder"]
    marker = _read_json(storage.join(folder, STAGE_FILE))
    if marker is not None:
        wall, finished_at = marker.get("wall_s"), marker.get("finished_at")
        row.update(state="done", wall_s=wall, finished_at=finished_at)
        row["key"] = marker.get("key", row["key"])
        if wall is not None and finished_at is not None:
            row["started_at"] = finished_at - wall
            row["cached"] = finished_at < index.get("started_at", finished_at)  # earlier run
        return row
    running = _read_json(storage.join(folder, RUNNING_FILE)) or {}
    failed = _read_json(storage.join(folder, FAILED_FILE))
    row["progress"] = _read_json(storage.join(folder, PROGRESS_FILE))
    started_at = running.get("started_at")
    row.update(started_at=started_at, host=running.get("host"), pid=running.get("pid"))
    if failed is not None and (started_at is None or failed.get("failed_at", 0) >= started_at):
        failed_at = failed.get("failed_at")
        row.update(state="failed", reason=failed.get("error"), finished_at=failed_at)
        if started_at is not None and failed_at is not None:
            row["wall_s"] = failed_at - started_at
    elif running:
        alive = liveness(running.get("pid"), running.get("host"), started_at)
        row["state"] = _LIVENESS_STATE[alive]
        if row["state"] != "interrupted" and started_at is not None:
            row["wall_s"] = max(0.0, now - started_at)
    else:  # a folder named but nothing in it says what happened (a run by an older version)
        row["state"] = "interrupted"
    return row


def overall_state(index: dict[str, Any], stages: list[dict[str, Any]]) -> str:
    """finished, failed (a stage raised), running, running? (driver on another host) or
    interrupted (the driver is gone)."""
    states = {s["state"] for s in stages}
    if index.get("finished_at") is not None:
        return "finished"
    if "failed" in states:
        return "failed"
    driver = index.get("driver")
    if driver:
        alive = liveness(driver.get("pid"), driver.get("host"), index.get("started_at"))
        return "interrupted" if alive == "dead" else _LIVENESS_STATE[alive]
    for state in ("running", "running?", "interrupted"):  # a run.json without its driver
        if state in states:
            return state
    return "unfinished"


def liveness(pid: Any, host: Any, since: float | None) -> str:
    """Whether the process that wrote a record at `since` is "alive", "dead" or "elsewhere"
    (on another host: not checkable). A live pid whose process started later is another process."""
    if host != socket.gethostname():
        return "elsewhere"
    if not isinstance(pid, int) or pid <= 0:
        return "dead"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass  # another user's process: alive
    started, state = _process_start(pid)
    if state in ("Z", "X"):  # exited, not yet reaped
        return "dead"
    if started is not None and since is not None and started > since + _START_SLACK_S:
        return "dead"
    return "alive"


def _process_start(pid: int) -> tuple[float | None, str | None]:
    """(start time as a unix time, state letter) of a process, from Linux's /proc; (None,
    None) where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold ")"
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"), fields[0]
    except (OSError, ValueError, IndexError, StopIteration):
        return None, None


def _read_json(location: str) -> dict[str, Any] | None:
    """A small JSON object file, or None when it is missing or not (yet) whole JSON."""
    try:
        value = json.loads(storage.read_text(location))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------- formatting
def format_status(status: dict[str, Any]) -> str:
    """A first line for the run, then an aligned table, one line per stage. Folders and logs
    are given relative to the run folder (the first line's location)."""
    head = (
        f"run {status['name']}: {status['state']}  started {_clock(status['started_at'])}"
        f"  finished {_clock(status['finished_at'])}  ({status['location']})"
    )
    rows = [["STAGE", "KEY", "STATE", "WALL", "FOLDER", "LOG", "DETAIL"]]
    for stage in status["stages"]:
        rows.append(
            [
                stage["name"],
                stage["key"] or "-",
                stage["state"],
                _duration(stage["wall_s"]),
                _relative(stage["folder"], status["location"]),
                _relative(stage["log"], status["location"]),
                _detail(stage, status["checked_at"]),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    table = [f"{line}  {row[-1]}".rstrip() for line, row in zip(lines, rows, strict=True)]
    return "\n".join([head, *table])


def _detail(stage: dict[str, Any], now: float) -> str:
    """The reason of a failure, where a process runs or ran, the last training progress."""
    parts = []
    if stage["state"] == "failed":
        parts.append(stage["reason"] or "no reason recorded")
    elif stage["state"] == "running?":
        parts.append(f"on {stage['host']} (pid {stage['pid']}; not checkable from here)")
    elif stage["state"] == "interrupted" and stage["pid"] is not None:
        parts.append(f"pid {stage['pid']} on {stage['host']} is gone")
    elif stage["cached"]:
        parts.append("cached (finished by an earlier run)")
    if stage["progress"] and stage["state"] != "done":
        parts.append(_progress(stage["progress"], now))
    return "; ".join(parts)


def _progress(progress: dict[str, Any], now: float) -> str:
    """`step 40/100, loss 2.314, 1234 tok/s, 3s ago`, from whatever fields are there."""
    parts = [f"step {progress.get('step', '?')}/{progress.get('total_steps', '?')}"]
    if isinstance(progress.get("loss"), int | float):
        parts.append(f"loss {progress['loss']:.4g}")
    if isinstance(progress.get("tokens_per_s"), int | float):
        parts.append(f"{progress['tokens_per_s']:.0f} tok/s")
    if isinstance(progress.get("updated_at"), int | float):
        parts.append(f"{_duration(max(0.0, now - progress['updated_at']))} ago")
    return ", ".join(parts)


def _relative(location: str | None, root: str) -> str:
    if not location:
        return "-"
    return location[len(root) :].lstrip("/") if location.startswith(root + "/") else location


def _clock(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _duration(seconds: float | None) -> str:
    """12.3s, 5m02s, 2h05m."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
