"""Source files -> record rows: resolving paths, reading files robustly, the row schema.

Every record becomes one row of :data:`RECORD_SCHEMA` (`id`, `source`, `source_file`, `row`,
a stable sort key `order`, `messages`, and the marking columns that the steps fill). Files are
read by Ray Data (`read_binary_files`, which handles local paths and `s3://` / `gs://` URIs
through pyarrow) and parsed line by line on the workers, each record through its adapter
(`med42ray.data.adapters`); `hf://owner/name` goes through `datasets.load_dataset` and
`from_huggingface`. A line or record that cannot be read is kept as a `quarantined` row with
its reason, never fatal. A file that cannot be read as a whole (corrupt Parquet, a `.json` that
is not JSON, JSON lines none of which parses, a MedMCQA file whose `cop` base cannot be told)
is *lost*: it yields no record, only one `drop == LOST` marker row (`med42ray.data.lost`). A
file's rows are emitted once the whole file has parsed, so a lost file never leaves a part
behind. Per-file forms (:data:`~med42ray.data.adapters.FILE_FORMS`, e.g. MedMCQA's 1-based
`cop`) see all of a file's records before they are adapted.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from med42ray.benchmarks import BenchmarkError
from med42ray.data.adapters import FILE_FORMS, MAX_RECORD_BYTES, BadRecord, to_messages
from med42ray.hub import dataset_location, hub_token

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

LOST = "lost"
"""The `drop` of a lost file's one marker row (`row` -1; `detail`: JSON bytes, records, why)."""


class DataError(RuntimeError):
    """The data stage cannot go on (unreadable source, too much quarantined input)."""


class UnreadableFile(Exception):
    """A file that cannot be read as a whole; `records` is its record count when known."""

    def __init__(self, why: str, records: int | None = None):
        super().__init__(why)
        self.records = records


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
    sizes: tuple[int | None, ...] = ()  # bytes of each file (None: unknown, e.g. the hub)

    def size(self, file_index: int) -> int | None:
        return self.sizes[file_index] if self.sizes else None


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _uri_files(path: str) -> tuple[Any, dict[str, int | None]]:
    """The filesystem of an object-store `path` (file, folder or glob) and its files' sizes."""
    import fnmatch

    import pyarrow.fs as pafs

    if _has_magic(path):
        cut = min(path.index(c) for c in "*?[" if c in path)
        base_uri = path[:cut].rsplit("/", 1)[0]
        fs, base = pafs.FileSystem.from_uri(base_uri)
        pattern = base + path[len(base_uri) :]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        infos = [i for i in infos if i.is_file and fnmatch.fnmatch(i.path, pattern)]
    else:
        fs, root = pafs.FileSystem.from_uri(path)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
            infos = [i for i in infos if i.is_file and i.path.endswith(EXTENSIONS)]
        else:
            infos = [info] if info.type == pafs.FileType.File else []
    return fs, {i.path: i.size for i in infos}


def _local_files(path: str) -> dict[str, int | None]:
    """The files of a local `path` (file, folder or glob), absolute, and their sizes."""
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
    else:
        files = [local] if os.path.isfile(local) else []
    return {os.path.abspath(f): os.path.getsize(f) for f in files}


def resolve_source(
    index: int, name: str, path: str, fmt: str, mirror: str | None = None
) -> SourceFiles:
    """Expand a file, glob, directory or object-store URI to a sorted list of input files.

    `hf://owner/name` stays one hub dataset: read from the hub, or from its copy in `mirror`
    (`resources.hub_mirror`); its label is the hub id either way."""
    if path.startswith("hf://"):
        repo = path.removeprefix("hf://")
        return SourceFiles(name, index, fmt, (dataset_location(repo, mirror),), (repo,), hub=True)
    fs, sizes = _uri_files(path) if _is_uri(path) else (None, _local_files(path))
    files = sorted(sizes)
    if not files:
        raise DataError(f"source {name!r}: no input files match {path!r}")
    common = os.path.dirname(files[0]) if len(files) == 1 else os.path.commonpath(files)
    labels = tuple(os.path.relpath(f, common) if common else f for f in files)
    return SourceFiles(
        name, index, fmt, tuple(files), labels, fs, sizes=tuple(map(sizes.get, files))
    )


def order_key(source_index: int, file_index: int, row: int) -> int:
    """A stable int64 sort key: source order, then file order, then row."""
    return (source_index << 56) | (file_index << 36) | row


def record_id(srcs: list[SourceFiles], order: int) -> str:
    """The id of the record with `order` (inverse of `order_key`)."""
    src = srcs[order >> 56]
    return f"{src.name}:{src.labels[(order >> 36) & 0xFFFFF]}:{order & ((1 << 36) - 1)}"


class Parsed(NamedTuple):
    """One record of a file as parsed: its row (line or index) and the raw record, or the
    reason (and detail) it could not be parsed."""

    row: int
    rec: Any = None
    reason: str = ""
    detail: str = ""


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

    def lose(self, why: str, size: int, records: int | None) -> None:
        """The one marker row of a lost file: `drop` LOST, `detail` its bytes, records, why."""
        self.add(-1, reason="unreadable_file")
        self.cols["drop"][-1] = LOST
        self.cols["detail"][-1] = json.dumps({"bytes": size, "records": records, "why": why[:300]})

    def full(self) -> bool:
        return len(self.cols["id"]) >= _CHUNK

    def flush(self) -> pa.Table:
        table = pa.Table.from_pydict(self.cols, schema=RECORD_SCHEMA)
        self.cols = {f.name: [] for f in RECORD_SCHEMA}
        return table


def _count_lines(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line.strip())


def _jsonl_records(data: bytes) -> Iterator[Parsed]:
    """Each non-blank line; a file with lines but none that parses as JSON is unreadable."""
    parsed_any, first_error = False, ""
    for row, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        if len(line) > MAX_RECORD_BYTES:
            yield Parsed(row, reason="oversize", detail=f"line {row + 1}: {len(line)} bytes")
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            first_error = first_error or f"line {row + 1}: {err}"
            yield Parsed(row, reason="invalid_utf8", detail=f"line {row + 1}: {err}")
        except ValueError as err:
            first_error = first_error or f"line {row + 1}: {err}"
            yield Parsed(row, reason="malformed_json", detail=f"line {row + 1}: {err}")
        else:
            parsed_any = True
            yield Parsed(row, rec)
    if first_error and not parsed_any:
        raise UnreadableFile(f"unreadable: no line is JSON ({first_error})", _count_lines(data))


def _json_records(data: bytes) -> Iterator[Parsed]:
    """A JSON list of records, or an object holding one under `data`/`rows`/`records`. JSON
    lines in a `.json` file (MedMCQA's original `train.json`) are read as JSON lines."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":  # one JSON value, then more: JSON lines
            raise
        yield from _jsonl_records(data)
        return
    if isinstance(doc, Mapping):
        doc = next(
            (doc[k] for k in ("data", "rows", "records") if isinstance(doc.get(k), list)), doc
        )
    if not isinstance(doc, list):
        raise UnreadableFile(f"unreadable: a JSON file holds a {type(doc).__name__}, not a list")
    for row, rec in enumerate(doc):
        yield Parsed(row, rec)


def _parquet_records(data: bytes) -> Iterator[Parsed]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=_CHUNK):
        for rec in batch.to_pylist():
            yield Parsed(row, rec)
            row += 1


def _file_records(data: bytes, path: str) -> Iterator[Parsed]:
    """The records of one file, by its extension (any other than Parquet or JSON: JSON lines)."""
    if path.endswith(".parquet"):
        return _parquet_records(data)
    return _json_records(data) if path.endswith(".json") else _jsonl_records(data)


def _known_records(data: bytes, path: str) -> int | None:
    """How many records an unreadable file holds, when that can be told: a Parquet footer's row
    count, a JSON-lines file's non-blank lines; None for a `.json` file or a broken footer."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.read_metadata(io.BytesIO(data)).num_rows
        except Exception:
            return None
    return None if path.endswith(".json") else _count_lines(data)


def _in_file_form(parsed: Iterable[Parsed], fmt: str, file: str) -> Iterable[Parsed]:
    """`parsed` through `fmt`'s per-file form (`FILE_FORMS`), which sees all of the file's
    records at once; as it is for a format without one."""
    form = FILE_FORMS.get(fmt)
    if form is None:
        return parsed
    items = list(parsed)
    ok = [i for i, p in enumerate(items) if not p.reason]
    try:
        recs = form([items[i].rec for i in ok], file)
    except BenchmarkError as err:
        raise UnreadableFile(f"{fmt} form undecidable: {err}", len(items)) from err
    for i, rec in zip(ok, recs, strict=True):
        items[i] = items[i]._replace(rec=rec)
    return items


def parse_file(
    data: bytes, src: SourceFiles, file_index: int, system_prompt: str | None
) -> list[pa.Table]:
    """One file's record rows (bad records quarantined); when the file cannot be read as a
    whole, only its LOST marker row."""
    path, out = src.paths[file_index], _Emitter(src, file_index, system_prompt)
    tables = []
    try:
        for parsed in _in_file_form(_file_records(data, path), src.fmt, src.labels[file_index]):
            out.add(*parsed)
            if out.full():
                tables.append(out.flush())
    except UnreadableFile as err:
        why, records = str(err), err.records
    except Exception as err:  # a corrupt file: lost whole, the others go on
        why, records = f"unreadable: {type(err).__name__}: {err}", _known_records(data, path)
    else:
        return [*tables, out.flush()]
    lost = _Emitter(src, file_index, system_prompt)
    lost.lose(why, len(data), records)
    return [lost.flush()]


def _file_index(src: SourceFiles, path: str) -> int:
    """The index in `src.paths` of a path as a reader hands it back."""
    try:
        return src.paths.index(path)
    except ValueError:  # readers may drop a scheme or a leading slash
        return next(i for i, p in enumerate(src.paths) if p.endswith(path.lstrip("/")))


def parse_files(batch: pa.Table, src: SourceFiles, system_prompt: str | None) -> Iterator[pa.Table]:
    """Ray Data UDF: file bytes (`read_binary_files` rows) -> record rows (`parse_file`)."""
    for data, path in zip(
        batch.column("bytes").to_pylist(), batch.column("path").to_pylist(), strict=True
    ):
        yield from parse_file(data, src, _file_index(src, path), system_prompt)


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
    skip: Collection[str] = (),
):
    """A Ray Dataset of `RECORD_SCHEMA` rows for one source, but its files in `skip` (lazy)."""
    import ray

    if src.hub:
        import datasets

        hub = datasets.load_dataset(src.paths[0], subset, split=split, token=hub_token())
        hub = hub.add_column("__row__", list(range(len(hub))))
        ds = ray.data.from_huggingface(hub)
        return ds.map_batches(
            parse_hub_rows,
            batch_format="pyarrow",
            fn_kwargs={"src": src, "system_prompt": system_prompt},
        )
    ds = ray.data.read_binary_files(
        [p for p in src.paths if p not in skip],
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


def resolve_sources(
    sources: Sequence[SourceConfig], mirror: str | None = None
) -> list[SourceFiles]:
    """The input files of every configured source, in config order (which fixes `order`)."""
    return [resolve_source(i, s.name, s.path, s.format, mirror) for i, s in enumerate(sources)]


def read_sources(
    srcs: list[SourceFiles],
    sources: Sequence[SourceConfig],
    system_prompt: str | None,
    num_blocks: int | None = None,
    skip: Collection[str] = (),
):
    """Every source read into one materialised Ray Dataset of `RECORD_SCHEMA` rows; the files
    in `skip` (lost already: they could not be opened) are left out."""
    parts = [
        read_source(src, s.split, s.subset, system_prompt, num_blocks, skip)
        for src, s in zip(srcs, sources, strict=True)
    ]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return ds.materialize()
