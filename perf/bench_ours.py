"""One implementation of `perf/data_bench.py`, run in a process of its own (so that its peak
memory is its own), in the project's venv; writes its figures and removals as JSON.

    python perf/bench_ours.py decontam --work DIR --out R.json [--rule default|any] [--cpus 2]
    python perf/bench_ours.py baseline --work DIR --out R.json
    python perf/bench_ours.py minhash  --work DIR --out R.json [--cpus 2]

`decontam`: the pipeline's `Decontaminate` step on Ray Data (tasks, the index through the
object store); `minhash`: the pipeline's `NearDedup` step (`find_near_duplicates`). Both read
the corpus files inside Ray Data tasks (one file each), and only the removed rows reach the
driver. The timed span is the index build (none for MinHash) plus the Ray Data run to the last
removed row in the driver; Ray's start and a warm-up run on 2 x cpus files (worker processes and
imports) are not in it and are reported apart. `baseline`: `decontam_baseline` in this one
process, no Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from med42ray.config import DecontamConfig, NearDedupConfig

if TYPE_CHECKING:
    from ray.data import Dataset

ANY_NGRAM = DecontamConfig(min_coverage=0.0, min_contiguous_words=0, max_item_frequency=0)
"""datatrove's rule: any shared n-gram of an item removes a record."""
SEED = 1


def tree_cpu() -> dict[str, float]:
    """CPU seconds used so far by this process and its descendants, per process name."""
    import psutil

    me = psutil.Process()
    out: dict[str, float] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            times, name = p.cpu_times(), p.name()
        except psutil.Error:
            continue
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


def tree_memory_mib() -> dict[str, float]:
    """RSS and PSS (MiB) of this process and its descendants now."""
    import psutil

    me, rss, pss = psutil.Process(), 0, 0
    for p in [me, *me.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
    return {"rss_before_timed_mib": rss / 2**20, "pss_before_timed_mib": pss / 2**20}


class Timed:
    """Wall and CPU seconds (this process tree, per process name) of a `with` block, and the
    tree's memory as it starts (Ray's services and warm workers, the inputs)."""

    def __enter__(self) -> Timed:
        self.memory = tree_memory_mib()
        self.cpu, self.t = tree_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t
        after = tree_cpu()
        used = {k: v - self.cpu.get(k, 0.0) for k, v in after.items()}
        self.cpu_s = sum(used.values())
        top = sorted(used.items(), key=lambda kv: -kv[1])[:5]
        self.cpu_by_process = {k: round(v, 2) for k, v in top if v > 0.005}

    def figures(self) -> dict:
        return {
            "seconds": self.seconds,
            "timed_cpu_s": self.cpu_s,
            "timed_cpu_s_by_process": self.cpu_by_process,
            **self.memory,
        }


def rule(name: str, ngram: int) -> DecontamConfig:
    """The default rule (`DecontamConfig()`), or datatrove's any-shared-n-gram rule."""
    base = DecontamConfig() if name == "default" else ANY_NGRAM
    return base.model_copy(update={"ngram": ngram})


def load_items(work: Path) -> list:
    from med42ray.benchmarks import load_benchmark

    return load_benchmark("medqa", path=str(work / "items.jsonl"))


def corpus_files(work: Path) -> list[str]:
    return sorted(str(p) for p in (work / "corpus").glob("*.parquet"))


def start_ray(cpus: int) -> float:
    """Start a local Ray of `cpus` CPUs; the seconds it took."""
    import ray

    from med42ray.cluster import init_ray

    t = time.perf_counter()
    init_ray(num_cpus=cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - t


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """A corpus file, read on this thread: Arrow's reader threads cost 4x on 2 busy cores."""
    return pq.read_table(path, columns=columns, use_threads=False)


def _read_files(batch: pa.Table) -> pa.Table:
    return pa.concat_tables([read_table(p) for p in batch.column("path").to_pylist()])


def tasks(cpus: int) -> dict:
    """map_batches options: tasks, at most `cpus` at once (the step's own strategy, so that
    Ray Data fuses reading, the step and the selection of removed rows into one task)."""
    import ray

    return {"batch_format": "pyarrow", "compute": ray.data.TaskPoolStrategy(size=cpus)}


def read_ds(files: list[str], cpus: int) -> Dataset:
    """The corpus as a lazy Ray Dataset: one read per file inside Ray Data's tasks, so reading
    streams into the next step (`from_arrow_refs` would wait for every file; Ray 2.60's
    `read_parquet` spends ~3 s listing them)."""
    import ray

    paths = ray.data.from_items([{"path": f} for f in files])
    return paths.map_batches(_read_files, batch_size=1, **tasks(cpus))


def removed_rows(ds: Dataset, category: str, columns: list[str], cpus: int) -> pa.Table:
    """The `columns` of the rows of `ds` marked `category` (the rest is dropped in the tasks,
    as the pipeline's report does), gathered in the driver."""

    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.equal(batch.column("drop"), category)).select(columns)

    out = ds.map_batches(keep, **tasks(cpus))
    parts = list(out.iter_batches(batch_format="pyarrow"))
    print(out.stats(), flush=True)  # to the implementation's log
    return pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns})


def run_decontam(files: list[str], items: list, dc: DecontamConfig, cpus: int) -> tuple:
    """Index + `Decontaminate.apply` + the removed rows: (removed ids, index size, seconds
    to build the index)."""
    from med42ray.data.decontam import Decontaminate, build_index_from_items

    t = time.perf_counter()
    index = build_index_from_items(items, dc)
    index_s = time.perf_counter() - t
    ds = Decontaminate(index, concurrency=cpus).apply(read_ds(files, cpus))
    rows = removed_rows(ds, "decontaminated", ["id"], cpus)
    return rows.column("id").to_pylist(), index.size, index_s


def decontam(args: argparse.Namespace) -> dict:
    items, files = load_items(args.work), corpus_files(args.work)
    dc = rule(args.rule, args.ngram)
    ray_start = start_ray(args.cpus)
    t = time.perf_counter()
    run_decontam(files[: 2 * args.cpus], items, dc, args.cpus)  # every worker warm
    warmup = time.perf_counter() - t
    with Timed() as timed:
        removed, size, index_s = run_decontam(files, items, dc, args.cpus)
    return {
        **timed.figures(),
        "index_s": index_s,
        "ray_start_s": ray_start,
        "warmup_s": warmup,
        "index_ngrams": size,
        "removed": sorted(removed),
    }


def baseline(args: argparse.Namespace) -> dict:
    import decontam_baseline as hs

    from med42ray.data.decontam import joined_contents

    items, files = load_items(args.work), corpus_files(args.work)
    t = time.perf_counter()
    index = hs.build(items, rule("default", args.ngram))
    removed = []
    for path in files:
        table = read_table(path, columns=["id", "messages"])
        texts = joined_contents(table.column("messages").combine_chunks()).to_pylist()
        ids = table.column("id").to_pylist()
        hits = (hs.contaminated(index, text) for text in texts)
        removed += [rid for rid, hit in zip(ids, hits, strict=True) if hit]
    return {"seconds": time.perf_counter() - t, "removed": sorted(removed)}


def run_minhash(files: list[str], cfg: NearDedupConfig, cpus: int) -> tuple[pa.Table, dict]:
    """`NearDedup.apply` + the removed rows: (their `order` and detail, the step's stats)."""
    from med42ray.data.dedup import NearDedup

    step = NearDedup(cfg, SEED, ids=str)  # details name the kept record's `order`
    ds = step.apply(read_ds(files, cpus))
    rows = removed_rows(ds, "near_deduplicated", ["order", "detail"], cpus)
    return rows, step.stats


def minhash(args: argparse.Namespace) -> dict:
    files = corpus_files(args.work)
    cfg = NearDedupConfig()
    ray_start = start_ray(args.cpus)
    t = time.perf_counter()
    run_minhash(files[: 2 * args.cpus], cfg, args.cpus)
    warmup = time.perf_counter() - t
    with Timed() as timed:
        rows, stats = run_minhash(files, cfg, args.cpus)
    details = rows.column("detail").to_pylist()
    kept = [int(d.split("near-duplicate of ")[1].split(" ")[0]) for d in details]
    ids = {}
    for path in files:
        table = read_table(path, columns=["id", "order"]).to_pydict()
        ids.update(zip(table["order"], table["id"], strict=True))
    clusters: dict[str, list[str]] = {}
    for order, root in zip(rows.column("order").to_pylist(), kept, strict=True):
        clusters.setdefault(ids[root], [ids[root]]).append(ids[order])
    return {
        **timed.figures(),
        "ray_start_s": ray_start,
        "warmup_s": warmup,
        "removed": sorted(ids[o] for o in rows.column("order").to_pylist()),
        "clusters": sorted(sorted(c) for c in clusters.values()),
        "stats": {k: v for k, v in stats.items() if k != "enabled"},
        "config": cfg.model_dump(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["decontam", "baseline", "minhash"])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--rule", choices=["default", "any"], default="default")
    args = ap.parse_args()
    result = {"decontam": decontam, "baseline": baseline, "minhash": minhash}[args.mode](args)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
