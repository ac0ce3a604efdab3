"""Lost files: input files that cannot be opened, or cannot be read as a whole.

A file is lost when it cannot be opened (found by `inputs.open_inputs`, before any reading) or
when the reader cannot read it as a whole (`sources.parse_file`: corrupt Parquet, a `.json`
that is not JSON, JSON lines none of which parses, a MedMCQA file whose `cop` base cannot be
told). A lost file yields no record: its records are not *read*, it is listed under the
source's `lost_files` in the manifest. Any lost file fails the stage, in one line naming the
source, the file, its size and the reason, unless `data.allow_lost_files` names its source.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from med42ray.data.sources import LOST, DataError, SourceFiles
from med42ray.data.steps import removed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LostFile:
    """One lost input file of a source."""

    source: str
    file: str  # its label, as in the manifest's `files`
    path: str  # as read (a filesystem path or an object-store key)
    bytes: int | None
    records: int | None  # when known: a JSON-lines file's lines, a Parquet footer's rows
    reason: str

    def to_manifest(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "bytes": self.bytes,
            "records": self.records,
            "reason": self.reason,
        }

    def describe(self) -> str:
        """`path (N bytes, M records): reason` on one line."""
        size = "size unknown" if self.bytes is None else f"{self.bytes:,} bytes"
        records = "records unknown" if self.records is None else f"{self.records:,} records"
        return f"{self.path} ({size}, {records}): {one_line(self.reason)}"


def one_line(text: str, limit: int = 300) -> str:
    """`text` with its whitespace runs (newlines too) collapsed, cut at `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _without_lost(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.not_equal(batch.column("drop"), LOST))


def split_lost_files(ds, srcs: Sequence[SourceFiles], unopened: Sequence[LostFile] = ()):
    """(`ds` without its lost files' marker rows, every lost file: `unopened` and those the
    reader marked), in source and file order. `ds` is returned as it is when none was marked."""
    rows = removed(ds, LOST, ["source", "source_file", "detail"]).to_pandas()
    by_name = {src.name: src for src in srcs}
    marked = []
    for source, label, detail in rows.itertuples(index=False):
        d = json.loads(detail)
        path = by_name[source].paths[by_name[source].labels.index(label)]
        marked.append(LostFile(source, label, path, d["bytes"], d["records"], d["why"]))
    order = {(s.name, p): (s.index, i) for s in srcs for i, p in enumerate(s.paths)}
    lost = sorted([*unopened, *marked], key=lambda f: order[f.source, f.path])
    return (ds.map_batches(_without_lost, batch_format="pyarrow") if marked else ds), lost


def check_lost_files(allowed: Sequence[str], lost: Sequence[LostFile], quiet: bool = False) -> None:
    """Fail in one line on the lost files of the sources not in `allowed`
    (`data.allow_lost_files`); log those tolerated unless `quiet`."""
    fatal = [f for f in lost if f.source not in allowed]
    if fatal:
        first = f"source {fatal[0].source!r}: lost file {fatal[0].describe()}"
        more = f" (and {len(fatal) - 1} more lost files)" if len(fatal) > 1 else ""
        sources = sorted({f.source for f in fatal})
        raise DataError(
            f"{first}{more}; to count lost files in the manifest instead: "
            f"data.allow_lost_files: {sources}"
        )
    for f in [] if quiet else lost:
        log.warning("source %r: lost file (allowed) %s", f.source, f.describe())


def lost_by_source(lost: Sequence[LostFile]) -> dict[str, list[LostFile]]:
    """{source: its lost files}."""
    out: dict[str, list[LostFile]] = {}
    for f in lost:
        out.setdefault(f.source, []).append(f)
    return out
