"""The mixture: a source's `weight` (a share of its records) and `max_records` (a cap).

Both draw with :func:`unit_hash` of the record id and the seed, never with random state, so
a record's fate does not depend on the parallelism. Records they remove are `sampled_out`.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from med42ray.data.steps import Decision, Removal, RemoveOrders, Step, live


def unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) for `key` (no random state)."""
    import xxhash

    return xxhash.xxh3_64_intdigest(key.encode("utf-8")) / 2.0**64


class SampleByWeight(Step):
    """Per batch: keeps a record of a source with `weight` w < 1 when its hash is below w."""

    category = "sampled_out"

    def __init__(self, weights: dict[str, float], seed: int):
        self.weights, self.seed = weights, seed

    def decide(self, batch: pa.Table, live: list[int]) -> Decision:
        sources = batch.column("source").to_pylist()
        ids = batch.column("id").to_pylist()
        out = {}
        for i in live:
            w = self.weights.get(sources[i], 1.0)
            if w < 1.0 and unit_hash(f"weight:{self.seed}:{ids[i]}") >= w:
                out[i] = Removal("weight")
        return out


def _cap_keys(batch: pa.Table, capped: set[str], seed: int) -> pa.Table:
    keep = [s in capped for s in batch.column("source").to_pylist()]
    batch = batch.filter(pa.array(keep, pa.bool_()))
    ids = batch.column("id").to_pylist()
    return pa.table(
        {
            "source": batch.column("source"),
            "order": batch.column("order"),
            "h": pa.array([unit_hash(f"cap:{seed}:{i}") for i in ids], pa.float64()),
        }
    )


class CapPerSource(RemoveOrders):
    """Keeps at most `max_records` live records of a source: those with the smallest hashes.

    The (source, order, hash) keys of the capped sources' live records go to the driver,
    which picks the records over the cap; a per-batch task then marks them."""

    category = "sampled_out"
    reason: ClassVar[str] = "max_records"

    def __init__(self, caps: dict[str, int], seed: int):
        self.caps, self.seed = caps, seed
        self.orders: dict[int, str] = {}

    def apply(self, ds):
        if not self.caps:
            return ds
        keys = live(ds).map_batches(
            _cap_keys,
            batch_format="pyarrow",
            fn_kwargs={"capped": set(self.caps), "seed": self.seed},
        )
        keys = keys.to_pandas().sort_values(["source", "h", "order"], kind="stable")
        over = keys.groupby("source", sort=False).cumcount() >= keys["source"].map(self.caps)
        self.orders = {int(o): "" for o in keys.loc[over, "order"]}
        return super().apply(ds)
