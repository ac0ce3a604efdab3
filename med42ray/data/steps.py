"""The step type: a decision about live rows, and one marking loop that records it.

Shaped like datatrove's `BaseFilter`: a :class:`Step` computes only its decision, which live
rows (`drop == ""`) it removes and why (:class:`Removal`: reason, detail), and
:func:`mark` writes that decision into the batch (`drop` = the step's category, `reason`,
`detail`). Removed rows are marked, never dropped, so the manifest can account for each one.

A step's `apply(ds)` runs it on the Ray Dataset. By default that is a per-batch task
(`map_batches(step)`); a step that needs a global view first runs a groupby and brings the
(small) result to the driver, and decontamination runs as tasks on whole blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MARK_COLUMNS = ("drop", "reason", "detail")


class Removal(NamedTuple):
    """Why a step removes a row: a short reason (counted) and a detail (reported)."""

    reason: str
    detail: str = ""


Decision = Mapping[int, Removal]
"""Row index within the batch -> its removal; rows not in it are kept."""


def live_rows(batch: pa.Table) -> list[int]:
    """Indices of the rows not removed so far."""
    kept = pc.equal(batch.column("drop"), "").to_numpy(zero_copy_only=False)
    return np.flatnonzero(kept).tolist()


def mark(batch: pa.Table, category: str, removed: Decision) -> pa.Table:
    """The marking loop: set `drop`/`reason`/`detail` of the `removed` rows."""
    if not removed:
        return batch
    drop, reason, detail = (batch.column(name).to_pylist() for name in MARK_COLUMNS)
    for i, why in removed.items():
        drop[i], reason[i], detail[i] = category, why.reason, why.detail
    for name, values in zip(MARK_COLUMNS, (drop, reason, detail), strict=True):
        batch = batch.set_column(
            batch.schema.get_field_index(name), name, pa.array(values, pa.string())
        )
    return batch


class Step:
    """One removal step: `decide` which live rows go; `__call__` marks them in a batch."""

    category: ClassVar[str]
    """The `drop` value of the rows this step removes (a manifest category)."""

    def decide(self, batch: pa.Table, live: list[int]) -> Decision:
        """The rows among `live` (indices into `batch`) that this step removes."""
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        live = live_rows(batch)
        return mark(batch, self.category, self.decide(batch, live) if live else {})

    def apply(self, ds):
        """`ds` with this step's removals marked; by default a per-batch task (lazy)."""
        return ds.map_batches(self, batch_format="pyarrow")


class RemoveOrders(Step):
    """A step whose decision is made in the driver: `orders` maps the `order` of each row to
    remove to its detail."""

    reason: ClassVar[str]
    orders: dict[int, str]

    def decide(self, batch: pa.Table, live: list[int]) -> Decision:
        order = batch.column("order").to_pylist()
        return {
            i: Removal(self.reason, self.orders[order[i]]) for i in live if order[i] in self.orders
        }


# --------------------------------------------------------------------------- dataset views
def _only_live(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch.column("drop"), ""))


def live(ds):
    """The records not removed so far (lazy)."""
    return ds.map_batches(_only_live, batch_format="pyarrow")


def removed(ds, category: str, columns: list[str]):
    """The `columns` of the records removed as `category` (lazy)."""

    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.equal(batch.column("drop"), category)).select(columns)

    return ds.map_batches(keep, batch_format="pyarrow")


def sort_shuffled(ds):
    """`ds`, set to group and sort with Ray Data's pull-based sort shuffle: plain tasks, no
    aggregator actors to start. A Dataset keeps the `DataContext` it was created under, so the
    strategy is set on the dataset itself; Ray 2.60's default (`SHUFFLE_V2`) spends about 10 s
    on every small groupby or sort, against 0.2 s for this one."""
    from ray.data.context import ShuffleStrategy

    ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return ds


def shuffle_partitions() -> int:
    """A few partitions per CPU (Ray's default is 200)."""
    import ray

    return max(2, min(64, 2 * int(ray.cluster_resources().get("CPU", 1))))
