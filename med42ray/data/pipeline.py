"""The data stage: `prepare_data(cfg, out)` — read, adapt, sample, filter, dedup, decontaminate.

Every record travels through the stages as one row of `sources.RECORD_SCHEMA`; a stage that
removes a record marks it (`drop` = category, `reason`, `detail`) instead of dropping it, so the
manifest can prove, per source, that

    read = kept + quarantined + sampled_out + filtered + deduplicated + near_deduplicated
           + decontaminated

(asserted in code). Outputs are written to a temp folder and renamed into place, so a failed run
leaves an earlier output intact:

    out/train/part-00000.parquet ...   kept records (x epochs), sorted by (epoch, source, file, row)
    out/eval/part-00000.parquet ...    held-out records when `eval_fraction > 0`
    out/manifest.json                  counts per source, outputs (rows, sha256), settings
    out/config.yaml                    the resolved experiment config
    out/quarantine.jsonl               unreadable input: file, line/row, reason
    out/decontamination.{parquet,csv,md}
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from med42ray.config import ExperimentConfig
from med42ray.data.decontam import DecontamFilter, benchmark_specs, build_index, write_report
from med42ray.data.dedup import (
    exact_groups,
    find_near_duplicates,
    live,
    mark,
    mark_exact,
    sort_shuffled,
)
from med42ray.data.filters import REASONS, TokenCounter, check_languages, filter_records
from med42ray.data.sources import (
    MESSAGE_TYPE,
    DataError,
    SourceFiles,
    read_source,
    record_id,
    resolve_source,
)

CATEGORIES = (
    "quarantined",
    "sampled_out",
    "filtered",
    "deduplicated",
    "near_deduplicated",
    "decontaminated",
)
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


def _unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) for `key` (no random state)."""
    import xxhash

    return xxhash.xxh3_64_intdigest(key.encode("utf-8")) / 2.0**64


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[data] {msg}", file=sys.stderr, flush=True)


def _sample(batch: pa.Table, weights: dict[str, float], seed: int) -> pa.Table:
    drop = batch.column("drop").to_pylist()
    reason = batch.column("reason").to_pylist()
    for i, (src, rid) in enumerate(
        zip(batch.column("source").to_pylist(), batch.column("id").to_pylist(), strict=True)
    ):
        w = weights.get(src, 1.0)
        if not drop[i] and w < 1.0 and _unit_hash(f"weight:{seed}:{rid}") >= w:
            drop[i], reason[i] = "sampled_out", "weight"
    batch = batch.set_column(batch.schema.get_field_index("drop"), "drop", pa.array(drop))
    return batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(reason))


def _cap_keys(batch: pa.Table, capped: set[str], seed: int) -> pa.Table:
    keep = [s in capped for s in batch.column("source").to_pylist()]
    batch = batch.filter(pa.array(keep, pa.bool_()))
    ids = batch.column("id").to_pylist()
    return pa.table(
        {
            "source": batch.column("source"),
            "order": batch.column("order"),
            "h": pa.array([_unit_hash(f"cap:{seed}:{i}") for i in ids], pa.float64()),
        }
    )


def _mark_orders(batch: pa.Table, orders: dict[int, str], category: str, reason: str) -> pa.Table:
    return mark(batch, orders, category, reason)


def _block_counts(batch: pa.Table) -> pa.Table:
    df = batch.select(["source", "drop", "reason"]).to_pandas()
    counts = df.value_counts(["source", "drop", "reason"]).reset_index(name="n")
    return pa.Table.from_pandas(counts, preserve_index=False)


def _count(ds) -> dict[str, dict[str, Any]]:
    """{source: {(category, reason): n}} from the marked dataset (per-block partial counts)."""
    table = ds.map_batches(_block_counts, batch_format="pyarrow", batch_size=None).to_pandas()
    out: dict[str, dict[str, Any]] = {}
    for src, drop, reason, n in table.itertuples(index=False):
        key = (drop, reason)
        out.setdefault(src, {})[key] = out.get(src, {}).get(key, 0) + int(n)
    return out


def _category(ds, category: str, columns: list[str]):
    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.equal(batch.column("drop"), category)).select(columns)

    return ds.map_batches(keep, batch_format="pyarrow")


def _source_counts(raw: dict[tuple[str, str], int]) -> dict[str, Any]:
    c: dict[str, Any] = {"read": sum(raw.values()), "kept": raw.get(("", ""), 0)}
    for cat in CATEGORIES:
        c[cat] = sum(n for (d, _), n in raw.items() if d == cat)
    c["filtered_by_reason"] = {f"dropped_{r}": raw.get(("filtered", r), 0) for r in REASONS}
    c["quarantined_by_reason"] = {r: n for (d, r), n in sorted(raw.items()) if d == "quarantined"}
    c["decontaminated_by_benchmark"] = {
        r: n for (d, r), n in sorted(raw.items()) if d == "decontaminated"
    }
    return c


def reconcile(counts: dict[str, Any]) -> None:
    """read == kept + every removed category, or AssertionError."""
    removed = sum(counts[c] for c in CATEGORIES)
    if counts["read"] != counts["kept"] + removed:
        raise AssertionError(f"counts do not reconcile: {counts}")
    if counts["filtered"] != sum(counts["filtered_by_reason"].values()):
        raise AssertionError(f"filter reasons do not add up: {counts}")


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


def _split(batch: pa.Table, fraction: float, seed: int) -> pa.Table:
    ids = batch.column("id").to_pylist()
    flag = [fraction > 0 and _unit_hash(f"eval:{seed}:{i}") < fraction for i in ids]
    return batch.append_column("is_eval", pa.array(flag, pa.bool_()))


def _write_quarantine(rows, path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        if rows.empty:  # no bad input: an empty quarantine file, and no columns to sort by
            return 0
        for r in rows.sort_values("order", kind="stable").itertuples(index=False):
            entry = {
                "source": r.source,
                "file": r.source_file,
                "row": int(r.row),
                "reason": r.reason,
                "detail": r.detail,
            }
            if r.row >= 0 and r.source_file.endswith((".jsonl", ".ndjson")):
                entry["line"] = int(r.row) + 1
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            n += 1
    return n


def _check_quarantine(cfg: ExperimentConfig, srcs: list[SourceFiles], ds, out: Path) -> None:
    """Fail (naming the source and file) on an unreadable source or too much bad input."""
    read = _count(ds)
    problems = []
    for src in srcs:
        raw = read.get(src.name, {})
        total = sum(raw.values())
        bad = sum(n for (d, _), n in raw.items() if d == "quarantined")
        if not total:
            problems.append(f"source {src.name!r}: no records in {', '.join(src.labels)}")
        elif bad == total or bad / total > cfg.data.max_quarantine_rate:
            reasons = ", ".join(
                f"{r}: {n}" for (d, r), n in sorted(raw.items()) if d == "quarantined"
            )
            what = (
                "unreadable"
                if bad == total
                else (
                    f"{bad / total:.1%} of {total} records quarantined "
                    f"(> max_quarantine_rate {cfg.data.max_quarantine_rate})"
                )
            )
            where = src.paths[0] if len(src.paths) == 1 else f"{len(src.paths)} files"
            problems.append(f"source {src.name!r} ({where}): {what} [{reasons}]")
    if problems:
        rows = _category(
            ds, "quarantined", ["source", "source_file", "row", "order", "reason", "detail"]
        ).to_pandas()
        qpath = out.parent / f"{out.name}.failed-quarantine.jsonl"
        _write_quarantine(rows, qpath)
        files = rows.groupby(["source", "source_file"]).size().sort_values(ascending=False)
        worst = "; ".join(f"{s}/{f}: {n} bad" for (s, f), n in files.head(3).items())
        raise DataError("; ".join(problems) + f". Worst files: {worst}. Details: {qpath}")


def prepare_data(
    cfg: ExperimentConfig,
    out: Path,
    *,
    num_blocks: int | None = None,
    concurrency: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the data stage into `out`; return the manifest. `num_blocks` / `concurrency` tune
    the parallelism only: the outputs are byte-identical whatever they are."""
    import ray

    from med42ray.cluster import init_ray
    from med42ray.models import resolve_model_path

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    dcfg = cfg.data
    out = Path(out)
    if not dcfg.sources:
        raise DataError("data.sources: no sources configured")
    check_languages(dcfg.filters)
    srcs = [resolve_source(i, s.name, s.path, s.format) for i, s in enumerate(dcfg.sources)]
    init_ray(cfg.resources.ray_address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    pool = concurrency or max(1, min(cpus, 8))

    def lap(name: str, start: float) -> float:
        timings[name] = round(time.perf_counter() - start, 3)
        _say(verbose, f"{name}: {timings[name]:.1f}s")
        return time.perf_counter()

    t = time.perf_counter()
    parts = [
        read_source(src, s.split, s.subset, dcfg.system_prompt, num_blocks)
        for src, s in zip(srcs, dcfg.sources, strict=True)
    ]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.materialize()
    t = lap("read", t)
    _check_quarantine(cfg, srcs, ds, out)

    weights = {s.name: s.weight for s in dcfg.sources}
    ds = ds.map_batches(
        _sample, batch_format="pyarrow", fn_kwargs={"weights": weights, "seed": cfg.seed}
    )
    capped = {s.name: s.max_records for s in dcfg.sources if s.max_records}
    if capped:
        keys = live(ds).map_batches(
            _cap_keys, batch_format="pyarrow", fn_kwargs={"capped": set(capped), "seed": cfg.seed}
        )
        keys = keys.to_pandas().sort_values(["source", "h", "order"], kind="stable")
        over = keys.groupby("source", sort=False).cumcount() >= keys["source"].map(capped)
        cut = {int(o): "" for o in keys.loc[over, "order"]}
        ds = ds.map_batches(
            _mark_orders,
            batch_format="pyarrow",
            fn_kwargs={"orders": cut, "category": "sampled_out", "reason": "max_records"},
        )
    t = lap("sample", t)

    tok_path = resolve_model_path(cfg.model)
    # Actor stages read materialised input, so the pool never starves upstream tasks of CPUs.
    ds = ds.materialize()
    ds = ds.map_batches(
        filter_records,
        batch_format="pyarrow",
        batch_size=256,
        fn_args=(TokenCounter.load(cfg.model, tok_path), dcfg.filters),
    ).materialize()
    t = lap("filter", t)

    dedup_stats: dict[str, Any] = {"exact_groups": 0}
    if dcfg.exact_dedup:
        keep = exact_groups(ds)
        dedup_stats["exact_groups"] = len(keep)
        if keep:
            kept_ids = {o: record_id(srcs, o) for o in keep.values()}
            ds = ds.map_batches(
                mark_exact, batch_format="pyarrow", fn_kwargs={"keep": keep, "ids": kept_ids}
            )
        t = lap("exact_dedup", t)
    near_stats: dict[str, Any] = {"enabled": dcfg.near_dedup.enabled}
    if dcfg.near_dedup.enabled:
        near, stats = find_near_duplicates(
            ds, dcfg.near_dedup, seed=cfg.seed + 1, ids=lambda o: record_id(srcs, o)
        )
        near_stats.update(stats)
        if near:
            ds = ds.map_batches(
                _mark_orders,
                batch_format="pyarrow",
                fn_kwargs={"orders": near, "category": "near_deduplicated", "reason": "minhash"},
            )
        t = lap("near_dedup", t)

    dc = dcfg.decontamination
    index = None
    benches = benchmark_specs(cfg) if dc.enabled else []
    if dc.enabled and not benches:
        _say(
            verbose,
            "decontamination: no benchmarks configured (data.decontamination."
            "benchmarks / eval.benchmarks): skipped",
        )
    if benches:
        index = build_index(cfg)
        t = lap("decontam_index", t)
        index_ref = ray.put(index)
        ds = ds.materialize().map_batches(
            DecontamFilter,
            batch_format="pyarrow",
            batch_size=512,
            fn_constructor_args=(index_ref,),
            concurrency=pool,
        )
    ds = ds.materialize()
    t = lap("decontaminate" if benches else "mark", t)

    raw_counts = _count(ds)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        quarantine = _category(
            ds, "quarantined", ["source", "source_file", "row", "order", "reason", "detail"]
        ).to_pandas()
        _write_quarantine(quarantine, tmp / "quarantine.jsonl")
        removed = _category(
            ds, "decontaminated", ["id", "source", "source_file", "row", "detail"]
        ).to_pandas()
        decon = write_report(removed, index, dc, tmp, benches)
        decon["enabled"] = bool(index)

        kept = live(ds).map_batches(
            _split,
            batch_format="pyarrow",
            fn_kwargs={"fraction": dcfg.eval_fraction, "seed": cfg.seed},
        )
        kept = sort_shuffled(kept).sort("order").materialize()
        epochs = {s.name: s.epochs for s in dcfg.sources}
        train = ShardWriter(tmp / "train", dcfg.rows_per_shard)
        held = ShardWriter(tmp / "eval", dcfg.rows_per_shard)
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
            shutil.rmtree(tmp / "eval", ignore_errors=True)

        sources: dict[str, Any] = {}
        for src, scfg in zip(srcs, dcfg.sources, strict=True):
            c = _source_counts(raw_counts.get(src.name, {}))
            reconcile(c)
            w = written[src.name]
            if w["train"] + w["eval"] != c["kept"]:
                raise AssertionError(
                    f"{src.name}: kept {c['kept']} but wrote {w['train']} train + {w['eval']} eval"
                )
            c.update(
                kept_train=w["train"],
                kept_eval=w["eval"],
                epochs=scfg.epochs,
                rows_written_train=w["train_rows"],
                files=list(src.labels),
                path=scfg.path,
                format=scfg.format,
                weight=scfg.weight,
                max_records=scfg.max_records,
            )
            sources[src.name] = c
        totals = {
            k: sum(s[k] for s in sources.values())
            for k in ("read", "kept", *CATEGORIES, "kept_train", "kept_eval", "rows_written_train")
        }
        reconcile(
            {
                **totals,
                "filtered_by_reason": {
                    r: sum(s["filtered_by_reason"][r] for s in sources.values())
                    for r in next(iter(sources.values()))["filtered_by_reason"]
                },
            }
        )
        timings["total"] = round(time.perf_counter() - t0, 3)
        manifest = {
            "stage": "data",
            "config_fingerprint": cfg.fingerprint("data", "model", "eval", "seed"),
            "sources": sources,
            "totals": totals,
            "outputs": outputs,
            "exact_dedup": dedup_stats,
            "near_dedup": near_stats,
            "decontamination": decon,
            "quarantine": {"path": "quarantine.jsonl", "records": len(quarantine)},
            "settings": {
                "seed": cfg.seed,
                "eval_fraction": dcfg.eval_fraction,
                "rows_per_shard": dcfg.rows_per_shard,
                "exact_dedup": dcfg.exact_dedup,
                "system_prompt": dcfg.system_prompt,
            },
            "timings_s": timings,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (tmp / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(verbose, format_summary(manifest))
    return manifest


def _replace(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`, replacing an earlier output only once the new one is complete."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def format_summary(manifest: dict[str, Any]) -> str:
    """A small table of the per-source counts."""
    cols = ["read", "kept", *CATEGORIES]
    head = f"{'source':<20}" + "".join(f"{c[:12]:>13}" for c in cols)
    lines = [head]
    for name, c in {**manifest["sources"], "TOTAL": manifest["totals"]}.items():
        lines.append(f"{name[:20]:<20}" + "".join(f"{c[k]:>13}" for k in cols))
    d = manifest["decontamination"]
    lines.append(
        f"decontamination: {d['removed']} removed (n={d['ngram']}, "
        f"threshold={d['threshold']}) {d.get('per_benchmark', {})}"
    )
    lines.append(
        f"train shards: {len(manifest['outputs']['train'])}, "
        f"eval shards: {len(manifest['outputs']['eval'])}"
    )
    return "\n".join(lines)
