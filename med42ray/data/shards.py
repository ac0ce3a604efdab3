"""The kept records as Parquet shards: `train/part-00000.parquet`, ... and `eval/...`.

A kept record goes to `eval` (once) when the hash of its id falls below `eval_fraction`, else
to `train` once per epoch of its source; the `@<epoch>` suffix keeps repeated ids unique.
Rows are written in (epoch, `order`) order, `rows_per_shard` to a file, so the shards are
byte-identical whatever the parallelism. The stage writes into a temp folder beside its
output, which replaces the output only when complete (`med42ray.stages.atomic_dir`).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from med42ray.config import DataConfig
from med42ray.data.sampling import unit_hash
from med42ray.data.sources import MESSAGE_TYPE
from med42ray.data.steps import live, sort_shuffled

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("messages", MESSAGE_TYPE),
        ("source_file", pa.string()),
        ("row", pa.int64()),
        ("epoch", pa.int32()),
    ]
)


class ShardWriter:
    """Writes rows in arrival order into `part-00000.parquet`, ... of `rows_per_shard` rows."""

    def __init__(self, folder: Path, rows_per_shard: int):
        self.folder, self.rows_per_shard = folder, rows_per_shard
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.shards: list[dict[str, Any]] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, table: pa.Table) -> None:
        while table.num_rows:
            take = min(table.num_rows, self.rows_per_shard - self.n_pending)
            self.pending.append(table.slice(0, take))
            self.n_pending += take
            table = table.slice(take)
            if self.n_pending == self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self.n_pending:
            return
        path = self.folder / f"part-{len(self.shards):05d}.parquet"
        table = pa.concat_tables(self.pending).cast(OUTPUT_SCHEMA)
        pq.write_table(table, path, compression="zstd", write_statistics=False)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.shards.append(
            {"path": f"{self.folder.name}/{path.name}", "rows": table.num_rows, "sha256": digest}
        )
        self.pending, self.n_pending = [], 0

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        return self.shards


def _output_rows(batch: pa.Table, epoch: int) -> pa.Table:
    ids = batch.column("id")
    if epoch:
        ids = pc.binary_join_element_wise(ids, pa.scalar(f"@{epoch}"), "")
    return pa.table(
        {
            "id": ids,
            "source": batch.column("source"),
            "messages": batch.column("messages"),
            "source_file": batch.column("source_file"),
            "row": batch.column("row"),
            "epoch": pa.array([epoch] * batch.num_rows, pa.int32()),
        }
    )


def held_out(batch: pa.Table, fraction: float, seed: int) -> pa.Array:
    """Per row, whether its record goes to `eval` (the hash of its id below `fraction`)."""
    ids = batch.column("id").to_pylist()
    flag = [fraction > 0 and unit_hash(f"eval:{seed}:{i}") < fraction for i in ids]
    return pa.array(flag, pa.bool_())


def _split(batch: pa.Table, fraction: float, seed: int) -> pa.Table:
    return batch.append_column("is_eval", held_out(batch, fraction, seed))


def write_shards(
    ds, folder: Path, dcfg: DataConfig, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, int]]]:
    """Write the live records of `ds` as shards under `folder`.

    Returns the manifest's `outputs` ({"train": [...], "eval": [...]}, each shard's path, rows
    and sha256) and, per source, the records written: `train` and `eval` (once each) and
    `train_rows` (with the epochs)."""
    kept = live(ds).map_batches(
        _split, batch_format="pyarrow", fn_kwargs={"fraction": dcfg.eval_fraction, "seed": seed}
    )
    kept = sort_shuffled(kept).sort("order").materialize()
    epochs = {s.name: s.epochs for s in dcfg.sources}
    train = ShardWriter(folder / "train", dcfg.rows_per_shard)
    held = ShardWriter(folder / "eval", dcfg.rows_per_shard)
    written = {s.name: {"train": 0, "eval": 0, "train_rows": 0} for s in dcfg.sources}
    for epoch in range(max(epochs.values())):
        for batch in kept.iter_batches(batch_format="pyarrow", batch_size=4096):
            is_eval = batch.column("is_eval")
            if epoch == 0:
                ev = batch.filter(is_eval)
                held.add(_output_rows(ev, 0))
                for s in ev.column("source").to_pylist():
                    written[s]["eval"] += 1
            tr = batch.filter(pc.invert(is_eval))
            ok = [epochs[s] > epoch for s in tr.column("source").to_pylist()]
            tr = tr.filter(pa.array(ok, pa.bool_()))
            train.add(_output_rows(tr, epoch))
            for s in tr.column("source").to_pylist():
                written[s]["train_rows"] += 1
                written[s]["train"] += epoch == 0
    outputs = {"train": train.close(), "eval": held.close()}
    if not outputs["eval"]:
        shutil.rmtree(folder / "eval", ignore_errors=True)
    return outputs, written
