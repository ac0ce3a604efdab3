"""datatrove's side of `perf/data_bench.py`, run by `.venv-bench/bin/python` (perf/setup_bench.sh)
in a process of its own; writes its figures and removals as JSON. Imports no project code.

    .venv-bench/bin/python perf/bench_datatrove.py decont  --work DIR --out R.json [--cpus 2]
    .venv-bench/bin/python perf/bench_datatrove.py minhash --work DIR --out R.json [--cpus 2]

`decont`: datatrove's n-gram decontamination. `NGramsDecontIndexer.run` loads its items through
lighteval's task registry; the bench has its own items, so it runs the indexer's n-gram step
directly (`compute_hashes(label, query)` per item, stem as query, options and gold answer as
labels, query and overlap n-grams on: every n-gram of stem + options and of stem + gold, as our
index) and writes the index file as `run` does; the filter is the unchanged
`NGramsDecontFilter` in a `LocalPipelineExecutor` (one task per corpus file, `--cpus` workers).
`minhash`: datatrove's four-stage MinHash pipeline (`MinhashDedupSignature`, `Buckets`,
`Cluster`, `Filter`) with our n-gram size and bands x rows. Both read `work/text/*.parquet`
(the records' joined text) and time from the index build (or stage 1) to the last stage's end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq


def executor(pipeline: list, tasks: int, workers: int, logs: Path) -> Any:
    from datatrove.executor import LocalPipelineExecutor

    return LocalPipelineExecutor(
        pipeline=pipeline,
        tasks=tasks,
        workers=workers,
        logging_dir=str(logs),
        skip_completed=False,  # never reuse a previous run's outputs
    )


def fresh(folder: Path) -> Path:
    """`folder`, emptied: outputs of an earlier run must not be read as this run's."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def excluded_ids(folder: Path) -> list[str]:
    """The ids of the documents a step's `exclusion_writer` wrote (gzipped JSONL)."""
    out = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as fh:
            out += [json.loads(line)["id"] for line in fh]
    return sorted(out)


def build_decont_index(items: Path, folder: Path, config: Any) -> int:
    """`NGramsDecontIndexer`'s n-gram step on our items; the index file as `run` writes it."""
    from datatrove.pipeline.decont import NGramsDecontIndexer

    # `__new__` refuses the step without lighteval, which only `run` uses (its task loader)
    indexer = object.__new__(NGramsDecontIndexer)
    indexer.__init__(output_folder=str(folder), config=config)
    hashes: set[int] = set()
    for line in items.read_text().splitlines():
        doc = json.loads(line)
        for label in doc["labels"]:
            hashes.update(indexer.compute_hashes(label, doc["query"]))
    folder.mkdir(parents=True, exist_ok=True)
    np.array(sorted(hashes), dtype=np.uint64).tofile(folder / "bench.index.hashes")
    return len(hashes)


def decont(args: argparse.Namespace) -> dict:
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter

    out, files = (
        fresh(args.work / "datatrove-decont"),
        sorted((args.work / "text").glob("*.parquet")),
    )
    config = NGramsDecontConfig(n_grams=args.ngram, find_query_ngrams=True)
    t = time.perf_counter()
    size = build_decont_index(args.work / "item_docs.jsonl", out / "index", config)
    pipeline = [
        ParquetReader(str(args.work / "text")),
        NGramsDecontFilter(
            str(out / "index"), config=config, exclusion_writer=JsonlWriter(str(out / "removed"))
        ),
    ]
    executor(pipeline, len(files), args.cpus, out / "logs").run()
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "index_ngrams": size, "removed": excluded_ids(out / "removed")}


def read_pairs(folder: Path, suffix: str) -> dict[int, list[tuple[int, ...]]]:
    """Per task (file) rank, the uint32 tuples of its `{rank:06d}{suffix}` files."""
    out = {}
    for path in sorted(folder.glob(f"*{suffix}")):
        data = np.fromfile(path, dtype="<u4")
        width = 2 if suffix == ".clusters" else 1
        out[int(path.name.split(".")[0])] = [tuple(r) for r in data.reshape(-1, width).tolist()]
    return out


def minhash(args: argparse.Namespace) -> dict:
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    out, text = fresh(args.work / "datatrove-minhash"), args.work / "text"
    files = sorted(text.glob("*.parquet"))
    config = MinhashConfig(
        n_grams=args.shingle,
        num_buckets=args.bands,
        hashes_per_bucket=args.num_perm // args.bands,
        hash_config=HashConfig(precision=64),
    )
    stages = [
        ([ParquetReader(str(text)), MinhashDedupSignature(str(out / "sigs"), config)], len(files)),
        ([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=config)], args.bands),
        ([MinhashDedupCluster(str(out / "buckets"), str(out / "ids"), config, True)], 1),
        (
            [
                ParquetReader(str(text)),
                MinhashDedupFilter(str(out / "ids"), exclusion_writer=JsonlWriter(str(out / "rm"))),
            ],
            len(files),
        ),
    ]
    t = time.perf_counter()
    for k, (pipeline, tasks) in enumerate(stages):
        executor(pipeline, tasks, min(args.cpus, tasks), out / f"logs{k}").run()
    seconds = time.perf_counter() - t
    ids = [pq.read_table(p, columns=["id"]).column("id").to_pylist() for p in files]
    clusters: dict[int, list[str]] = {}
    for rank, rows in read_pairs(out / "ids", ".clusters").items():
        for doc, cluster in rows:
            clusters.setdefault(cluster, []).append(ids[rank][doc])
    pairs = sum(
        (out / "buckets").joinpath(p.name).stat().st_size // struct.calcsize("<4I")
        for p in (out / "buckets").glob("*.dups")
    )
    return {
        "seconds": seconds,
        "removed": excluded_ids(out / "rm"),
        "clusters": sorted(sorted(c) for c in clusters.values()),
        "stats": {"bucket_pairs": pairs},
        "config": {
            "n_grams": config.n_grams,
            "num_buckets": config.num_buckets,
            "hashes_per_bucket": config.hashes_per_bucket,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["decont", "minhash"])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--shingle", type=int, default=5)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--bands", type=int, default=16)
    args = ap.parse_args()
    result = {"decont": decont, "minhash": minhash}[args.mode](args)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
