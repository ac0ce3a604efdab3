"""Which benchmark items the training data still overlaps after decontamination.

GPT-3's contamination analysis: an item is *clean* when no training record kept (written to
`train/`, not the held-out `eval/` split) shares a single non-frequent n-gram with it, nor
matches it whole. `Decontaminate` adds to each record it keeps the index rows of the items it
touches (`decontam.TOUCHED`, from the same lookup as the removal decision); this module folds
them, per block, into `overlap.json`:

    {"enabled": true, "ngram": 13,
     "benchmarks": {"medqa": {"items": 1273, "touched": 3, "touched_ids": ["id", ...]}, ...}}

Evaluation reads it to score every benchmark on its clean subset too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from med42ray.config import DataConfig
from med42ray.data.decontam import TOUCHED, DecontamIndex
from med42ray.data.shards import held_out

OVERLAP_FILE = "overlap.json"


def _touched_in_block(batch: pa.Table, fraction: float, seed: int) -> pa.Table:
    """The distinct items touched by the block's kept training records."""
    kept = batch.filter(pc.equal(batch.column("drop"), ""))
    train = kept.filter(pc.invert(held_out(kept, fraction, seed)))
    items = pc.list_flatten(train.column(TOUCHED)).to_numpy(zero_copy_only=False)
    return pa.table({"item": pa.array(np.unique(items).astype(np.int32), pa.int32())})


def touched_by_training(ds, dcfg: DataConfig, seed: int) -> np.ndarray:
    """Index rows of the items touched by the kept training records of the marked `ds`."""
    found = ds.map_batches(
        _touched_in_block,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"fraction": dcfg.eval_fraction, "seed": seed},
    ).to_pandas()
    return np.unique(found["item"].to_numpy(np.int64)) if len(found) else np.zeros(0, np.int64)


def overlap_by_benchmark(index: DecontamIndex, touched: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per benchmark: items indexed, items touched and their ids (in index order)."""
    out: dict[str, dict[str, Any]] = {
        task: {"items": n, "touched": 0, "touched_ids": []} for task, n in index.per_task.items()
    }
    for row in np.sort(touched).tolist():
        entry = out[index.tasks[row]]
        entry["touched"] += 1
        entry["touched_ids"].append(index.item_ids[row])
    return out


def write_overlap(ds, index: DecontamIndex | None, dcfg: DataConfig, seed: int, out: Path) -> dict:
    """`overlap.json` in `out`; the manifest's `decontamination.overlap` (per benchmark:
    items, touched). Without an index (decontamination off) nothing is known: not enabled."""
    benchmarks = {}
    if index is not None:
        benchmarks = overlap_by_benchmark(index, touched_by_training(ds, dcfg, seed))
    record = {"enabled": index is not None, "ngram": index.n if index else None}
    record["benchmarks"] = benchmarks
    (out / OVERLAP_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {b: {"items": v["items"], "touched": v["touched"]} for b, v in benchmarks.items()}


def read_overlap(path: Path | None) -> dict[str, set[str]] | None:
    """{benchmark: ids of the items with any overlap} from `overlap.json`; None when there is
    no file or it was written without decontamination (every item then counts as clean)."""
    if path is None or not Path(path).is_file():
        return None
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    if not record.get("enabled"):
        return None
    return {b: set(map(str, v["touched_ids"])) for b, v in record["benchmarks"].items()}
