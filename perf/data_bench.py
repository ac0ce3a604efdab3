"""Data-stage throughput against baselines measured in the same run: decontamination and
MinHash near-dedup, each implementation in a process of its own, on one generated corpus.

    bash perf/setup_bench.sh     # once: datatrove in .venv-bench (the project's .venv is untouched)
    .venv/bin/python perf/data_bench.py [--records 200000] [--items 10000] [--cpus 2] [--json PATH]

The corpus (`bench_corpus`): ~200-word instruction records with planted contaminations and
planted near-duplicates, and a MedQA-schema benchmark file loaded through `load_benchmark`.

* decontamination, the default rule (`DecontamConfig()`): ours (the pipeline's `Decontaminate`
  actor pool on Ray Data, `--cpus` CPUs) against a strong single-process baseline of the same
  rule (`decontam_baseline`: hash sets, no string joins); identical removals asserted.
* decontamination, datatrove's rule (any shared 13-gram removes a record: datatrove has no
  coverage, contiguity or frequency rule): ours configured to it against datatrove's
  `NGramsDecontFilter` (its index from the indexer's n-gram step); identical removals asserted.
* MinHash near-dedup (5-word shingles, 16 bands x 8 rows; ours verifies pairs at Jaccard 0.8,
  datatrove keeps every bucket collision): the pipeline's `NearDedup` against datatrove's
  four-stage MinHash pipeline; the same duplicate clusters asserted.

Prints records/s, the ratios and each implementation's peak memory (RSS and PSS summed over
its process and every descendant: Ray's services and workers, datatrove's pool; sampled every
0.2 s); `--json PATH` writes `{"ratios": {...}, ...}` with the raw figures. Timed spans: from
the index build (none for MinHash) to the last removal in hand; Ray's start and its warm-up
(worker processes and imports, on 2 x cpus files) are reported apart, not timed. Exit 1 when
removals or clusters differ. Without `.venv-bench` the datatrove runs are skipped (and said so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent
ROOT = PERF.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(PERF))
BENCH_VENV = ROOT / ".venv-bench"
DECONTAM_TARGET = 35_000  # records/s, 2 cores, end to end (issue 18)
MINHASH_TARGET = 10.0  # x datatrove's MinHash pipeline


class PeakMemory:
    """Samples the summed RSS and PSS of a process and all its descendants, and the CPU time
    each of them used (their last sample)."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.proc, self.every, self.psutil = psutil.Process(pid), every, psutil
        self.rss = self.pss = 0
        self.cpu: dict[int, tuple[str, float]] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        rss = pss = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except self.psutil.Error:
            return
        for p in procs:
            try:
                info = p.memory_full_info()
                times = p.cpu_times()
                self.cpu[p.pid] = (p.name(), times.user + times.system)
            except self.psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        by_name: dict[str, float] = {}
        for name, seconds in self.cpu.values():
            by_name[name] = by_name.get(name, 0.0) + seconds
        top = dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:6])
        return {
            "peak_rss_mib": self.rss / 2**20,
            "peak_pss_mib": self.pss / 2**20,
            "cpu_s": sum(by_name.values()),
            "cpu_s_by_process": {k: round(v, 2) for k, v in top.items()},
        }


def run_impl(name: str, argv: list[str], out: Path, records: int) -> dict:
    """Run one implementation's process (output to `out`.log), sampling its memory; its JSON
    plus records/s."""
    log = out.with_suffix(".log")
    t = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        mem = PeakMemory(proc.pid)
        rc = proc.wait()
    peak = mem.stop()
    if rc:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{tail}\n{name}: exited {rc} (log: {log})")
    result = json.loads(out.read_text())
    result.update(peak, process_s=time.perf_counter() - t)
    result["records_per_s"] = records / result["seconds"]
    print(
        f"  {name:<28} {result['seconds']:7.2f}s  {result['records_per_s']:>9,.0f} records/s  "
        f"peak RSS {peak['peak_rss_mib']:,.0f} MiB (PSS {peak['peak_pss_mib']:,.0f})",
        flush=True,
    )
    return result


def generate(work: Path, records: int, n_items: int) -> dict:
    """Items, corpus, datatrove's views of both; what was planted and the mean record length."""
    import bench_corpus as bc
    import pyarrow.parquet as pq

    from med42ray.benchmarks import load_benchmark

    vocab = bc.make_vocab(0)
    bc.make_items(work / "items.jsonl", n_items, vocab, seed=1)
    items = load_benchmark("medqa", path=str(work / "items.jsonl"))
    (work / "corpus").mkdir(exist_ok=True)
    planted = bc.make_corpus(work / "corpus", records, items, vocab, seed=2)
    bc.text_view(work / "corpus", work / "text")
    bc.item_docs(items, work / "item_docs.jsonl")
    texts = pq.read_table(next((work / "text").glob("*.parquet"))).column("text").to_pylist()
    planted["mean_words"] = sum(len(t.split()) for t in texts) / max(len(texts), 1)
    return planted


def expected_clusters(pairs: list[tuple[str, str]]) -> list[list[str]]:
    """The clusters the planted near-duplicate pairs make (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(b)] = find(a)
    groups: dict[str, list[str]] = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return sorted(sorted(g) for g in groups.values())


def run_all(args: argparse.Namespace, work: Path) -> dict:
    """Every implementation, in order; name -> its result."""
    ours = [sys.executable, str(PERF / "bench_ours.py")]
    dt = [str(BENCH_VENV / "bin" / "python"), str(PERF / "bench_datatrove.py")]
    common = ["--work", str(work), "--cpus", str(args.cpus), "--ngram", str(args.ngram)]
    plan = [
        ("ours_decontam", [*ours, "decontam", "--rule", "default"]),
        ("hashset_baseline", [*ours, "baseline"]),
        ("ours_decontam_any", [*ours, "decontam", "--rule", "any"]),
        ("datatrove_decont", [*dt, "decont"]),
        ("ours_minhash", [*ours, "minhash"]),
        ("datatrove_minhash", [*dt, "minhash"]),
    ]
    have_dt = (BENCH_VENV / "bin" / "python").exists() and not args.skip_datatrove
    results = {}
    for name, argv in plan:
        if args.only and name not in args.only.split(","):
            continue
        if (name.startswith("datatrove") or name == "ours_decontam_any") and not have_dt:
            print(f"  {name:<28} skipped (no {BENCH_VENV.name}: bash perf/setup_bench.sh)")
            continue
        out = work / f"{name}.json"
        results[name] = run_impl(name, [*argv, *common, "--out", str(out)], out, args.records)
    return results


def compare(results: dict, planted: dict) -> dict:
    """Identity checks between implementations (None: one of them did not run), and against
    what was planted."""

    def same(a: str, b: str, key: str) -> bool | None:
        return results[a][key] == results[b][key] if a in results and b in results else None

    out = {
        "decontam_default_rule_ours_vs_hashset_baseline": same(
            "ours_decontam", "hashset_baseline", "removed"
        ),
        "decontam_any_ngram_ours_vs_datatrove": same(
            "ours_decontam_any", "datatrove_decont", "removed"
        ),
        "minhash_clusters_ours_vs_datatrove": same("ours_minhash", "datatrove_minhash", "clusters"),
    }
    if "ours_minhash" in results and "datatrove_minhash" in results:
        counts = [len(results[k]["removed"]) for k in ("ours_minhash", "datatrove_minhash")]
        out["minhash_removed_count_ours_vs_datatrove"] = counts[0] == counts[1]
    if "ours_minhash" in results:
        expected = expected_clusters(planted["near_pairs"])
        out["minhash_clusters_match_planted"] = results["ours_minhash"]["clusters"] == expected
    if "ours_decontam" in results:
        contaminated = set(planted["contaminated"])
        found = set(results["ours_decontam"]["removed"])
        out["planted_contaminations_caught"] = f"{len(contaminated & found)}/{len(contaminated)}"
        out["removed_not_planted_default_rule"] = len(found - contaminated)
    return out


def ratio(results: dict, a: str, b: str) -> float | None:
    if a not in results or b not in results:
        return None
    return round(results[a]["records_per_s"] / results[b]["records_per_s"], 3)


def summary(args: argparse.Namespace, results: dict, planted: dict, load: tuple) -> dict:
    """The JSON report: ratios first, then raw figures (removal lists left out)."""
    ratios = {
        "ours_decontam_vs_hashset_baseline": ratio(results, "ours_decontam", "hashset_baseline"),
        "ours_decontam_any_vs_datatrove_decont": ratio(
            results, "ours_decontam_any", "datatrove_decont"
        ),
        "ours_decontam_vs_datatrove_decont": ratio(results, "ours_decontam", "datatrove_decont"),
        "ours_minhash_vs_datatrove_minhash": ratio(results, "ours_minhash", "datatrove_minhash"),
    }
    figures = {
        name: {k: v for k, v in r.items() if k not in ("removed", "clusters")}
        | {"removed": len(r["removed"])}
        | ({"clusters": len(r["clusters"])} if "clusters" in r else {})
        for name, r in results.items()
    }
    return {
        "ratios": {k: v for k, v in ratios.items() if v is not None},
        "identical": compare(results, planted),
        "targets": {
            "decontam_records_per_s": DECONTAM_TARGET,
            "decontam_met": results.get("ours_decontam", {}).get("records_per_s", 0)
            >= DECONTAM_TARGET,
            "minhash_vs_datatrove": MINHASH_TARGET,
            "minhash_met": (ratios["ours_minhash_vs_datatrove_minhash"] or 0) >= MINHASH_TARGET,
        },
        "implementations": figures,
        "corpus": {
            "records": args.records,
            "items": args.items,
            "mean_words_per_record": round(planted["mean_words"], 1),
            "planted_contaminations": len(planted["contaminated"]),
            "planted_near_duplicate_pairs": len(planted["near_pairs"]),
        },
        "cpus": args.cpus,
        "ngram": args.ngram,
        "load_average_before_after": load,
        "datatrove": (BENCH_VENV / "bin" / "python").exists() and not args.skip_datatrove,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temp folder)")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--only", help="comma-separated implementations to run (when iterating)")
    ap.add_argument("--reuse", action="store_true", help="reuse the corpus already in --work")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    work = args.work or Path(tempfile.mkdtemp(prefix="m42-data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    saved = work / "planted.json"
    if args.reuse and saved.exists():
        planted = json.loads(saved.read_text())
    else:
        planted = generate(work, args.records, args.items)
        saved.write_text(json.dumps(planted))
    print(
        f"generated {args.records:,} records ({planted['mean_words']:.0f} words on average, "
        f"{len(planted['contaminated'])} contaminated, {len(planted['near_pairs'])} near "
        f"copies), {args.items:,} items in {time.perf_counter() - t:.1f}s; {work}",
        flush=True,
    )
    load = (os.getloadavg()[0],)
    results = run_all(args, work)
    report = summary(args, results, planted, (*load, os.getloadavg()[0]))
    print(json.dumps({k: report[k] for k in ("ratios", "identical", "targets")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures: {args.json}")
    if any(v is False for k, v in report["identical"].items() if "_vs_" in k):
        sys.exit(1)


if __name__ == "__main__":
    main()
