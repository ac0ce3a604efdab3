"""Locations that are either a local folder or an object-store URI, read and written one way.

On a shared-nothing cluster (the paper's: AWS nodes with local disks and S3, no shared
filesystem) every artefact that one node makes and another reads goes through object storage:
prepared shards, checkpoints, exports, evaluation parts and reports. The stages hold
*locations*: a local path on one machine, `s3://bucket/...` (or `gs://`, any pyarrow
filesystem) on a cluster, and use these functions, so the same code serves both. pyarrow's
filesystems are the library here (Ray Train and Ray Data use them too); the S3 endpoint and
credentials come from the environment (`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, ... or the
node's instance profile), never from a config.

Every transfer is counted per process (`transfers()`), so a run can say how many bytes each
worker and the driver fetched, e.g. on resume and export.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from fnmatch import fnmatch
from pathlib import Path

log = logging.getLogger(__name__)

_COUNTS = {"downloaded_bytes": 0, "uploaded_bytes": 0, "downloaded_files": 0, "uploaded_files": 0}
COPY_MARKER = ".med42ray-copy.json"


def is_uri(location: str | Path) -> bool:
    """Whether `location` names object storage (`s3://`, `gs://`, ...) rather than a path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(location: str | Path, *parts: str) -> str:
    """`location/part/...` for a URI or a path (as a string)."""
    if not is_uri(location):
        return str(Path(location, *parts))
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts if p)])


def filesystem(location: str | Path):
    """(pyarrow filesystem, path within it) for a URI or a local path."""
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def exists(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_files(location: str | Path) -> dict[str, int]:
    """{relative path: size} of the files under a folder location (empty when there is none)."""
    import pyarrow.fs as pafs

    fs, root = filesystem(location)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    root = root.rstrip("/") + "/"
    return {info.path[len(root) :]: info.size for info in infos if info.type == pafs.FileType.File}


def _stamps(location: str | Path) -> dict[str, list]:
    """{relative path: [size, mtime]}: what `local_copy` compares to see a folder changed."""
    import pyarrow.fs as pafs

    fs, root = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    root = root.rstrip("/") + "/"
    return {
        i.path[len(root) :]: [i.size, i.mtime.isoformat() if i.mtime else None]
        for i in infos
        if i.type == pafs.FileType.File
    }


def read_bytes(location: str | Path) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as fh:
        data = fh.read()
    if is_uri(location):
        _count("downloaded", len(data))
    return data


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str | Path, data: bytes) -> str:
    """Write a file whole: locally through a temp file renamed over it; on object storage one
    PUT (readers see the old object or the new one, never a part)."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return str(path)
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as fh:
        fh.write(data)
    _count("uploaded", len(data))
    return str(location)


def write_text(location: str | Path, text: str) -> str:
    return write_bytes(location, text.encode("utf-8"))


def upload(local: str | Path, location: str | Path, skip: Iterable[str] = ()) -> int:
    """Copy a local file or folder to `location` (a URI or another path); return bytes sent.

    Files whose relative path starts with one of `skip` stay behind."""
    local = Path(local)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    skip = tuple(skip)
    sent = 0
    for file in files:
        rel = "" if file == local else file.relative_to(local).as_posix()
        if rel and skip and rel.startswith(skip):
            continue
        target = join(location, rel) if rel else str(location)
        _copy(file, target)
        sent += file.stat().st_size
    return sent


def download(
    location: str | Path,
    local: str | Path,
    files: Iterable[str] | None = None,
    skip: Iterable[str] = (),
) -> int:
    """Copy a folder location (or only its `files`, relative paths) into `local`; return the
    bytes fetched. Relative paths starting with one of `skip` are not fetched."""
    local = Path(local)
    listing = list_files(location)
    wanted = sorted(listing) if files is None else [f for f in files if f in listing]
    skip = tuple(skip)
    got = 0
    for rel in wanted:
        if skip and rel.startswith(skip):
            continue
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs, path = filesystem(join(location, rel))
        with fs.open_input_stream(path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        got += listing[rel]
        if is_uri(location):
            _count("downloaded", listing[rel])
    return got


def _copy(file: Path, target: str) -> None:
    if not is_uri(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        return
    fs, path = filesystem(target)
    with open(file, "rb") as src, fs.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    _count("uploaded", file.stat().st_size)


def remove(location: str | Path) -> None:
    """Delete a file or folder location if it exists."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


# ------------------------------------------------------------------------------ node cache
def node_cache() -> Path:
    """Where this node keeps copies of remote folders: `MED42RAY_CACHE`/storage."""
    root = os.environ.get("MED42RAY_CACHE") or Path.home() / ".cache" / "med42ray"
    return Path(root) / "storage"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def local_copy(location: str | Path, patterns: Iterable[str] | None = None) -> Path:
    """A local folder with the content of `location`: the path itself when it is local, else a
    copy in this node's cache, fetched once per node (a lock keeps the actors and workers of one
    node from fetching it twice) and fetched again when a remote file's size or time changes.

    This is how a node reads a model, an adapter or a mirrored dataset that another node wrote:
    loaders (`from_pretrained`, vLLM, `datasets`) then read an ordinary folder. With
    `patterns` (shell globs on the relative paths, e.g. the tokenizer's files) only the matching
    files are fetched, into a copy of their own.
    """
    if not is_uri(location):
        return Path(location)
    listing = _stamps(location)
    if not listing:
        raise FileNotFoundError(f"{location}: no such folder in object storage")
    if patterns is not None:
        patterns = sorted(patterns)
        listing = {k: v for k, v in listing.items() if any(fnmatch(k, p) for p in patterns)}
    name = str(location).rstrip("/").rsplit("/", 1)[-1]
    digest = hashlib.sha256(f"{location}|{patterns}".encode()).hexdigest()[:16]
    target = node_cache() / f"{digest}-{name}"
    with _locked(node_cache() / f".{digest}.lock"):
        marker = target / COPY_MARKER
        if marker.is_file() and json.loads(marker.read_text()) == listing:
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=node_cache()))
        try:
            got = download(location, tmp, files=list(listing))
            (tmp / COPY_MARKER).write_text(json.dumps(listing, sort_keys=True))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetched %s (%d files, %.1f MB) to %s", location, len(listing), got / 1e6, target)
    return target


# ------------------------------------------------------------------------------ counting
def _count(direction: str, size: int) -> None:
    _COUNTS[f"{direction}_bytes"] += size
    _COUNTS[f"{direction}_files"] += 1


def transfers() -> dict[str, int]:
    """Bytes and files this process fetched from and sent to object storage so far."""
    return dict(_COUNTS)
