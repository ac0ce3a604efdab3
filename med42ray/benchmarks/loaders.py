"""Loading a benchmark: rows from the hub or a local file -> normalised items, in order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from med42ray.benchmarks.schemas import NORMALISERS, BenchmarkItem, RecordError
from med42ray.benchmarks.tasks import BenchmarkError, TaskSpec, load_task
from med42ray.hub import hub_token


def normalise_records(
    spec: TaskSpec, records: Iterable[Mapping[str, Any]], source: str
) -> list[BenchmarkItem]:
    """Records of `spec`'s schema -> items; a bad record raises naming source and index."""
    normalise = NORMALISERS[spec.schema_]
    items = []
    for index, rec in enumerate(records):
        try:
            item = normalise(spec.task, index, rec)
        except RecordError as err:
            raise BenchmarkError(
                f"{spec.task}: {source}: record {index}: not a {spec.schema_} record ({err})"
            ) from None
        except (KeyError, ValueError, TypeError, IndexError) as err:
            raise BenchmarkError(
                f"{spec.task}: {source}: record {index}: not a {spec.schema_} record "
                f"({type(err).__name__}: {err})"
            ) from None
        if item is not None:
            items.append(item)
    return items


def read_records(spec: TaskSpec, path: str | None, split: str) -> tuple[Iterable[dict], str]:
    """Rows from a local file (`json`/`parquet` builders) or the hub, via `datasets`."""
    import datasets

    if path:
        local = Path(path)
        if not local.exists():
            raise BenchmarkError(f"{spec.task}: {path}: no such file")
        builder = "parquet" if local.suffix == ".parquet" else "json"
        return datasets.load_dataset(builder, data_files=str(local), split="train"), str(path)
    if not spec.dataset_path:
        raise BenchmarkError(f"{spec.task}: not on the hub; give its local file as `path`")
    ds = datasets.load_dataset(spec.dataset_path, spec.dataset_name, split=split, token=hub_token())
    return ds, f"{spec.dataset_path}:{spec.dataset_name or ''}:{split}"


def load_benchmark(
    name: str, path: str | None = None, limit: int | None = None, split: str | None = None
) -> list[BenchmarkItem]:
    """The evaluation items of benchmark `name` (its test split, or a local file), in order."""
    spec = load_task(name)
    records, source = read_records(spec, path, split or spec.test_split)
    items = normalise_records(spec, records, source)
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise BenchmarkError(f"{name}: {source}: duplicate item ids {dupes}")
    return items[:limit] if limit else items
