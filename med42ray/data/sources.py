"""Source files -> record rows: resolving paths, reading files robustly, the row schema.

Every record becomes one row of :data:`RECORD_SCHEMA` (`id`, `source`, `source_file`, `row`,
a stable sort key `order`, `messages`, and the marking columns that the steps fill). Files are
read by Ray Data (`read_binary_files`, which handles local paths and `s3://` / `gs://` URIs
through pyarrow) and parsed line by line on the workers, each record through its adapter
(`med42ray.data.adapters`); `hf://owner/name` goes through `datasets.load_dataset` and
`from_huggingface`. A line, record or file that cannot be read is kept as a `quarantined` row
with its reason, never fatal.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from med42ray.data.adapters import MAX_RECORD_BYTES, BadRecord, to_messages

if TYPE_CHECKING:
    from med42ray.config import SourceConfig

EXTENSIONS = (".jsonl", ".ndjson", ".json", ".parquet")
_CHUNK = 2048

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_file", pa.string()),
        ("row", pa.int64()),
        ("order", pa.int64()),
        ("messages", MESSAGE_TYPE),
        ("drop", pa.string()),  # "" = kept; else the removal category
        ("reason", pa.string()),  # the filter / quarantine reason
        ("detail", pa.string()),
        ("dkey", pa.string()),  # exact-dedup key, set by the filter step on surviving rows
    ]
)
"""Every row of the pipeline: kept and removed records travel together for the accounting."""


class DataError(RuntimeError):
    """The data stage cannot go on (unreadable source, too much quarantined input)."""


@dataclass(frozen=True)
class SourceFiles:
    """The resolved input files of one source."""

    name: str
    index: int
    fmt: str
    paths: tuple[str, ...]  # as handed to the reader (filesystem paths)
    labels: tuple[str, ...]  # short, stable names used in ids and reports
    filesystem: Any = None
    hub: bool = False


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def resolve_source(index: int, name: str, path: str, fmt: str) -> SourceFiles:
    """Expand a file, glob, directory or object-store URI to a sorted list of input files."""
    if path.startswith("hf://"):
        return SourceFiles(name, index, fmt, (path,), (path.removeprefix("hf://"),), hub=True)
    if _is_uri(path):
        import fnmatch

        import pyarrow.fs as pafs

        if _has_magic(path):
            cut = min(path.index(c) for c in "*?[" if c in path)
            base_uri = path[:cut].rsplit("/", 1)[0]
            fs, base = pafs.FileSystem.from_uri(base_uri)
            pattern = base + path[len(base_uri) :]
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
            files = [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, pattern)]
        else:
            fs, root = pafs.FileSystem.from_uri(path)
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
                files = [i.path for i in infos if i.is_file and i.path.endswith(EXTENSIONS)]
            elif info.type == pafs.FileType.File:
                files = [root]
            else:
                files = []
    else:
        fs = None
        local = path.removeprefix("file://")
        if _has_magic(local):
            files = [f for f in glob.glob(local, recursive=True) if os.path.isfile(f)]
        elif os.path.isdir(local):
            files = [
                os.path.join(d, f)
                for d, _, names in os.walk(local)
                for f in names
                if f.endswith(EXTENSIONS) and not f.startswith(".")
            ]
        elif os.path.isfile(local):
            files = [local]
        else:
            files = []
        files = [os.path.abspath(f) for f in files]
    files = sorted(files)
    if not files:
        raise DataError(f"source {name!r}: no input files match {path!r}")
    common = os.path.dirname(files[0]) if len(files) == 1 else os.path.commonpath(files)
    labels = tuple(os.path.relpath(f, common) if common else f for f in files)
    return SourceFiles(name, index, fmt, tuple(files), labels, fs)


def order_key(source_index: int, file_index: int, row: int) -> int:
    """A stable int64 sort key: source order, then file order, then row."""
    return (source_index << 56) | (file_index << 36) | row


def record_id(srcs: list[SourceFiles], order: int) -> str:
    """The id of the record with `order` (inverse of `order_key`)."""
    src = srcs[order >> 56]
    return f"{src.name}:{src.labels[(order >> 36) & 0xFFFFF]}:{order & ((1 << 36) - 1)}"


class _Emitter:
    """Accumulates parsed rows and yields Arrow tables of bounded size."""

    def __init__(self, src: SourceFiles, file_index: int, system_prompt: str | None):
        self.src, self.file_index, self.system_prompt = src, file_index, system_prompt
        self.label = src.labels[file_index]
        self.cols: dict[str, list] = {f.name: [] for f in RECORD_SCHEMA}

    def add(self, row: int, raw: Any = None, reason: str = "", detail: str = "") -> None:
        messages: list[dict[str, str]] = []
        if not reason:
            try:
                messages = to_messages(self.src.fmt, raw, self.system_prompt)
            except BadRecord as bad:
                reason, detail = bad.reason, bad.detail
        c = self.cols
        c["id"].append(f"{self.src.name}:{self.label}:{row}")
        c["source"].append(self.src.name)
        c["source_file"].append(self.label)
        c["row"].append(row)
        c["order"].append(order_key(self.src.index, self.file_index, row))
        c["messages"].append(messages)
        c["drop"].append("quarantined" if reason else "")
        c["reason"].append(reason)
        c["detail"].append(detail[:300])
        c["dkey"].append("")

    def full(self) -> bool:
        return len(self.cols["id"]) >= _CHUNK

    def flush(self) -> pa.Table:
        table = pa.Table.from_pydict(self.cols, schema=RECORD_SCHEMA)
        self.cols = {f.name: [] for f in RECORD_SCHEMA}
        return table


def _parse_jsonl(data: bytes, out: _Emitter) -> Iterator[pa.Table]:
    for row, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        if len(line) > MAX_RECORD_BYTES:
            out.add(row, reason="oversize", detail=f"line {row + 1}: {len(line)} bytes")
        else:
            try:
                rec = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                out.add(row, reason="invalid_utf8", detail=f"line {row + 1}: {err}")
            except ValueError as err:
                out.add(row, reason="malformed_json", detail=f"line {row + 1}: {err}")
            else:
                out.add(row, rec)
        if out.full():
            yield out.flush()


def _parse_json(data: bytes, out: _Emitter) -> Iterator[pa.Table]:
    doc = json.loads(data.decode("utf-8"))
    if isinstance(doc, Mapping):
        doc = next(
            (doc[k] for k in ("data", "rows", "records") if isinstance(doc.get(k), list)), doc
        )
    if not isinstance(doc, list):
        raise BadRecord("unreadable_file", "a JSON file must hold a list of records")
    for row, rec in enumerate(doc):
        out.add(row, rec)
        if out.full():
            yield out.flush()


def _parse_parquet(data: bytes, out: _Emitter) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=_CHUNK):
        for rec in batch.to_pylist():
            out.add(row, rec)
            row += 1
        yield out.flush()


def parse_files(batch: pa.Table, src: SourceFiles, system_prompt: str | None) -> Iterator[pa.Table]:
    """Ray Data UDF: file bytes (`read_binary_files` rows) -> record rows, bad ones quarantined."""
    index = {p: i for i, p in enumerate(src.paths)}
    for data, path in zip(
        batch.column("bytes").to_pylist(), batch.column("path").to_pylist(), strict=True
    ):
        file_index = index.get(path)
        if file_index is None:  # readers may drop a scheme or a leading slash
            file_index = next(i for i, p in enumerate(src.paths) if p.endswith(path.lstrip("/")))
        out = _Emitter(src, file_index, system_prompt)
        parser = (
            _parse_parquet
            if path.endswith(".parquet")
            else _parse_json
            if path.endswith(".json")
            else _parse_jsonl
        )
        try:
            yield from parser(data, out)
        except BadRecord as bad:
            out.add(-1, reason=bad.reason, detail=bad.detail)
        except Exception as err:  # a corrupt file: quarantine it whole, keep going
            out.add(-1, reason="unreadable_file", detail=f"{type(err).__name__}: {err}")
        yield out.flush()


def parse_hub_rows(batch: pa.Table, src: SourceFiles, system_prompt: str | None) -> pa.Table:
    """Ray Data UDF for `hf://` sources: hub rows (with `__row__`) -> record rows."""
    out = _Emitter(src, 0, system_prompt)
    for rec in batch.to_pylist():
        row = int(rec.pop("__row__"))
        out.add(row, rec)
    return out.flush()


def read_source(
    src: SourceFiles,
    split: str,
    subset: str | None,
    system_prompt: str | None,
    num_blocks: int | None = None,
):
    """A Ray Dataset of `RECORD_SCHEMA` rows for one source (lazy)."""
    import ray

    if src.hub:
        import datasets

        from med42ray.hub import hub_token

        hub = datasets.load_dataset(src.labels[0], subset, split=split, token=hub_token())
        hub = hub.add_column("__row__", list(range(len(hub))))
        ds = ray.data.from_huggingface(hub)
        return ds.map_batches(
            parse_hub_rows,
            batch_format="pyarrow",
            fn_kwargs={"src": src, "system_prompt": system_prompt},
        )
    ds = ray.data.read_binary_files(
        list(src.paths),
        include_paths=True,
        filesystem=src.filesystem,
        override_num_blocks=num_blocks or None,
    )
    return ds.map_batches(
        parse_files,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"src": src, "system_prompt": system_prompt},
    )


def resolve_sources(sources: Sequence[SourceConfig]) -> list[SourceFiles]:
    """The input files of every configured source, in config order (which fixes `order`)."""
    return [resolve_source(i, s.name, s.path, s.format) for i, s in enumerate(sources)]


def read_sources(
    srcs: list[SourceFiles],
    sources: Sequence[SourceConfig],
    system_prompt: str | None,
    num_blocks: int | None = None,
):
    """Every source read into one materialised Ray Dataset of `RECORD_SCHEMA` rows."""
    parts = [
        read_source(src, s.split, s.subset, system_prompt, num_blocks)
        for src, s in zip(srcs, sources, strict=True)
    ]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return ds.materialize()
