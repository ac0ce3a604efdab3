"""Loading a benchmark: rows from the hub (or a mirror of it) or a local file or folder in any
published form (:mod:`med42ray.benchmarks.forms`) -> normalised items, in order, with their
provenance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from med42ray.benchmarks.forms import (
    Rows,
    cut_test_fold,
    first_line,
    fold_wanted,
    read_local,
    task_test_fold,
)
from med42ray.benchmarks.provenance import LoadedBenchmark, Provenance, items_sha256
from med42ray.benchmarks.schemas import NORMALISERS, BenchmarkItem, RecordError
from med42ray.benchmarks.tasks import BenchmarkError, TaskSpec, load_task
from med42ray.hub import dataset_location, hub_token


def normalise_rows(spec: TaskSpec, rows: Rows) -> tuple[list[BenchmarkItem], Counter[str]]:
    """Rows of `spec`'s schema -> items, and the drops counted by reason (the source's own,
    plus the records the normaliser leaves out: `image_question`). A bad record raises one line
    naming the task, the file, the record and the field."""
    normalise = NORMALISERS[spec.schema_]
    items, dropped = [], Counter(rows.dropped)
    for index, rec in enumerate(rows.records):
        try:
            item = normalise(spec.task, index, rec)
        except RecordError as err:
            problem = str(err)
        except (KeyError, ValueError, TypeError, IndexError) as err:
            problem = f"{type(err).__name__}: {err}"
        else:
            if item is None:
                dropped["image_question"] += 1
            else:
                items.append(item)
            continue
        where = rows.locate(index)
        raise BenchmarkError(f"{spec.task}: {where}: not a {spec.schema_} record ({problem})")
    return items, dropped


def normalise_records(
    spec: TaskSpec, records: Iterable[Mapping[str, Any]], source: str
) -> list[BenchmarkItem]:
    """Records of `spec`'s schema -> items; a bad record raises naming source and index."""
    return normalise_rows(spec, Rows(source, "records", list(records)))[0]


def read_hub(spec: TaskSpec, split: str, mirror: str | None = None) -> Rows:
    """`split` of the task's hub dataset, or of its copy under `mirror` (a folder laid out as
    the hub repository). With `test_ids`, `test_split` is the listed rows of `fewshot_split`
    and `fewshot_split` the rest."""
    import datasets

    fold = task_test_fold(spec)
    wanted = fold_wanted(spec, split) if fold else None
    hub_split = spec.fewshot_split if wanted else split
    location = dataset_location(spec.dataset_path or "", mirror)
    config = spec.dataset_name
    try:
        ds = datasets.load_dataset(location, config, split=hub_split, token=hub_token())
    except Exception as err:  # a network, a cache or a broken mirror: one line, not a traceback
        raise BenchmarkError(
            f"{spec.task}: cannot load {location} (config {config}, split {hub_split}): "
            f"{type(err).__name__}: {first_line(err)}"
        ) from None
    details = {"mirror": mirror} if mirror else {}
    rows = Rows(f"{location}:{config or ''}:{hub_split}", "hub", ds, details=details)
    if fold and wanted:
        try:
            rows = cut_test_fold(rows, fold, wanted, strict=True)
        except BenchmarkError as err:
            raise BenchmarkError(f"{spec.task}: {err}") from None
    return rows


def read_rows(spec: TaskSpec, path: str | None, split: str, mirror: str | None = None) -> Rows:
    """The canonical rows of `spec`'s `split`: from a local file or folder, else the hub."""
    if path:
        return read_local(spec, path, split)
    if not spec.dataset_path:
        raise BenchmarkError(
            f"{spec.task}: not on the hub; give its local file or folder as `path`"
        )
    return read_hub(spec, split, mirror)


def read_records(
    spec: TaskSpec, path: str | None, split: str, mirror: str | None = None
) -> tuple[Sequence[Mapping[str, Any]], str]:
    """(records for the schema's normaliser, their source) of a local file or folder, or the
    hub (or its `mirror`)."""
    rows = read_rows(spec, path, split, mirror)
    return rows.records, rows.source


def check_unique_ids(spec: TaskSpec, items: Sequence[BenchmarkItem], source: str) -> None:
    """Fail naming the first ids that more than one item carries."""
    counts = Counter(item.id for item in items)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise BenchmarkError(f"{spec.task}: {source}: duplicate item ids {dupes[:5]}")


def load_benchmark_with_provenance(
    name: str,
    path: str | None = None,
    limit: int | None = None,
    split: str | None = None,
    mirror: str | None = None,
) -> LoadedBenchmark:
    """The items of benchmark `name` (its test split from the hub or `mirror`, or a local file
    or folder in any published form), in order, with their provenance."""
    spec = load_task(name)
    rows = read_rows(spec, path, split or spec.test_split, mirror)
    items, dropped = normalise_rows(spec, rows)
    if not items:
        raise BenchmarkError(f"{name}: {rows.source}: no items ({dict(dropped) or 'empty'})")
    check_unique_ids(spec, items, rows.source)
    items = items[:limit] if limit else items
    details = {**rows.details, **({"limit": limit} if limit else {})}
    provenance = Provenance(
        task=name,
        source=rows.source,
        form=rows.form,
        items=len(items),
        dropped=dict(sorted(dropped.items())),
        sha256=items_sha256(items),
        details=details,
    )
    return LoadedBenchmark(items, provenance)


def load_benchmark(
    name: str,
    path: str | None = None,
    limit: int | None = None,
    split: str | None = None,
    mirror: str | None = None,
) -> list[BenchmarkItem]:
    """The evaluation items of benchmark `name` (its test split, or a local file), in order."""
    return load_benchmark_with_provenance(name, path, limit, split, mirror).items
