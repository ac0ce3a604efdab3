"""Content-addressed, resumable stages: the caching under `med42ray run`.

A stage's folder is named by a hash of everything it depends on (the config sections it reads,
the content of its input files, the keys of the stages before it). It is marked finished by
`stage.json`, written last and atomically. A rerun with the same inputs skips a finished stage;
a stage that was stopped midway runs again in the same folder, where its own resume logic
(training checkpoints, evaluation's finished items) picks up what was already done.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
STAGE_FILE = "stage.json"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    folder: Path
    summary: dict[str, Any]
    cached: bool


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


def run_stage(
    run_dir: Path,
    name: str,
    inputs: dict[str, Any],
    work: Callable[[Path], dict[str, Any]],
    resolved_config: str | None = None,
) -> StageResult:
    """Run `work(folder)` unless a finished stage with the same inputs exists; mark it done."""
    key = stage_key(inputs)
    folder = run_dir / f"{name}-{key}"
    done = finished(folder)
    if done is not None:
        log.info("stage %s: cached (%s)", name, folder)
        return StageResult(name, key, folder, done["summary"], cached=True)
    folder.mkdir(parents=True, exist_ok=True)
    if resolved_config is not None:
        (folder / "config.yaml").write_text(resolved_config)
    log.info("stage %s: running in %s", name, folder)
    start = time.time()
    summary = work(folder)
    record = {
        "name": name,
        "key": key,
        "inputs": inputs,
        "summary": summary,
        "wall_s": round(time.time() - start, 3),
        "finished_at": time.time(),
    }
    tmp = folder / f".{STAGE_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    os.replace(tmp, folder / STAGE_FILE)
    return StageResult(name, key, folder, summary, cached=False)
