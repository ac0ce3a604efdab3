"""Training data: chat-schema JSONL/Parquet read with Ray Data, tokenised and packed per worker.

The driver opens the files as a Ray Data dataset (only the `messages` column). Every worker
streams it through `ray.train.get_dataset_shard(name)` in file order; row `i` is in data shard
`i % shards` (`train.data_shards`, default one per worker) and a worker keeps the rows of its
shards (`owned_shards`), so the split is the same on every run, which is what makes the data
order reproducible and a resumed run see exactly the batches it would have seen. Each shard's
rows are tokenised (assistant-only labels), packed, and served per epoch in a seeded shuffle
(`ShardedSchedule`); resuming at step `s` skips the rows of the first `s` steps of the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import numpy as np

from med42ray.train.packing import PackStats, Row, build_rows
from med42ray.train.tokenize import Sample, tokenize_chat

SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def chat_files(path: str | Path) -> tuple[list[str], str]:
    """The files behind `path` (a file, a folder of them, or a URI of either) and their format."""
    text = str(path)
    if "://" in text:
        return _remote_chat_files(text)
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_data(p.name))
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such training data file or folder")
    return [str(p.resolve()) for p in files], _one_format(text, [p.suffix for p in files])


def _remote_chat_files(uri: str) -> tuple[list[str], str]:
    """A URI naming one file (its format from its suffix; parquet without one), or a folder
    (object-store prefix) whose `.parquet`/`.jsonl`/`.json` files are listed, sorted."""
    from med42ray import storage

    suffix = Path(uri.split("://", 1)[1]).suffix
    one_file = [uri], SUFFIXES.get(suffix, "parquet" if not suffix else "json")
    try:
        if storage.is_file(uri):
            return one_file
        listing = storage.list_files(uri)
    except ValueError:  # a scheme pyarrow has no filesystem for: left to Ray Data
        return one_file
    if not listing:
        raise FileNotFoundError(f"{uri}: no such training data file or folder")
    names = sorted(rel for rel in listing if _is_data(rel.rsplit("/", 1)[-1]))
    files = [storage.join(uri, rel) for rel in names]
    return files, _one_format(uri, [Path(rel).suffix for rel in names])


def _is_data(name: str) -> bool:
    """A data file by its name: a known suffix, not hidden or a marker (`.x`, `_SUCCESS`)."""
    return Path(name).suffix in SUFFIXES and not name.startswith((".", "_"))


def _one_format(where: str, suffixes: list[str]) -> str:
    formats = {SUFFIXES.get(s) for s in suffixes}
    if not suffixes or None in formats or len(formats) > 1:
        raise ValueError(f"{where}: expected .jsonl/.json or .parquet files (one format)")
    return formats.pop()


IN_DRIVER_MAX_BYTES = 64 * 2**20
"""Training files up to this size in all (local or in object storage) are read by the driver
with pyarrow, not by Ray Data tasks."""


def small_files(files: list[str]) -> bool:
    """Whether `files` (local paths or URIs) hold at most `IN_DRIVER_MAX_BYTES` in all."""
    from med42ray import storage

    total = 0
    for file in files:
        fs, inner = storage.filesystem(file)
        total += fs.get_file_info(inner).size or 0
        if total > IN_DRIVER_MAX_BYTES:
            return False
    return True


def read_chat_dataset(path: str | Path, in_driver: bool = False):
    """A Ray Data dataset of the `messages` column of the chat files at `path`.

    Small files (`small_files`, local or in object storage) are read now, in the driver, with
    pyarrow: read tasks cost more to start than to run, and on a cluster whose CPUs the
    training workers (or a sweep's trials) hold they wait for the autoscaler (75-115 s per
    trial in the rehearsal's sweep, for 2 small shards). Other files are read lazily by Ray
    Data tasks, streamed to the workers, unless `in_driver` (a cluster with no CPU left beside
    the workers, where read tasks could not run later): then they are read now, by Ray Data,
    materialised.
    """
    import ray.data

    files, fmt = chat_files(path)
    small = small_files(files)
    in_driver = in_driver or small
    if small:
        ds = ray.data.from_arrow(_read_messages(files, fmt))
    elif fmt == "parquet":
        ds = ray.data.read_parquet(files, columns=["messages"])
    else:
        ds = ray.data.read_json(files, lines=True).select_columns(["messages"])
    ds.context.enable_progress_bars = False
    ds.context.execution_options.preserve_order = True  # the worker split relies on file order
    return ds.materialize() if in_driver else ds


def _read_messages(files: list[str], fmt: str):
    """The `messages` column of chat files (paths or URIs), in file order, as one table."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from med42ray import storage

    def one(file: str) -> pa.Table:
        fs, inner = storage.filesystem(file)
        if fmt == "parquet":
            return pq.read_table(inner, columns=["messages"], filesystem=fs)
        with fs.open_input_stream(inner) as stream:
            table = pj.read_json(stream)
        if "messages" not in table.column_names:
            raise ValueError(f"{file}: no `messages` field: expected chat-schema records")
        return table.select(["messages"])

    return pa.concat_tables([one(f) for f in files], promote_options="permissive")


def owned_shards(rank: int, world: int, num_shards: int) -> list[int]:
    """The data shards worker `rank` of `world` trains on: `rank`, `rank + world`, ..."""
    if num_shards % world:
        raise ValueError(f"{num_shards} data shards cannot be split over {world} workers")
    return list(range(rank, num_shards, world))


def shard_samples(
    name: str, tokenizer, max_seq_len: int, shards: list[int], num_shards: int
) -> dict[int, list[Sample]]:
    """This worker's rows of dataset `name`, tokenised, by shard: row `i` is in shard
    `i % num_shards`; only the rows of `shards` are tokenised."""
    import ray.train

    mine: dict[int, list[Sample]] = {shard: [] for shard in shards}
    iterator = ray.train.get_dataset_shard(name)
    if iterator is None:
        return mine
    for index, row in enumerate(iterator.iter_rows()):
        shard = mine.get(index % num_shards)
        if shard is not None:
            shard.append(tokenize_chat(tokenizer, row["messages"], max_seq_len))
    return mine


class RowSchedule:
    """Rows of one worker, served per epoch in a seeded order, resumable at any step."""

    def __init__(self, rows: list[Row], stats: PackStats, rows_per_step: int, seed: int):
        self.rows = rows
        self.stats = stats
        self.rows_per_step = rows_per_step
        self.seed = seed
        self.steps_per_epoch = len(rows) // rows_per_step

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def steps(self, start: int, steps_per_epoch: int) -> Iterator[tuple[int, list[Row]]]:
        """(step, rows of that step) from global step `start` on, forever (epochs repeat)."""
        step = start
        while True:
            epoch, offset = divmod(step, steps_per_epoch)
            order = self.epoch_order(epoch)
            for k in range(offset, steps_per_epoch):
                picked = order[k * self.rows_per_step : (k + 1) * self.rows_per_step]
                yield step, [self.rows[i] for i in picked]
                step += 1


class ShardedSchedule:
    """A worker's data shards, each packed on its own and served by its own `RowSchedule`; a
    step is each shard's rows of that step, in shard order.

    Why fixed shards: with one shard per worker, the packed rows and their order depend on
    the number of workers, so full fine-tuning on 16 GPUs and LoRA on 8 would see different
    batches. With `train.data_shards` fixed and the same rows per step over all workers, every
    step holds the same rows whatever the worker count; the loss, normalised by the step's
    label tokens over all workers, then does not depend on how they are grouped."""

    def __init__(self, schedules: list[RowSchedule]):
        self.schedules = schedules
        self.rows = [row for s in schedules for row in s.rows]
        self.stats = PackStats(
            **{f.name: sum(getattr(s.stats, f.name) for s in schedules) for f in fields(PackStats)}
        )
        self.steps_per_epoch = min(s.steps_per_epoch for s in schedules)

    def steps(self, start: int, steps_per_epoch: int) -> Iterator[tuple[int, list[Row]]]:
        """(step, rows of that step) from global step `start` on, forever (epochs repeat)."""
        streams = [s.steps(start, steps_per_epoch) for s in self.schedules]
        while True:
            parts = [next(stream) for stream in streams]
            yield parts[0][0], [row for _, rows in parts for row in rows]


def build_schedule(
    by_shard: dict[int, list[Sample]],
    max_seq_len: int,
    pad_id: int,
    packing: bool,
    rows_per_shard: int,
    seed: int,
) -> ShardedSchedule:
    """Pack each shard's samples and serve `rows_per_shard` rows of each a step."""
    schedules = []
    for shard in sorted(by_shard):
        rows, stats = build_rows(by_shard[shard], max_seq_len, pad_id, packing)
        schedules.append(RowSchedule(rows, stats, rows_per_shard, seed))
    return ShardedSchedule(schedules)
