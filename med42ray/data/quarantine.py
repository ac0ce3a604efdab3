"""Quarantined input: the check right after reading, and `quarantine.jsonl`.

A record that cannot be read or adapted is kept as a `quarantined` row with its reason (see
`sources`). After reading, :func:`check_quarantine` stops the stage when a source has no
records, none readable, or more bad ones than `data.max_quarantine_rate`, naming the source,
its worst files, and a file beside the output with every bad record. The rate counts the
records read: a lost file (`lost`) has none, it is checked on its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from med42ray.config import ExperimentConfig
from med42ray.data.lost import LostFile, lost_by_source
from med42ray.data.manifest import count_marks
from med42ray.data.sources import DataError, SourceFiles
from med42ray.data.steps import removed

COLUMNS = ["source", "source_file", "row", "order", "reason", "detail"]


def quarantined(ds):
    """The quarantined rows of `ds` as a pandas frame of `COLUMNS`."""
    return removed(ds, "quarantined", COLUMNS).to_pandas()


def write_quarantine(rows, path: Path) -> int:
    """One JSON line per quarantined row (`quarantined(ds)`), in `order`; their number."""
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        if rows.empty:  # no bad input: an empty quarantine file, and no columns to sort by
            return 0
        for r in rows.sort_values("order", kind="stable").itertuples(index=False):
            entry = {
                "source": r.source,
                "file": r.source_file,
                "row": int(r.row),
                "reason": r.reason,
                "detail": r.detail,
            }
            if r.row >= 0 and r.source_file.endswith((".jsonl", ".ndjson")):
                entry["line"] = int(r.row) + 1
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            n += 1
    return n


def _no_records(src: SourceFiles, lost: Sequence[LostFile]) -> str:
    files = ", ".join(
        f"{p} ({'size unknown' if src.size(i) is None else f'{src.size(i):,} bytes'})"
        for i, p in enumerate(src.paths[:3])
    )
    more = f" and {len(src.paths) - 3} more" if len(src.paths) > 3 else ""
    gone = f" ({len(lost)} of {len(src.paths)} files lost)" if lost else ""
    return f"source {src.name!r}: no records in {files}{more}{gone}"


def _problem(
    src: SourceFiles, raw: dict[tuple[str, str], int], max_rate: float, lost: Sequence[LostFile]
) -> str | None:
    total = sum(raw.values())
    bad = sum(n for (d, _), n in raw.items() if d == "quarantined")
    if not total:
        return _no_records(src, lost)
    if bad < total and bad / total <= max_rate:
        return None
    reasons = ", ".join(f"{r}: {n}" for (d, r), n in sorted(raw.items()) if d == "quarantined")
    what = (
        "unreadable"
        if bad == total
        else f"{bad / total:.1%} of {total} records quarantined (> max_quarantine_rate {max_rate})"
    )
    where = src.paths[0] if len(src.paths) == 1 else f"{len(src.paths)} files"
    return f"source {src.name!r} ({where}): {what} [{reasons}]"


def check_quarantine(
    cfg: ExperimentConfig,
    srcs: list[SourceFiles],
    ds,
    out: Path,
    lost: Sequence[LostFile] = (),
) -> None:
    """Fail (naming the source and file) on a source without records, an unreadable source or
    too much bad input. `lost`: the (allowed) lost files, named when a source has no record."""
    read = count_marks(ds)
    rate, lost_in = cfg.data.max_quarantine_rate, lost_by_source(lost)
    problems = [
        p
        for src in srcs
        if (p := _problem(src, read.get(src.name, {}), rate, lost_in.get(src.name, [])))
    ]
    if not problems:
        return
    rows = quarantined(ds)
    if rows.empty:  # no bad record to point at (e.g. a source of blank files)
        raise DataError("; ".join(problems))
    qpath = out.parent / f"{out.name}.failed-quarantine.jsonl"
    write_quarantine(rows, qpath)
    files = rows.groupby(["source", "source_file"]).size().sort_values(ascending=False)
    worst = "; ".join(f"{s}/{f}: {n} bad" for (s, f), n in files.head(3).items())
    raise DataError("; ".join(problems) + f". Worst files: {worst}. Details: {qpath}")
